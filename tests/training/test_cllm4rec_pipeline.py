"""CLLM4Rec end to end through `genrec-train run --config cllm4rec-tiny` on a small synthetic
catalog: a verified bundle of kind cllm4rec whose eval.json has both protocols; the held-out split."""

import json

import pytest
import torch

from genrec.bundle import load_bundle, verify_bundle
from genrec.cllm4rec.model import MODEL_DIR, load_cllm4rec
from genrec.config import apply_override
from training.cli import main as cli_main
from training.data import load_dataset
from training.methods.cllm4rec import PROTOCOL_KEY, holdout_split
from training.presets import preset

from .test_pipeline import write_atomic_dataset

SMALL = [
    "tokenizer.vocab_size=200",
    "cllm4rec.model.d_model=32", "cllm4rec.model.d_ff=64", "cllm4rec.model.num_layers=1",
    "cllm4rec.model.num_decoder_layers=1", "cllm4rec.model.num_heads=2", "cllm4rec.model.d_kv=16",
    "cllm4rec.pretrain_epochs=1", "cllm4rec.finetune_epochs=2", "cllm4rec.batch_size=8",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cllm4rec")
    write_atomic_dataset(root / "data")
    args = ["run", "--config", "cllm4rec-tiny", "--out", str(root / "bundle"), "--no-progress",
            "--set", "data.dataset=synth", "--set", f"data.data_dir={root / 'data'}"]
    for assignment in SMALL:
        args += ["--set", assignment]
    assert cli_main(args) == 0
    return root


def test_run_writes_a_cllm4rec_bundle_with_both_protocols(trained):
    bundle_dir = trained / "bundle"
    manifest = verify_bundle(bundle_dir)
    assert manifest["kind"] == "cllm4rec"
    assert manifest["config"]["kind"] == "cllm4rec"
    result = json.loads((bundle_dir / "eval.json").read_text())
    for which in ("valid", "test"):
        assert set(result[which]) == {"hr@5", "ndcg@5", "hr@10", "ndcg@10"}
        assert set(result["baselines"]["popularity"][which]) == {"hr@5", "ndcg@5", "hr@10", "ndcg@10"}
    protocol = result[PROTOCOL_KEY]
    assert {"recall@20", "recall@40", "ndcg@100"} <= set(protocol)
    assert all(0.0 <= protocol[k] <= 1.0 for k in ("recall@20", "recall@40", "ndcg@100"))
    assert set(protocol["popularity"]) == {"recall@20", "recall@40", "ndcg@100"}
    assert result["kind"] == "cllm4rec" and PROTOCOL_KEY in manifest["metrics"]
    bundle = load_bundle(bundle_dir)
    model = load_cllm4rec(bundle_dir / MODEL_DIR)
    assert model.item_ids == [i.item_id for i in bundle.items]
    assert (bundle_dir / "report.md").read_text().startswith("# CLLM4Rec")


def test_evaluate_command_handles_cllm4rec_bundles(trained, capsys):
    assert cli_main(["evaluate", "--bundle", str(trained / "bundle"), "--users", "5", "--no-progress"]) == 0
    assert "| CLLM4Rec |" in capsys.readouterr().out


def test_holdout_is_random_fixed_and_disjoint(trained):
    dataset = load_dataset("synth", trained / "data", kcore=0)
    train_a, held_a = holdout_split(dataset.split, 0.2, seed=42)
    train_b, held_b = holdout_split(dataset.split, 0.2, seed=42)
    assert held_a == held_b and train_a == train_b
    for user, items in dataset.split.train.items():
        assert set(train_a[user]) | set(held_a[user]) == set(items)
        assert not set(train_a[user]) & set(held_a[user])
        assert len(held_a[user]) == max(1, round(0.2 * len(items)))
        assert dataset.split.valid[user] not in held_a[user] and dataset.split.test[user] not in held_a[user]


def test_config_kind_and_presets():
    config = preset("cllm4rec-ml100k")
    assert config.kind == "cllm4rec" and config.cllm4rec.reg_lambda == 1.0
    apply_override(config, "cllm4rec.freeze_backbone=true")
    assert config.cllm4rec.freeze_backbone is True
    assert preset("tiny").kind == "idgenrec"


def test_fine_tuning_makes_several_masked_views_per_user(monkeypatch):
    import training.methods.cllm4rec as ct
    from genrec.cllm4rec.config import Cllm4RecConfig

    seen: list[list] = []

    class Stop(Exception):
        pass

    def fake_batch(model, pieces, chunk, max_items):
        seen.append(list(chunk))
        raise Stop

    monkeypatch.setattr(ct, "finetune_batch", fake_batch)
    train_items = {"a": ["1", "2", "3", "4", "5"], "b": ["6", "7", "8"], "c": ["9"]}
    cfg = Cllm4RecConfig(finetune_epochs=1, batch_size=100, finetune_views_per_user=3, last_item_share=1.0,
                         user_dropout=0.0)

    class Dummy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(Stop):
        ct.finetune(Dummy(), None, train_items, cfg, seed=0, progress=False)
    (chunk,) = seen
    users = sorted(u for u, _, _ in chunk)
    assert users == ["a", "a", "a", "b", "b", "b"]  # 3 views per user with 2+ items
    for user, kept, held in chunk:
        assert held and train_items[user][-1] in held  # last_item_share=1: the latest is masked out
        assert set(kept) | set(held) == set(train_items[user])


def test_presets_use_the_measured_fine_tuning_settings():
    for name in ("cllm4rec-tiny", "cllm4rec-ml100k"):
        cfg = preset(name).cllm4rec
        assert cfg.finetune_views_per_user > 1 and cfg.item_bias and cfg.item_head_scale == 1.0
        assert 0.0 < cfg.last_item_share < 1.0
