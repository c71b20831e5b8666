"""Alternate training (docs/methods.md, "Alternate training"): soft IDs, the frozen recommender of the ID phase, re-minting
between phases; textual user IDs (docs/methods.md, "Textual user IDs") that never see the valid or test item."""

import dataclasses
import random

import pytest
import torch

import training.alternate as alternate
from genrec.config import apply_override, config_from_dict
from genrec.idgenrec.config import AlternateConfig
from genrec.idgenrec.minting import MintConfig
from genrec.idgenrec.prompts import TRAIN_TEMPLATES, PromptRenderer, prompt_corpus
from genrec.idgenrec.recommender import IdGenRecRecommender
from genrec.item_text import metadata_values_text
from genrec.modeling import ModelConfig, build_t5
from genrec.tokenization import encode_text
from tests.training.test_pipeline import small_config, write_atomic_dataset
from training.alternate import (
    UserIds,
    build_trie,
    id_phase,
    mint_state,
    phase_schedule,
    train_alternating,
)
from training.data import SplitData, load_dataset
from training.presets import preset
from training.recommender import render_examples, training_pairs
from training.soft_ids import greedy_soft_decode, insert_soft_ids, soft_id_embeddings, soft_id_probabilities
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, dropout_rate=0.1)
MINT = MintConfig(num_groups=4, penalty_max=2.0, length_steps=1, extra_length=4, batch_size=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small synthetic dataset, its tokenizer, two tiny T5s and the minted IDs."""
    folder = tmp_path_factory.mktemp("alt") / "data"
    write_atomic_dataset(folder, users=12, items=20)
    dataset = load_dataset("synth", folder, kcore=0, max_text_chars=512)
    item_ids = list(dataset.catalog.items)
    texts = [dataset.item_text[i] for i in item_ids]
    vocabulary = [metadata_values_text(dataset.catalog.items[i]) for i in item_ids]
    tokenizer = train_tokenizer(texts + prompt_corpus(), 200)
    generator = build_t5(TINY, tokenizer, seed=1)
    ids = mint_state(generator, tokenizer, item_ids, texts, vocabulary, MINT, progress=False)
    return dict(dataset=dataset, item_ids=item_ids, texts=texts, vocabulary=vocabulary, tokenizer=tokenizer, ids=ids)


def sources(world):
    tokenizer = world["tokenizer"]
    return {
        i: encode_text(tokenizer, t)[:255] + [tokenizer.eos_token_id]
        for i, t in zip(world["item_ids"], world["texts"], strict=True)
    }


# --------------------------------------------------------------------------- soft IDs


def test_one_hot_distribution_gives_exactly_the_hard_embedding():
    torch.manual_seed(0)
    matrix = torch.randn(50, 8)
    tokens = torch.tensor([[3, 17, 42], [0, 49, 5]])
    one_hot = torch.nn.functional.one_hot(tokens, 50).float()
    assert torch.equal(soft_id_embeddings(one_hot, matrix), matrix[tokens])
    # A mixture is the probability-weighted mean of the rows.
    probs = torch.zeros(1, 50)
    probs[0, 1], probs[0, 2] = 0.25, 0.75
    assert torch.allclose(soft_id_embeddings(probs, matrix), 0.25 * matrix[1] + 0.75 * matrix[2])


def test_probabilities_are_real_probabilities_not_log_probs():
    logits = torch.randn(4, 30)
    probs = soft_id_probabilities(logits, temperature=0.5)
    assert torch.all(probs >= 0)
    assert torch.allclose(probs.sum(-1), torch.ones(4))
    assert torch.allclose(probs, torch.softmax(logits / 0.5, -1))
    with pytest.raises(ValueError):
        soft_id_probabilities(logits, temperature=0)


def test_prompt_embeddings_stay_hard_where_no_soft_id_is_inserted():
    torch.manual_seed(0)
    prompt = torch.randn(2, 10, 4)
    soft = torch.randn(3, 5, 4, requires_grad=True)
    spans = [(0, 2, 5, 1), (1, 0, 2, 0), (1, 6, 9, 2)]
    out = insert_soft_ids(prompt, spans, soft)
    inserted = torch.zeros(2, 10, dtype=torch.bool)
    for row, start, end, k in spans:
        inserted[row, start:end] = True
        assert torch.equal(out[row, start:end], soft[k, : end - start])
    assert torch.equal(out[~inserted], prompt[~inserted])
    assert not torch.equal(prompt[0, 2:5], out[0, 2:5])  # the input itself is not modified in place
    out.sum().backward()
    assert soft.grad[0, :2].abs().sum() > 0 and soft.grad[0, 2:].abs().sum() == 0
    assert torch.equal(insert_soft_ids(prompt, [], soft), prompt)


def test_greedy_soft_decode_feeds_back_its_argmax_and_keeps_the_gradient(world):
    tokenizer = world["tokenizer"]
    generator = build_t5(TINY, tokenizer, seed=3).eval()
    src = [sources(world)[i] for i in world["item_ids"][:3]]
    from genrec.tensors import pad_batch

    ids, mask = pad_batch(src, tokenizer.pad_token_id)
    probs = greedy_soft_decode(generator, ids, mask, steps=4)
    assert probs.shape == (3, 4, len(tokenizer)) and probs.requires_grad
    with torch.no_grad():
        greedy = generator.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4,
                                    num_beams=1, do_sample=False)
    assert torch.equal(probs.argmax(-1), greedy[:, 1:5])


# --------------------------------------------------------------------------- the ID phase


def test_id_phase_changes_only_the_generator(world):
    tokenizer, ids = world["tokenizer"], world["ids"]
    generator = build_t5(TINY, tokenizer, seed=1)
    recommender = build_t5(TINY, tokenizer, seed=2)
    recommender.train()
    before_rec = {k: v.clone() for k, v in recommender.state_dict().items()}
    before_gen = {k: v.clone() for k, v in generator.state_dict().items()}
    flags = [p.requires_grad for p in recommender.parameters()]
    seen_modes = []
    recommender.register_forward_pre_hook(lambda module, args: seen_modes.append(module.training))
    pairs = training_pairs(world["dataset"].split, 20, 3)
    losses = id_phase(
        generator, recommender, tokenizer, pairs, ids.item_tokens, sources(world),
        epochs=1, lr=1e-2, batch_size=8, max_pairs=16, progress=False,
    )
    assert len(losses) == 1 and losses[0] > 0
    after_rec = recommender.state_dict()
    assert all(torch.equal(before_rec[k], after_rec[k]) for k in before_rec)  # bit-identical
    assert any(not torch.equal(before_gen[k], v) for k, v in generator.state_dict().items())
    assert seen_modes and not any(seen_modes)  # the recommender ran in eval mode (no dropout)
    assert [p.requires_grad for p in recommender.parameters()] == flags and recommender.training  # restored


def test_phase_schedule_keeps_the_total_recommender_epochs():
    assert phase_schedule(AlternateConfig(rounds=0), 6) == [("rec", 6)]
    assert phase_schedule(AlternateConfig(rounds=3, id_epochs=2), 10) == [
        ("id", 2), ("rec", 4), ("id", 2), ("rec", 3), ("id", 2), ("rec", 3)
    ]
    schedule = phase_schedule(AlternateConfig(rounds=2, id_phase_first=False), 6)
    assert [k for k, _ in schedule] == ["rec", "id", "rec", "id", "rec"]
    assert sum(e for k, e in schedule if k == "rec") == 6
    fixed = phase_schedule(AlternateConfig(rounds=2, rec_epochs_per_round=5), 6)
    assert [e for k, e in fixed if k == "rec"] == [5, 5]


def test_after_an_id_phase_the_recommender_trains_on_the_reminted_ids(world, monkeypatch):
    tokenizer = world["tokenizer"]
    config = small_config("unused")
    config.generator.mint = MINT
    config.recommender.epochs = 2
    config.alternate = AlternateConfig(rounds=1, id_phase_first=True, id_lr=1e-2, id_batch_size=8, id_phase_max_pairs=8)
    mints = []
    real_mint = alternate.mint_state

    def mint_and_shuffle(*args, **kwargs):
        state = real_mint(*args, **kwargs)
        # Make sure the re-minted IDs differ from the old ones: rotate them over the items.
        minted = state.minted[1:] + state.minted[:1]
        items = list(state.item_tokens)
        state = alternate.IdState(minted, state.stats, {i: list(m.token_ids) for i, m in zip(items, minted, strict=True)})
        mints.append(state)
        return state

    seen = []

    def fake_train(model, tok, split, item_tokens, rec_config, **kwargs):
        pairs = training_pairs(split, 20, rec_config.max_prefixes_per_user)
        examples = render_examples(pairs, item_tokens, PromptRenderer(tok), TRAIN_TEMPLATES[:1], tok.eos_token_id,
                                   random.Random(0))
        seen.append((item_tokens, pairs, examples, rec_config.epochs))
        return {"loss": [1.0] * rec_config.epochs, "valid_ndcg@10": [0.0] * rec_config.epochs, "best_epoch": 1,
                "examples": len(pairs)}

    monkeypatch.setattr(alternate, "mint_state", mint_and_shuffle)
    monkeypatch.setattr(alternate, "train_recommender", fake_train)
    generator = build_t5(TINY, tokenizer, seed=1)
    recommender_model = build_t5(TINY, tokenizer, seed=2)
    first = world["ids"]
    recommender = IdGenRecRecommender(recommender_model, tokenizer, build_trie(world["item_ids"], first.item_tokens, 1))
    final, history = train_alternating(
        config, generator=generator, recommender_model=recommender_model, recommender=recommender,
        tokenizer=tokenizer, split=world["dataset"].split, item_ids=world["item_ids"], texts=world["texts"],
        vocabulary_texts=world["vocabulary"], ids=first, progress=False, log=lambda m: None,
    )
    assert len(mints) == 1 and final is mints[0]
    assert [p["kind"] for p in history["phases"]] == ["id", "rec"]
    assert history["phases"][0]["changed_ids"] > 0
    (item_tokens, pairs, examples, epochs), = seen
    assert epochs == 2 and item_tokens is final.item_tokens
    eos = tokenizer.eos_token_id
    assert [e.target for e in examples] == [final.item_tokens[t] + [eos] for _, _, t in pairs]
    assert any(final.item_tokens[t] != first.item_tokens[t] for _, _, t in pairs)
    # The recommender decodes (and validates) over the new IDs.
    eos_key = final.item_tokens[world["item_ids"][0]] + [eos]
    assert list(recommender.trie.sequence(recommender.trie.index_of(world["item_ids"][0]))) == eos_key


# --------------------------------------------------------------------------- user IDs


def test_user_id_never_depends_on_the_valid_or_test_item(world):
    tokenizer, ids = world["tokenizer"], world["ids"]
    split = world["dataset"].split
    generator = build_t5(TINY, tokenizer, seed=5)
    users = list(split.train)[:6]
    first = UserIds(generator, tokenizer, ids.item_tokens).for_evaluation(split, 20)(users)
    others = [i for i in world["item_ids"]]
    changed = SplitData(
        train=split.train,
        valid={u: others[(others.index(v) + 3) % len(others)] for u, v in split.valid.items()},
        test={u: others[(others.index(t) + 7) % len(others)] for u, t in split.test.items()},
    )
    assert all(changed.valid[u] != split.valid[u] and changed.test[u] != split.test[u] for u in users)
    second = UserIds(generator, tokenizer, ids.item_tokens).for_evaluation(changed, 20)(users)
    assert first == second
    assert any(first)  # the generator made some non-empty IDs
    for tokens in first:
        assert len(tokenizer.decode(tokens).split()) <= 4


def test_training_user_ids_come_from_the_prefix_only(world):
    tokenizer, ids = world["tokenizer"], world["ids"]
    generator = build_t5(TINY, tokenizer, seed=5)
    user_ids = UserIds(generator, tokenizer, ids.item_tokens)
    asked = []

    def spy(user, history):
        asked.append(list(history))
        return user_ids(user, history)

    pairs = training_pairs(world["dataset"].split, 20, None)
    examples = render_examples(pairs, ids.item_tokens, PromptRenderer(tokenizer), TRAIN_TEMPLATES[:1],
                               tokenizer.eos_token_id, random.Random(0), user_tokens=spy)
    assert asked == [h for _, h, _ in pairs]  # exactly each example's prefix, never its target
    # The user ID sits where {user_id} is in the prompt.
    uid = user_ids(pairs[0][0], pairs[0][1])
    prefix = PromptRenderer(tokenizer)._template_segments(TRAIN_TEMPLATES[0])[0][1]
    assert examples[0].source[len(prefix) : len(prefix) + len(uid)] == uid


# --------------------------------------------------------------------------- config


def test_alternate_config_overrides_and_old_bundles():
    config = preset("tiny")
    assert config.alternate.rounds == 0 and not config.alternate.user_ids and not config.recommender.user_ids
    apply_override(config, "alternate.rounds=3")
    apply_override(config, "alternate.id_phase_first=false")
    apply_override(config, "alternate.rec_epochs_per_round=2")
    apply_override(config, "alternate.id_phase_max_pairs=500")
    apply_override(config, "alternate.soft_id_temperature=2")
    assert config.alternate.rounds == 3 and config.alternate.id_phase_first is False
    assert config.alternate.rec_epochs_per_round == 2 and config.alternate.id_phase_max_pairs == 500
    assert config.alternate.soft_id_temperature == 2.0
    restored = config_from_dict(config.to_dict())
    assert restored.alternate == config.alternate
    old = config.to_dict()
    del old["alternate"]
    assert config_from_dict(old).alternate == AlternateConfig()
    assert dataclasses.asdict(AlternateConfig())["rounds"] == 0
