"""Loading interaction logs and item metadata, and the paper's evaluation split (docs/methods.md, "Evaluation protocol").

Two input formats are read: RecBole atomic files (MovieLens-100K ships inside the ``recbole``
package) and the Amazon review/metadata JSON-lines files that the papers use. Both end up as the
same plain structures (an :class:`ItemMetadata` and a list of :class:`Interaction`), so everything after
loading -- k-core filtering, per-user sequences, leave-one-out and item text -- is format-blind.

Every problem with the input is reported as :class:`genrec.errors.DataError` naming the file and
what is wrong, never as a raw ``KeyError``/``ValueError``/``JSONDecodeError``.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import importlib.util
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrec.errors import ConfigError, DataError
from genrec.exports import is_export, read_export_manifest
from genrec.item_text import flatten_item_text

__all__ = [
    "ItemMetadata",
    "Dataset",
    "Interaction",
    "SplitData",
    "build_sequences",
    "find_recbole_dataset",
    "flatten_item_text",
    "kcore_filter",
    "leave_one_out",
    "load_amazon",
    "load_dataset",
    "load_recbole_atomic",
]

RECBOLE_INSTALL_HINT = "pip install --no-deps recbole==1.2.1"
AMAZON_PREFIX = "amazon:"

# Amazon metadata fields kept as item metadata, in this order ("category" is the 2018 spelling).
_AMAZON_META_FIELDS = ("title", "brand", "categories", "price", "description")
_WS = re.compile(r"\s+")


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Interaction:
    """One user-item event; the timestamp orders a user's history (ties keep file order)."""

    user_id: str
    item_id: str
    timestamp: float


@dataclass
class ItemMetadata:
    """Item metadata as plain strings, so that item text is built the same way for every format.

    ``items`` maps item_id -> {field name: value}; insertion order is the file order and is kept,
    which makes everything derived from the catalog (ID minting order, tries) reproducible.
    """

    items: dict[str, dict[str, str]]

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.items


@dataclass
class SplitData:
    """Leave-one-out split (docs/methods.md, "Evaluation protocol"): train = all but the last two, valid = 2nd to last, test = last."""

    train: dict[str, list[str]]
    valid: dict[str, str]
    test: dict[str, str]

    def history(self, user: str, split: str, max_len: int = 20) -> list[str]:
        """Items a prompt may see when predicting ``split``, the last ``max_len`` of them.

        'valid' sees only the training part; 'test' sees the training part plus the valid item.
        The target itself is never included, so evaluation cannot leak the answer (docs/methods.md, "Textual user IDs").
        """
        if split not in ("valid", "test"):
            raise ConfigError(f"split must be 'valid' or 'test', got {split!r}")
        if max_len < 1:
            raise ConfigError(f"max_len must be >= 1, got {max_len}")
        if user not in self.train:
            raise DataError(f"unknown user {user!r}: not in the split")
        items = list(self.train[user])
        if split == "test":
            items.append(self.valid[user])
        return items[-max_len:]

    @property
    def users(self) -> list[str]:
        """Users of the split, in order of first appearance in the data."""
        return list(self.train)


@dataclass
class Dataset:
    """Everything training and evaluation need from one data source, already filtered and split."""

    name: str
    catalog: ItemMetadata
    split: SplitData
    item_text: dict[str, str]
    # Time of each item's first interaction (after filtering): what the new-item protocol
    # orders items by (training.cold).
    first_seen: dict[str, float] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- file helpers


def _open_binary(path: Path):
    """Open plain or gzipped files alike; gzip is detected by magic bytes, not only by suffix."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if path.suffix == ".gz":
        raise DataError(f"{path}: has a .gz suffix but is not gzip data")
    return open(path, "rb")


def _iter_lines(path: Path, *, latin1_fallback: bool) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its line ending) of a text file.

    Lines are decoded one by one so that a decoding problem can name its line. RecBole atomic
    files may come from latin-1 sources (MovieLens' own u.item is latin-1), hence the fallback.
    """
    try:
        with _open_binary(path) as fh:
            for number, raw in enumerate(fh, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    if not latin1_fallback:
                        raise DataError(f"{path}, line {number}: not valid UTF-8") from None
                    text = raw.decode("latin-1")
                yield number, text.rstrip("\r\n")
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        # Truncated or corrupt gzip streams surface only while reading.
        raise DataError(f"{path}: cannot be read, corrupt or truncated ({exc})") from None


def _parse_timestamp(value: Any, where: str) -> float:
    """Timestamps must be finite numbers (numeric strings are accepted)."""
    if isinstance(value, bool):
        raise DataError(f"{where}: timestamp {value!r} is not a number")
    try:
        ts = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: timestamp {value!r} is not a number") from None
    if not math.isfinite(ts):
        raise DataError(f"{where}: timestamp {value!r} is not a finite number")
    return ts


def _collapse(text: str) -> str:
    return _WS.sub(" ", text).strip()


# --------------------------------------------------------------------------- RecBole atomic files


def find_recbole_dataset(name: str) -> Path:
    """Folder ``recbole/dataset_example/<name>/`` of the installed recbole package.

    The package is located with ``find_spec`` and never imported: it is installed with --no-deps
    only to get its example data files, so importing it would fail on its missing dependencies.
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"invalid RecBole dataset name {name!r}")
    try:
        spec = importlib.util.find_spec("recbole")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            f"RecBole dataset {name!r} not found: the 'recbole' package is not installed "
            f"(run `{RECBOLE_INSTALL_HINT}`, it only brings the data files)"
        )
    for location in locations:
        folder = Path(location) / "dataset_example" / name
        if folder.is_dir():
            return folder
    examples = Path(locations[0]) / "dataset_example"
    available = sorted(p.name for p in examples.iterdir() if p.is_dir()) if examples.is_dir() else []
    raise DataError(
        f"RecBole dataset {name!r} not found under {examples} (available: {available or 'none'}); "
        f"run `{RECBOLE_INSTALL_HINT}` or pass a data directory holding {name}.inter and {name}.item"
    )


def _read_atomic(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, {field name: value}) of a RecBole atomic file; empty values are dropped.

    The header is ``name:type`` per column; only the name matters here, everything is a string.
    """
    lines = _iter_lines(path, latin1_fallback=True)
    header: list[str] | None = None
    for _number, line in lines:
        if line.strip():
            header = [col.strip().split(":", 1)[0].strip() for col in line.split("\t")]
            break
    if header is None:
        raise DataError(f"{path}: empty file, expected a header line of `field:type` columns")
    if any(not field for field in header):
        raise DataError(f"{path}: header has an empty field name: {header}")
    duplicates = sorted(f for f, c in Counter(header).items() if c > 1)
    if duplicates:
        raise DataError(f"{path}: header repeats field(s) {duplicates}")
    missing = [f for f in required if f not in header]
    if missing:
        raise DataError(f"{path}: header lacks required field(s) {missing} (header: {header})")
    for number, line in lines:
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) > len(header):
            raise DataError(
                f"{path}, line {number}: {len(values)} tab-separated values but the header has {len(header)}"
            )
        # Shorter rows happen when tools strip trailing tabs: the missing values are empty.
        row = {field: value.strip() for field, value in zip(header, values, strict=False) if value.strip()}
        for field in required:
            if field not in row:
                raise DataError(f"{path}, line {number}: empty value for required field {field!r}")
        yield number, row


def load_recbole_atomic(folder: Path, name: str | None = None, *,
                        allow_empty: bool = False) -> tuple[ItemMetadata, list[Interaction]]:
    """Read ``<name>.inter`` (required) and ``<name>.item`` (optional) from a RecBole atomic folder.

    Order: items of the .item file in file order, then items seen only in the .inter file
    (with empty metadata). Without a .item file every interacted item gets empty metadata.
    `allow_empty`: a .inter file with only its header is no error (an export of a service that
    stored no events yet).
    """
    folder = Path(folder)
    name = name or folder.name
    inter_path = folder / f"{name}.inter"
    item_path = folder / f"{name}.item"
    if not inter_path.is_file():
        raise DataError(f"{inter_path}: interaction file not found")

    items: dict[str, dict[str, str]] = {}
    if item_path.is_file():
        for _, row in _read_atomic(item_path, ("item_id",)):
            item_id = row.pop("item_id")
            if item_id not in items:  # the first definition of an item wins
                items[item_id] = {field: _collapse(value) for field, value in row.items()}

    interactions: list[Interaction] = []
    for number, row in _read_atomic(inter_path, ("user_id", "item_id", "timestamp")):
        ts = _parse_timestamp(row["timestamp"], f"{inter_path}, line {number}")
        interactions.append(Interaction(row["user_id"], row["item_id"], ts))
        items.setdefault(row["item_id"], {})
    if not interactions and not allow_empty:
        raise DataError(f"{inter_path}: no interactions (only a header)")
    return ItemMetadata(items), interactions


# --------------------------------------------------------------------------- Amazon JSON lines


def _parse_record(line: str, path: Path, number: int) -> dict[str, Any]:
    """One JSON object per line; old Amazon 2014 meta files hold Python dict literals instead.

    ``ast.literal_eval`` accepts only literals, so the fallback cannot run code (never ``eval``).
    """
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(f"{path}, line {number}: neither JSON nor a Python dict literal") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}, line {number}: expected an object, got {type(record).__name__}")
    return record


def _iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _iter_lines(path, latin1_fallback=False):
        if line.strip():
            yield number, _parse_record(line, path, number)


def _id_value(record: dict[str, Any], field: str, where: str) -> str:
    value = record.get(field)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: missing or empty {field!r}")
    return value.strip()


def _flatten_strings(value: Any) -> list[str]:
    """Strings of arbitrarily nested lists, in order (categories are lists of lists)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for element in value for s in _flatten_strings(element)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    return []


def _format_price(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return _collapse(value)
    return ""


def _amazon_metadata(record: dict[str, Any]) -> dict[str, str]:
    """Keep the descriptive fields of an Amazon meta record, as strings; empty values are dropped."""
    categories_raw = record.get("categories", record.get("category"))
    categories = list(dict.fromkeys(_collapse(s) for s in _flatten_strings(categories_raw)))
    fields = {
        "title": " ".join(_flatten_strings(record.get("title"))),
        "brand": " ".join(_flatten_strings(record.get("brand"))),
        "categories": " ".join(c for c in categories if c),
        "price": _format_price(record.get("price")),
        "description": " ".join(_flatten_strings(record.get("description"))),
    }
    metadata = {}
    for field in _AMAZON_META_FIELDS:
        value = _collapse(fields[field])
        if value:
            metadata[field] = value
    return metadata


def load_amazon(reviews_path: Path, meta_path: Path) -> tuple[ItemMetadata, list[Interaction]]:
    """Read Amazon reviews (reviewerID, asin, unixReviewTime) and metadata JSON lines, plain or gzipped.

    Order: meta file order, then reviewed items that have no meta record (empty metadata).
    """
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    # Check both files before the (possibly long) parse of the first.
    for path in (reviews_path, meta_path):
        if not path.is_file():
            raise DataError(f"{path}: file not found")

    items: dict[str, dict[str, str]] = {}
    for number, record in _iter_records(meta_path):
        asin = _id_value(record, "asin", f"{meta_path}, line {number}")
        if asin not in items:
            items[asin] = _amazon_metadata(record)

    interactions: list[Interaction] = []
    for number, record in _iter_records(reviews_path):
        where = f"{reviews_path}, line {number}"
        user = _id_value(record, "reviewerID", where)
        asin = _id_value(record, "asin", where)
        if "unixReviewTime" not in record:
            raise DataError(f"{where}: missing 'unixReviewTime'")
        ts = _parse_timestamp(record["unixReviewTime"], where)
        interactions.append(Interaction(user, asin, ts))
        items.setdefault(asin, {})
    if not interactions:
        raise DataError(f"{reviews_path}: no reviews")
    return ItemMetadata(items), interactions


# --------------------------------------------------------------------------- item text


# --------------------------------------------------------------------------- filtering and splitting


def kcore_filter(interactions: list[Interaction], k: int) -> list[Interaction]:
    """Keep interactions until every remaining user and item has at least ``k`` of them.

    Dropping a sparse item can make a user sparse and vice versa, so this repeats to a fixed point.
    Order is kept; ``k <= 1`` returns an unchanged copy.
    """
    kept = list(interactions)
    if k <= 1:
        return kept
    while True:
        users = Counter(x.user_id for x in kept)
        items = Counter(x.item_id for x in kept)
        filtered = [x for x in kept if users[x.user_id] >= k and items[x.item_id] >= k]
        if len(filtered) == len(kept):
            return filtered
        kept = filtered


def build_sequences(interactions: list[Interaction]) -> dict[str, list[str]]:
    """Per user, item ids by time; ties keep file order (stable sort) so results are reproducible.

    Users appear in order of their first interaction in the input.
    """
    per_user: dict[str, list[Interaction]] = {}
    for x in interactions:
        per_user.setdefault(x.user_id, []).append(x)
    return {
        user: [x.item_id for x in sorted(events, key=lambda x: x.timestamp)]
        for user, events in per_user.items()
    }


def leave_one_out(sequences: dict[str, list[str]]) -> SplitData:
    """The leave-one-out split; users with fewer than 3 items are dropped (no train/valid/test triple)."""
    train: dict[str, list[str]] = {}
    valid: dict[str, str] = {}
    test: dict[str, str] = {}
    for user, items in sequences.items():
        if len(items) < 3:
            continue
        train[user] = list(items[:-2])
        valid[user] = items[-2]
        test[user] = items[-1]
    if not train:
        raise DataError(
            f"no user has at least 3 interactions ({len(sequences)} users), leave-one-out needs 3"
        )
    return SplitData(train=train, valid=valid, test=test)


# --------------------------------------------------------------------------- one entry point


def _find_one(folder: Path, patterns: list[str]) -> Path | None:
    found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if len(found) > 1:
        names = [p.name for p in found]
        raise DataError(f"{folder}: several candidate files {names}, keep only one or name the category")
    return found[0] if found else None


_JSON_SUFFIXES = ("json", "json.gz", "jsonl", "jsonl.gz")


def _amazon_files(folder: Path, category: str | None) -> tuple[Path, Path] | None:
    """Reviews and meta files of an Amazon dump in ``folder`` (2014 and 2018 naming), if any."""
    if category:
        reviews = [f"reviews_{category}.{s}" for s in _JSON_SUFFIXES]
        reviews += [f"reviews_{category}_5.{s}" for s in _JSON_SUFFIXES]
        reviews += [f"{category}.{s}" for s in _JSON_SUFFIXES] + [f"{category}_5.{s}" for s in _JSON_SUFFIXES]
        meta = [f"meta_{category}.{s}" for s in _JSON_SUFFIXES]
    else:
        reviews = [f"reviews_*.{s}" for s in _JSON_SUFFIXES]
        meta = [f"meta_*.{s}" for s in _JSON_SUFFIXES]
    reviews_path = _find_one(folder, reviews)
    meta_path = _find_one(folder, meta)
    if reviews_path is None or meta_path is None:
        return None
    return reviews_path, meta_path


def _load_source(name: str, data_dir: Path | None) -> tuple[ItemMetadata, list[Interaction], str]:
    """Pick the loader for ``name``/``data_dir``; also returns a description of the source for errors."""
    if name.startswith(AMAZON_PREFIX):
        category = name[len(AMAZON_PREFIX) :].strip()
        if not category:
            raise DataError(f"dataset name {name!r}: no Amazon category after 'amazon:'")
        if data_dir is None:
            raise DataError(
                f"dataset {name!r}: Amazon data does not ship with the project, pass a data directory "
                f"holding reviews_{category}(_5).json(.gz) and meta_{category}.json(.gz)"
            )
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(f"{data_dir}: data directory not found")
        for folder in (data_dir, data_dir / category):
            files = _amazon_files(folder, category) if folder.is_dir() else None
            if files:
                return *load_amazon(*files), f"{files[0]} + {files[1]}"
        raise DataError(
            f"{data_dir}: no Amazon files for category {category!r} "
            f"(expected reviews_{category}(_5).json(.gz) and meta_{category}.json(.gz))"
        )

    if not name:
        raise DataError("empty dataset name")
    if data_dir is None:
        folder = find_recbole_dataset(name)
        return *load_recbole_atomic(folder, name), str(folder)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    if (data_dir / f"{name}.inter").is_file():
        return *load_recbole_atomic(data_dir, name), str(data_dir)
    if (data_dir / name / f"{name}.inter").is_file():
        return *load_recbole_atomic(data_dir / name, name), str(data_dir / name)
    files = _amazon_files(data_dir, None)
    if files:
        return *load_amazon(*files), f"{files[0]} + {files[1]}"
    raise DataError(
        f"{data_dir}: no data for {name!r} (expected {name}.inter [+ {name}.item], "
        f"or reviews_*.json(.gz) + meta_*.json(.gz))"
    )


# An export's base may itself be an export (each retraining exports on top of the last); a chain
# longer than this is a loop.
MAX_EXPORT_CHAIN = 64


def load_export(folder: Path, depth: int = 0) -> tuple[ItemMetadata, list[Interaction], str, set[str]]:
    """A `genrec-serve export` folder with its base (the data the exported bundle was trained on,
    itself possibly an export): (catalog, interactions, source, the export's items).

    The base comes first: its items in its order, then the export's items it lacks; its
    interactions, then the export's, less those the base holds already (the same user, item and
    timestamp: events a client posted again). A base item keeps the base's metadata (the export
    holds a bundle item's fields read back from its flattened text)."""
    folder = Path(folder)
    manifest = read_export_manifest(folder)
    catalog, interactions = load_recbole_atomic(folder, manifest["name"], allow_empty=True)
    source = f"{folder} (export of catalog {manifest.get('catalog')})"
    keep = set(catalog.items)
    base = manifest.get("base")
    if base is None:
        if not interactions:
            raise DataError(f"{folder / (manifest['name'] + '.inter')}: no interactions, and the export has no base "
                            f"to train on (it was written with --no-base)")
        return catalog, interactions, source, keep
    if depth >= MAX_EXPORT_CHAIN:
        raise DataError(f"{folder}: exports based on exports more than {MAX_EXPORT_CHAIN} deep (a loop?)")
    base_dir = Path(base["data_dir"]) if base.get("data_dir") else None
    try:
        if is_export(base_dir):
            base_catalog, base_interactions, base_source, base_keep = load_export(base_dir, depth + 1)
            keep |= base_keep
        else:
            base_catalog, base_interactions, base_source = _load_source(base["dataset"], base_dir)
    except DataError as exc:
        raise DataError(f"{folder}: the export's base data ({base['dataset']}"
                        f"{', ' + str(base_dir) if base_dir else ''}) cannot be read: {exc}") from None
    items = dict(base_catalog.items)
    for item_id, meta in catalog.items.items():
        items.setdefault(item_id, meta)
    seen = {(x.user_id, x.item_id, x.timestamp) for x in base_interactions}
    merged = base_interactions + [x for x in interactions if (x.user_id, x.item_id, x.timestamp) not in seen]
    return ItemMetadata(items), merged, f"{source} + {base_source}", keep


def load_dataset(
    name: str, data_dir: Path | None = None, kcore: int = 5, max_text_chars: int = 1024
) -> Dataset:
    """Load, k-core filter, sort by time, split leave-one-out and flatten item text (docs/methods.md, "Evaluation protocol").

    ``name`` is a RecBole atomic name ('ml-100k', read from the recbole package unless
    ``data_dir`` is given) or 'amazon:<Category>' (needs ``data_dir``); a ``data_dir`` holding
    reviews_*/meta_* files is read as Amazon data whatever the name, and one holding an
    export.json as a `genrec-serve export` over its base data (`load_export`). The catalog keeps
    the items that occur in the filtered interactions, in catalog-file order, and every item of an
    export (the service's catalog carries over whole, items without events included). Items without
    any metadata get the text 'item: <id>' so that no item has an empty text to mint an ID from.
    """
    if is_export(data_dir):
        catalog, interactions, source, keep = load_export(Path(data_dir))
    else:
        catalog, interactions, source = _load_source(name, data_dir)
        keep = set()
    filtered = kcore_filter(interactions, kcore)
    if not filtered:
        raise DataError(
            f"{source}: no interactions left after {kcore}-core filtering "
            f"({len(interactions)} before); use a smaller k"
        )
    try:
        split = leave_one_out(build_sequences(filtered))
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    used = {x.item_id for x in filtered} | keep
    kept = ItemMetadata({item_id: meta for item_id, meta in catalog.items.items() if item_id in used})
    item_text = {}
    for item_id, meta in kept.items.items():
        text = flatten_item_text(meta, max_text_chars)
        item_text[item_id] = text or f"item: {item_id}"[:max_text_chars]
    first_seen: dict[str, float] = {}
    for x in filtered:
        if x.timestamp < first_seen.get(x.item_id, math.inf):
            first_seen[x.item_id] = x.timestamp
    return Dataset(name=name, catalog=kept, split=split, item_text=item_text, first_seen=first_seen)
