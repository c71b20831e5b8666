"""Stable textual IDs across bundle versions (`genrec-train run --previous-bundle`;
docs/operations.md, "Retrain from an export").

The items of the previous bundle, and the items of the service's catalog when the data is an
export of it (its minted items included), keep the textual ID they had, where the new tokenizer
allows it: the ID must be its own canonical form under the new tokenizer (its words encode and
decode back unchanged, within the caps of genrec.textual_ids) and unique. Only the other items
get new IDs, which the method mints around the kept ones (they are claimed first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from genrec.bundle import read_items
from genrec.errors import BundleError, DataError
from genrec.exports import is_export, read_export_ids
from genrec.textual_ids import canonical_id

# A kept ID as minting gives one: (textual ID, its tokens without EOS).
KeptId = tuple[str, list[int]]


def previous_ids(previous_bundle: Path | None, data_dir: Path | str | None) -> dict[str, str]:
    """Item id -> textual ID to keep: the previous bundle's, then (overriding) the export's when
    the data is one; {} without a previous bundle."""
    if previous_bundle is None:
        return {}
    try:
        ids = {item.item_id: item.textual_id for item in read_items(Path(previous_bundle))}
    except BundleError as exc:
        raise DataError(f"--previous-bundle {previous_bundle}: {exc}") from None
    if is_export(data_dir):
        ids.update(read_export_ids(data_dir))
    return ids


def kept_ids(tokenizer, item_ids: Sequence[str], previous: dict[str, str]) -> list[KeptId | None]:
    """Per item, in catalog order, the previous ID it keeps, or None (a new item, or an ID the new
    tokenizer cannot encode as it is, or one an earlier item kept already)."""
    taken: set[str] = set()
    kept: list[KeptId | None] = []
    for item_id in item_ids:
        textual_id = previous.get(item_id)
        found = canonical_id(tokenizer, textual_id) if textual_id else None
        if found is None or found[0] != textual_id or textual_id in taken:
            kept.append(None)
            continue
        taken.add(textual_id)
        kept.append(found)
    return kept


def kept_stats(item_ids: Sequence[str], previous: dict[str, str], kept: Sequence[KeptId | None]) -> dict:
    """What the report and the manifest's id_stats say about it."""
    known = sum(item_id in previous for item_id in item_ids)
    count = sum(k is not None for k in kept)
    return {"previous_items": known, "kept": count, "kept_share": count / known if known else 0.0}
