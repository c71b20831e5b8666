"""Title-word textual IDs for a whole catalog, for the methods without an ID generator
(CLLM4Rec, SASRec): the API shows them, and new items get theirs the same way."""

from collections.abc import Sequence

from genrec.bundle import BundleItem
from genrec.textual_ids import MintedId, claim_in, title_textual_id

from .stable_ids import kept_ids, kept_stats


def title_id_items(tokenizer, item_ids: Sequence[str], texts: Sequence[str],
                   previous: dict[str, str] | None = None) -> tuple[list[BundleItem], dict]:
    """(bundle items, id_stats): unique IDs claimed in catalog order in an in-memory set.
    `previous`: item id -> textual ID an item keeps where the tokenizer allows
    (training.stable_ids); the others' IDs are made around the kept ones."""
    kept = kept_ids(tokenizer, item_ids, previous) if previous else [None] * len(item_ids)
    claim = claim_in({k[0] for k in kept if k is not None})
    minted = [MintedId(k[0], k[1], 0.0, 0, suffixed=False) if k is not None else title_textual_id(tokenizer, text, claim)
              for k, text in zip(kept, texts, strict=True)]
    eos = tokenizer.eos_token_id
    items = [BundleItem(i, m.textual_id, list(m.token_ids) + [eos], text)
             for i, m, text in zip(item_ids, minted, texts, strict=True)]
    stats = {
        "items": len(items),
        "mean_words": sum(len(m.textual_id.split(" ")) for m in minted) / max(len(minted), 1),
        "suffixed": sum(m.suffixed for m in minted),
    }
    if previous:
        stats["previous"] = kept_stats(item_ids, previous, kept)
    return items, stats
