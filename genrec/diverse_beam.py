"""Diverse beam search (Vijayakumar et al. 2016) for the ID generator, batched over items.

`transformers` 5 dropped group beam search from `generate`, so it lives here. Beams are split
into G groups of one beam; when group g picks its token at step t, every token's log-prob
is lowered by `penalty * (times groups 0..g-1 picked that token at step t)` (Hamming
diversity). One decoder pass per step serves all groups of all items; only the cheap
penalised argmax runs group by group.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .beam_search import pad_batch


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


@dataclass(frozen=True)
class Candidate:
    token_ids: list[int]  # generated tokens, without EOS
    log_prob: float  # un-penalised log-probability under the generator (EOS included)
    group: int


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
    ids, mask = pad_batch(input_ids, pad)
    ids, mask = ids.to(device), mask.to(device)
    encoder_hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    rows = items * num_groups  # row = item * G + group
    encoder_hidden = encoder_hidden.repeat_interleave(num_groups, dim=0)
    mask = mask.repeat_interleave(num_groups, dim=0)
    vocab = model.config.vocab_size

    allowed_mask = None
    if allowed_tokens is not None:
        allowed_mask = torch.zeros((items, vocab), dtype=torch.bool)
        for i, tokens in enumerate(allowed_tokens):
            allowed_mask[i, [t for t in tokens if 0 <= t < vocab]] = True
        allowed_mask[:, eos] = True
        allowed_mask[:, pad] = False
        allowed_mask = allowed_mask.repeat_interleave(num_groups, dim=0)

    generated = torch.full((rows, max_length), pad, dtype=torch.long)
    used = torch.zeros((rows, vocab), dtype=torch.bool)
    finished = torch.zeros(rows, dtype=torch.bool)
    lengths = torch.zeros(rows, dtype=torch.long)
    log_prob_sums = torch.zeros(rows)
    last = torch.full((rows,), config.decoder_start_token_id, dtype=torch.long)
    partial_words: list[tuple[int, ...]] = [()] * rows
    past = None
    for step in range(max_length):
        out = model(
            encoder_outputs=(encoder_hidden,),
            attention_mask=mask,
            decoder_input_ids=last.to(device)[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        log_probs = torch.log_softmax(out.logits[:, -1, :vocab].float(), dim=-1).cpu()
        if word_constraints is not None:
            # Only the few tokens each row's word constraint allows are copied into an all
            # -inf matrix (no dense clone and mask of rows x vocab).
            row_index, token_index = [], []
            for row in range(rows):
                if bool(finished[row]):
                    continue
                room = max_length - step - 2  # tokens that may still follow this step's one
                tokens = word_constraints[row // num_groups].allowed(partial_words[row], eos, room)
                row_index.extend([row] * len(tokens))
                token_index.extend(tokens)
            scores = torch.full_like(log_probs, float("-inf"))
            if row_index:
                r, t = torch.tensor(row_index), torch.tensor(token_index)
                scores[r, t] = log_probs[r, t]
        else:
            scores = log_probs.clone()
        scores[:, pad] = float("-inf")
        if allowed_mask is not None:
            scores.masked_fill_(~allowed_mask, float("-inf"))
        if no_repeat_tokens and word_constraints is None:
            scores.masked_fill_(used, float("-inf"))
        if step < min_length:
            scores[:, eos] = float("-inf")
        if step == max_length - 1:
            scores.fill_(float("-inf"))
            scores[:, eos] = 0.0
        # A beam with nothing left to say must end (with word constraints only at a word
        # boundary: `room` keeps every word finishable before max_length).
        stuck = scores.amax(dim=1) == float("-inf")
        scores[stuck, eos] = 0.0
        scores = scores.view(items, num_groups, vocab)
        chosen = torch.empty((items, num_groups), dtype=torch.long)
        picked = torch.zeros((items, vocab))
        for group in range(num_groups):
            penalised = scores[:, group] - diversity_penalty * picked
            token = penalised.argmax(dim=1)
            chosen[:, group] = token
            alive = ~finished.view(items, num_groups)[:, group]
            picked[torch.arange(items)[alive], token[alive]] += 1.0
        token = chosen.view(rows)
        token = torch.where(finished, torch.full_like(token, pad), token)
        gained = log_probs.gather(1, token[:, None]).squeeze(1)
        log_prob_sums += torch.where(finished, torch.zeros_like(gained), gained)
        generated[:, step] = token
        live = ~finished
        if word_constraints is not None:
            for row in torch.nonzero(live & (token != eos)).flatten().tolist():
                constraint = word_constraints[row // num_groups]
                partial_words[row] = constraint.advance(partial_words[row], int(token[row]))
        used[live, token[live]] = True
        lengths += (live & (token != eos)).long()
        finished |= token == eos
        last = token
        if bool(finished.all()):
            break
    results: list[list[Candidate]] = []
    for item in range(items):
        candidates = []
        for group in range(num_groups):
            row = item * num_groups + group
            tokens = generated[row, : int(lengths[row])].tolist()
            candidates.append(Candidate(token_ids=tokens, log_prob=float(log_prob_sums[row]), group=group))
        candidates.sort(key=lambda c: (-c.log_prob, c.group))
        results.append(candidates)
    return results
