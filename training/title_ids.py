"""Title-word textual IDs for a whole catalog, for the methods without an ID generator
(CLLM4Rec, SASRec): the API shows them, and new items get theirs the same way."""

from collections.abc import Sequence

from genrec.bundle import BundleItem
from genrec.textual_ids import claim_in, title_textual_id


def title_id_items(tokenizer, item_ids: Sequence[str], texts: Sequence[str]) -> tuple[list[BundleItem], dict]:
    """(bundle items, id_stats): unique IDs claimed in catalog order in an in-memory set."""
    claim = claim_in(set())
    minted = [title_textual_id(tokenizer, text, claim) for text in texts]
    eos = tokenizer.eos_token_id
    items = [BundleItem(i, m.textual_id, list(m.token_ids) + [eos], text)
             for i, m, text in zip(item_ids, minted, texts, strict=True)]
    stats = {
        "items": len(items),
        "mean_words": sum(len(m.textual_id.split(" ")) for m in minted) / max(len(minted), 1),
        "suffixed": sum(m.suffixed for m in minted),
    }
    return items, stats
