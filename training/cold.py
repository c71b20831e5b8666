"""The new-item (cold-start) protocol (docs/methods.md, "Evaluation protocol").

The items whose first interaction falls in the latest `share` of the items' first-interaction
times are withheld from training entirely: the training view of the dataset has neither their
interactions (no training sequence holds them) nor their text (so neither the tokenizer's
corpus, an ID generator's warm-up nor anything else sees it). After training, a method receives
them the way the running service would through `POST /v1/items`: `Method.mint` with the same
code path, and they join the trie. Evaluation then ranks over all items.
"""

from __future__ import annotations

from dataclasses import dataclass

from genrec.bundle import BundleItem
from genrec.errors import ConfigError
from genrec.item_text import metadata_values_text
from genrec.method import Method, NewItem
from genrec.textual_ids import claim_in

from .data import Dataset, ItemMetadata, SplitData


@dataclass
class ColdView:
    train: Dataset  # what training may see
    withheld: list[str]  # the new items, latest first seen last


def withheld_items(dataset: Dataset, share: float) -> list[str]:
    """The `share` of the catalog's items first seen latest (ties by catalog order)."""
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"data.cold_items must be in [0, 1), got {share}")
    items = list(dataset.catalog.items)
    count = round(share * len(items))
    if count == 0:
        return []
    order = sorted(range(len(items)), key=lambda i: (dataset.first_seen.get(items[i], float("-inf")), i))
    return [items[i] for i in order[-count:]]


def cold_view(dataset: Dataset, share: float) -> ColdView:
    """The training view without the withheld items (the dataset itself when share is 0)."""
    withheld = withheld_items(dataset, share)
    if not withheld:
        return ColdView(dataset, [])
    gone = set(withheld)
    train: dict[str, list[str]] = {}
    for user, items in dataset.split.train.items():
        kept = [i for i in items if i not in gone]
        if kept:
            train[user] = kept
    split = SplitData(
        train=train,
        valid={u: i for u, i in dataset.split.valid.items() if u in train and i not in gone},
        test={u: i for u, i in dataset.split.test.items() if u in train and i not in gone},
    )
    view = Dataset(
        name=dataset.name,
        catalog=ItemMetadata({i: m for i, m in dataset.catalog.items.items() if i not in gone}),
        split=split,
        item_text={i: t for i, t in dataset.item_text.items() if i not in gone},
        first_seen={i: t for i, t in dataset.first_seen.items() if i not in gone},
    )
    return ColdView(view, withheld)


def receive_new_items(method: Method, dataset: Dataset, known: list[BundleItem], new: list[str],
                      eos_token_id: int) -> list[BundleItem]:
    """The new items minted by the trained method, unique against the known items' IDs, in the
    order given: what `POST /v1/items` does, without Redis."""
    if not new:
        return []
    claim = claim_in({item.textual_id for item in known})
    minted = method.mint(
        [NewItem(dataset.item_text[i], metadata_values_text(dataset.catalog.items[i])) for i in new], claim
    )
    return [BundleItem(i, m.textual_id, list(m.token_ids) + [eos_token_id], dataset.item_text[i])
            for i, m in zip(new, minted, strict=True)]


def cold_users(split: SplitData, which: str, withheld: list[str]) -> list[str]:
    """Users whose `which` target is a withheld item (the new-item subset)."""
    gone = set(withheld)
    return [u for u in split.train if getattr(split, which).get(u) in gone]
