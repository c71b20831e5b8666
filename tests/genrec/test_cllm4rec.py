"""CLLM4Rec's model: atomic user/item tokens, the two LMs and their stop-gradient, main-text-only
loss, the masked fine-tuning target, inference without history items, save/load."""

import random

import pytest
import torch
import torch.nn.functional as F

from genrec.cllm4rec.model import (
    PROMPT_TEXTS,
    Cllm4RecModel,
    Cllm4RecRecommender,
    PromptPieces,
    collab_batch,
    content_batch,
    doc_loss,
    extend_tokenizer,
    finetune_batch,
    load_cllm4rec,
    mask_history,
    multinomial_loss,
    recommend_prompt,
)
from genrec.modeling import ModelConfig, build_t5
from genrec.tensors import IGNORE_INDEX
from genrec.textual_ids import claim_in, title_textual_id
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, dropout_rate=0.0)
USERS = ["1", "2", "A9xQ", "17"]
ITEMS = [str(i) for i in range(1, 13)]
TEXTS = {i: f"title: The film {i}; genres: drama comedy night" for i in ITEMS}


@pytest.fixture
def setup():
    tokenizer = train_tokenizer(list(TEXTS.values()) + list(PROMPT_TEXTS), 200)
    backbone = build_t5(TINY, tokenizer, seed=0)
    vocab = extend_tokenizer(tokenizer, USERS, ITEMS)
    torch.manual_seed(0)
    model = Cllm4RecModel(backbone, vocab, USERS, ITEMS)
    return tokenizer, model, PromptPieces.from_tokenizer(tokenizer)


def test_user_and_item_tokens_are_atomic_and_round_trip(setup):
    tokenizer, model, _ = setup
    for user in USERS:
        ids = tokenizer.encode(f"user_{user}", add_special_tokens=False)
        assert ids == [model.user_token_id(user)]
        assert tokenizer.decode(ids) == f"user_{user}"
    for item in ITEMS:
        ids = tokenizer.encode(f"item_{item}", add_special_tokens=False)
        assert ids == [model.item_token_id(item)]
        assert tokenizer.decode(ids) == f"item_{item}"
    ids = tokenizer.encode("user_17 has interacted with item_3 item_12", add_special_tokens=False)
    assert ids[0] == model.user_token_id("17") and ids[-2:] == [model.item_token_id("3"), model.item_token_id("12")]
    assert model.item_token_id("1") == model.vocab_size + len(USERS)
    # Each LM has its own tables, initialised N(0, 0.02).
    for table in model.embedding_tables():
        assert abs(float(table.weight.detach().std()) - 0.02) < 0.01
    assert model.tables["collab"]["item"].weight.data_ptr() != model.tables["content"]["item"].weight.data_ptr()


def test_embeddings_come_from_the_lm_tables(setup):
    _, model, _ = setup
    ids = torch.tensor([[3, model.user_token_id("2"), model.item_token_id("5")]])
    for lm in ("collab", "content"):
        emb = model.embed(ids, lm)
        assert torch.equal(emb[0, 0], model.backbone.get_input_embeddings().weight[3])
        assert torch.equal(emb[0, 1], model.tables[lm]["user"].weight[1])
        assert torch.equal(emb[0, 2], model.tables[lm]["item"].weight[4])


def _snapshot(model, lm):
    return {kind: model.tables[lm][kind].weight.detach().clone() for kind in ("user", "item")}


@pytest.mark.parametrize("lm, other", [("content", "collab"), ("collab", "content")])
def test_a_step_of_one_lm_leaves_the_other_lms_embeddings_unchanged(setup, lm, other):
    tokenizer, model, pieces = setup
    before_other, before_mine = _snapshot(model, other), _snapshot(model, lm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    if lm == "collab":
        batch = collab_batch(model, pieces, [("1", ["3", "5", "7"]), ("A9xQ", ["2", "3"])])
    else:
        batch = content_batch(model, pieces, [(i, tokenizer.encode(TEXTS[i], add_special_tokens=False)) for i in ("3", "5")])
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        loss, parts = doc_loss(model, batch, lm, reg_lambda=1.0)
        loss.backward()
        assert all(model.tables[other][kind].weight.grad is None for kind in ("user", "item"))  # stop-gradient
        optimizer.step()
    assert parts["reg"] > 0
    for kind in ("user", "item"):
        assert torch.equal(model.tables[other][kind].weight, before_other[kind])
    assert not torch.equal(model.tables[lm]["item"].weight, before_mine["item"])


def test_the_regularization_pulls_toward_the_other_lm(setup):
    _, model, pieces = setup
    batch = collab_batch(model, pieces, [("1", ["3", "5"])])
    _, low = doc_loss(model, batch, "collab", reg_lambda=1.0)
    with torch.no_grad():
        model.tables["content"]["item"].weight[2] += 1.0  # item "3" moves away in the content LM
    _, high = doc_loss(model, batch, "collab", reg_lambda=1.0)
    assert high["reg"] > low["reg"] + 0.1


def test_the_loss_is_on_the_main_text_only(setup):
    tokenizer, model, pieces = setup
    batch = collab_batch(model, pieces, [("2", ["4", "1", "9"]), ("17", ["6"])])
    # Labels: the item indices of the main text, nothing of the prompt, padding ignored.
    assert batch.labels.tolist() == [[3, 0, 8], [5, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.enc_ids[0, 0] == model.user_token_id("2")
    assert batch.dec_ids[0].tolist() == [model.decoder_start_id, model.item_token_id("4"), model.item_token_id("1")]
    hidden = model.decode_hidden(batch.enc_ids, batch.enc_mask, batch.dec_ids, batch.dec_mask, "collab")
    logits = model.item_logits(hidden, "collab")
    assert logits.shape[-1] == len(ITEMS)  # softmax over the items only
    manual = torch.stack([
        F.cross_entropy(logits[0, p], torch.tensor(t)) for p, t in enumerate([3, 0, 8])
    ] + [F.cross_entropy(logits[1, 0], torch.tensor(5))]).mean()
    loss, parts = doc_loss(model, batch, "collab", reg_lambda=0.0)
    assert float(parts["nll"]) == pytest.approx(float(manual.detach()), rel=1e-5)

    text = tokenizer.encode(TEXTS["3"], add_special_tokens=False)
    cbatch = content_batch(model, pieces, [("3", text)])
    assert cbatch.labels[0].tolist() == text + [tokenizer.eos_token_id]
    assert cbatch.enc_ids[0].tolist() == [model.item_token_id("3")] + pieces.content + [tokenizer.eos_token_id]
    hidden = model.decode_hidden(cbatch.enc_ids, cbatch.enc_mask, cbatch.dec_ids, cbatch.dec_mask, "content")
    assert model.vocab_logits(hidden).shape[-1] == model.vocab_size


def test_the_fine_tuning_target_is_exactly_the_masked_items(setup):
    _, model, pieces = setup
    rng = random.Random(3)
    history = ["1", "4", "6", "7", "9", "10", "11", "12", "2", "3"]
    kept, held = mask_history(history, 0.2, rng)
    assert len(held) == 2 and not set(kept) & set(held) and set(kept) | set(held) == set(history)
    assert kept == [i for i in history if i in kept]  # order kept
    batch = finetune_batch(model, pieces, [("A9xQ", kept, held), (None, ["5"], ["8"])], max_items=50)
    assert {ITEMS[j] for j in batch.targets[0].nonzero().flatten().tolist()} == set(held)
    assert batch.targets[1].nonzero().flatten().tolist() == [ITEMS.index("8")]
    prompt = batch.enc_ids[0].tolist()
    assert all(model.item_token_id(i) in prompt for i in kept)
    assert not any(model.item_token_id(i) in prompt for i in held)
    assert prompt.count(model.user_token_id("A9xQ")) == 2
    assert all(not (model.user_offset <= t < model.item_offset) for t in batch.enc_ids[1].tolist())
    log_probs = model.score_items(batch.enc_ids, batch.enc_mask)
    expected = -(log_probs[0, [ITEMS.index(i) for i in held]].sum() + log_probs[1, ITEMS.index("8")]) / 2
    assert float(multinomial_loss(log_probs, batch.targets).detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert mask_history(["5"], 0.2, rng) == (["5"], [])


def test_inference_never_returns_a_history_item(setup):
    tokenizer, model, _ = setup
    model.eval()
    recommender = Cllm4RecRecommender(model, tokenizer, max_history=5)
    histories = [["1", "2", "3"], ["12"], ["4", "5", "6", "7", "8", "9", "10"]]
    found = recommender.recommend(histories, 100, users=["1", None, "unknown-user"])
    for history, row in zip(histories, found, strict=True):
        ids = [r.item_id for r in row]
        assert not set(ids) & set(history)
        assert set(ids) == set(ITEMS) - set(history)  # the older history beyond the prompt too
        scores = [r.score for r in row]
        assert scores == sorted(scores, reverse=True) and all(s <= 0 for s in scores)
    # Batched or alone: the same answer.
    alone = recommender.recommend([histories[1]], 3, users=[None])[0]
    assert [r.item_id for r in alone] == [r.item_id for r in found[1][:3]]
    assert [r.score for r in alone] == pytest.approx([r.score for r in found[1][:3]], abs=1e-5)
    # Unknown history items are skipped in the prompt; an unknown user drops the user tokens.
    pieces = recommender.pieces
    assert recommend_prompt(model, pieces, "nobody", ["new-item", "3"], 5) == (
        pieces.collab + [model.item_token_id("3")] + pieces.comma + pieces.recommend + [pieces.eos]
    )


def test_save_and_load_round_trip(setup, tmp_path):
    tokenizer, model, _ = setup
    model.eval()
    model.save(tmp_path / "m")
    loaded = load_cllm4rec(tmp_path / "m")
    assert loaded.user_ids == USERS and loaded.item_ids == ITEMS and loaded.vocab_size == model.vocab_size
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    a = Cllm4RecRecommender(model, tokenizer).recommend([["1", "2"]], 5, users=["2"])
    b = Cllm4RecRecommender(loaded, tokenizer).recommend([["1", "2"]], 5, users=["2"])
    assert [r.item_id for r in a[0]] == [r.item_id for r in b[0]]


def test_title_textual_ids_are_unique(setup):
    tokenizer, _, _ = setup
    claim = claim_in(set())

    first = title_textual_id(tokenizer, "title: The Film 3; genres: drama", claim)
    second = title_textual_id(tokenizer, "title: The film 3!; year: 1990", claim)
    assert first.textual_id == "the film 3" and not first.suffixed
    assert second.textual_id == "the film 3 2" and second.suffixed
    assert tokenizer.decode(second.token_ids).strip() == "the film 3 2"


def test_a_frozen_backbone_does_not_change(setup):
    from training.loop import fit

    _, model, pieces = setup
    model.set_backbone_trainable(False)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    tables = [t.weight.detach().clone() for t in model.embedding_tables()]
    fit(model, epochs=1, examples=lambda epoch: [("1", ["3", "5"])], collate=list, batch_size=1, lr=1e-2,
        loss=lambda m, docs: doc_loss(m, collab_batch(m, pieces, docs), "collab", 1.0)[0], progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(a, t.weight) for a, t in zip(tables, model.embedding_tables(), strict=True))


def test_the_item_head_bias_and_scale_are_used_and_saved(setup, tmp_path):
    tokenizer, _, pieces = setup
    torch.manual_seed(0)
    model = Cllm4RecModel(setup[1].backbone, setup[1].vocab_size, USERS, ITEMS, item_bias=True, item_head_scale=1.0)
    assert model.item_head_scale == 1.0 and model.item_bias is not None and model.item_bias.requires_grad
    hidden = torch.randn(2, model.backbone.config.d_model)
    with torch.no_grad():
        model.item_bias.copy_(torch.arange(len(ITEMS), dtype=torch.float))
    expected = hidden @ model.tables["collab"]["item"].weight.t() + torch.arange(len(ITEMS), dtype=torch.float)
    assert torch.allclose(model.item_logits(hidden, "collab"), expected)
    # Still tied to the item table: the head has no item weights of its own.
    assert torch.allclose(model.item_logits(hidden, "content"), hidden @ model.tables["content"]["item"].weight.t())
    # The multinomial loss trains the bias.
    batch = finetune_batch(model, pieces, [("1", ["1", "2"], ["3"])], max_items=50)
    multinomial_loss(model.score_items(batch.enc_ids, batch.enc_mask), batch.targets).backward()
    assert model.item_bias.grad is not None and float(model.item_bias.grad.abs().sum()) > 0
    model.eval()
    model.save(tmp_path / "m")
    loaded = load_cllm4rec(tmp_path / "m")
    assert loaded.item_head_scale == 1.0 and torch.equal(loaded.item_bias, model.item_bias)
    a = Cllm4RecRecommender(model, tokenizer).scores([["1", "2"]], users=["2"])
    b = Cllm4RecRecommender(loaded, tokenizer).scores([["1", "2"]], users=["2"])
    assert torch.allclose(a, b)
    # The default (and models saved before the option existed): no bias, T5's d_model^-0.5.
    assert setup[1].item_bias is None and setup[1].item_head_scale == pytest.approx(TINY.d_model ** -0.5)


@pytest.mark.parametrize("scale", [None, 0.25, 1.0, 3.0])
def test_the_item_head_applies_its_scale(setup, tmp_path, scale):
    """logits[b, j] = scale * sum_k h[b, k] * e_j[k], checked by hand for several scales; None
    is T5's own d_model^-0.5. score_items is their log-softmax, and a saved model keeps its scale."""
    tokenizer, base, pieces = setup
    torch.manual_seed(0)
    model = Cllm4RecModel(base.backbone, base.vocab_size, USERS, ITEMS, item_head_scale=scale).eval()
    applied = TINY.d_model ** -0.5 if scale is None else scale
    assert model.item_head_scale == pytest.approx(applied)
    d = TINY.d_model
    hidden = torch.randn(2, d, generator=torch.Generator().manual_seed(1))
    for lm in ("collab", "content"):
        table = model.tables[lm]["item"].weight.detach().tolist()
        by_hand = [[applied * sum(float(hidden[b, k]) * table[j][k] for k in range(d)) for j in range(len(ITEMS))]
                   for b in range(2)]
        assert torch.allclose(model.item_logits(hidden, lm), torch.tensor(by_hand), atol=1e-5)
    # The scores of a prompt: the log-softmax of the scaled logits of the first decoder state.
    batch = finetune_batch(model, pieces, [("1", ["1", "2"], ["3"])], max_items=50)
    with torch.no_grad():
        start = torch.full((1, 1), model.decoder_start_id)
        state = model.decode_hidden(batch.enc_ids, batch.enc_mask, start, torch.ones_like(start), "collab")[0, 0]
        table = model.tables["collab"]["item"].weight.detach().tolist()
        logits = torch.tensor([applied * sum(float(state[k]) * table[j][k] for k in range(d)) for j in range(len(ITEMS))])
        assert torch.allclose(model.score_items(batch.enc_ids, batch.enc_mask)[0], F.log_softmax(logits, -1), atol=1e-5)
    model.save(tmp_path / "m")
    assert load_cllm4rec(tmp_path / "m").item_head_scale == pytest.approx(applied)


def test_the_latest_item_can_be_forced_into_the_masked_out_items():
    history = [str(i) for i in range(1, 11)]
    for seed in range(20):
        kept, held = mask_history(history, 0.3, random.Random(seed), include_last=True)
        assert "10" in held and len(held) == 3 and "10" not in kept
        assert set(kept) | set(held) == set(history) and not set(kept) & set(held)
    assert mask_history(["1", "2"], 0.9, random.Random(0), include_last=True) == (["1"], ["2"])
    drawn = [mask_history(history, 0.1, random.Random(seed))[1] for seed in range(30)]
    assert any(h != ["10"] for h in drawn)  # without it, the held-out item is random


# --------------------------------------------------------------------------- the next_item objective


def test_next_item_scores_continue_the_collaborative_document(setup):
    """score_next is the collaborative LM's prediction after the document's last item: the same
    distribution its training loss puts on that position, whatever the padding of the batch."""
    tokenizer, model, pieces = setup
    model.eval()
    recommender = Cllm4RecRecommender(model, tokenizer, max_history=3, objective="next_item")
    history = ["4", "7", "2"]
    with torch.no_grad():
        # The training batch of the document [4, 7, 2, 9]: position 3 predicts the item after "2".
        batch = collab_batch(model, pieces, [("17", history + ["9"])])
        hidden = model.decode_hidden(batch.enc_ids, batch.enc_mask, batch.dec_ids, batch.dec_mask, "collab")
        expected = F.log_softmax(model.item_logits(hidden[:, 3], "collab"), dim=-1)[0]
    alone = recommender.scores([history], users=["17"])[0]
    assert torch.allclose(alone, expected, atol=1e-5)
    # In a batch beside longer and shorter documents (right padding), and with older items beyond
    # max_history ignored: the same scores.
    batched = recommender.scores([["1"], ["11", "12"] + history, ["3", "5"]], users=[None, "17", "2"])
    assert torch.allclose(batched[1], expected, atol=1e-5)
    # The order of the history matters (it is a sequence, not a bag), and so does the user.
    assert not torch.allclose(recommender.scores([history[::-1]], users=["17"])[0], expected, atol=1e-4)
    assert not torch.allclose(recommender.scores([history], users=["2"])[0], expected, atol=1e-4)
    # An unknown user has no user token; unknown items are skipped.
    assert torch.allclose(recommender.scores([history], users=["nobody"])[0],
                          recommender.scores([["new-item"] + history], users=[None])[0], atol=1e-5)


def test_next_item_recommendations_exclude_the_history(setup):
    tokenizer, model, _ = setup
    model.eval()
    recommender = Cllm4RecRecommender(model, tokenizer, max_history=2, objective="next_item")
    histories = [["1", "2", "3"], [], ["12"]]
    found = recommender.recommend(histories, 100, users=["1", None, "unknown-user"])
    for history, row in zip(histories, found, strict=True):
        assert {r.item_id for r in row} == set(ITEMS) - set(history)
    with pytest.raises(ValueError, match="objective"):
        Cllm4RecRecommender(model, tokenizer, objective="bag")


def test_collaborative_documents_shuffled_or_in_time_order():
    from genrec.cllm4rec.config import Cllm4RecConfig
    from training.methods.cllm4rec import collab_documents

    items = {"a": [str(i) for i in range(10)], "b": ["x", "y"]}
    rng = random.Random(0)
    chrono = Cllm4RecConfig(collab_order="chronological", crop="random")
    starts = set()
    for _ in range(50):
        docs = dict(collab_documents(["a", "b"], items, chrono, 4, rng))
        a = docs["a"]
        assert len(a) == 4 and a == items["a"][int(a[0]) : int(a[0]) + 4]  # consecutive, in order
        assert docs["b"] == ["x", "y"]
        starts.add(a[0])
    assert len(starts) > 3  # random windows, so older items are trained on too
    latest = Cllm4RecConfig(collab_order="chronological", crop="latest")
    assert dict(collab_documents(["a"], items, latest, 4, rng))["a"] == ["6", "7", "8", "9"]
    shuffled = dict(collab_documents(["a"], items, Cllm4RecConfig(collab_order="shuffled"), 4, rng))["a"]
    assert len(shuffled) == 4 and set(shuffled) <= set(items["a"])
    # User dropout: a share of the documents carries no user.
    users = [u for u, _ in collab_documents(["a"] * 400, items, chrono, 4, rng, user_dropout=0.25)]
    assert 60 < users.count(None) < 140
