"""What a word character is, by Unicode category: one definition for every place that splits
text into words. In the library and training: the words of textual IDs (genrec/textual_ids.py),
the keyword IDs the ID generator is warmed up on (training/keywords.py) and the content
baseline's words (training/baselines.py). In the service: the words the filter index splits an
item's text into (service/filters.py), the filter words a request may ask for
(service/schemas.py) and the title search's words (service/title_search.py).

Python's `\\w` is not it: it leaves out combining marks (Mn, Mc, Me), so `हिन्दी` was split into
`ह`, `न` and `द`: in the filter index, while a request's filter word, whose pattern keeps marks,
was accepted whole and could never match; and in minted textual IDs, made of those pieces.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import lru_cache

# Not word characters: controls and formats (but JOINERS), private use, punctuation (but
# connectors such as `_`), symbols and separators. So a word character is a letter, a mark, a
# digit or other number, or a connector (Unicode's word characters, UTS #18), or one Python's
# Unicode data does not know yet.
NON_WORD_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So",
                                 "Zs", "Zl", "Zp"})
JOINERS = "\u200c\u200d"  # zero-width non-joiner and joiner (Cf), which join letters within words
UNICODE_END = 0x110000
BMP_END = 0x10000


def fold(text: str) -> str:
    """How words are compared: Unicode-normalised (NFKC) and case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


def category_class(categories: frozenset[str], but: str = "", end: int = UNICODE_END) -> str:
    """The body of a character class of the code points below `end` in these Unicode categories
    (less `but`), as ranges: \\uXXXX within the BMP, one spelling for ECMA-262 and Python, and
    \\UXXXXXXXX beyond it (Python only). Reads every code point below `end` (~0.3 s for all)."""
    ranges: list[list[int]] = []
    for code, category in enumerate(map(unicodedata.category, map(chr, range(end)))):
        if category in categories and chr(code) not in but:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])
    return "".join(_escape(a) if a == b else f"{_escape(a)}-{_escape(b)}" for a, b in ranges)


def _escape(code: int) -> str:
    return f"\\u{code:04x}" if code < BMP_END else f"\\U{code:08x}"


# The BMP's non-word characters (as \uXXXX ranges: the request's pattern spells its class with
# them, service/schemas.py), and a class exact for any text within the BMP: one bitmap look-up
# a character, where the class over all of Unicode checks hundreds of ranges beyond the BMP.
BMP_NON_WORD_CHARACTERS = category_class(NON_WORD_CATEGORIES, but=JOINERS, end=BMP_END)
_BMP_WORD_CHARACTER = f"[^{BMP_NON_WORD_CHARACTERS}]"


@lru_cache(maxsize=1)
def word_character() -> str:
    """A character class (Python's re) of a word character, over all of Unicode; built once, when
    first asked for, as reading the Unicode data takes a while."""
    return f"[^{category_class(NON_WORD_CATEGORIES, but=JOINERS)}]"


def word_finder(pattern_of: Callable[[str], str]) -> Callable[[str], list[str]]:
    """`findall` of the pattern that `pattern_of` makes of a word-character class: a text within
    the BMP (nearly all) is read with the BMP's class, three times faster, one with a character
    beyond it with the class over all of Unicode (compiled when first needed)."""
    bmp = re.compile(pattern_of(_BMP_WORD_CHARACTER))

    @lru_cache(maxsize=1)
    def full() -> re.Pattern:
        return re.compile(pattern_of(word_character()))

    def findall(text: str) -> list[str]:
        within_bmp = text.isascii() or max(text) <= "\uffff"  # isascii: a flag, no scan
        return (bmp if within_bmp else full()).findall(text)

    return findall


# The words of a text: its runs of word characters. Textual IDs, keyword IDs, the content
# baseline and the title search split text with it (the filters add apostrophes and hyphens).
find_words = word_finder(lambda char: f"{char}+")
