"""Trie-constrained beam search over a T5 recommender: the fast path and the reference path.

Both follow the semantics of `transformers`' beam search with `length_penalty=0.0`
(score = sum of the ID's token log-probs, EOS included): at each step the 2*beam best
continuations are taken; those ending in EOS among the first `beam` ranks become finished
hypotheses, the best `beam` others keep running; a request stops once no running beam can
beat its worst finished one. The fast path does this for all beams of all requests in one
batch, one encoder pass, a KV-cached decoder and a few tensor operations per step for the
trie mask; the reference path calls `generate(prefix_allowed_tokens_fn=...)` and is kept
for tests and benchmarks.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .trie import TextualIdTrie, TrieTables

_NEG = -1.0e9
_VALID = -1.0e8  # finished scores at or below this are padding hypotheses, never results


@dataclass(frozen=True)
class ScoredItem:
    item_index: int
    score: float


def pad_batch(input_ids: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention_mask) tensors."""
    width = max(len(x) for x in input_ids)
    ids = torch.full((len(input_ids), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, seq in enumerate(input_ids):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _pruned_node_keys(tables: TrieTables, exclude: Sequence[Sequence[int]] | None) -> torch.Tensor | None:
    """Sorted keys `request * num_nodes + node` of the trie nodes each request must not enter."""
    if not exclude or not any(exclude):
        return None
    keys = [
        request * tables.num_nodes + node
        for request, items in enumerate(exclude)
        if items
        for node in tables.dead_nodes(items)
    ]
    return torch.tensor(sorted(keys), dtype=torch.long)


@torch.inference_mode()
def constrained_beam_search(
    model,
    input_ids: Sequence[Sequence[int]],
    tables: TrieTables,
    num_beams: int,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
) -> list[list[ScoredItem]]:
    """Top-k items per prompt. `exclude[r]`: item indices request r must not return."""
    if num_beams < k:
        raise ValueError(f"num_beams ({num_beams}) must be >= k ({k})")
    config = model.config
    eos, pad = config.eos_token_id, config.pad_token_id
    requests = len(input_ids)
    if requests == 0:
        return []
    device = next(model.parameters()).device
    pruned = _pruned_node_keys(tables, exclude)

    ids, mask = pad_batch(input_ids, pad)
    ids, mask = ids.to(device), mask.to(device)
    encoder_hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    beams = requests * num_beams
    encoder_hidden = encoder_hidden.repeat_interleave(num_beams, dim=0)
    mask = mask.repeat_interleave(num_beams, dim=0)

    running_scores = torch.full((requests, num_beams), _NEG)
    running_scores[:, 0] = 0.0
    nodes = torch.zeros(beams, dtype=torch.long)
    last_tokens = torch.full((beams,), config.decoder_start_token_id, dtype=torch.long)
    finished_scores = torch.full((requests, num_beams), _NEG)
    finished_items = torch.full((requests, num_beams), -1, dtype=torch.long)
    unsatisfied = torch.ones(requests, dtype=torch.bool)
    request_of_beam = torch.arange(beams) // num_beams
    past = None
    vocab = None
    for _step in range(tables.max_depth):
        out = model(
            encoder_outputs=(encoder_hidden,),
            attention_mask=mask,
            decoder_input_ids=last_tokens.to(device)[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()  # (beams, V)
        vocab = log_probs.shape[1]
        rows, tokens, children = tables.expand(nodes)
        if pruned is not None and rows.numel():
            keep = ~torch.isin(request_of_beam[rows] * tables.num_nodes + children, pruned)
            rows, tokens, children = rows[keep], tokens[keep], children[keep]
        masked = torch.full((beams, vocab), float("-inf"))
        masked[rows, tokens] = log_probs[rows, tokens]
        child_of = torch.full((beams, vocab), -1, dtype=torch.long)
        child_of[rows, tokens] = children
        candidates = (masked + running_scores.view(beams, 1)).view(requests, num_beams * vocab)
        top_scores, top_index = torch.topk(candidates, 2 * num_beams, dim=1)  # (R, 2B)
        top_beam = top_index // vocab
        top_token = top_index % vocab
        global_beam = top_beam + torch.arange(requests)[:, None] * num_beams
        top_child = child_of[global_beam, top_token]
        is_eos = (top_token == eos) & torch.isfinite(top_scores)

        # Finished: EOS among the first `num_beams` ranks, while the request can still improve.
        eligible = is_eos.clone()
        eligible[:, num_beams:] = False
        eligible &= unsatisfied[:, None]
        new_scores = torch.where(eligible, top_scores, torch.full_like(top_scores, 2 * _NEG))
        new_items = torch.where(eligible, tables.leaf_item[top_child.clamp(min=0)], torch.full_like(top_child, -1))
        merged_scores = torch.cat([finished_scores, new_scores], dim=1)
        merged_items = torch.cat([finished_items, new_items], dim=1)
        best = torch.topk(merged_scores, num_beams, dim=1).indices
        finished_scores = merged_scores.gather(1, best)
        finished_items = merged_items.gather(1, best)

        # Running: the best `num_beams` continuations that did not end.
        running_candidates = top_scores + is_eos.float() * _NEG
        keep = torch.topk(running_candidates, num_beams, dim=1).indices
        running_scores = running_candidates.gather(1, keep)
        chosen_beam = global_beam.gather(1, keep).reshape(-1)
        chosen_token = top_token.gather(1, keep).reshape(-1)
        nodes = top_child.gather(1, keep).reshape(-1)
        nodes = torch.where(torch.isfinite(running_scores.reshape(-1)), nodes, torch.full_like(nodes, -1))
        last_tokens = chosen_token

        worst_finished = torch.where(finished_scores > _VALID, finished_scores, torch.full_like(finished_scores, 2 * _NEG))
        worst_finished = worst_finished.min(dim=1).values
        unsatisfied &= running_scores[:, 0] > worst_finished
        if not bool(unsatisfied.any()):
            break
        past.reorder_cache(chosen_beam.to(device))
    return _collect(finished_scores, finished_items, k)


def _collect(scores: torch.Tensor, items: torch.Tensor, k: int) -> list[list[ScoredItem]]:
    results = []
    for row_scores, row_items in zip(scores.tolist(), items.tolist(), strict=True):
        ranked = sorted(
            ((s, i) for s, i in zip(row_scores, row_items, strict=True) if s > _VALID and i >= 0),
            key=lambda pair: -pair[0],
        )
        results.append([ScoredItem(item_index=i, score=s) for s, i in ranked[:k]])
    return results


@torch.inference_mode()
def reference_generate_topk(
    model,
    input_ids: Sequence[Sequence[int]],
    trie: TextualIdTrie,
    num_beams: int,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
) -> list[list[ScoredItem]]:
    """The paper code's way: `generate` with a Python `prefix_allowed_tokens_fn` per beam and step."""
    config = model.config
    eos, pad = config.eos_token_id, config.pad_token_id
    request_tries = [trie] * len(input_ids)
    for request, items in enumerate(exclude or []):
        if items:  # a trie without the excluded IDs: no prefix can lead only to them
            banned = set(int(i) for i in items)
            kept = [i for i in range(len(trie)) if i not in banned]
            request_tries[request] = TextualIdTrie(
                [str(i) for i in kept], [trie.sequence(i) for i in kept], eos
            )

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        tokens = request_tries[batch_id].allowed_tokens(sent.tolist()[1:])
        return tokens or [eos]  # a dead beam (score -inf) still needs one token

    device = next(model.parameters()).device
    ids, mask = pad_batch(input_ids, pad)
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        num_beams=num_beams,
        num_return_sequences=num_beams,
        max_length=trie.tables().max_depth + 1,
        length_penalty=0.0,
        early_stopping=False,
        do_sample=False,
        prefix_allowed_tokens_fn=allowed,
        output_scores=True,
        return_dict_in_generate=True,
    )
    sequences = out.sequences.view(len(input_ids), num_beams, -1).cpu().tolist()
    scores = out.sequences_scores.view(len(input_ids), num_beams).cpu().tolist()
    results = []
    for row_sequences, row_scores in zip(sequences, scores, strict=True):
        found = []
        for seq, score in zip(row_sequences, row_scores, strict=True):
            tokens = seq[1:]
            if eos not in tokens or score <= _VALID:
                continue
            item = trie.find(tokens[: tokens.index(eos) + 1])
            if item is not None and exclude and item in set(exclude[len(results)]):
                item = None
            if item is not None:
                found.append(ScoredItem(item_index=item, score=float(score)))
        found.sort(key=lambda s: -s.score)
        results.append(found[:k])
    return results
