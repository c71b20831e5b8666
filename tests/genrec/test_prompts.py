"""genrec/prompts.py (PromptRenderer) and genrec/textual_ids.py."""

import re
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from genrec.idgenrec.prompts import (
    HISTORY_SEPARATOR,
    TEST_TEMPLATE,
    TRAIN_TEMPLATES,
    PromptRenderer,
    prompt_corpus,
)
from genrec.textual_ids import id_words, normalize_textual_id
from genrec.tokenization import encode_text
from training.tokenizer_training import train_tokenizer

IDS = ["red shoe", "blue lamp classic", "green book", "small cup", "large bag of things", "cheap hat"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(IDS + ["user seven", "alice bob"] + prompt_corpus(), vocab_size=150)


def history_tokens(tokenizer, ids=IDS):
    return [encode_text(tokenizer, t) for t in ids]


@pytest.mark.parametrize("template", TRAIN_TEMPLATES)
def test_item_spans_point_at_each_item(tokenizer, template):
    renderer = PromptRenderer(tokenizer, max_source_length=512)
    history = history_tokens(tokenizer)
    user = encode_text(tokenizer, "user seven")
    prompt = renderer.render(template, history, user)
    assert len(prompt.item_spans) == len(history)
    for (start, end), item in zip(prompt.item_spans, history, strict=True):
        assert prompt.input_ids[start:end] == item
    # Spans are in order and separated by the history separator.
    separator = encode_text(tokenizer, HISTORY_SEPARATOR)
    for (_, end), (start, _) in zip(prompt.item_spans, prompt.item_spans[1:], strict=False):
        assert prompt.input_ids[end:start] == separator
    # The prompt reads as the template filled in.
    text = template.format(user_id="user seven", history=" ; ".join(IDS))
    decoded = tokenizer.decode(prompt.input_ids, skip_special_tokens=True)
    assert normalize_textual_id(decoded) == normalize_textual_id(text)
    # The user ID tokens are in the prompt.
    assert any(prompt.input_ids[i : i + len(user)] == user for i in range(len(prompt.input_ids)))


def test_prompt_ends_with_eos(tokenizer):
    renderer = PromptRenderer(tokenizer)
    eos = tokenizer.eos_token_id
    for history in (history_tokens(tokenizer), history_tokens(tokenizer)[:1], []):
        prompt = renderer.render(TEST_TEMPLATE, history)
        assert prompt.input_ids[-1] == eos
        assert eos not in prompt.input_ids[:-1]
        assert tokenizer.pad_token_id not in prompt.input_ids
    assert renderer.render(TEST_TEMPLATE, []).item_spans == []


def test_oldest_items_dropped_when_too_long(tokenizer):
    history = history_tokens(tokenizer)
    full = PromptRenderer(tokenizer, max_source_length=512).render(TEST_TEMPLATE, history)
    separator = len(encode_text(tokenizer, HISTORY_SEPARATOR))
    # Room for exactly the last three items.
    last3 = sum(len(h) for h in history[-3:]) + 2 * separator
    fixed = len(full.input_ids) - (sum(len(h) for h in history) + separator * (len(history) - 1))
    for slack in (0, 1, len(history[-4]) + separator - 1):
        limit = fixed + last3 + slack
        prompt = PromptRenderer(tokenizer, max_source_length=limit).render(TEST_TEMPLATE, history)
        assert len(prompt.input_ids) <= limit
        assert len(prompt.item_spans) == 3
        assert [prompt.input_ids[s:e] for s, e in prompt.item_spans] == history[-3:]
        assert prompt.input_ids[-1] == tokenizer.eos_token_id
    # One more token of room than the last four need keeps four.
    limit = fixed + last3 + len(history[-4]) + separator
    prompt = PromptRenderer(tokenizer, max_source_length=limit).render(TEST_TEMPLATE, history)
    assert [prompt.input_ids[s:e] for s, e in prompt.item_spans] == history[-4:]
    # A user ID takes room too.
    user = encode_text(tokenizer, "alice bob")
    prompt = PromptRenderer(tokenizer, max_source_length=fixed + last3).render(TEST_TEMPLATE, history, user)
    assert len(prompt.item_spans) < 3
    assert len(prompt.input_ids) <= fixed + last3
    # The renderer's template cache does not leak between calls.
    renderer = PromptRenderer(tokenizer, max_source_length=512)
    assert (
        renderer.render(TEST_TEMPLATE, history).input_ids == renderer.render(TEST_TEMPLATE, history).input_ids
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Toy Story", "toy story"),
        ("  toy   STORY  ", "toy story"),
        ("toy-story: animation!", "toy story animation"),
        ("Toy_Story", "toy_story"),  # a connector (the underscore) is a word character
        ("l'été 1995", "l été 1995"),
        ("Ｔｏｙ　Ｓｔｏｒｙ", "toy story"),  # NFKC: full-width letters and space
        ("ÉCOLE", "école"),
        ("", ""),
        ("  ", ""),
        ("!!! ;; --", ""),
    ],
)
def test_normalize_textual_id(raw, expected):
    assert normalize_textual_id(raw) == expected
    assert normalize_textual_id(expected) == expected  # idempotent


@pytest.mark.parametrize(
    ("raw", "expected", "pieces"),
    [
        ("हिन्दी फ़िल्म", "हिन्दी फ़िल्म", "ह न द फ ल म"),  # Devanagari vowel signs, virama, nukta
        ("\u095e\u093f\u0932\u094d\u092e", "फ़िल्म", "फ ल म"),  # NFKC: फ़ as one code point
        ("ภูมิศาสตร์ ไทย", "ภูมิศาสตร์ ไทย", "ภ ม ศาสตร ไทย"),  # Thai vowel and tone marks
        ("তামিল বাংলা", "তামিল বাংলা", "ত ম ল ব ল"),  # Bengali
        ("தமிழ் திரைப்படம்", "தமிழ் திரைப்படம்", "தம ழ த ர ப படம"),  # Tamil
        ("می\u200cخواهم", "می\u200cخواهم", "می خواهم"),  # Persian: a zero-width non-joiner within a word
    ],
)
def test_words_keep_their_combining_marks(raw, expected, pieces):
    """An ID's words are whole words: Python's \\w, which IDs were once split with, leaves out
    combining marks and the joiners, and cut these words into the broken `pieces`."""
    assert " ".join(re.findall(r"\w+", unicodedata.normalize("NFKC", raw).lower())) == pieces
    assert normalize_textual_id(raw) == expected
    assert normalize_textual_id(expected) == expected


# Every character but marks, connectors other than the underscore, the joiners and unassigned
# code points: where Python's \w and a word character agree.
NO_MARKS = st.text(st.characters(exclude_categories=("Mn", "Mc", "Me", "Pc", "Cn", "Cs"),
                                 exclude_characters="\u200c\u200d") | st.just("_"))


# No deadline: the first text beyond the BMP compiles the full-Unicode word class (~0.3 s, once a
# process), which is not what this test is about.
@settings(deadline=None)
@given(NO_MARKS)
def test_text_without_marks_splits_as_it_did(text):
    """The IDs, keywords and content words of such text (all of ml-100k's) are those `\\w+` made."""
    folded = unicodedata.normalize("NFKC", text).lower()
    assume(not re.search(r"[\u200c\u200d]", folded))
    assume(all(unicodedata.category(c) not in {"Mn", "Mc", "Me", "Pc", "Cn"} or c == "_" for c in folded))
    assert normalize_textual_id(text) == " ".join(re.findall(r"\w+", folded))


def test_id_words():
    assert id_words("toy story") == ["toy", "story"]
    assert id_words("") == []
