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
    tiny = preset("cllm4rec-tiny").cllm4rec  # the paper's masked objective
    assert tiny.objective == "masked" and tiny.collab_order == "shuffled"
    assert tiny.finetune_views_per_user > 1 and tiny.item_bias and tiny.item_head_scale == 1.0
    assert 0.0 < tiny.last_item_share < 1.0
    ml100k = preset("cllm4rec-ml100k").cllm4rec  # the next-item objective
    assert ml100k.objective == "next_item" and ml100k.collab_order == "chronological"
    assert ml100k.holdout_share == 0.0 and ml100k.patience and ml100k.valid_users is None
    assert ml100k.model.dropout_rate == 0.2 and tiny.model.dropout_rate == 0.0


def _cyclic_setup(objective: str):
    """A tiny model and users whose items always follow one cycle 1 -> 2 -> ... -> 12 -> 1."""
    from genrec.cllm4rec.config import Cllm4RecConfig
    from genrec.cllm4rec.model import PROMPT_TEXTS
    from genrec.modeling import ModelConfig
    from training.methods.cllm4rec import build_model
    from training.tokenizer_training import train_tokenizer

    items = [str(i) for i in range(1, 13)]
    train_items = {f"u{u}": [items[(u + t) % 12] for t in range(8)] for u in range(24)}
    cfg = Cllm4RecConfig(
        model=ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16,
                          dropout_rate=0.0),
        objective=objective, collab_order="chronological", finetune_epochs=40, finetune_lr=1e-2, batch_size=8,
        max_prompt_items=4, finetune_views_per_user=1, user_dropout=0.5, holdout_share=0.0, reg_lambda=0.0,
    )
    tokenizer = train_tokenizer([f"film {i}" for i in items] + list(PROMPT_TEXTS), 100)
    model, pieces = build_model(cfg, tokenizer, list(train_items), items, seed=0)
    return cfg, tokenizer, model, pieces, train_items, items


def test_next_item_fine_tuning_learns_what_comes_next():
    """Fine-tuned on the collaborative documents in time order, the model continues a history
    with its successor, for known and unknown users alike."""
    from genrec.cllm4rec.model import Cllm4RecRecommender
    from training.methods.cllm4rec import finetune

    torch.manual_seed(0)
    cfg, tokenizer, model, pieces, train_items, items = _cyclic_setup("next_item")
    finetune(model, pieces, train_items, cfg, seed=0, progress=False)
    recommender = Cllm4RecRecommender(model, tokenizer, max_history=4, objective="next_item")
    histories = [[items[(s + t) % 12] for t in range(3)] for s in range(12)]
    expected = [items[(s + 3) % 12] for s in range(12)]
    for users in ([None] * 12, [f"u{s}" for s in range(12)]):
        top = [row[0].item_id for row in recommender.recommend(histories, 1, users=users)]
        assert sum(a == b for a, b in zip(top, expected, strict=True)) >= 10


def test_fine_tuning_stops_after_patience_epochs_without_a_better_validation():
    from training.methods.cllm4rec import finetune

    cfg, _, model, pieces, train_items, _ = _cyclic_setup("next_item")
    cfg.finetune_epochs, cfg.patience = 20, 3
    scores = iter([0.1, 0.3, 0.2, 0.25, 0.29, 0.5, 0.6])
    history = finetune(model, pieces, train_items, cfg, seed=0, validate=lambda: next(scores), progress=False)
    assert history["valid_ndcg@10"] == [0.1, 0.3, 0.2, 0.25, 0.29]  # 3 epochs after the best: stop
    assert history["best_epoch"] == 2


def test_unknown_objectives_and_orders_are_refused(tmp_path):
    write_atomic_dataset(tmp_path / "data")
    for bad in ("cllm4rec.objective=bag", "cllm4rec.collab_order=random", "cllm4rec.crop=middle"):
        args = ["run", "--config", "cllm4rec-tiny", "--out", str(tmp_path / "b"), "--no-progress",
                "--set", "data.dataset=synth", "--set", f"data.data_dir={tmp_path / 'data'}", "--set", bad]
        assert cli_main(args) == 2
