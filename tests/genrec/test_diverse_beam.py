"""Diverse beam search (genrec/diverse_beam.py) on a tiny random T5."""

import pytest
import torch

from genrec.diverse_beam import WordConstraint, diverse_beam_search
from genrec.idgenrec.minting import item_word_constraint
from genrec.idgenrec.prompts import prompt_corpus
from genrec.modeling import ModelConfig, build_t5
from genrec.textual_ids import normalize_textual_id
from genrec.tokenization import encode_text
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
TEXTS = [
    f"title: the {adj} {noun} number {i}; category: {cat}; brand: {brand}"
    for i, (adj, noun, cat, brand) in enumerate(
        [
            (a, n, c, b)
            for a, c in (("red", "sports"), ("blue", "kitchen"), ("green", "garden"), ("small", "toys"))
            for n, b in (("shoe", "acme"), ("lamp", "globex"), ("book", "initech"))
        ]
    )
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS + prompt_corpus(), vocab_size=100)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_t5(TINY, tokenizer, seed=3).eval()


@pytest.fixture(scope="module")
def sources(tokenizer):
    return [encode_text(tokenizer, t) + [tokenizer.eos_token_id] for t in TEXTS]


def distinct(candidates) -> int:
    return len({tuple(c.token_ids) for c in candidates})


def test_groups_differ(model, sources):
    results = diverse_beam_search(
        model, sources, num_groups=5, diversity_penalty=2.0, min_length=1, max_length=6
    )
    assert len(results) == len(sources)
    for candidates in results:
        assert len(candidates) == 5
        assert sorted(c.group for c in candidates) == list(range(5))
        assert distinct(candidates) > 1
        # Best first.
        assert [c.log_prob for c in candidates] == sorted((c.log_prob for c in candidates), reverse=True)
    # Without a penalty every group decodes greedily, so all groups agree.
    plain = diverse_beam_search(
        model, sources, num_groups=5, diversity_penalty=0.0, min_length=1, max_length=6
    )
    assert all(distinct(candidates) == 1 for candidates in plain)


def test_larger_penalty_gives_more_distinct_candidates(model, sources):
    counts = {}
    for penalty in (0.0, 0.5, 10.0):
        results = diverse_beam_search(
            model, sources, num_groups=4, diversity_penalty=penalty, min_length=2, max_length=6
        )
        counts[penalty] = [distinct(c) for c in results]
    mean = {p: sum(c) / len(c) for p, c in counts.items()}
    assert mean[10.0] >= mean[0.5] >= mean[0.0]
    assert all(a >= b for a, b in zip(counts[10.0], counts[0.0], strict=True))
    assert any(a > b for a, b in zip(counts[10.0], counts[0.0], strict=True))
    # With a huge penalty the first tokens of the groups all differ.
    results = diverse_beam_search(
        model, sources, num_groups=4, diversity_penalty=1e4, min_length=2, max_length=6
    )
    for candidates in results:
        assert len({c.token_ids[0] for c in candidates}) == 4


def test_log_prob_is_the_unpenalised_model_score(model, sources, tokenizer):
    """`log_prob` = sum of the model's log-probs of the tokens and EOS (teacher forced)."""
    results = diverse_beam_search(
        model, sources[:2], num_groups=3, diversity_penalty=3.0, min_length=2, max_length=5
    )
    eos = tokenizer.eos_token_id
    for source, candidates in zip(sources[:2], results, strict=True):
        for c in candidates:
            labels = torch.tensor([c.token_ids + [eos]])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([source]), labels=labels).logits
            expected = torch.log_softmax(logits, -1).gather(2, labels[:, :, None]).sum().item()
            assert c.log_prob == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("min_length", [1, 3, 5])
def test_min_length(model, sources, min_length):
    results = diverse_beam_search(
        model, sources, num_groups=3, diversity_penalty=1.0, min_length=min_length, max_length=min_length + 3
    )
    for candidates in results:
        for c in candidates:
            assert len(c.token_ids) >= min_length
            assert all(t not in (model.config.eos_token_id, model.config.pad_token_id) for t in c.token_ids)


@pytest.mark.parametrize("max_length", [2, 4, 7])
def test_max_length(model, sources, max_length):
    results = diverse_beam_search(
        model, sources, num_groups=3, diversity_penalty=1.0, min_length=1, max_length=max_length
    )
    lengths = [len(c.token_ids) for candidates in results for c in candidates]
    assert max(lengths) + 1 <= max_length  # EOS included, the ID fits in max_length
    assert min(lengths) >= 1


def test_bad_arguments(model, sources):
    assert diverse_beam_search(model, [], num_groups=3, diversity_penalty=1.0) == []
    for kwargs in ({"num_groups": 0}, {"min_length": 0}, {"min_length": 4, "max_length": 4}):
        args = {"num_groups": 2, "diversity_penalty": 1.0, "min_length": 1, "max_length": 5} | kwargs
        with pytest.raises(ValueError):
            diverse_beam_search(model, sources[:1], **args)


def test_no_repeat_tokens(model, sources):
    results = diverse_beam_search(
        model, sources, num_groups=3, diversity_penalty=1.0, min_length=6, max_length=9
    )
    for candidates in results:
        for c in candidates:
            assert len(set(c.token_ids)) == len(c.token_ids)


def test_allowed_tokens(model, sources, tokenizer):
    allowed = [encode_text(tokenizer, t) for t in TEXTS]
    results = diverse_beam_search(
        model,
        sources,
        num_groups=3,
        diversity_penalty=1.0,
        min_length=2,
        max_length=6,
        allowed_tokens=allowed,
    )
    for tokens, candidates in zip(allowed, results, strict=True):
        for c in candidates:
            assert set(c.token_ids) <= set(tokens)


@pytest.mark.parametrize("use_words", [False, True])
def test_batched_equals_one_at_a_time(model, sources, tokenizer, use_words):
    constraints = [item_word_constraint(tokenizer, t) for t in TEXTS] if use_words else None
    args = dict(num_groups=4, diversity_penalty=1.5, min_length=2, max_length=7)
    batched = diverse_beam_search(model, sources, word_constraints=constraints, **args)
    for i, source in enumerate(sources):
        single = diverse_beam_search(
            model, [source], word_constraints=[constraints[i]] if constraints else None, **args
        )
        assert [c.token_ids for c in batched[i]] == [c.token_ids for c in single[0]]
        assert [c.group for c in batched[i]] == [c.group for c in single[0]]
        for a, b in zip(batched[i], single[0], strict=True):
            assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)


def split_into_words(tokens, words) -> bool:
    """True when `tokens` is a concatenation of whole words (token tuples) of `words`."""
    tokens = tuple(tokens)
    ok = [True] + [False] * len(tokens)
    for end in range(1, len(tokens) + 1):
        ok[end] = any(ok[end - len(w)] and tokens[end - len(w) : end] == w for w in words if len(w) <= end)
    return ok[len(tokens)]


def test_word_constraint_unit():
    eos = 1
    c = WordConstraint([[5], [5, 6, 7], [8, 9], [], [8, 9]])
    assert c.allowed((), eos) == {5, 8, eos}
    assert c.allowed((5,), eos) == {6, 5, 8, eos}  # a whole word: next word or end, or go on to 5 6 7
    assert c.allowed((5, 6), eos) == {7}  # mid-word: only the word's next token
    assert c.allowed((8,), eos) == {9}
    assert c.allowed((8, 9), eos) == {5, 8, eos}
    assert c.advance((), 5) == (5,)
    assert c.advance((5,), 6) == (5, 6)
    assert c.advance((5,), 8) == (8,)
    assert c.advance((5, 6), 7) == (5, 6, 7)
    assert c.advance((5, 6, 7), 5) == (5,)
    # `room`: no word is started or continued that cannot end before EOS is forced.
    assert c.allowed((), eos, room=0) == {5, eos}  # 8 9 needs one more token
    assert c.allowed((), eos, room=1) == {5, 8, eos}
    assert c.allowed((5,), eos, room=0) == {5, eos}  # 6 would need 7 after it
    assert c.allowed((5,), eos, room=1) == {5, 6, 8, eos}
    assert c.allowed((5, 6), eos, room=0) == {7}


@pytest.mark.parametrize(("min_length", "max_length"), [(1, 4), (1, 8), (3, 6), (6, 9)])
def test_word_constraint_candidates_are_whole_words(model, sources, tokenizer, min_length, max_length):
    vocab_texts = [t.split(";")[0] + " " + t.split(";")[1].split(":")[1] for t in TEXTS]  # title + category
    constraints = [item_word_constraint(tokenizer, t) for t in vocab_texts]
    results = diverse_beam_search(
        model,
        sources,
        num_groups=4,
        diversity_penalty=2.0,
        min_length=min_length,
        max_length=max_length,
        word_constraints=constraints,
    )
    for text, candidates in zip(vocab_texts, results, strict=True):
        words = {tuple(encode_text(tokenizer, w)) for w in normalize_textual_id(text).split(" ")}
        assert all(len(w) >= 1 for w in words)
        for c in candidates:
            assert c.token_ids, "a candidate is never empty"
            assert split_into_words(c.token_ids, words), (text, tokenizer.decode(c.token_ids), c.token_ids)
            assert len(c.token_ids) + 1 <= max_length
            decoded = normalize_textual_id(tokenizer.decode(c.token_ids, skip_special_tokens=True))
            assert set(decoded.split(" ")) <= set(normalize_textual_id(text).split(" "))
