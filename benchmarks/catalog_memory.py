"""What the service's catalog costs per item, in-process and without models or Redis: the
resident memory and the time of each part of a start that grows with the catalog (reading
items.jsonl, the trie, the filter and title indexes, the text digests, the decoding tables),
so that a change to one of them is measured without the minutes of a serve_scale run.

    python -m benchmarks.catalog_memory --bundle /tmp/genrec-synthetic/synthetic-100000 \
        [--out benchmarks/results/catalog_memory.json]

CPU seconds beside the wall-clock ones (on a shared machine the wall clock measures the load);
RSS deltas (VmRSS) after each part, with garbage collection off while the parts are built and
the C heap trimmed after each (as the service does at start); "total" is the RSS after
everything less the RSS before the bundle was read, per item.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from .common import parser, print_table, write_json
from .serve_scale import rss_mib


def measure(bundle_path: Path) -> list[dict]:
    import os

    from genrec.bundle import load_bundle
    from service.catalog import Catalog, TextDigests, release_free_memory
    from service.engine import text_digest

    pid = os.getpid()
    rows: list[dict] = []
    gc.collect()
    release_free_memory()
    start_rss = last = rss_mib(pid)["rss_mib"]
    count = 0

    def part(name: str, build):
        nonlocal last
        began, cpu = time.perf_counter(), time.process_time()
        result = build()
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        release_free_memory()
        rss = rss_mib(pid)["rss_mib"]
        rows.append({"part": name, "seconds": seconds, "cpu_seconds": cpu, "rss_delta_mib": rss - last})
        last = rss
        return result

    gc.disable()
    try:
        bundle = part("bundle (load_bundle)", lambda: load_bundle(bundle_path, verify=False))
        count = len(bundle.items)
        catalog = part("catalog (trie, filters, titles)", lambda: Catalog(bundle.items, bundle.tokenizer.eos_token_id))
        digests = part("text digests", lambda: TextDigests(bundle.items, text_digest))
        part("trie tables", catalog.trie.tables)
    finally:
        gc.enable()
    part("gc.collect", gc.collect)
    total = last - start_rss
    rows.append({"part": "total", "seconds": sum(r["seconds"] for r in rows),
                 "cpu_seconds": sum(r["cpu_seconds"] for r in rows), "rss_delta_mib": total})
    for row in rows:
        row["kib_per_item"] = row["rss_delta_mib"] * 1024 / count
        row["items"] = count
    del digests
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    rows = measure(args.bundle)
    print_table(f"catalog memory, {rows[0]['items']:,} items", ["part", "s", "CPU s", "RSS MiB", "KiB/item"],
                [[r["part"], f"{r['seconds']:.2f}", f"{r['cpu_seconds']:.2f}", f"{r['rss_delta_mib']:.1f}", f"{r['kib_per_item']:.3f}"]
                 for r in rows])
    if args.out:
        write_json(args.out, {"bundle": str(args.bundle), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
