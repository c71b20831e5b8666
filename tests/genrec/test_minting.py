"""The uniqueness loop of genrec/minting.py on a tiny random ID generator."""

import re

import pytest

from genrec.diverse_beam import diverse_beam_search
from genrec.errors import IdExhaustedError
from genrec.idgenrec.minting import MintConfig, item_word_constraint, mint_ids
from genrec.idgenrec.prompts import prompt_corpus
from genrec.modeling import ModelConfig, build_t5
from genrec.textual_ids import canonical_id, normalize_textual_id
from genrec.tokenization import encode_text
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
COLOURS = ("red", "blue", "green", "small", "large", "cheap")
NOUNS = ("shoe", "lamp", "book", "cup")
# No digits: a numeric last word can then only come from the suffix fallback.
TEXTS = [
    f"title: the {a} {n}; category: {c}"
    for a in COLOURS
    for n, c in zip(NOUNS, ("sports", "home", "books", "kitchen"), strict=True)
]
VALUES = [t.replace("title:", "").replace("category:", "") for t in TEXTS]
SMALL = MintConfig(
    num_groups=4,
    penalty_start=1.0,
    penalty_step=2.0,
    penalty_max=5.0,
    min_length_start=1,
    min_length_step=2,
    length_steps=2,
    extra_length=4,
    batch_size=8,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS + ["one two three 0 1 2 3 4 5 6 7 8 9 10 11 12"] + prompt_corpus(), vocab_size=120)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_t5(TINY, tokenizer, seed=5).eval()


class SetClaim:
    """The training-time claim: an in-memory set, with optional extra rules."""

    def __init__(self, refuse=lambda candidate: False):
        self.taken: set[str] = set()
        self.calls: list[str] = []
        self.refuse = refuse

    def __call__(self, candidate: str) -> bool:
        self.calls.append(candidate)
        if candidate in self.taken or self.refuse(candidate):
            return False
        self.taken.add(candidate)
        return True


def assert_valid(minted, tokenizer, claim):
    ids = [m.textual_id for m in minted]
    assert all(ids), "no empty ID"
    assert len(set(ids)) == len(ids), "IDs are unique"
    assert set(ids) <= claim.taken, "every ID was claimed"
    for m in minted:
        assert normalize_textual_id(m.textual_id) == m.textual_id
        assert m.token_ids == encode_text(tokenizer, m.textual_id)
        assert tokenizer.eos_token_id not in m.token_ids
    # Distinct IDs have distinct token sequences (the trie needs that).
    assert len({tuple(m.token_ids) for m in minted}) == len(minted)


def test_ids_unique_and_non_empty(model, tokenizer):
    claim = SetClaim()
    minted, stats = mint_ids(model, tokenizer, TEXTS, claim, SMALL)
    assert len(minted) == len(TEXTS)
    assert_valid(minted, tokenizer, claim)
    assert stats.items == len(TEXTS)
    assert sum(stats.length_histogram.values()) == len(TEXTS)
    assert stats.max_words >= stats.mean_words >= 1
    assert stats.generator_calls >= 1
    # Deterministic: the same inputs give the same IDs.
    again, _ = mint_ids(model, tokenizer, TEXTS, SetClaim(), SMALL)
    assert [m.textual_id for m in again] == [m.textual_id for m in minted]


def first_round_candidates(model, tokenizer, texts, config, vocabulary_texts=None):
    """The canonical candidates the loop sees first for each item (penalty_start, min_length_start)."""
    source = [encode_text(tokenizer, t) + [tokenizer.eos_token_id] for t in texts]
    constraints = [item_word_constraint(tokenizer, t) for t in (vocabulary_texts or texts)]
    results = diverse_beam_search(
        model,
        source,
        num_groups=config.num_groups,
        diversity_penalty=config.penalty_start,
        min_length=config.min_length_start,
        max_length=config.min_length_start + config.extra_length,
        word_constraints=constraints,
    )
    out = []
    for candidates in results:
        names = set()
        for c in candidates:
            text = normalize_textual_id(tokenizer.decode(c.token_ids, skip_special_tokens=True))
            text = " ".join(dict.fromkeys(text.split(" ")))
            if canonical_id(tokenizer, text):
                names.add(canonical_id(tokenizer, text)[0])
        out.append(names)
    return out


def test_forced_collisions_raise_the_penalty(model, tokenizer):
    """Every candidate of the first round is already taken: each item must raise the penalty."""
    taken_before = set().union(*first_round_candidates(model, tokenizer, TEXTS, SMALL))
    assert taken_before
    claim = SetClaim()
    claim.taken |= taken_before
    minted, stats = mint_ids(model, tokenizer, TEXTS, claim, SMALL)
    assert_valid(minted, tokenizer, claim)
    assert not {m.textual_id for m in minted} & taken_before
    assert stats.raised_penalty == len(TEXTS)
    for m in minted:  # every ID comes from a later round than the first
        assert m.penalty > SMALL.penalty_start or m.min_length > SMALL.min_length_start or m.suffixed


@pytest.mark.parametrize("rejections", [1, 3, 9])
def test_claim_rejecting_the_first_candidates_terminates(model, tokenizer, rejections):
    """A store that refuses the first `rejections` candidates offered for each item."""
    counts: dict[str, int] = {}
    state = {"refused": 0}

    def refuse(candidate: str) -> bool:
        counts[candidate] = counts.get(candidate, 0) + 1
        if state["refused"] < rejections:
            state["refused"] += 1
            return True
        state["refused"] = 0  # accepted: the next item starts over
        return False

    claim = SetClaim(refuse)
    minted, stats = mint_ids(model, tokenizer, TEXTS[:10], claim, SMALL)
    assert_valid(minted, tokenizer, claim)
    assert len(claim.calls) >= 10 * (rejections + 1)
    if rejections >= SMALL.num_groups:  # more refusals than one round has candidates
        assert stats.raised_penalty >= 1


def test_suffix_fallback(model, tokenizer):
    """A claim that takes only suffixed forms ('... <n>'): the loop ends through the suffix."""
    claim = SetClaim(refuse=lambda c: not re.search(r" \d+$", c))
    minted, stats = mint_ids(model, tokenizer, TEXTS[:6], claim, SMALL)
    assert_valid(minted, tokenizer, claim)
    assert all(m.suffixed for m in minted)
    assert stats.suffixed == 6
    assert stats.raised_penalty == 6
    assert stats.raised_length == 6
    for m in minted:
        assert re.fullmatch(r".+ \d+", m.textual_id)


def test_suffix_exhaustion_raises(model, tokenizer):
    config = MintConfig(**{**SMALL.to_dict(), "max_suffix": 5})
    with pytest.raises(IdExhaustedError):
        mint_ids(model, tokenizer, TEXTS[:1], SetClaim(refuse=lambda c: True), config)


def test_identical_texts_get_unique_ids(model, tokenizer):
    texts = [TEXTS[0]] * 12
    claim = SetClaim()
    minted, stats = mint_ids(model, tokenizer, texts, claim, SMALL)
    assert_valid(minted, tokenizer, claim)
    assert stats.raised_penalty >= 1


def test_canonical_id(tokenizer):
    for empty in ["", "   ", "!!!", ";,.-", "\n\t"]:
        assert canonical_id(tokenizer, empty) is None
    text, tokens = canonical_id(tokenizer, "  Red,   SHOE!! ")
    assert text == "red shoe"
    assert tokens == encode_text(tokenizer, "red shoe")
    assert canonical_id(tokenizer, "RED-shoe")[0] == "red shoe"
    assert canonical_id(tokenizer, "Ｒｅｄ shoe")[0] == "red shoe"  # NFKC: full-width letters
    # Characters the tokenizer does not know would come back as <unk>: not an ID.
    assert canonical_id(tokenizer, "red 日本") is None


def test_minted_ids_use_only_item_words(model, tokenizer):
    claim = SetClaim()
    minted, _ = mint_ids(model, tokenizer, TEXTS, claim, SMALL, vocabulary_texts=VALUES)
    assert_valid(minted, tokenizer, claim)
    for m, values in zip(minted, VALUES, strict=True):
        words = m.textual_id.split(" ")
        if m.suffixed:
            words = words[:-1]
        assert set(words) <= set(normalize_textual_id(values).split(" ")), (m.textual_id, values)
        assert len(words) == len(set(words)), "no repeated word"
    # The field names are not part of the vocabulary texts, so no ID contains them.
    assert not any({"title", "category"} & set(m.textual_id.split(" ")) for m in minted)


def test_unrestricted_minting(model, tokenizer):
    config = MintConfig(**{**SMALL.to_dict(), "restrict_to_item_words": False})
    claim = SetClaim()
    minted, _ = mint_ids(model, tokenizer, TEXTS[:8], claim, config)
    assert_valid(minted, tokenizer, claim)


# A catalog in Hindi: its words carry combining marks (vowel signs, virama, nukta), which
# Python's \w left out, so IDs were made of broken letters (`हिन्दी` -> `ह न द`).
HINDI_VALUES = ["हिन्दी फ़िल्म नाटक", "तमिल फ़िल्म संगीत", "पुरानी कहानी प्रेम", "नई दुनिया युद्ध"]
HINDI_TEXTS = [f"title: {' '.join(v.split()[:2])}; genre: {v.split()[2]}" for v in HINDI_VALUES]


@pytest.fixture(scope="module")
def hindi_tokenizer():
    return train_tokenizer(HINDI_TEXTS + ["0 1 2 3 4 5 6 7 8 9"] + prompt_corpus(), vocab_size=200)


def test_hindi_words_round_trip_whole(hindi_tokenizer):
    text, tokens = canonical_id(hindi_tokenizer, "हिन्दी फ़िल्म")
    assert text == "हिन्दी फ़िल्म"
    assert hindi_tokenizer.decode(tokens, skip_special_tokens=True) == "हिन्दी फ़िल्म"
    constraint = item_word_constraint(hindi_tokenizer, "हिन्दी फ़िल्म")
    assert constraint.complete == {tuple(encode_text(hindi_tokenizer, w)) for w in ("हिन्दी", "फ़िल्म")}


def test_hindi_item_ids_are_made_of_whole_words(hindi_tokenizer):
    model = build_t5(TINY, hindi_tokenizer, seed=5).eval()
    claim = SetClaim()
    minted, _ = mint_ids(model, hindi_tokenizer, HINDI_TEXTS, claim, SMALL, vocabulary_texts=HINDI_VALUES)
    assert_valid(minted, hindi_tokenizer, claim)
    for m, values in zip(minted, HINDI_VALUES, strict=True):
        words = m.textual_id.split(" ")[:-1] if m.suffixed else m.textual_id.split(" ")
        assert words and set(words) <= set(values.split(" ")), (m.textual_id, values)
