"""Data-parallel training of the recommender under torchrun: 2 CPU processes, gloo; with plain
and with length-grouped batches. The same test on 2 GPUs (nccl, a rank a GPU) where there are
two."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_ranks_train_on_disjoint_shards_and_end_with_identical_weights(tmp_path):
    results = run_two_ranks(tmp_path, "cpu")
    for r in results.values():
        assert r["device"] == "cpu" and r["backend"] == "gloo"


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs (nccl takes one GPU per rank)")
def test_two_gpu_ranks_train_on_disjoint_shards_and_end_with_identical_weights(tmp_path):
    results = run_two_ranks(tmp_path, "cuda")
    assert {r["device"] for r in results.values()} == {"cuda:0", "cuda:1"}  # each rank its LOCAL_RANK's GPU
    assert {r["backend"] for r in results.values()} == {"nccl"}


def run_two_ranks(tmp_path: Path, device: str) -> dict:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(WORKER),
        str(tmp_path),
        device,
    ]
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun did not finish in 300 s:\n{exc.stdout}\n{exc.stderr}")
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    results = {r["rank"]: r for r in (json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json")))}
    assert set(results) == {0, 1}
    for r in results.values():
        assert r["world"] == 2
    for name in ("plain", "length_grouped"):
        check_ranks(results[0][name], results[1][name])
    # Grouping changed the batches, not the examples each rank owns.
    for rank in (0, 1):
        plain, grouped = results[rank]["plain"]["batches"], results[rank]["length_grouped"]["batches"]
        assert plain != grouped
        for epoch in range(2):
            assert sorted(i for b in plain[epoch] for i in b) == sorted(i for b in grouped[epoch] for i in b)
    return results


def check_ranks(first: dict, second: dict) -> None:
    examples = first["examples"]
    assert examples == second["examples"] > 0
    per_rank = math.ceil(examples / 2)

    # What each rank really trained on, batch by batch, as the loop collated it (every epoch).
    assert len(first["batches"]) == len(second["batches"]) == 2
    for epoch, (batches_a, batches_b) in enumerate(zip(first["batches"], second["batches"], strict=True)):
        # The ranks stay in step: the same number of batches, of the same sizes.
        assert [len(batch) for batch in batches_a] == [len(batch) for batch in batches_b], epoch
        a = [i for batch in batches_a for i in batch]
        b = [i for batch in batches_b for i in batch]
        # Equal shares of half the examples (padded by wrapping so the ranks stay in step) ...
        assert len(a) == len(b) == per_rank, (epoch, len(a), len(b), examples)
        assert len(set(a)) == len(a) and len(set(b)) == len(b)
        # ... that together cover every example, overlapping only by the padding.
        assert set(a) | set(b) == set(range(examples))
        assert len(set(a) & set(b)) == 2 * per_rank - examples
    # Each epoch is shuffled anew.
    assert first["batches"][0] != first["batches"][1]

    # Gradients were averaged: both ranks end with the same weights, and training changed them.
    assert first["initial_sha256"] == second["initial_sha256"]
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["weights_sha256"] != first["initial_sha256"]
    assert first["loss"] == pytest.approx(second["loss"])
    assert len(first["loss"]) == 2
