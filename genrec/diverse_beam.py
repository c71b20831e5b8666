"""Diverse beam search (Vijayakumar et al. 2016) for the ID generator, batched over items.

`transformers` 5 dropped group beam search from `generate`, so it lives here. Beams are split
into G groups of one beam; when group g picks its token at step t, every token's log-prob
is lowered by `penalty * (times groups 0..g-1 picked that token at step t)` (Hamming
diversity). One decoder pass per step serves all groups of all items; only the cheap
penalised argmax runs group by group.

Batching must not cost more per item than decoding items one at a time, so: step 0 runs one
decoder row per item (all groups start equal) and the cross-attention cache is repeated per
group afterwards; a row that emitted EOS leaves the batch (cache included); with word
constraints, each row's allowed tokens come from a small per-item automaton as a padded
(rows, W) gather, so no (rows x vocab) matrix is built beyond the log-softmax itself.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .beam_search import first_decoder_step
from .tensors import pad_batch

_ALWAYS = -(2**40)  # `need` of EOS: allowed whatever the room
_FALLBACK = -1.0e30  # score of the fallback EOS column: below any real log-prob, above -inf


@dataclass(frozen=True)
class WordAutomaton:
    """A word constraint as arrays: state s (a word prefix; state 0 = between words) allows
    tokens[s, :width[s]] (sorted), each leading to state next[s, j] and needing need[s, j]
    more tokens to finish its word (EOS: `_ALWAYS`)."""

    tokens: np.ndarray  # (S, W) int64
    next: np.ndarray  # (S, W) int64
    need: np.ndarray  # (S, W) int64
    width: np.ndarray  # (S,) int64


class WordConstraint:
    """The words one item's ID may be made of, as token sequences: an ID is a sequence of
    whole words of the item's metadata (never a half word glued to another)."""

    def __init__(self, words: Sequence[Sequence[int]]):
        self.continuations: dict[tuple[int, ...], set[int]] = {}
        self.complete: set[tuple[int, ...]] = set()
        self.starts: set[int] = set()
        self.need: dict[tuple[int, ...], int] = {}  # word prefix -> fewest tokens that complete a word
        for word in words:
            word = tuple(int(t) for t in word)
            if not word:
                continue
            self.starts.add(word[0])
            for i in range(1, len(word)):
                self.continuations.setdefault(word[:i], set()).add(word[i])
            for i in range(1, len(word) + 1):
                self.need[word[:i]] = min(self.need.get(word[:i], len(word) - i), len(word) - i)
            self.complete.add(word)
        self._automata: dict[int, WordAutomaton] = {}

    def allowed(self, partial: tuple[int, ...], eos: int, room: int | None = None) -> set[int]:
        """Tokens that may follow `partial` (the current word so far). `room`: how many more
        tokens may follow the chosen one before EOS is forced; a token that starts or continues
        a word which cannot be finished within it is not allowed (no half word at the end)."""
        allowed = set(self.continuations.get(partial, ()))
        if not partial or partial in self.complete:
            allowed |= self.starts
            allowed.add(eos)
        if room is not None:
            allowed = {t for t in allowed if t == eos or self.need[self.advance(partial, t)] <= room}
        return allowed

    def advance(self, partial: tuple[int, ...], token: int) -> tuple[int, ...]:
        if token in self.continuations.get(partial, ()):
            return partial + (token,)
        return (token,)

    def automaton(self, eos: int) -> WordAutomaton:
        """`allowed` and `advance` tabulated over every word prefix (built once per EOS id, so
        the minting loop's retries reuse it)."""
        automaton = self._automata.get(eos)
        if automaton is None:
            automaton = self._automata[eos] = self._tabulate(eos)
        return automaton

    def _tabulate(self, eos: int) -> WordAutomaton:
        states = [(), *sorted(self.need)]
        index = {state: i for i, state in enumerate(states)}
        rows = []
        for state in states:
            row = []
            for token in sorted(self.allowed(state, eos)):
                if token == eos:
                    row.append((token, 0, _ALWAYS))
                else:
                    following = self.advance(state, token)
                    row.append((token, index[following], self.need[following]))
            rows.append(row)
        width = max(len(row) for row in rows)
        table = np.zeros((len(states), width, 3), dtype=np.int64)
        table[:, :, 2] = -_ALWAYS  # padding: never allowed
        for s, row in enumerate(rows):
            if row:
                table[s, : len(row)] = row
        return WordAutomaton(
            table[:, :, 0], table[:, :, 1], table[:, :, 2], np.array([len(r) for r in rows], dtype=np.int64)
        )


@dataclass(frozen=True)
class Candidate:
    token_ids: list[int]  # generated tokens, without EOS
    log_prob: float  # un-penalised log-probability under the generator (EOS included)
    group: int


class _WordTables:
    """The automata of a batch's items stacked into one state space (item i's states are
    offset by `first[i]`), as tensors for a per-step gather."""

    def __init__(self, constraints: Sequence[WordConstraint], eos: int, pad: int):
        automata = [c.automaton(eos) for c in constraints]
        width = max(a.tokens.shape[1] for a in automata)
        sizes = np.array([a.tokens.shape[0] for a in automata], dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        tokens = np.full((int(sizes.sum()), width), pad, dtype=np.int64)
        nxt = np.zeros_like(tokens)
        need = np.full_like(tokens, -_ALWAYS)
        for a, offset, size in zip(automata, first.tolist(), sizes.tolist(), strict=True):
            w = a.tokens.shape[1]
            tokens[offset : offset + size, :w] = a.tokens
            nxt[offset : offset + size, :w] = a.next + offset
            need[offset : offset + size, :w] = a.need
        need[tokens == pad] = -_ALWAYS  # the pad token is never generated
        self.tokens = torch.from_numpy(tokens)
        self.next = torch.from_numpy(nxt)
        self.need = torch.from_numpy(need)
        self.first = torch.from_numpy(first)

    def to(self, device: torch.device) -> "_WordTables":
        """These tables on `device` (the search keeps its bookkeeping where the model is)."""
        for name in ("tokens", "next", "need", "first"):
            setattr(self, name, getattr(self, name).to(device))
        return self


@torch.inference_mode()
def diverse_beam_search(
    model,
    input_ids: Sequence[Sequence[int]],
    num_groups: int,
    diversity_penalty: float,
    min_length: int = 1,
    max_length: int = 11,
    allowed_tokens: Sequence[Sequence[int]] | None = None,
    no_repeat_tokens: bool = True,
    word_constraints: Sequence[WordConstraint] | None = None,
) -> list[list[Candidate]]:
    """G candidates per input, best (most probable) first.

    `min_length`: EOS is forbidden before this many tokens; `max_length`: EOS is forced at
    this length. `allowed_tokens[i]`: the only tokens item i's ID may use (EOS is always
    allowed). `no_repeat_tokens`: a beam never repeats one of its own tokens (without
    word constraints; with them, repeated words are dropped by the minting loop).
    `word_constraints[i]`: item i's ID is a sequence of whole words from that list.
    """
    config = model.config
    eos, pad = config.eos_token_id, config.pad_token_id
    items = len(input_ids)
    if items == 0:
        return []
    if num_groups < 1 or min_length < 1 or max_length <= min_length:
        raise ValueError("need num_groups >= 1 and 1 <= min_length < max_length")
    device = next(model.parameters()).device
    vocab = config.vocab_size
    G = num_groups
    rows = items * G  # row = item * G + group
    words = _WordTables(word_constraints, eos, pad).to(device) if word_constraints is not None else None
    rules = _Rules(
        eos,
        pad,
        min_length,
        max_length,
        G,
        words,
        _allowed_mask(allowed_tokens, items, vocab, eos, pad).to(device) if allowed_tokens is not None else None,
    )

    ids, mask = pad_batch(input_ids, pad, device=device)
    encoder_hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    # Step 0: one row per item, then the cache (cross-attention K/V included) per group.
    out = first_decoder_step(model, encoder_hidden, mask)
    past = out.cache
    past.batch_repeat_interleave(G)
    encoder_hidden = encoder_hidden.repeat_interleave(G, dim=0)
    mask = mask.repeat_interleave(G, dim=0)
    log_probs = _log_probs(out.logits, vocab)
    # The search's bookkeeping lives on the model's device: no step copies its scores to the host.
    source = torch.arange(rows, device=device) // G  # log_probs row of each batch row (step 0: its item's)

    generated = torch.full((rows, max_length), pad, dtype=torch.long, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    log_prob_sums = torch.zeros(rows, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    batch = torch.arange(rows, device=device)  # the rows the decoder computes (alive ones and a few ended ones)
    state = words.first.repeat_interleave(G) if words is not None else None
    used = torch.zeros((rows, vocab), dtype=torch.bool, device=device) if no_repeat_tokens and words is None else None
    for step in range(max_length):
        if step == max_length - 1:
            token = torch.where(alive, eos, -1)
            slot = None
        else:
            tokens, scores = _candidate_scores(rules, step, log_probs, source, batch, alive, state, used)
            tokens, scores = _full_layout(tokens, scores, batch, alive, rows, eos)
            slot, token = _pick(tokens, scores, G, diversity_penalty)
        in_batch = alive[batch]
        gained = log_probs[source, token[batch].clamp(min=0)]
        log_prob_sums[batch] += torch.where(in_batch, gained, torch.zeros_like(gained))
        generated[:, step] = torch.where(alive, token, pad)
        going = alive & (token != eos)
        lengths += going.long()
        if used is not None:
            decoding = torch.nonzero(alive).flatten()
            used[decoding, token[decoding]] = True
        if state is not None and slot is not None:
            state = torch.where(going, words.next[state, slot.clamp(max=words.tokens.shape[1] - 1)], state)
        alive = going
        if not bool(alive.any()):
            break
        ended = int((~alive[batch]).sum())
        if 4 * ended >= batch.numel():  # worth a copy of the cache: a quarter of the batch ended
            keep = torch.nonzero(alive[batch]).flatten()
            past.reorder_cache(keep)
            encoder_hidden, mask = encoder_hidden[keep], mask[keep]
            batch = batch[keep]
        out = model(
            encoder_outputs=(encoder_hidden,),
            attention_mask=mask,
            decoder_input_ids=token[batch].clamp(min=0)[:, None],
            cache=past,
            use_cache=True,
        )
        past = out.cache
        log_probs = _log_probs(out.logits, vocab)
        source = torch.arange(batch.numel(), device=device)
    return _candidates(generated, lengths, log_prob_sums, items, G)


def _log_probs(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.log_softmax(logits[:, -1, :vocab].float(), dim=-1)


def _allowed_mask(allowed_tokens, items: int, vocab: int, eos: int, pad: int) -> torch.Tensor:
    """(items, vocab) bool: the tokens each item's ID may use (EOS always, pad never)."""
    allowed = torch.zeros((items, vocab), dtype=torch.bool)
    for i, tokens in enumerate(allowed_tokens):
        allowed[i, [t for t in tokens if 0 <= t < vocab]] = True
    allowed[:, eos] = True
    allowed[:, pad] = False
    return allowed


@dataclass(frozen=True)
class _Rules:
    """What a search allows, fixed for its whole run."""

    eos: int
    pad: int
    min_length: int
    max_length: int
    groups: int
    words: _WordTables | None
    allowed_mask: torch.Tensor | None  # (items, vocab) bool


def _candidate_scores(rules: _Rules, step: int, log_probs, source, batch, alive, state, used):
    """(tokens, scores) of the batch rows' candidates this step (batch row i reads log_probs
    row source[i]), -inf where not allowed (and everywhere for rows that ended).

    With word constraints: the (rows, W) tokens their automaton state allows, sorted, so ties
    break towards the smaller token as a dense argmax would. Without: tokens is None and the
    candidates are the whole vocabulary."""
    blocked = ~alive[batch][:, None]
    words, allowed_mask, eos = rules.words, rules.allowed_mask, rules.eos
    if words is not None:
        room = rules.max_length - step - 2  # tokens that may still follow this step's one
        tokens = words.tokens[state[batch]]
        blocked = blocked | (words.need[state[batch]] > room)
        if step < rules.min_length:
            blocked |= tokens == eos
        if allowed_mask is not None:
            blocked |= ~allowed_mask[batch // rules.groups].gather(1, tokens)
        return tokens, log_probs[source[:, None], tokens].masked_fill_(blocked, float("-inf"))
    scores = log_probs[source].masked_fill_(blocked, float("-inf"))
    scores[:, rules.pad] = float("-inf")
    if allowed_mask is not None:
        scores.masked_fill_(~allowed_mask[batch // rules.groups], float("-inf"))
    if used is not None:
        scores.masked_fill_(used[batch], float("-inf"))
    if step < rules.min_length:
        scores[:, eos] = float("-inf")
    return None, scores


def _full_layout(tokens, scores, batch, alive, rows: int, eos: int):
    """Candidates of every row (row = item * G + group), plus a last fallback column: EOS with
    a score below any real one (picked only by a row with nothing allowed, which must end) or,
    for rows that ended before, token -1 (counted as nobody's pick)."""
    width = scores.shape[1]
    full_scores = scores.new_full((rows, width + 1), float("-inf"))
    full_scores[:, width] = _FALLBACK
    full_scores[batch, :width] = scores
    fallback = torch.where(alive, eos, -1)
    if tokens is None:
        return fallback, full_scores
    full_tokens = torch.full((rows, width + 1), -1, dtype=torch.long, device=scores.device)
    full_tokens[batch, :width] = tokens
    full_tokens[:, width] = fallback
    return full_tokens, full_scores


def _pick(tokens, scores, G: int, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's chosen (column of `scores`, token), group by group: group g's scores are
    lowered by `penalty` per earlier group of its item that picked the same token this step.
    `tokens` (rows, W+1), or for dense scores over the vocabulary the fallback tokens (rows,)."""
    rows, width = scores.shape
    items = rows // G
    dense = tokens.dim() == 1
    scores3 = scores.view(items, G, width)
    tokens3 = tokens.view(items, G, -1)
    device = scores.device
    picked = torch.full((items, G), -1, dtype=torch.long, device=device)  # token each group picked (-1: none)
    counts = torch.zeros((items, width), device=device) if dense and penalty != 0 else None
    slot = torch.empty((items, G), dtype=torch.long, device=device)
    for g in range(G):
        penalised = scores3[:, g]
        if g > 0 and penalty != 0:
            if dense:
                times = counts
            else:
                times = (tokens3[:, g, :, None] == picked[:, None, :g]).sum(dim=2)
            penalised = penalised - penalty * times.float()
        chosen = penalised.argmax(dim=1)
        slot[:, g] = chosen
        if dense:
            token = torch.where(chosen == width - 1, tokens3[:, g, 0], chosen)
        else:
            token = tokens3[:, g].gather(1, chosen[:, None]).squeeze(1)
        picked[:, g] = token
        if counts is not None:
            counts.scatter_add_(1, torch.where(token >= 0, token, width - 1)[:, None], torch.ones(items, 1, device=device))
    return slot.view(rows), picked.view(rows)


def _candidates(generated, lengths, log_prob_sums, items: int, G: int) -> list[list[Candidate]]:
    tokens, lengths, sums = generated.tolist(), lengths.tolist(), log_prob_sums.tolist()
    results: list[list[Candidate]] = []
    for item in range(items):
        candidates = [
            Candidate(token_ids=tokens[row][: lengths[row]], log_prob=sums[row], group=row - item * G)
            for row in range(item * G, (item + 1) * G)
        ]
        candidates.sort(key=lambda c: (-c.log_prob, c.group))
        results.append(candidates)
    return results
