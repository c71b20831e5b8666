"""genrec.t5_decoding.BeamDecoder against `transformers`' own T5 forward: the same logits at
every step (first step, beams expanded, beams reordered within their request, requests
leaving the batch), for relu and gated-gelu feed-forwards, tied and untied output heads, and
padded sources."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from genrec.t5_decoding import BeamDecoder, start_tokens

VOCAB = 300


def make_model(feed_forward: str, tied: bool, seed: int) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=VOCAB, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=3, num_heads=4,
        dropout_rate=0.0, feed_forward_proj=feed_forward, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, tie_word_embeddings=tied,
    )
    return T5ForConditionalGeneration(config).eval()


def reference_logits(model, hidden, mask, decoded: torch.Tensor) -> torch.Tensor:
    """Next-token logits of each row's whole decoded sequence, without a cache."""
    return model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=decoded).logits[:, -1]


@pytest.mark.parametrize("feed_forward,tied", [("relu", True), ("gated-gelu", False)])
@torch.inference_mode()
def test_beam_decoder_matches_the_transformers_forward(feed_forward, tied):
    model = make_model(feed_forward, tied, seed=3)
    requests, beams = 3, 4
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (requests, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded sources
    mask[2, 3:] = 0
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    decoder = BeamDecoder(model, hidden, mask)

    first = decoder.step(start_tokens(model, requests, "cpu"))
    decoded = torch.zeros((requests, 1), dtype=torch.long)
    torch.testing.assert_close(first, reference_logits(model, hidden, mask, decoded), atol=1e-4, rtol=0)

    decoder.expand(beams)
    decoded = decoded.repeat_interleave(beams, dim=0)
    hidden_rows, mask_rows = hidden.repeat_interleave(beams, dim=0), mask.repeat_interleave(beams, dim=0)
    for step in range(5):
        if step:  # beams move within their request
            rows = torch.cat([torch.randperm(beams, generator=generator) + r * beams for r in range(requests)])
            decoder.select(rows)
            decoded = decoded[rows]
        tokens = torch.randint(2, VOCAB, (requests * beams,), generator=generator)
        decoded = torch.cat([decoded, tokens[:, None]], dim=1)
        torch.testing.assert_close(decoder.step(tokens), reference_logits(model, hidden_rows, mask_rows, decoded),
                                   atol=1e-4, rtol=0)

    # Request 1 finishes: requests 2 and 0 go on (in that order), with their beams reordered.
    keep = torch.tensor([2, 0])
    rows = torch.cat([torch.tensor([3, 2, 1, 0]) + 2 * beams, torch.arange(beams)])
    decoder.select(rows, keep)
    decoded = decoded[rows]
    tokens = torch.randint(2, VOCAB, (2 * beams,), generator=generator)
    decoded = torch.cat([decoded, tokens[:, None]], dim=1)
    expected = reference_logits(model, hidden[keep].repeat_interleave(beams, 0), mask[keep].repeat_interleave(beams, 0),
                                decoded)
    torch.testing.assert_close(decoder.step(tokens), expected, atol=1e-4, rtol=0)


@torch.inference_mode()
def test_beam_decoder_refuses_rows_that_do_not_fit():
    model = make_model("relu", True, seed=0)
    ids = torch.randint(2, VOCAB, (2, 5))
    hidden = model.get_encoder()(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    decoder = BeamDecoder(model, hidden, torch.ones_like(ids))
    with pytest.raises(ValueError, match="tokens for 2 requests"):
        decoder.step(torch.zeros(3, dtype=torch.long))
    decoder.step(start_tokens(model, 2, "cpu"))
    decoder.expand(3)
    with pytest.raises(ValueError, match="expand"):
        decoder.expand(3)
    with pytest.raises(ValueError, match="rows for 1 requests"):
        decoder.select(torch.arange(6), torch.tensor([0]))


@torch.inference_mode()
def test_token_log_probs_are_the_log_softmax_entries_over_several_chunks():
    model = make_model("relu", True, seed=1)
    requests, beams = 5, 14  # 70 rows: more than two head chunks
    ids = torch.randint(2, VOCAB, (requests, 6))
    mask = torch.ones_like(ids)
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    decoder = BeamDecoder(model, hidden, mask)
    decoder.step(start_tokens(model, requests, "cpu"))
    decoder.expand(beams)
    state = decoder.step_hidden(torch.randint(2, VOCAB, (requests * beams,)))
    tokens = torch.randint(0, VOCAB, (requests * beams, 7))
    expected = torch.log_softmax(decoder.lm_head(state), dim=-1).gather(1, tokens)
    torch.testing.assert_close(decoder.token_log_probs(state, tokens), expected, atol=1e-5, rtol=0)
