"""Warm-up targets for the ID generator: an item's most distinctive words (docs/methods.md, "IDGenRec").

No tag-generation T5 can be downloaded here, so the generator first learns to turn
metadata into a few salient words: the title's words first, then the words of the other
fields with the highest TF-IDF over the catalog.
"""

import math
from collections import Counter
from collections.abc import Mapping, Sequence

from genrec.item_text import TITLE_FIELDS, metadata_values_text
from genrec.textual_ids import normalize_textual_id

STOP_WORDS = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were with".split()
)


def _words(text: str) -> list[str]:
    return [w for w in normalize_textual_id(text).split(" ") if w and w not in STOP_WORDS]


def keyword_targets(catalog: Sequence[Mapping[str, str]], keyword_count: int) -> list[str]:
    """One keyword string per item, in catalog order."""
    documents = [_words(metadata_values_text(m)) for m in catalog]
    frequency = Counter(w for doc in documents for w in set(doc))
    n = max(len(documents), 1)
    targets = []
    for metadata, doc in zip(catalog, documents, strict=True):
        title = next((metadata[f] for f in TITLE_FIELDS if metadata.get(f)), "")
        chosen: list[str] = []
        for word in _words(title):
            if word not in chosen and len(chosen) < keyword_count:
                chosen.append(word)
        counts = Counter(doc)
        ranked = sorted(
            (w for w in counts if w not in chosen),
            key=lambda w: (-(counts[w] * math.log(n / frequency[w])), w),
        )
        chosen.extend(ranked[: max(keyword_count - len(chosen), 0)])
        targets.append(" ".join(chosen) or (doc[0] if doc else "item"))
    return targets
