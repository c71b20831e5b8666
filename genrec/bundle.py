"""The bundle: the self-describing folder that training writes and the service loads.

Layout (docs/design.md, "The bundle")::

    manifest.json   format_version, kind, created_at, dataset, config, id_stats, metrics,
                    environment (python, platform, packages: the versions it was written
                    with; bundles written before it have none), files: {relative posix path:
                    sha256} of every other file
    tokenizer/      Hugging Face tokenizer files
    items.jsonl     one item a line: item_id, textual_id, token_ids, text
    popularity.json the training interactions per item, most first (bundles written before it
                    have none: `Bundle.popularity` is None)
    <model folders> the method's own (idgenrec: recommender/ and id_generator/, T5
                    save_pretrained; cllm4rec: cllm4rec/; sasrec: sasrec/)
    report.md, eval.json, *.png

What is in the model folders is the method's business: `genrec.method.load_method` hands the
bundle to the class the registry names for its kind.

`write_bundle` builds the whole folder in a temporary sibling and swaps it into place, so a
crash never leaves a half-written bundle at the target path. `verify_bundle` refuses a
bundle whose format version or kind it does not know, or whose files do not match their
checksums, with a message that names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .bundle_items import ITEMS_NAME, BundleItem, BundleItems, first_token_over, read_items_file
from .config import TrainConfig, config_from_dict
from .environment import environment
from .errors import BundleError, ConfigError
from .registry import kinds

if TYPE_CHECKING:  # transformers and torch load when a bundle does: reading a manifest needs neither
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from .trie import TextualIdTrie

FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS = (1,)

MANIFEST_NAME = "manifest.json"
POPULARITY_NAME = "popularity.json"
TOKENIZER_DIR = "tokenizer"

_CHUNK = 1 << 20  # 1 MiB
# Manifest keys that only this module writes (the checksums and the format identity).
_PROTECTED_KEYS = frozenset({"files", "format_version"})


@dataclass
class Bundle:
    path: Path
    manifest: dict
    tokenizer: PreTrainedTokenizerBase
    items: BundleItems
    # (item_id, training interactions), most first; None for a bundle written before popularity lists
    popularity: list[tuple[str, int]] | None = None

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    @property
    def train_config(self) -> TrainConfig:
        """The config training wrote, read back through the same typed dataclasses."""
        try:
            return config_from_dict({**self.config, "kind": self.kind})
        except (ConfigError, TypeError) as exc:
            raise BundleError(f"bundle {self.path}: its config cannot be read: {exc}") from exc


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dump_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def _check_relative(name: str, what: str) -> str:
    """A bundle-relative posix path that stays inside the bundle; returns it normalised."""
    if not isinstance(name, str) or not name or "\\" in name:
        raise BundleError(f"{what} {name!r} is not a relative posix path inside the bundle")
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise BundleError(f"{what} {name!r} is not a relative posix path inside the bundle")
    return pure.as_posix()


def _list_files(root: Path) -> list[str]:
    """Every regular file under root (relative posix paths), except manifest.json at the top."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                out.append(rel)
    return out


def _checksums(root: Path) -> dict[str, str]:
    return {rel: sha256_file(root / rel) for rel in _list_files(root)}


def _atomic_write_bytes(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_manifest(root: Path, manifest: dict) -> None:
    _atomic_write_bytes(root / MANIFEST_NAME, _dump_json(manifest).encode("utf-8"))


def _write_items(target: Path, items: list[BundleItem]) -> None:
    seen_ids: set[str] = set()
    seen_tids: set[str] = set()
    with open(target, "w", encoding="utf-8") as fh:
        for item in items:
            if item.item_id in seen_ids:
                raise BundleError(f"duplicate item_id {item.item_id!r} in the items to write")
            if item.textual_id in seen_tids:
                raise BundleError(f"duplicate textual_id {item.textual_id!r} in the items to write")
            seen_ids.add(item.item_id)
            seen_tids.add(item.textual_id)
            row = {
                "item_id": str(item.item_id),
                "textual_id": str(item.textual_id),
                "token_ids": [int(t) for t in item.token_ids],
                "text": str(item.text),
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_popularity(target: Path, counts: Mapping[str, int], items: list[BundleItem]) -> None:
    """`popularity.json`: {"items": [[item_id, count], ...]}, most interactions first (ties by
    item id), items with none left out."""
    known = {item.item_id for item in items}
    rows = sorted(((str(i), int(c)) for i, c in counts.items() if c > 0), key=lambda row: (-row[1], row[0]))
    strangers = [item_id for item_id, _ in rows if item_id not in known]
    if strangers:
        raise BundleError(f"popularity counts name {len(strangers)} item(s) not in the bundle, e.g. {strangers[0]!r}")
    target.write_text(json.dumps({"items": rows}, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- writing


def write_bundle(
    out_dir: Path,
    *,
    kind: str,
    tokenizer: PreTrainedTokenizerBase,
    models: dict[str, PreTrainedModel],
    items: list[BundleItem],
    config: dict,
    dataset: str,
    id_stats: dict,
    metrics: dict,
    extra_files: dict[str, Path] | None = None,
    extra_dirs: dict[str, Callable[[Path], None]] | None = None,
    popularity: Mapping[str, int] | None = None,
) -> Path:
    """Write a complete bundle at out_dir, atomically replacing any bundle already there.

    models: folder name -> model (save_pretrained, safetensors); extra_dirs: folder name ->
    function that fills that (already created) folder; extra_files: name in the bundle ->
    existing file to copy; popularity: item id -> training interactions (popularity.json).
    Returns the bundle path.
    """
    if kind not in kinds():
        raise BundleError(f"unknown bundle kind {kind!r}; known kinds: {', '.join(kinds())}")
    out_dir = Path(out_dir).absolute()
    models = dict(models or {})
    extra_files = dict(extra_files or {})
    extra_dirs = dict(extra_dirs or {})

    reserved = {MANIFEST_NAME, ITEMS_NAME, POPULARITY_NAME, TOKENIZER_DIR}
    dir_names: set[str] = set()
    for name in list(models) + list(extra_dirs):
        name = _check_relative(name, "folder name")
        if name in reserved or name in dir_names:
            raise BundleError(f"folder name {name!r} is reserved or given twice")
        dir_names.add(name)
    for name, src in extra_files.items():
        name = _check_relative(name, "extra file name")
        top = name.split("/")[0]
        if name in reserved or top == TOKENIZER_DIR or top in dir_names:
            raise BundleError(f"extra file {name!r} would overwrite a part of the bundle")
        if not Path(src).is_file():
            raise BundleError(f"extra file {name!r}: source {src} is not a file")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        for name, model in models.items():
            model.save_pretrained(str(tmp / name), safe_serialization=True)
        for name, writer in extra_dirs.items():
            folder = tmp / name
            folder.mkdir(parents=True, exist_ok=True)
            writer(folder)
        _write_items(tmp / ITEMS_NAME, list(items))
        if popularity is not None:
            _write_popularity(tmp / POPULARITY_NAME, popularity, list(items))
        for name, src in extra_files.items():
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset": dataset,
            "config": config,
            "id_stats": id_stats,
            "metrics": metrics,
            "environment": environment(),
            "files": _checksums(tmp),
        }
        _write_manifest(tmp, manifest)  # last: a folder without it is not a bundle
        swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def swap_into_place(tmp: Path, out_dir: Path) -> None:
    old: Path | None = None
    if out_dir.exists() or out_dir.is_symlink():
        old = out_dir.with_name(f"{out_dir.name}.old-{secrets.token_hex(4)}")
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)  # put the previous bundle back
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def update_bundle_files(path: Path, files: Mapping[str, Path | bytes | str]) -> dict:
    """Add or replace files in an existing bundle and update their checksums.

    Values: a Path (copied), bytes (written as is) or str (written as UTF-8 text). Each file
    is replaced atomically and the manifest is rewritten last, so that its checksums match.
    Returns the new manifest.
    """
    path = Path(path)
    manifest = read_manifest(path)
    sums = manifest.get("files")
    if not isinstance(sums, dict):
        raise BundleError(f"{path / MANIFEST_NAME}: 'files' is missing or not an object")
    staged: dict[str, bytes] = {}
    for name, content in files.items():
        rel = _check_relative(name, "bundle file name")
        if rel == MANIFEST_NAME:
            raise BundleError("manifest.json cannot be replaced as a file; use update_manifest")
        if isinstance(content, Path):
            if not content.is_file():
                raise BundleError(f"file for {rel!r}: source {content} is not a file")
            staged[rel] = content.read_bytes()
        elif isinstance(content, bytes | bytearray):
            staged[rel] = bytes(content)
        elif isinstance(content, str):
            staged[rel] = content.encode("utf-8")
        else:
            raise BundleError(f"file for {rel!r}: expected Path, bytes or str, got {type(content).__name__}")
    for rel, data in staged.items():
        _atomic_write_bytes(path / rel, data)
        sums[rel] = hashlib.sha256(data).hexdigest()
    manifest["files"] = dict(sorted(sums.items()))
    _write_manifest(path, manifest)
    return manifest


def update_manifest(path: Path, **fields: Any) -> dict:
    """Merge fields into manifest.json (atomically) and return the new manifest.

    A dict value is merged into an existing dict under the same key (new keys win), e.g.
    `update_manifest(p, metrics={"ndcg@10": 0.1})` keeps the other metrics; other values
    replace. 'files' and 'format_version' are managed here and cannot be set.
    """
    path = Path(path)
    bad = _PROTECTED_KEYS & fields.keys()
    if bad:
        raise BundleError(f"manifest keys {sorted(bad)} cannot be set with update_manifest")
    if "kind" in fields and fields["kind"] not in kinds():
        raise BundleError(f"unknown bundle kind {fields['kind']!r}; known kinds: {', '.join(kinds())}")
    manifest = read_manifest(path)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(manifest.get(key), dict):
            manifest[key] = {**manifest[key], **value}
        else:
            manifest[key] = value
    _write_manifest(path, manifest)
    return manifest


# --------------------------------------------------------------------------- reading


def read_manifest(path: Path) -> dict:
    """Parse <path>/manifest.json (no verification beyond being a JSON object)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle folder not found: {path}")
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{MANIFEST_NAME} is missing in bundle {path}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME} in bundle {path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST_NAME} in bundle {path} is not a JSON object")
    return manifest


def _check_header(path: Path, manifest: dict) -> None:
    version = manifest.get("format_version")
    if type(version) is not int or version not in KNOWN_FORMAT_VERSIONS:
        known = ", ".join(str(v) for v in KNOWN_FORMAT_VERSIONS)
        raise BundleError(
            f"{MANIFEST_NAME} in bundle {path}: unknown format_version {version!r}; "
            f"this code reads format_version {known}"
        )
    kind = manifest.get("kind")
    if kind not in kinds():
        raise BundleError(
            f"{MANIFEST_NAME} in bundle {path}: unknown kind {kind!r}; known kinds: {', '.join(kinds())}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{MANIFEST_NAME} in bundle {path}: 'files' must map file names to sha256 hex")
    for required in (ITEMS_NAME,):
        if required not in files:
            raise BundleError(f"{MANIFEST_NAME} in bundle {path} does not list {required}")
    if not any(name.startswith(TOKENIZER_DIR + "/") for name in files):
        raise BundleError(f"{MANIFEST_NAME} in bundle {path} lists no {TOKENIZER_DIR}/ files")


def _verify(path: Path, checksums: bool) -> dict:
    path = Path(path)
    manifest = read_manifest(path)
    _check_header(path, manifest)
    for name, expected in manifest["files"].items():
        rel = _check_relative(name, f"{MANIFEST_NAME} lists a file named")
        fpath = path / rel
        if not fpath.is_file():
            raise BundleError(f"{rel} is listed in {MANIFEST_NAME} but missing from bundle {path}")
        if checksums and sha256_file(fpath) != expected.lower():
            raise BundleError(f"checksum mismatch for {rel}: the file was changed or corrupted")
    return manifest


def verify_bundle(path: Path) -> dict:
    """Check format version, kind, presence and sha256 of every listed file; return the manifest.

    Files present in the bundle but not listed in the manifest are ignored.
    """
    return _verify(path, checksums=True)


def read_items(path: Path) -> BundleItems:
    """Items of a bundle (path: the bundle folder or its items.jsonl), validated."""
    path = Path(path)
    ipath = path / ITEMS_NAME if path.is_dir() else path
    if not ipath.is_file():
        raise BundleError(f"{ITEMS_NAME} not found: {ipath}")
    return read_items_file(ipath)


def read_popularity(path: Path, manifest: dict, items: BundleItems) -> list[tuple[str, int]] | None:
    """The bundle's popularity list, as written (most interactions first); None when its manifest
    lists none (a bundle written before popularity lists). A malformed file, or one naming an item
    the bundle does not hold, is refused."""
    if POPULARITY_NAME not in manifest.get("files", {}):
        return None
    ppath = Path(path) / POPULARITY_NAME
    try:
        data = json.loads(ppath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{POPULARITY_NAME} is not valid JSON: {exc}") from exc
    rows = data.get("items") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(row, list) and len(row) == 2 and isinstance(row[0], str) and type(row[1]) is int and row[1] > 0
        for row in rows
    ):
        raise BundleError(f'{POPULARITY_NAME}: expected {{"items": [[item_id, count > 0], ...]}}')
    known = items.item_ids
    seen: set[str] = set()
    for item_id, _ in rows:
        if item_id not in known:
            raise BundleError(f"{POPULARITY_NAME}: item {item_id!r} is not in {ITEMS_NAME}")
        if item_id in seen:
            raise BundleError(f"{POPULARITY_NAME}: item {item_id!r} is listed twice")
        seen.add(item_id)
    return [(item_id, count) for item_id, count in rows]


def load_bundle(path: Path, *, verify: bool = True) -> Bundle:
    """Load a bundle's manifest (verified unless verify=False), tokenizer and items; the models
    are the method's to load (`load_method`).

    With verify=False the checksums are skipped, but format_version, kind and the presence
    of the listed files are still checked.
    """
    path = Path(path)
    manifest = _verify(path, checksums=verify)
    from .tokenization import load_tokenizer

    tokenizer = load_tokenizer(path / TOKENIZER_DIR)
    items = read_items(path)
    vocab = len(tokenizer)
    outside = first_token_over(items, vocab)
    if outside is not None:
        raise BundleError(
            f"{ITEMS_NAME}: item {items.item_ids[outside]!r} has token ids outside the tokenizer's "
            f"vocabulary of {vocab}"
        )
    return Bundle(path=path, manifest=manifest, tokenizer=tokenizer, items=items,
                  popularity=read_popularity(path, manifest, items))


def items_trie(items: Sequence[BundleItem], eos_token_id: int) -> TextualIdTrie:
    """The prefix trie over the items' textual IDs (their token_ids end with EOS)."""
    from .trie import TextualIdTrie

    if isinstance(items, BundleItems):  # its packed columns, shared
        return TextualIdTrie(items.item_ids, items.token_ids, eos_token_id)
    return TextualIdTrie([i.item_id for i in items], [i.token_ids for i in items], eos_token_id)
