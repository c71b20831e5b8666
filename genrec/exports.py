"""The export folder: what `genrec-serve export` writes (service/export.py) and `genrec-train run
--data-dir` reads (training/data.py), so both sides agree on its names (docs/operations.md,
"Export").

    export.json     {format, format_version, catalog, dataset, name, base, bundle, boundary,
                     items, events, files}
    <name>.item     RecBole atomic file of the catalog's items and their metadata
    <name>.inter    RecBole atomic file of the users' events (user_id, item_id, timestamp)
    catalog.jsonl   one item a line: item_id, textual_id, source, text, created_at
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError

FORMAT = "genrec-export"
FORMAT_VERSION = 1
MANIFEST_NAME = "export.json"
CATALOG_NAME = "catalog.jsonl"


def is_export(folder: Path | str | None) -> bool:
    return folder is not None and (Path(folder) / MANIFEST_NAME).is_file()


def read_export_manifest(folder: Path | str) -> dict:
    """The export's manifest, checked; DataError naming the problem."""
    path = Path(folder) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found ({folder} is not an export of genrec-serve export)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: format_version {manifest.get('format_version')!r}; this code reads {FORMAT_VERSION}")
    name = manifest.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise DataError(f"{path}: 'name' must name the atomic files")
    base = manifest.get("base")
    if base is not None and not (isinstance(base, dict) and isinstance(base.get("dataset"), str)):
        raise DataError(f"{path}: 'base' must be null or {{dataset, data_dir}}")
    for file in (manifest.get("files") or {}):
        if not (Path(folder) / file).is_file():
            raise DataError(f"{Path(folder) / file}: listed in {MANIFEST_NAME} but missing")
    return manifest


def read_export_ids(folder: Path | str) -> dict[str, str]:
    """Item id -> textual ID of every item of an export's catalog (catalog.jsonl)."""
    path = Path(folder) / CATALOG_NAME
    ids: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    ids[str(row["item_id"])] = str(row["textual_id"])
                except (ValueError, KeyError, TypeError):
                    raise DataError(f"{path}, line {number}: expected {{item_id, textual_id, ...}}") from None
    except FileNotFoundError:
        raise DataError(f"{path}: not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    return ids
