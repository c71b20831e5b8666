"""Soft IDs of the ID-generator phase (docs/methods.md, "Alternate training"), as plain tensor operations.

The generator decodes an item's ID greedily with gradient; at each position t its
distribution p_t = softmax(logits_t / temperature) (real probabilities, not the log-probs the
reference code uses) times the recommender's input embedding matrix E gives the soft
embedding e_t = p_t @ E, which replaces the hard ID's embedding at that item's span of the
prompt. A one-hot p_t gives exactly the hard embedding.
"""

from collections.abc import Sequence

import torch
from transformers.modeling_outputs import BaseModelOutput


def soft_id_probabilities(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Probabilities over the vocabulary, (..., V) -> (..., V)."""
    if temperature <= 0:
        raise ValueError(f"soft ID temperature must be > 0, got {temperature}")
    return torch.softmax(logits / temperature, dim=-1)


def soft_id_embeddings(probs: torch.Tensor, embedding_matrix: torch.Tensor) -> torch.Tensor:
    """(..., V) probabilities @ (V, d) embedding matrix -> (..., d) soft embeddings."""
    if probs.shape[-1] != embedding_matrix.shape[0]:
        raise ValueError(
            f"the generator's vocabulary ({probs.shape[-1]}) differs from the recommender's "
            f"({embedding_matrix.shape[0]}): both models must share one vocabulary"
        )
    return probs.to(embedding_matrix.dtype) @ embedding_matrix


def insert_soft_ids(
    prompt_embeds: torch.Tensor, spans: Sequence[tuple[int, int, int, int]], soft_embeds: torch.Tensor
) -> torch.Tensor:
    """`prompt_embeds` (B, L, d) with soft IDs in place of the hard ones (out of place).

    `spans`: (row, start, end, k) puts positions 0..end-start-1 of `soft_embeds[k]` (N, T, d)
    at `prompt_embeds[row, start:end]`. Every other position (template text, separators,
    user ID, padding) keeps its hard embedding.
    """
    if not spans:
        return prompt_embeds
    rows: list[int] = []
    positions: list[int] = []
    sources: list[int] = []
    steps: list[int] = []
    for row, start, end, k in spans:
        length = end - start
        if length > soft_embeds.shape[1]:
            raise ValueError(f"span {start}:{end} is longer than the {soft_embeds.shape[1]} decoded positions")
        rows += [row] * length
        positions += range(start, end)
        sources += [k] * length
        steps += range(length)
    device = prompt_embeds.device

    def index(values: list[int]) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.long, device=device)

    values = soft_embeds[index(sources), index(steps)].to(prompt_embeds.dtype)
    return prompt_embeds.index_put((index(rows), index(positions)), values)


def greedy_soft_decode(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int, temperature: float = 1.0
) -> torch.Tensor:
    """Teacher-free greedy decoding of a T5 with gradient: (N, steps, V) probabilities.

    Each step feeds back the argmax tokens chosen so far (no EOS stop: the caller takes the
    first len(hard ID) positions of each row, so a soft ID covers its hard ID's span).
    """
    encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
    if not isinstance(encoder_outputs, BaseModelOutput):  # pragma: no cover - return_dict=False models
        encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
    start = model.config.decoder_start_token_id
    decoder_ids = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    probs = []
    for _ in range(steps):
        logits = model(
            encoder_outputs=encoder_outputs,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_ids,
            use_cache=False,
        ).logits[:, -1]
        p = soft_id_probabilities(logits, temperature)
        probs.append(p)
        decoder_ids = torch.cat([decoder_ids, p.argmax(dim=-1, keepdim=True).detach()], dim=1)
    return torch.stack(probs, dim=1)
