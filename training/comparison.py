"""`genrec-train compare`: every method and the baselines on one dataset and split, with paired
bootstrap intervals, training time and recommend latency (docs/results.md shows its tables).

Entries are presets (trained into OUT/bundles/, reused when a bundle of the same config is
already there) or bundle folders. Every bundle must come from the same data settings (dataset,
filtering, new-item share), so all rankers see the same users, items and targets. The
baselines are popularity, transitions, the content baseline (training.baselines) and every method whose kind
is named a baseline (SASRec by default). The strongest baseline is the one with the best
*validation* NDCG@10 (choosing on test would flatter it); each row's test NDCG@10 is compared
with it by a paired bootstrap over the test users.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from genrec.bundle import MANIFEST_NAME, items_trie, load_bundle  # noqa: E402
from genrec.config import TrainConfig, apply_override  # noqa: E402
from genrec.errors import ConfigError  # noqa: E402
from genrec.method import RuntimeOptions, load_method  # noqa: E402

from .bootstrap import bootstrap_mean, paired_bootstrap  # noqa: E402
from .cold import cold_users, cold_view, receive_new_items  # noqa: E402
from .evaluation import METRICS, SPLITS, evaluate_users, evaluation_users, means, user_query  # noqa: E402
from .pipeline import baselines, load_config_dataset, run  # noqa: E402
from .presets import preset  # noqa: E402

KEY = "ndcg@10"
# What makes the split: the same users, items and targets for every ranker. (Item text length
# is a method's own setting: each method receives the new items' text as its config cuts it.)
DATA_KEYS = ("dataset", "data_dir", "kcore", "cold_items")


@dataclass
class Row:
    name: str
    kind: str  # a method kind, or "baseline"
    baseline: bool
    per_user: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # split -> metric -> values
    train_s: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    new_items_recommendable: bool | None = None


def resolve(entries: list[str], out: Path, overrides: list[str], cold_items: float | None,
            progress: bool) -> list[Path]:
    """Bundle folders for the entries, training the presets that have none yet. An override
    applies to the presets that have its section (`recommender.epochs` to IDGenRec's only); one
    that no preset has is an error."""
    folders = []
    used: set[str] = set()
    for entry in entries:
        path = Path(entry)
        if (path / MANIFEST_NAME).is_file():
            folders.append(path)
            continue
        config = preset(entry)
        for assignment in overrides:
            if assignment.split("=", 1)[0].split(".")[0].strip() in config.to_dict():
                apply_override(config, assignment)
                used.add(assignment)
        if cold_items is not None:
            config.data.cold_items = cold_items
        folder = out / "bundles" / (entry + (f"-cold{cold_items:g}" if cold_items else ""))
        if not _same_config(folder, config):
            run(config, folder, progress=progress)
        folders.append(folder)
    unused = [a for a in overrides if a not in used]
    if unused:
        raise ConfigError(f"override(s) {unused} match no section of the presets compared")
    return folders


def _same_config(folder: Path, config: TrainConfig) -> bool:
    manifest = folder / MANIFEST_NAME
    return manifest.is_file() and json.loads(manifest.read_text()).get("config") == config.to_dict()


def _data_settings(config: TrainConfig) -> dict:
    return {key: getattr(config.data, key) for key in DATA_KEYS}


def latency(ranker, trie, split, users: list[str], batch: int, repeat_batches: int = 1) -> dict[str, float]:
    """Milliseconds per `recommend` call of `batch` test users (k=10), median over the calls
    (with fewer users than a batch, they are repeated to fill one)."""
    queries = [user_query(split, u, "test") for u in users]
    if len(queries) < batch:
        queries = (queries * (batch // max(len(queries), 1) + 1))[:batch]
    ranker.recommend(queries[:batch], 10, trie)  # warm-up
    times = []
    for start in range(0, len(queries) - batch + 1, batch):
        t = time.perf_counter()
        ranker.recommend(queries[start : start + batch], 10, trie)
        times.append((time.perf_counter() - t) * 1000)
    return {f"batch{batch}_ms": statistics.median(times) if times else float("nan")}


def compare(entries: list[str], out: Path, *, overrides: list[str] = (), cold_items: float | None = None,
            baseline_kinds: tuple[str, ...] = ("sasrec",), resamples: int = 1000, seed: int = 0,
            latency_users: int = 64, progress: bool = True, device: str = "auto",
            precision: str | None = None) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    folders = resolve(list(entries), out, list(overrides), cold_items, progress)
    bundles = [load_bundle(f) for f in folders]
    configs = [b.train_config for b in bundles]
    settings = {json.dumps(_data_settings(c), sort_keys=True) for c in configs}
    if len(settings) > 1:
        raise ConfigError("the bundles come from different data settings (dataset, filtering or new-item "
                          f"share): {sorted(settings)}; compare bundles of one split")
    config = configs[0]
    dataset = load_config_dataset(config)
    view = cold_view(dataset, config.data.cold_items)
    split = dataset.split
    users = {which: evaluation_users(split, which) for which in SPLITS}
    cold = {which: set(cold_users(split, which, view.withheld)) for which in SPLITS}
    timing_users = users["test"][:latency_users]

    texts = {config.data.max_text_chars: dataset}
    rows: list[Row] = []
    for bundle, folder, cfg in zip(bundles, folders, configs, strict=True):
        method = load_method(bundle, RuntimeOptions(device=device, precision=precision))
        if cfg.data.max_text_chars not in texts:
            texts[cfg.data.max_text_chars] = load_config_dataset(cfg)
        own = texts[cfg.data.max_text_chars]
        new = receive_new_items(method, own, bundle.items, view.withheld, bundle.tokenizer.eos_token_id)
        trie = items_trie(bundle.items + new, bundle.tokenizer.eos_token_id)
        saved = json.loads((folder / "eval.json").read_text()) if (folder / "eval.json").is_file() else {}
        row = Row(_unique_name(f"{method.label} ({cfg.name}", folder, rows), method.kind, method.kind in baseline_kinds,
                  train_s=saved.get("timings_s", {}).get("total"),
                  new_items_recommendable=method.new_items_recommendable)
        _score(row, method, trie, split, users, cfg.eval.batch_size, progress)
        for batch in (1, 32):
            row.latency_ms.update(latency(method, trie, split, timing_users, batch))
        rows.append(row)
    for name, make in baselines(dataset, view.train.split).items():
        row = Row(name, "baseline", True)
        for which in SPLITS:
            row.per_user[which] = evaluate_users(make(which), None, split, which, users[which], progress=False)
        for batch in (1, 32):
            row.latency_ms.update(latency(make("test"), None, split, timing_users, batch))
        rows.append(row)

    summary = {
        "dataset": dataset.name, "data": _data_settings(config), "resamples": resamples, "seed": seed,
        "users": {which: len(users[which]) for which in SPLITS},
        "all_users": _table(rows, users, None, resamples, seed),
    }
    if view.withheld:
        summary["new_items"] = {
            "withheld": len(view.withheld), "users": {which: len(cold[which]) for which in SPLITS},
            **_table(rows, users, cold, resamples, seed),
        }
    summary["wall_s"] = time.perf_counter() - started
    write(summary, out)
    return summary


def _unique_name(stem: str, folder: Path, rows: list[Row]) -> str:
    """A row's name, "Label (config)"; two bundles of one config (a preset trained twice with
    other settings) are told apart by their folders. The tables key rows by name, so a repeated
    name would show one bundle's metrics twice."""
    taken = {row.name for row in rows}
    name = f"{stem})"
    if name in taken:
        name = f"{stem}, {folder.name})"
    number = 2
    while name in taken:
        name, number = f"{stem}, {folder.name} #{number})", number + 1
    return name


def _score(row: Row, ranker, trie, split, users: dict[str, list[str]], batch_size: int, progress: bool) -> None:
    for which in SPLITS:
        row.per_user[which] = evaluate_users(ranker, trie, split, which, users[which], batch_size=batch_size,
                                             progress=progress)


def _subset(row: Row, which: str, users: dict[str, list[str]], keep: dict[str, set[str]] | None) -> dict:
    values = row.per_user[which]
    if keep is None:
        return values
    index = [i for i, u in enumerate(users[which]) if u in keep[which]]
    return {m: [v[i] for i in index] for m, v in values.items()}


def _table(rows: list[Row], users: dict[str, list[str]], keep: dict[str, set[str]] | None, resamples: int,
           seed: int) -> dict:
    """Every row's mean metrics on these users, the strongest baseline (by validation) and each
    row's test NDCG@10 difference to it with its paired-bootstrap interval."""
    view = {row.name: {which: _subset(row, which, users, keep) for which in SPLITS} for row in rows}
    candidates = [r for r in rows if r.baseline and view[r.name]["valid"][KEY]]
    best = max(candidates, key=lambda r: means(view[r.name]["valid"])[KEY]) if candidates else None
    out_rows = []
    for row in rows:
        test = view[row.name]["test"]
        entry = {
            "name": row.name, "kind": row.kind, "baseline": row.baseline,
            "valid": means(view[row.name]["valid"]), "test": means(test),
            "test_interval": bootstrap_mean(test[KEY], resamples=resamples, seed=seed).to_dict() if test[KEY] else None,
            "train_s": row.train_s, "latency_ms": row.latency_ms,
            "new_items_recommendable": row.new_items_recommendable,
        }
        if best is not None and row is not best and test[KEY]:
            entry["vs_best_baseline"] = paired_bootstrap(
                test[KEY], view[best.name]["test"][KEY], resamples=resamples, seed=seed
            ).to_dict()
        out_rows.append(entry)
    return {"best_baseline": best.name if best else None, "rows": out_rows}


def markdown(summary: dict) -> str:
    parts = [f"# Comparison on {summary['dataset']}", "",
             f"Leave-one-out, full ranking, history excluded; {summary['users']['test']} test users; "
             f"paired bootstrap over test users, {summary['resamples']} resamples, seed {summary['seed']}; "
             "the strongest baseline is chosen on validation NDCG@10.", ""]
    sections = [("All test users", summary["all_users"])]
    if "new_items" in summary:
        n = summary["new_items"]
        sections.append((f"Test users whose test item is a new item ({n['users']['test']} users, "
                         f"{n['withheld']} items withheld from training)", n))
    for title, section in sections:
        parts += [f"## {title}", "", f"Strongest baseline: {section['best_baseline']}", ""]
        header = ["valid " + m for m in METRICS] + ["test " + m for m in METRICS]
        parts.append("| model | " + " | ".join(header) + " | test NDCG@10 − best baseline [95% CI] | train | "
                     "latency b1 / b32 (ms) |")
        parts.append("|---" * (len(header) + 4) + "|")
        for r in section["rows"]:
            vs = r.get("vs_best_baseline")
            diff = f"{vs['mean']:+.4f} [{vs['low']:+.4f}, {vs['high']:+.4f}]" if vs else "—"
            train = f"{r['train_s'] / 60:.1f} min" if r.get("train_s") else "—"
            lat = r["latency_ms"]
            cells = [f"{r['valid'][m]:.4f}" for m in METRICS] + [f"{r['test'][m]:.4f}" for m in METRICS]
            parts.append(f"| {r['name']} | " + " | ".join(cells) + f" | {diff} | {train} | "
                         f"{lat.get('batch1_ms', float('nan')):.1f} / {lat.get('batch32_ms', float('nan')):.1f} |")
        parts.append("")
    parts.append(f"Wall time of the command: {summary['wall_s'] / 60:.1f} min.")
    return "\n".join(parts) + "\n"


def plot(summary: dict, path: Path) -> Path:
    sections = [("all test users", summary["all_users"])]
    if "new_items" in summary:
        sections.append(("test users with a new test item", summary["new_items"]))
    fig, axes = plt.subplots(1, len(sections), figsize=(6.5 * len(sections), 3.8), squeeze=False)
    for ax, (title, section) in zip(axes[0], sections, strict=True):
        rows = [r for r in section["rows"] if r["test_interval"]]
        names = [r["name"] for r in rows]
        values = [r["test"][KEY] for r in rows]
        low = [r["test"][KEY] - r["test_interval"]["low"] for r in rows]
        high = [r["test_interval"]["high"] - r["test"][KEY] for r in rows]
        colors = ["tab:grey" if r["baseline"] else "tab:blue" for r in rows]
        ax.barh(names, values, xerr=[low, high], color=colors, capsize=3)
        ax.invert_yaxis()
        ax.set(title=f"test NDCG@10 with its 95% CI\n{title}", xlabel="NDCG@10")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(summary: dict, out: Path) -> None:
    (out / "compare.json").write_text(json.dumps(summary, indent=2, default=float), encoding="utf-8")
    (out / "compare.md").write_text(markdown(summary), encoding="utf-8")
    plot(summary, out / "compare.png")

