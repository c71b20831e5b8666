"""One rank of the DDP test (tests/training/test_ddp.py); started by torchrun, not by pytest.

Trains a tiny recommender on a tiny split, with plain and with length-grouped batches, and
writes `{out_dir}/rank{rank}.json` with the device it trained on and, for each, the example indices of every batch this rank
trained on, per epoch, as the training loop reports them while it collates (not recomputed),
and a hash of the weights after training.
"""

import hashlib
import json
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from genrec.idgenrec.config import RecommenderConfig
from genrec.modeling import ModelConfig, build_t5
from genrec.tokenization import encode_text
from training.data import SplitData
from training.loop import distributed_world
from training.pipeline import init_distributed
from training.recommender import train_recommender
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
WORDS = ["red", "blue", "green", "shoe", "lamp", "book", "cup", "bag", "small", "large"]


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(out_dir: Path, device_name: str = "cpu") -> None:
    torch.set_num_threads(1)
    device = init_distributed(device_name)  # cuda: this rank's GPU (LOCAL_RANK), nccl; cpu: gloo
    rank, world = distributed_world()
    rng = random.Random(0)  # the same data on every rank
    items = [f"i{n}" for n in range(20)]
    textual = {item: f"{WORDS[n % 10]} {WORDS[(n * 3 + 1) % 10]} {n}" for n, item in enumerate(items)}
    tokenizer = train_tokenizer(list(textual.values()), vocab_size=80)
    item_tokens = {item: encode_text(tokenizer, t) for item, t in textual.items()}
    train, valid, test = {}, {}, {}
    for u in range(12):
        sequence = rng.sample(items, rng.randint(5, 8))
        train[f"u{u}"], valid[f"u{u}"], test[f"u{u}"] = sequence[:-2], sequence[-2], sequence[-1]
    split = SplitData(train=train, valid=valid, test=test)
    result = {"rank": rank, "world": world, "device": str(device),
              "backend": dist.get_backend() if dist.is_initialized() else None}
    for name, grouped in (("plain", False), ("length_grouped", True)):
        result[name] = train_once(tokenizer, split, item_tokens, grouped, device)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def train_once(tokenizer, split: SplitData, item_tokens: dict[str, list[int]], grouped: bool,
               device: torch.device) -> dict:
    model = build_t5(TINY, tokenizer, seed=0).to(device)
    initial = weights_sha256(model)
    batches: dict[int, list[list[int]]] = {}  # epoch -> the indices of each batch, in order

    def on_batch(epoch: int, indices: list[int]) -> None:
        batches.setdefault(epoch, []).append(list(indices))

    config = RecommenderConfig(
        model=TINY,
        epochs=2,
        batch_size=4,
        lr=1e-2,
        warmup_steps=0,
        num_train_templates=3,
        max_source_length=128,
        length_grouped=grouped,
    )
    history = train_recommender(
        model,
        tokenizer,
        split,
        item_tokens,
        config,
        max_history=5,
        seed=0,
        validate=None,
        progress=False,
        on_batch=on_batch,
    )
    return {
        "batches": [batches.get(epoch, []) for epoch in range(config.epochs)],
        "examples": history["examples"],
        "loss": history["loss"],
        "initial_sha256": initial,
        "weights_sha256": weights_sha256(model),
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]), *sys.argv[2:3])
