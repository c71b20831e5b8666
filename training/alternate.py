"""Alternate training of the ID generator and the recommender (docs/methods.md, "Alternate training"), and textual user IDs
(docs/methods.md, "Textual user IDs") during training.

Schedule (`phase_schedule`): with `alternate.rounds = R > 0` and `id_phase_first`, the phases
are (ID, recommender) x R; without it, (recommender, ID) x R and one more recommender phase,
so that the recommender always ends on the IDs the bundle ships. `rounds = 0` is one
recommender phase on the keyword-warmed IDs (the plain pipeline). The recommender epochs of
all phases add up to `recommender.epochs` (split as evenly as possible, earlier phases taking
the remainder) unless `alternate.rec_epochs_per_round` fixes each phase's epochs.

After every ID phase the whole catalog is minted again (batched, unique) and everything that
holds IDs is rebuilt from the new ones: the examples of the next phases, the trie the
recommender decodes and validates over, and the user IDs. The reference code reuses round-0
data in later rounds; here each phase reads the IDs current at its start.
"""

import dataclasses
import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from genrec.config import TrainConfig
from genrec.idgenrec.config import AlternateConfig
from genrec.idgenrec.minting import MintConfig, MintStats
from genrec.idgenrec.prompts import TRAIN_TEMPLATES, PromptRenderer
from genrec.idgenrec.user_ids import generate_user_ids
from genrec.tensors import pad_batch, pad_labels
from genrec.textual_ids import MintedId
from genrec.tokenization import encode_text
from genrec.trie import TextualIdTrie

from .data import SplitData
from .id_generator import mint_catalog
from .loop import distributed_world, fit
from .recommender import choose_template, train_recommender, training_pairs
from .soft_ids import greedy_soft_decode, insert_soft_ids, soft_id_embeddings
from .stable_ids import KeptId

Pair = tuple[str, list[str], str]


def uses_user_ids(config: TrainConfig) -> bool:
    return bool(config.alternate.user_ids or config.recommender.user_ids)


def split_epochs(total: int, parts: int) -> list[int]:
    base, extra = divmod(max(total, 0), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def phase_schedule(alternate: AlternateConfig, total_rec_epochs: int) -> list[tuple[str, int]]:
    """[(kind, epochs)], kind "id" or "rec"; see the module docstring."""
    if alternate.rounds <= 0:
        return [("rec", total_rec_epochs)]
    if alternate.id_phase_first:
        kinds = ["id", "rec"] * alternate.rounds
    else:
        kinds = ["rec", "id"] * alternate.rounds + ["rec"]
    count = kinds.count("rec")
    if alternate.rec_epochs_per_round is not None:
        rec_epochs = [alternate.rec_epochs_per_round] * count
    else:
        rec_epochs = split_epochs(total_rec_epochs, count)
    schedule, r = [], 0
    for kind in kinds:
        if kind == "rec":
            schedule.append(("rec", rec_epochs[r]))
            r += 1
        else:
            schedule.append(("id", alternate.id_epochs))
    return schedule


# --------------------------------------------------------------------------- IDs


@dataclass
class IdState:
    """The catalog's current IDs."""

    minted: list[MintedId]
    stats: MintStats
    item_tokens: dict[str, list[int]]  # item -> ID tokens without EOS


def mint_state(
    generator, tokenizer, item_ids: Sequence[str], texts: Sequence[str], vocabulary_texts: Sequence[str],
    config: MintConfig, progress: bool = True, kept: Sequence[KeptId | None] | None = None,
) -> IdState:
    """The catalog's IDs minted by `generator`; `kept[i]`: an ID item i keeps instead (never minted
    again, in no phase: training.stable_ids)."""
    minted, stats = mint_catalog(generator, tokenizer, list(texts), list(vocabulary_texts), config, progress=progress,
                                 kept=kept)
    return IdState(minted, stats, {item: list(m.token_ids) for item, m in zip(item_ids, minted, strict=True)})


def build_trie(item_ids: Sequence[str], item_tokens: dict[str, list[int]], eos: int) -> TextualIdTrie:
    return TextualIdTrie(list(item_ids), [item_tokens[i] + [eos] for i in item_ids], eos)


class UserIds:
    """Textual user IDs of visible histories with the current generator and item IDs, memoised
    per history; `refresh` after the generator or the IDs change."""

    def __init__(self, generator, tokenizer, item_tokens: dict[str, list[int]], *, max_words: int = 4,
                 max_source_length: int = 256, batch_size: int = 256, progress: bool = False):
        self.generator = generator
        self.progress = progress
        self.tokenizer = tokenizer
        self.item_tokens = item_tokens
        self.max_words = max_words
        self.max_source_length = max_source_length
        self.batch_size = batch_size
        self._cache: dict[tuple[str, ...], list[int]] = {}

    def refresh(self, item_tokens: dict[str, list[int]]) -> None:
        self.item_tokens = item_tokens
        self._cache.clear()

    def prepare(self, histories: Sequence[Sequence[str]]) -> None:
        missing = list(dict.fromkeys(tuple(h) for h in histories if tuple(h) not in self._cache))
        if not missing:
            return
        found = generate_user_ids(
            self.generator, self.tokenizer, [[self.item_tokens[i] for i in h] for h in missing],
            max_words=self.max_words, max_source_length=self.max_source_length, batch_size=self.batch_size,
            progress=self.progress and len(missing) > self.batch_size,
        )
        self._cache.update(zip(missing, found, strict=True))

    def of(self, history: Sequence[str]) -> list[int]:
        key = tuple(history)
        if key not in self._cache:
            self.prepare([key])
        return self._cache[key]

    def __call__(self, user: str, history: Sequence[str]) -> list[int]:
        """The training callback: a training example's user ID comes from its prefix only."""
        return self.of(history)

    def for_evaluation(self, split: SplitData, max_history: int) -> Callable[[list[str]], list[list[int]]]:
        """Users -> user IDs built from their training part only (never the valid or test item)."""

        def tokens(users: list[str]) -> list[list[int]]:
            histories = [evaluation_user_history(split, u, max_history) for u in users]
            self.prepare(histories)
            return [self.of(h) for h in histories]

        return tokens


def evaluation_user_history(split: SplitData, user: str, max_history: int) -> list[str]:
    """What a user's ID is built from at evaluation: the last items of the training part."""
    return list(split.train[user][-max_history:])


# --------------------------------------------------------------------------- ID phase


@contextmanager
def frozen(model: torch.nn.Module):
    """No gradients and eval mode (no dropout) for `model`; restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


def id_phase(
    generator,
    recommender_model,
    tokenizer,
    pairs: Sequence[Pair],
    item_tokens: dict[str, list[int]],
    item_sources: dict[str, list[int]],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    temperature: float = 1.0,
    templates: Sequence[str] = TRAIN_TEMPLATES[:1],
    first_template_share: float | None = None,
    max_source_length: int = 512,
    max_pairs: int | None = None,
    user_tokens: Callable[[str, list[str]], list[int] | None] | None = None,
    seed: int = 0,
    grad_clip: float = 1.0,
    length_grouped: bool = False,
    progress: bool = True,
) -> list[float]:
    """Trains the generator through soft IDs with the recommender frozen; mean loss per epoch.
    Every rank runs the same phase (no sharding); rank 0's weights are broadcast afterwards.
    `length_grouped`: batches of histories of similar lengths (their prompts pad alike).

    For every batch of prompts, all distinct history items are decoded in one generator call,
    len(current hard ID) positions each; the soft embeddings replace the hard ones at the items'
    spans; the loss is the recommender's NLL of the target's current hard ID.
    """
    renderer = PromptRenderer(tokenizer, max_source_length)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = next(generator.parameters()).device
    epoch_rng = {"rng": random.Random(seed)}  # one per epoch: its shuffle, then its template draws

    def examples(epoch: int) -> list[Pair]:
        rng = random.Random(seed * 7919 + epoch)
        chosen = list(pairs)
        rng.shuffle(chosen)
        epoch_rng["rng"] = rng
        return chosen[:max_pairs] if max_pairs is not None else chosen

    with frozen(recommender_model):
        embedding = recommender_model.get_input_embeddings()
        losses = fit(
            generator, epochs=epochs, examples=examples, collate=list, batch_size=batch_size, lr=lr,
            decay=False, grad_clip=grad_clip, shuffle=False, distributed=False, desc="ID phase", progress=progress,
            length=history_length if length_grouped else None,
            loss=lambda model, batch: id_phase_loss(
                model, recommender_model, embedding, renderer, batch, item_tokens, item_sources,
                templates=templates, rng=epoch_rng["rng"], first_template_share=first_template_share,
                temperature=temperature, user_tokens=user_tokens, eos=eos, pad=pad, device=device,
            ),
        )["loss"]
    generator.eval()
    return losses


def history_length(pair: Pair) -> int:
    """How long a pair's prompt is, up to the template: its number of history items."""
    return len(pair[1])


def id_phase_loss(
    generator, recommender_model, embedding, renderer: PromptRenderer, batch: Sequence[Pair],
    item_tokens: dict[str, list[int]], item_sources: dict[str, list[int]], *, templates: Sequence[str],
    rng: random.Random, first_template_share: float | None, temperature: float,
    user_tokens: Callable[[str, list[str]], list[int] | None] | None, eos: int, pad: int, device,
) -> torch.Tensor | None:
    """The recommender's NLL of the batch's targets with soft IDs in the histories (None when no
    history item is in any prompt, so nothing reaches the generator)."""
    prompts, shown = [], []
    for user, history, _target in batch:
        template = choose_template(templates, rng, first_template_share)
        prompt = renderer.render(
            template, [item_tokens[i] for i in history], user_tokens(user, history) if user_tokens else None
        )
        prompts.append(prompt)
        # The renderer drops the oldest items that do not fit; its spans are the newest ones.
        shown.append(history[len(history) - len(prompt.item_spans) :])
    distinct = list(dict.fromkeys(item for items in shown for item in items))
    if not distinct:
        return None
    index = {item: k for k, item in enumerate(distinct)}
    steps = max(len(item_tokens[i]) for i in distinct)
    source_ids, source_mask = pad_batch([item_sources[i] for i in distinct], pad)
    probs = greedy_soft_decode(generator, source_ids.to(device), source_mask.to(device), steps, temperature)
    soft = soft_id_embeddings(probs, embedding.weight)
    input_ids, attention_mask = pad_batch([p.input_ids for p in prompts], pad)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    spans = [
        (row, start, end, index[item])
        for row, (prompt, items) in enumerate(zip(prompts, shown, strict=True))
        for (start, end), item in zip(prompt.item_spans, items, strict=True)
    ]
    embeds = insert_soft_ids(embedding(input_ids), spans, soft)
    targets = [item_tokens[target] + [eos] for _, _, target in batch]
    labels = pad_labels(targets)
    return recommender_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels.to(device)).loss


def _sync_from_rank0(model: torch.nn.Module) -> None:
    """Every rank ran the same ID phase; rank 0's weights win so the ranks mint the same IDs."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        with torch.no_grad():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)


# --------------------------------------------------------------------------- the schedule


def train_alternating(
    config: TrainConfig,
    *,
    generator,
    recommender_model,
    recommender,
    tokenizer,
    split: SplitData,
    item_ids: Sequence[str],
    texts: Sequence[str],
    vocabulary_texts: Sequence[str],
    ids: IdState,
    user_ids: UserIds | None = None,
    validate: Callable[[torch.nn.Module], float] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    kept: Sequence[KeptId | None] | None = None,
) -> tuple[IdState, dict]:
    """Runs `phase_schedule`; returns the final IDs (what the bundle ships) and the history.

    `recommender` (an IdGenRecRecommender over `recommender_model`) gets the new trie after
    each re-mint, so validation decodes over the current IDs. `kept`: IDs that every re-mint
    keeps (training.stable_ids); only the other items' IDs change.
    """
    alt = config.alternate
    rank, _ = distributed_world()
    eos = tokenizer.eos_token_id
    max_history = config.data.max_history
    pairs = training_pairs(split, max_history, config.recommender.max_prefixes_per_user)
    source_length = config.generator.mint.max_source_length
    item_sources = {
        item: encode_text(tokenizer, text)[: source_length - 1] + [eos] for item, text in zip(item_ids, texts, strict=True)
    }
    templates = TRAIN_TEMPLATES[: max(1, config.recommender.num_train_templates)]
    history: dict = {"loss": [], "valid_ndcg@10": [], "best_epoch": 0, "examples": len(pairs), "phases": []}
    schedule = phase_schedule(alt, config.recommender.epochs)
    rec_index = id_index = 0
    for kind, epochs in schedule:
        if kind == "id":
            if user_ids is not None:
                user_ids.prepare([h for _, h, _ in pairs])
            losses = id_phase(
                generator, recommender_model, tokenizer, pairs, ids.item_tokens, item_sources,
                epochs=epochs, lr=alt.id_lr, batch_size=alt.id_batch_size, temperature=alt.soft_id_temperature,
                templates=templates, first_template_share=config.recommender.test_template_share,
                max_source_length=config.recommender.max_source_length, max_pairs=alt.id_phase_max_pairs,
                user_tokens=user_ids, seed=config.seed + 31 * (id_index + 1), grad_clip=config.recommender.grad_clip,
                length_grouped=config.recommender.length_grouped, progress=progress,
            )
            _sync_from_rank0(generator)
            previous = ids
            ids = mint_state(generator, tokenizer, item_ids, texts, vocabulary_texts, config.generator.mint, progress,
                             kept=kept)
            recommender.trie = build_trie(item_ids, ids.item_tokens, eos)
            if user_ids is not None:
                user_ids.refresh(ids.item_tokens)
            changed = sum(a.textual_id != b.textual_id for a, b in zip(previous.minted, ids.minted, strict=True))
            history["phases"].append(
                {"kind": "id", "epochs": epochs, "loss": losses, "changed_ids": changed, "id_stats": ids.stats.to_dict()}
            )
            if rank == 0:
                log(f"ID phase {id_index + 1}: loss {losses[-1] if losses else float('nan'):.4f}, "
                    f"{changed}/{len(item_ids)} IDs changed, mean {ids.stats.mean_words:.2f} words")
            id_index += 1
        else:
            if epochs > 0:
                if user_ids is not None:
                    user_ids.prepare([h for _, h, _ in pairs])
                phase = train_recommender(
                    recommender_model, tokenizer, split, ids.item_tokens,
                    dataclasses.replace(config.recommender, epochs=epochs),
                    max_history=max_history, seed=config.seed + 1009 * rec_index, validate=validate,
                    progress=progress, user_tokens=user_ids, log=log,
                )
                history["best_epoch"] = len(history["loss"]) + phase["best_epoch"]
                history["loss"] += phase["loss"]
                history["valid_ndcg@10"] += phase["valid_ndcg@10"]
                history["phases"].append({"kind": "rec", "epochs": epochs, **phase})
            rec_index += 1
    return ids, history
