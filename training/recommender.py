"""The base recommender: training examples from every prefix, training with per-epoch
validation NDCG@10 (best epoch kept), data-parallel under torchrun."""

import copy
import random
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from genrec.device import model_device
from genrec.idgenrec.config import RecommenderConfig
from genrec.idgenrec.prompts import TRAIN_TEMPLATES, PromptRenderer

from .data import SplitData
from .loop import distributed_world, fit
from .seq2seq import Example, collate, seq2seq_loss, source_length


def training_pairs(split: SplitData, max_history: int, max_prefixes_per_user: int | None) -> list[tuple[str, list[str], str]]:
    """(user, history, target) for every prefix of every user's training part (docs/methods.md, "IDGenRec")."""
    pairs = []
    for user, sequence in split.train.items():
        first = 1
        if max_prefixes_per_user is not None:
            first = max(1, len(sequence) - max_prefixes_per_user)
        for i in range(first, len(sequence)):
            pairs.append((user, sequence[max(0, i - max_history) : i], sequence[i]))
    return pairs


def render_examples(
    pairs: Sequence[tuple[str, list[str], str]],
    item_tokens: dict[str, list[int]],
    renderer: PromptRenderer,
    templates: Sequence[str],
    eos_token_id: int,
    rng: random.Random,
    user_tokens: Callable[[str, list[str]], list[int] | None] | None = None,
    first_template_share: float | None = None,
) -> list[Example]:
    """One example per pair, each with a template sampled from `templates` (the first one
    with probability `first_template_share` if given, else uniformly)."""
    examples = []
    for user, history, target in pairs:
        template = choose_template(templates, rng, first_template_share)
        prompt = renderer.render(
            template, [item_tokens[i] for i in history], user_tokens(user, history) if user_tokens else None
        )
        examples.append(Example(source=prompt.input_ids, target=item_tokens[target] + [eos_token_id]))
    return examples


def choose_template(templates: Sequence[str], rng: random.Random, first_template_share: float | None = None) -> str:
    """The first template with probability `first_template_share` (if given), else uniformly."""
    if first_template_share is not None and (len(templates) == 1 or rng.random() < first_template_share):
        return templates[0]
    if first_template_share is not None:
        return templates[1 + rng.randrange(len(templates) - 1)]
    return templates[rng.randrange(len(templates))]


def train_recommender(
    model,
    tokenizer,
    split: SplitData,
    item_tokens: dict[str, list[int]],
    config: RecommenderConfig,
    *,
    max_history: int,
    seed: int,
    validate: Callable[[torch.nn.Module], float] | None = None,
    progress: bool = True,
    on_batch: Callable[[int, list[int]], None] | None = None,
    user_tokens: Callable[[str, list[str]], list[int] | None] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains in place and leaves the best-validation epoch's weights in `model`.

    `user_tokens(user, history)` gives the textual user ID of an example (None: no user IDs).
    `validate(model) -> ndcg@10` runs on rank 0 only; its value is broadcast so every rank
    keeps the same best epoch. `on_batch(epoch, indices)` is the loop's record of the examples
    (indices into `training_pairs`) each batch of this rank was made of. Returns the history
    (losses, validation NDCG, best epoch).
    """
    rank, world = distributed_world()
    renderer = PromptRenderer(tokenizer, config.max_source_length)
    templates = TRAIN_TEMPLATES[: max(1, config.num_train_templates)]
    pairs = training_pairs(split, max_history, config.max_prefixes_per_user)

    def make_examples(epoch: int) -> list[Example]:
        rng = random.Random(seed * 7919 + epoch)
        return render_examples(
            pairs, item_tokens, renderer, templates, tokenizer.eos_token_id, rng,
            user_tokens=user_tokens, first_template_share=config.test_template_share,
        )

    valid_ndcg: list[float] = []
    best = {"epoch": -1, "ndcg": float("-inf"), "state": None}

    def after_epoch(epoch: int, means: dict[str, float]) -> None:
        score = torch.tensor([0.0], device=model_device(model))  # nccl broadcasts only GPU tensors
        if validate is not None and rank == 0:
            model.eval()
            score[0] = float(validate(model))
        if world > 1:
            dist.broadcast(score, src=0)
        value = float(score[0])
        valid_ndcg.append(value)
        if validate is None or value > best["ndcg"]:
            best.update(epoch=epoch, ndcg=value, state=copy.deepcopy(model.state_dict()))
        if rank == 0:
            log(f"recommender epoch {epoch + 1}/{config.epochs}: loss {means['loss']:.4f}, valid NDCG@10 {value:.4f} "
                f"({means['examples_per_s']:.0f} examples/s)")

    losses = fit(
        model, epochs=config.epochs, examples=make_examples,
        collate=lambda batch: collate(batch, tokenizer.pad_token_id), loss=seq2seq_loss,
        batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps, grad_clip=config.grad_clip, seed=seed,
        length=source_length if config.length_grouped else None, after_epoch=after_epoch,
        on_batch=on_batch, desc="recommender", progress=progress,
    )["loss"]
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return {"loss": losses, "valid_ndcg@10": valid_ndcg, "best_epoch": best["epoch"] + 1, "examples": len(pairs)}
