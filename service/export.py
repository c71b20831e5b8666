"""`genrec-serve export`: the service's catalog and the users' events it stored, written as a
dataset that `genrec-train run --data-dir DIR` reads (docs/operations.md, "Export").

What is written, in a folder that appears whole or not at all (built in a temporary sibling,
then renamed into place):

    <name>.item     RecBole atomic file: every item of the catalog (the bundle's, then the minted
                    ones in the order they were minted) with its metadata fields; a bundle item's
                    fields are read back from its flattened text (the bundle keeps no more)
    <name>.inter    RecBole atomic file: user_id, item_id, timestamp of every stored event
    catalog.jsonl   one item a line: item_id, textual_id, source (bundle | minted), text,
                    created_at: the IDs `genrec-train run --previous-bundle` keeps
    export.json     what this is: the catalog, the dataset name, the boundary, the counts, the
                    files, and `base`: the data the bundle was trained on, which training
                    reads under the export (None: the export alone)

The boundary. One script reads, atomically, the id of the newest entry of the minted-items
stream and the value of the catalog's event counter (service/user_events.py). The export holds
exactly the items minted up to that entry and the events numbered up to that value, whatever is
written while it reads: an item minted later, and an event stored later, are left out, and since
an event can only name an item known when it was stored, every exported event names an exported
item. A user's events are kept to the newest `keep` (the service's cap); an event that a newer
one pushes out of that window while the export reads is missing, as it would be from any later
export.

Redis Cluster: every key of a catalog is in one slot (its hash tag); the boundary script names
keys of that slot only, and SCAN walks every primary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from genrec.bundle import sha256_file, swap_into_place
from genrec.errors import GenRecError
from genrec.exports import CATALOG_NAME, FORMAT, FORMAT_VERSION, MANIFEST_NAME
from genrec.item_text import flatten_item_text, flatten_metadata, item_text_fields

from .redis_clients import STORE_ERRORS, sync_client
from .registry import _glob_escape, namespace
from .user_events import SEQ_START, member_item, member_seq, seq_key

PAGE = 1000  # stream entries, scanned keys and pipelined reads per round trip

# The boundary, in one atomic step on the catalog's slot. KEYS: the minted-items stream, the
# event counter, the seeded marker. Returns {newest stream entry id or '', counter or '', seeded
# digest or '', Redis time seconds, microseconds}.
_BOUNDARY = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local t = redis.call('TIME')
return {newest[1] and newest[1][1] or '', redis.call('GET', KEYS[2]) or '', redis.call('GET', KEYS[3]) or '',
        t[1], t[2]}
"""


class ExportError(GenRecError):
    """A bad export request or an unreadable catalog; the message says which."""


@dataclass
class ExportItem:
    item_id: str
    textual_id: str
    source: str  # "bundle" | "minted"
    text: str
    created_at: str
    fields: dict[str, str]  # metadata as strings (the .item file's columns)


@dataclass
class ExportSummary:
    out: Path
    catalog: str
    dataset: str
    items: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    boundary: dict = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------- reading Redis


class CatalogReader:
    """Reads one catalog's items and users' events from Redis, up to a boundary taken first."""

    def __init__(self, client, catalog: str):
        self.client = client
        self.catalog = catalog
        self.prefix = namespace(catalog)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def boundary(self) -> dict:
        newest, counter, seeded, seconds, micros = self.client.eval(
            _BOUNDARY, 3, self.key("events"), seq_key(self.prefix), self.key("seeded"))
        return {
            "stream_entry": newest or "0-0",
            "event_seq": int(counter) if counter else SEQ_START,
            "seeded": seeded or None,
            "redis_time": int(seconds) + int(micros) / 1e6,
        }

    def minted(self, last_entry: str) -> dict[str, dict]:
        """Item id -> {textual_id, metadata (None when the entry has none)} of the stream entries up
        to `last_entry`, in stream order (an item written back after a lost failover has two
        entries: its first one places it)."""
        found: dict[str, dict] = {}
        if last_entry == "0-0":
            return found
        start = "-"
        while True:
            rows = self.client.xrange(self.key("events"), min=start, max=last_entry, count=PAGE)
            for _entry_id, fields in rows:
                item_id = fields.get("item_id", "")
                if not item_id:
                    continue
                metadata = _json_object(fields.get("metadata"))
                known = found.setdefault(item_id, {"textual_id": fields.get("textual_id", ""), "metadata": None})
                if known["metadata"] is None:
                    known["metadata"] = metadata
            if len(rows) < PAGE:
                return found
            start = f"({rows[-1][0]}"

    def scan(self, kind: str) -> Iterator[str]:
        """The keys `<prefix><kind>:*` (every primary of a cluster)."""
        yield from self.client.scan_iter(match=f"{_glob_escape(self.prefix)}{kind}:*", count=PAGE)

    def hashes(self, keys: list[str]) -> Iterator[tuple[str, dict]]:
        for start in range(0, len(keys), PAGE):
            chunk = keys[start : start + PAGE]
            pipe = self.client.pipeline(transaction=False)
            for key in chunk:
                pipe.hgetall(key)
            yield from zip(chunk, pipe.execute(), strict=True)

    def sorted_sets(self, keys: list[str]) -> Iterator[tuple[str, list]]:
        for start in range(0, len(keys), PAGE):
            chunk = keys[start : start + PAGE]
            pipe = self.client.pipeline(transaction=False)
            for key in chunk:
                pipe.zrange(key, 0, -1, withscores=True)
            yield from zip(chunk, pipe.execute(), strict=True)

    def catalogs(self) -> list[str]:
        """The catalogs this Redis holds (those with a seeded marker), for an error message."""
        names = set()
        for key in self.client.scan_iter(match="genrec:{*}:seeded", count=PAGE):
            found = re.fullmatch(r"genrec:\{(.*)\}:seeded", key)
            if found:
                names.add(found.group(1))
        return sorted(names)


def read_catalog(reader: CatalogReader, boundary: dict, bundle_order: list[str] | None) -> tuple[list[ExportItem], dict]:
    """The items of the catalog at the boundary: the bundle's (in `bundle_order` when given, else by
    id) then the minted ones in stream order; and the counts."""
    minted = reader.minted(boundary["stream_entry"])
    bundle: dict[str, ExportItem] = {}
    records: dict[str, ExportItem] = {}
    item_prefix = reader.key("item:")
    keys = sorted(reader.scan("item"))
    later = 0
    for key, data in reader.hashes(keys):
        item_id = key[len(item_prefix) :]
        if not data:
            continue  # deleted while scanning
        source = data.get("source", "")
        if source == "minted" and item_id not in minted:
            later += 1  # minted after the boundary
            continue
        metadata = _json_object(data.get("metadata"))
        text = data.get("text", "")
        item = ExportItem(item_id, data.get("textual_id", ""), "bundle" if source == "bundle" else "minted", text,
                          data.get("created_at", ""), _fields(metadata, text))
        (bundle if item.source == "bundle" else records)[item_id] = item
    lost = 0
    for item_id, entry in minted.items():
        if item_id in records or item_id in bundle:
            if item_id in records and entry["metadata"] and not records[item_id].fields:
                records[item_id].fields = _fields(entry["metadata"], records[item_id].text)
            continue
        # In the stream, its hash gone (Redis lost it; a replica writes it back later): the entry
        # holds what training needs.
        lost += 1
        metadata = entry["metadata"] or {}
        text = flatten_item_text(flatten_metadata(metadata))
        records[item_id] = ExportItem(item_id, entry["textual_id"], "minted", text, "", _fields(metadata, text))
    if bundle_order is not None:
        rank = {item_id: n for n, item_id in enumerate(bundle_order)}
        ordered = sorted(bundle.values(), key=lambda i: (rank.get(i.item_id, len(rank)), _natural(i.item_id)))
    else:
        ordered = sorted(bundle.values(), key=lambda i: _natural(i.item_id))
    items = ordered + [records[i] for i in minted if i in records]
    counts = {"bundle": len(bundle), "minted": len(items) - len(bundle), "minted_after_boundary": later,
              "minted_without_record": lost}
    return items, counts


def read_events(reader: CatalogReader, boundary: dict, known: set[str]) -> tuple[list[tuple[str, str, float]], dict]:
    """(user, item, timestamp) of every event numbered up to the boundary, per user (sorted by
    id) oldest first; and the counts."""
    user_prefix = reader.key("user:")
    keys = sorted(reader.scan("user"))
    limit = boundary["event_seq"]
    rows: list[tuple[str, str, float]] = []
    later = unknown = users = 0
    for key, members in reader.sorted_sets(keys):
        user_id = key[len(user_prefix) :]
        kept = 0
        for member, score in members:
            if member_seq(member) > limit:
                later += 1
                continue
            item_id = member_item(member)
            if item_id not in known:
                unknown += 1  # not among the exported items (an id unfit for a tab-separated file, or lost by Redis)
                continue
            rows.append((user_id, item_id, float(score)))
            kept += 1
        users += kept > 0
    counts = {"events": len(rows), "users": users, "events_after_boundary": later, "events_unknown_item": unknown}
    return rows, counts


# --------------------------------------------------------------------------- writing the folder


def _fields(metadata: dict | None, text: str) -> dict[str, str]:
    """An item's metadata as strings: the posted metadata of a minted item, else the fields of its
    flattened text (a bundle item's)."""
    raw = flatten_metadata(metadata) if metadata else item_text_fields(text)
    return {_column(k): _cell(v) for k, v in raw.items() if _cell(v)}


def _column(name: str) -> str:
    """A metadata field as an atomic file's column name: no whitespace, no ':' (the header's
    separator of name and type), never `item_id`."""
    column = re.sub(r"[\s:]+", "_", name.strip()) or "field"
    return f"{column}_" if column == "item_id" else column


def _cell(value: str) -> str:
    """A value on one line of a tab-separated file."""
    return " ".join(str(value).split())


def _natural(item_id: str) -> list:
    """A sort key that puts m2 before m10 (ids with numbers in them in their numbers' order)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", item_id)]


def _json_object(raw: str | None) -> dict | None:
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def file_stem(dataset: str) -> str:
    """The atomic files' name: the dataset name as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", dataset).strip("-.") or "export"


def _tsv_safe(value: str) -> bool:
    """Whether an id survives a tab-separated line as is (the reader strips values)."""
    return bool(value) and value == value.strip() and not any(c in value for c in "\t\r\n")


def write_export(out: Path, *, stem: str, items: list[ExportItem], events: list[tuple[str, str, float]],
                 manifest: dict) -> Path:
    """Writes the folder in a temporary sibling and renames it into place (replacing `out`)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        columns = list(dict.fromkeys(name for item in items for name in item.fields))
        with open(tmp / f"{stem}.item", "w", encoding="utf-8") as fh:
            fh.write("\t".join(["item_id:token"] + [f"{c}:token_seq" for c in columns]) + "\n")
            for item in items:
                fh.write("\t".join([item.item_id] + [item.fields.get(c, "") for c in columns]) + "\n")
        with open(tmp / f"{stem}.inter", "w", encoding="utf-8") as fh:
            fh.write("user_id:token\titem_id:token\ttimestamp:float\n")
            for user, item, timestamp in events:
                fh.write(f"{user}\t{item}\t{timestamp!r}\n")
        with open(tmp / CATALOG_NAME, "w", encoding="utf-8") as fh:
            for item in items:
                fh.write(json.dumps({"item_id": item.item_id, "textual_id": item.textual_id, "source": item.source,
                                     "text": item.text, "created_at": item.created_at}, ensure_ascii=False) + "\n")
        names = [f"{stem}.item", f"{stem}.inter", CATALOG_NAME]
        manifest = {**manifest, "files": {name: sha256_file(tmp / name) for name in names}}
        for name in names:
            _fsync(tmp / name)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _fsync(tmp / MANIFEST_NAME)
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------- the export


def export_catalog(client, catalog: str, out: Path, *, dataset: str, base: dict | None = None,
                   bundle_order: list[str] | None = None, bundle_info: dict | None = None,
                   force: bool = False) -> ExportSummary:
    """Exports `catalog` from the Redis behind `client` (sync, plain or cluster) into `out`."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not (force and (out / MANIFEST_NAME).is_file()):
        raise ExportError(f"{out} exists; pass --force to replace an earlier export there"
                          if (out / MANIFEST_NAME).is_file() else
                          f"{out} exists and is not an export; choose a new folder")
    reader = CatalogReader(client, catalog)
    boundary = reader.boundary()
    items, item_counts = read_catalog(reader, boundary, bundle_order)
    if not items:
        known = reader.catalogs()
        raise ExportError(f"catalog {catalog!r} has no items in this Redis (nothing seeded or minted under "
                          f"{namespace(catalog)}); catalogs here: {', '.join(known) if known else 'none'}")
    bad = [i.item_id for i in items if not _tsv_safe(i.item_id)]
    items = [i for i in items if _tsv_safe(i.item_id)]
    events, event_counts = read_events(reader, boundary, {i.item_id for i in items})
    unsafe_users = sum(not _tsv_safe(user) for user, _, _ in events)
    events = [e for e in events if _tsv_safe(e[0])]
    item_counts["skipped_unsafe_ids"] = len(bad)
    event_counts["skipped_unsafe_user_ids"] = unsafe_users
    stem = file_stem(dataset)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "catalog": catalog,
        "dataset": dataset,
        "name": stem,
        "base": base,
        "bundle": bundle_info,
        "boundary": boundary,
        "items": item_counts,
        "events": event_counts,
    }
    path = write_export(out, stem=stem, items=items, events=events, manifest=manifest)
    return ExportSummary(path, catalog, dataset, item_counts, event_counts, boundary, time.perf_counter() - started)


def bundle_details(bundle_dir: Path) -> tuple[str, str, list[str], dict, dict | None]:
    """(catalog, dataset, item order, bundle info, base data) of a bundle folder: the service's
    default catalog for it and the data its config names. Read from its manifest and item list
    alone (no tokenizer or model: the command starts in a second, not after importing torch)."""
    from genrec.bundle import ITEMS_NAME, read_manifest

    from .registry import default_catalog_name

    manifest = read_manifest(bundle_dir)
    config = manifest.get("config", {}).get("data", {})
    dataset = str(manifest.get("dataset") or config.get("dataset") or "")
    base = {"dataset": config.get("dataset") or dataset, "data_dir": config.get("data_dir")} if dataset else None
    info = {"path": str(Path(bundle_dir).absolute()), "created_at": manifest.get("created_at"),
            "kind": manifest.get("kind")}
    try:
        with open(Path(bundle_dir) / ITEMS_NAME, encoding="utf-8") as lines:
            order = [json.loads(line)["item_id"] for line in lines if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"{Path(bundle_dir) / ITEMS_NAME}: cannot be read ({exc})") from None
    return default_catalog_name(manifest), dataset, order, info, base


# --------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genrec-serve export",
        description="Write the service's catalog (bundle and minted items) and the users' stored events as a "
                    "dataset genrec-train reads (docs/operations.md, 'Export').")
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL") or os.environ.get("GENREC_REDIS_URL"),
                        help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--cluster", action="store_true",
                        default=os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes"),
                        help="the URL is a Redis Cluster (default: $REDIS_CLUSTER)")
    parser.add_argument("--bundle", type=Path, help="the bundle the service serves: its catalog, dataset and "
                        "training data (the export's base)")
    parser.add_argument("--catalog", help="the catalog's name (default: the bundle's, as the service derives it)")
    parser.add_argument("--dataset", help="dataset name of the files (default: the bundle's dataset)")
    parser.add_argument("--no-base", action="store_true",
                        help="the export alone: training does not read the bundle's training data under it")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (must not exist)")
    parser.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.redis:
        print("genrec-serve export: no Redis: pass --redis URL or set REDIS_URL", file=sys.stderr)
        return 2
    if not args.bundle and not args.catalog:
        print("genrec-serve export: pass --bundle DIR (the served bundle) or --catalog NAME", file=sys.stderr)
        return 2
    client = None
    try:
        catalog, dataset, order, info, base = args.catalog, args.dataset, None, None, None
        if args.bundle:
            bundle_catalog, bundle_dataset, order, info, base = bundle_details(args.bundle)
            catalog = catalog or bundle_catalog
            dataset = dataset or bundle_dataset
        dataset = dataset or re.sub(r"-[0-9a-f]{12}$", "", catalog)
        client = sync_client(args.redis, cluster=args.cluster, decode_responses=True, socket_timeout=30,
                             socket_connect_timeout=5)
        summary = export_catalog(client, catalog, args.out, dataset=dataset, base=None if args.no_base else base,
                                 bundle_order=order, bundle_info=info, force=args.force)
    except GenRecError as exc:
        print(f"genrec-serve export: {exc}", file=sys.stderr)
        return 2
    except STORE_ERRORS as exc:
        print(f"genrec-serve export: Redis: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.close()
    items, events = summary.items, summary.events
    print(f"exported catalog {summary.catalog} to {summary.out} in {summary.seconds:.1f} s: "
          f"{items['bundle']} bundle + {items['minted']} minted items, {events['events']} events of "
          f"{events['users']} users (boundary: stream entry {summary.boundary['stream_entry']}, event "
          f"{summary.boundary['event_seq']})")
    return 0
