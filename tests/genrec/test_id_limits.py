"""The caps on textual IDs (genrec/textual_ids.py) on every path that makes one: the ID
generator's candidates, its numeric-suffix fallback, and title-word IDs. One item's metadata
once made a 15,531-token ID (four 4,000-digit values through the suffix fallback)."""

import pytest

from genrec.idgenrec.minting import MintConfig, mint_ids
from genrec.idgenrec.prompts import prompt_corpus
from genrec.modeling import ModelConfig, build_t5
from genrec.textual_ids import (
    MAX_ID_TOKENS,
    MAX_ID_WORD_CHARS,
    MAX_ID_WORDS,
    canonical_id,
    claim_in,
    suffixed_id,
    title_textual_id,
    within_id_limits,
)
from genrec.tokenization import encode_text
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
CONFIG = MintConfig(num_groups=4, penalty_start=1.0, penalty_step=2.0, penalty_max=5.0, min_length_start=1,
                    min_length_step=2, length_steps=2, extra_length=4, batch_size=8)
DIGITS = "1234567890" * 400  # one 4,000-digit word
WORDS = "river castle garden robot island forest city dragon quiet brave"


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [WORDS, "title: genres: year: the a of 0 1 2 3 4 5 6 7 8 9 10 11 12", DIGITS[:40]] + prompt_corpus()
    return train_tokenizer(corpus, vocab_size=150)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_t5(TINY, tokenizer, seed=3).eval()


def assert_bounded(minted, tokenizer):
    words = minted.textual_id.split(" ")
    assert len(words) <= MAX_ID_WORDS and all(len(w) <= MAX_ID_WORD_CHARS for w in words), minted.textual_id
    assert len(minted.token_ids) <= MAX_ID_TOKENS
    assert minted.token_ids == encode_text(tokenizer, minted.textual_id)


def test_canonical_id_refuses_what_is_over_the_caps(tokenizer):
    assert canonical_id(tokenizer, "river castle") is not None
    assert canonical_id(tokenizer, DIGITS) is None
    assert canonical_id(tokenizer, " ".join(["river"] * (MAX_ID_WORDS + 1))) is None
    assert canonical_id(tokenizer, "river " + "r" * (MAX_ID_WORD_CHARS + 1)) is None
    long_in_tokens = " ".join(str(n) for n in range(1000, 1000 + MAX_ID_WORDS))  # few words, many tokens
    assert len(encode_text(tokenizer, long_in_tokens)) > MAX_ID_TOKENS
    assert canonical_id(tokenizer, long_in_tokens) is None
    assert not within_id_limits("a " * MAX_ID_WORDS + "b")


def test_the_attack_metadata_mints_a_bounded_id(model, tokenizer):
    """Four 4,000-digit values, every generator candidate refused: the suffix fallback once took
    the first words whole. Now over-long words are never ID words, and the ID stays bounded."""
    text = "; ".join(f"f{i}: {DIGITS}" for i in range(4))
    values = " ".join([DIGITS] * 4)
    claim = claim_in(set())
    minted, stats = mint_ids(model, tokenizer, [text], claim, CONFIG, vocabulary_texts=[values])
    assert_bounded(minted[0], tokenizer)
    assert minted[0].suffixed and minted[0].textual_id == "item 2"


def test_long_legal_metadata_mints_a_bounded_id_through_every_path(model, tokenizer):
    """Many words, each under the word cap (a long description): the generator's candidates and
    the suffix fallback (all candidates refused) both keep to the caps."""
    long_words = " ".join(f"{w}{'x' * 20}" for w in WORDS.split()) * 5
    text = f"title: {long_words}"
    minted, _ = mint_ids(model, tokenizer, [text], claim_in(set()), CONFIG, vocabulary_texts=[long_words])
    assert_bounded(minted[0], tokenizer)

    refused = lambda candidate: not candidate.split(" ")[-1].isdigit()  # noqa: E731 - only suffixed IDs
    taken: set[str] = set()
    suffixed, stats = mint_ids(model, tokenizer, [text], lambda c: not refused(c) and claim_in(taken)(c), CONFIG,
                               vocabulary_texts=[long_words])
    assert suffixed[0].suffixed and stats.suffixed == 1
    assert_bounded(suffixed[0], tokenizer)


def test_suffixed_id_cuts_the_base_to_leave_room_for_the_number(tokenizer):
    base = " ".join(f"{w}{'q' * 25}" for w in WORDS.split() * 3)  # 30 words of 30 characters
    taken: set[str] = set()
    first = suffixed_id(tokenizer, base, claim_in(taken))
    assert first.textual_id.endswith(" 2")
    assert_bounded(first, tokenizer)
    later = suffixed_id(tokenizer, base, claim_in(taken), start=99990)
    assert later.textual_id.endswith(" 99990") and later.textual_id.rsplit(" ", 1)[0] == first.textual_id.rsplit(" ", 1)[0]
    assert_bounded(later, tokenizer)
    assert suffixed_id(tokenizer, DIGITS, claim_in(set())).textual_id == "item 2"


def test_title_ids_are_bounded_and_unchanged_for_ordinary_titles(tokenizer):
    claim = claim_in(set())
    assert title_textual_id(tokenizer, "title: river castle 3; genres: drama", claim).textual_id == "river castle 3"
    assert title_textual_id(tokenizer, "title: River Castle 3!", claim).textual_id == "river castle 3 2"
    attack = title_textual_id(tokenizer, f"title: {DIGITS} {DIGITS}", claim)
    assert attack.textual_id == "item" or attack.textual_id.startswith("item")
    assert_bounded(attack, tokenizer)
    many_tokens = " ".join(str(n) for n in range(5000, 5008))  # 8 words, over the token cap
    for _ in range(3):
        assert_bounded(title_textual_id(tokenizer, f"title: {many_tokens}", claim), tokenizer)


def test_generator_rounds_are_capped(model, tokenizer):
    """With every candidate refused, the whole schedule runs before the suffix; max_rounds cuts it."""
    only_suffixed = lambda taken: lambda c: c.split(" ")[-1].isdigit() and claim_in(taken)(c)  # noqa: E731
    texts = ["title: river castle", "title: quiet dragon"]
    _, full = mint_ids(model, tokenizer, texts, only_suffixed(set()), CONFIG)
    capped_config = MintConfig(**{**CONFIG.to_dict(), "max_rounds": 1})
    minted, capped = mint_ids(model, tokenizer, texts, only_suffixed(set()), capped_config)
    assert full.generator_calls == 6  # penalties 1, 3, 5 at two lengths
    assert capped.generator_calls == 1 and capped.suffixed == 2
    assert all(m.suffixed and m.textual_id.endswith(" 2") for m in minted)
