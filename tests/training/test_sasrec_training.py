"""SASRec's trainer on a tiny synthetic dataset: it learns (loss down, far better than untrained),
it never reads the valid/test targets, it keeps the best validation epoch and stops by patience."""

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genrec.config import TrainConfig
from genrec.sasrec.config import SasRecConfig, SasRecSections
from genrec.sasrec.model import load_sasrec
from training.data import Dataset, ItemMetadata, SplitData
from training.evaluation import evaluate_method
from training.loop import distributed_world
from training.methods.base import RunContext
from training.methods.sasrec import SasRecTrainer, build_model, collate

try:
    from training.tokenizer_training import train_tokenizer
except ModuleNotFoundError:  # mid-refactor tree: genrec.prompts now lives in genrec.idgenrec.prompts
    import genrec.idgenrec.prompts as _prompts

    sys.modules.setdefault("genrec.prompts", _prompts)
    from training.tokenizer_training import train_tokenizer

N_ITEMS = 40
ITEMS = [f"i{n}" for n in range(N_ITEMS)]
WORDS = ["red", "blue", "green", "shoe", "lamp", "book", "cup", "bag"]


def cyclic_dataset(users: int = 60, seed: int = 0, shift_targets: int = 0) -> Dataset:
    """Each user walks the items in a cycle (i -> i+1) from a random start; valid and test are the
    walk's next two steps, moved by `shift_targets` (to check training never reads them)."""
    rng = random.Random(seed)
    train, valid, test = {}, {}, {}
    for u in range(users):
        start, length = rng.randrange(N_ITEMS), rng.randint(6, 12)
        walk = [ITEMS[(start + j) % N_ITEMS] for j in range(length + 2)]
        train[f"u{u}"] = walk[:length]
        valid[f"u{u}"] = ITEMS[(ITEMS.index(walk[length]) + shift_targets) % N_ITEMS]
        test[f"u{u}"] = ITEMS[(ITEMS.index(walk[length + 1]) + shift_targets) % N_ITEMS]
    catalog = ItemMetadata(items={i: {"title": f"{WORDS[n % 8]} {WORDS[n // 8]}"} for n, i in enumerate(ITEMS)})
    texts = {i: f"title: {meta['title']}" for i, meta in catalog.items.items()}
    return Dataset(name="cycles", catalog=catalog, split=SplitData(train=train, valid=valid, test=test), item_text=texts)


def valid_ndcg(method, split: SplitData, users: int | None = None) -> float:
    return evaluate_method(method, None, split, "valid", users=users, progress=False)["ndcg@10"]


def config(**kw) -> TrainConfig:
    settings = dict(hidden_size=32, num_layers=1, num_heads=2, inner_size=64, dropout=0.1, max_len=8, lr=1e-2,
                    batch_size=16, epochs=15, patience=15)
    settings.update(kw)
    return TrainConfig(name="test", kind="sasrec", seed=0, method=SasRecSections(SasRecConfig(**settings)))


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"title: {a} {b}" for a in WORDS for b in WORDS] + ["item 0 1 2 3 4 5 6 7 8 9"], 100)


def context(dataset, tokenizer, cfg, validate=None, log=None) -> RunContext:
    return RunContext(config=cfg, dataset=dataset, tokenizer=tokenizer, progress=False,
                      log=log if log is not None else (lambda m: None),
                      validate=validate or (lambda method, _trie, users: valid_ndcg(method, dataset.split, users)))


def test_training_learns_the_walks_and_writes_a_loadable_model(tokenizer, tmp_path):
    dataset = cyclic_dataset()
    lines: list[str] = []
    cfg = config()
    torch.manual_seed(0)
    untrained = valid_ndcg(SasRecTrainer().train(context(dataset, tokenizer, config(epochs=0))).method, dataset.split)
    trained = SasRecTrainer().train(context(dataset, tokenizer, cfg, log=lines.append))
    history = trained.history
    assert len(history["loss"]) == len(history["valid_ndcg@10"]) == cfg.sasrec.epochs
    assert history["loss"][-1] < 0.6 * history["loss"][0]
    best = max(history["valid_ndcg@10"])
    assert history["valid_ndcg@10"][history["best_epoch"] - 1] == best
    assert best > 0.8 and best > untrained + 0.5
    # The returned method is the best epoch's: it scores what validation saw then.
    assert valid_ndcg(trained.method, dataset.split) == pytest.approx(best)
    assert lines[0].startswith("sasrec: 60 training sequences, 40 items")
    assert len(lines) == 1 + cfg.sasrec.epochs and all("valid NDCG@10" in line for line in lines[1:])
    assert [i.item_id for i in trained.items] == ITEMS
    assert len({i.textual_id for i in trained.items}) == N_ITEMS
    trained.model_dirs["sasrec"](tmp_path / "sasrec")
    loaded = load_sasrec(tmp_path / "sasrec")
    assert valid_ndcg(type(trained.method)(loaded, tokenizer), dataset.split) == pytest.approx(best)


def test_training_never_reads_the_valid_or_test_targets(tokenizer):
    losses = []
    for shift in (0, 7):
        dataset = cyclic_dataset(shift_targets=shift)
        cfg = config(epochs=3, patience=3)
        losses.append(SasRecTrainer().train(context(dataset, tokenizer, cfg)).history["loss"])
    assert losses[0] == losses[1]


def test_the_best_epoch_is_kept_and_patience_stops_training(tokenizer):
    dataset = cyclic_dataset(users=20)
    scores = iter([0.3, 0.5, 0.4, 0.45, 0.9, 0.9])
    snapshots = []

    def validate(method, _trie, users):
        snapshots.append({k: v.clone() for k, v in method.model.state_dict().items()})
        return next(scores)

    lines: list[str] = []
    trained = SasRecTrainer().train(context(dataset, tokenizer, config(epochs=6, patience=2), validate, lines.append))
    assert trained.history["valid_ndcg@10"] == [0.3, 0.5, 0.4, 0.45]  # stopped after 2 epochs without gain
    assert trained.history["best_epoch"] == 2 and len(trained.history["loss"]) == 4
    state = trained.method.model.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[3][k]) for k in state)
    assert "stopping" in lines[-1]


def test_collate_left_pads_inputs_and_next_item_targets():
    inputs, targets = collate([[5, 6, 7], [1, 2, 3, 4, 5]])
    assert inputs.tolist() == [[0, 0, 5, 6], [1, 2, 3, 4]]
    assert targets.tolist() == [[0, 0, 6, 7], [2, 3, 4, 5]]


def test_the_model_has_the_configured_sizes():
    model = build_model(ITEMS, config(hidden_size=16, num_layers=3, max_len=5).sasrec)
    assert model.item_embedding.weight.shape == (N_ITEMS + 1, 16) and len(model.blocks) == 3
    assert model.position_embedding.weight.shape[0] == 5


# --------------------------------------------------------------------------- data parallelism

ROOT = Path(__file__).resolve().parents[2]


def ddp_worker(out_dir: Path) -> None:
    """One torchrun rank (this file run as a script): trains, writes what the test compares."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = distributed_world()
    dataset = cyclic_dataset()
    tokenizer = train_tokenizer([f"title: {a} {b}" for a in WORDS for b in WORDS] + ["item 0 1 2 3 4 5 6 7 8 9"], 100)
    trained = SasRecTrainer().train(context(dataset, tokenizer, config(epochs=30, patience=3, batch_size=8)))
    digest = hashlib.sha256()
    for name, tensor in sorted(trained.method.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    result = {"rank": rank, "world": world, "weights": digest.hexdigest(), "history": trained.history,
              "valid": valid_ndcg(trained.method, dataset.split)}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_train_one_model_and_stop_at_the_same_epoch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
               str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["world"] == second["world"] == 2
    assert first["weights"] == second["weights"]  # gradients were averaged; the same best epoch kept
    for key in ("loss", "valid_ndcg@10", "best_epoch"):
        assert first["history"][key] == second["history"][key]
    assert len(first["history"]["loss"]) < 30  # patience stopped both ranks, at the same epoch
    assert first["valid"] > 0.8


def test_the_sasrec_presets_are_sasrec_configs_that_survive_a_bundle_round_trip():
    from genrec.config import config_from_dict
    from training.presets import PRESETS, preset

    for name in ("sasrec-tiny", "sasrec-ml100k"):
        assert name in PRESETS
        config = preset(name)
        assert config.kind == "sasrec" and config.name == name and isinstance(config.sasrec, SasRecConfig)
        again = config_from_dict(config.to_dict())
        assert again.sasrec == config.sasrec and again.data == config.data


if __name__ == "__main__":
    ddp_worker(Path(sys.argv[1]))
