"""What a request's filter and exclude_items cost. Two parts:

1. The tiny test bundle (tests/service/conftest.py: IDGenRec, 40 items, 10 beams): one request
   through the engine (the filter resolved by the catalog's index, then the decode), with no
   filter, with filters that keep 13 and 4 items, with the 13-item filter given instead as the
   exclusion of the other 27 items, and with 5 exclude_items; alone and in batches of 16.
2. Catalog scale (synthetic IDs, as benchmarks.trie_scale): the filter index's resolution of a
   one-word filter, and the trie pruning of the items it lets through (`live_node_keys`, what an
   allowed set costs) beside the pruning of their complement (`dead_node_keys`, what the same
   filter would cost as exclusions).

    python -m benchmarks.filters [--sizes 10000,100000] [--out benchmarks/results/filters.json]
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np

from genrec.bundle import load_bundle
from genrec.item_set import IndexedItems
from genrec.trie import TextualIdTrie
from service.catalog import Catalog
from service.engine import Engine, RecommendJob
from service.filters import FilterIndex
from service.metrics import ServiceMetrics

from .common import parser, print_table, setup, write_json
from .trie_scale import EOS, synthetic_ids

GENRES = [f"genre{i}" for i in range(20)]


def median_ms(cases: dict, repeat: int) -> dict[str, float]:
    """The median of `repeat` timings of each case's function, in ms, the cases taken in
    rotation (a load that comes and goes hits them alike), after one warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(repeat):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: float(np.median(found)) for name, found in times.items()}


def bundle_part(repeat: int) -> list[dict]:
    from tests.service.conftest import build_tiny_bundle

    with tempfile.TemporaryDirectory() as folder:
        bundle = load_bundle(build_tiny_bundle(Path(folder) / "tiny"))
        catalog = Catalog(bundle.items, bundle.tokenizer.eos_token_id)
        engine = Engine(bundle, catalog, None, ServiceMetrics())  # loads the models from the folder
    items = [i.item_id for i in bundle.items]
    rng = random.Random(0)
    histories = [tuple(rng.sample(items, 3)) for _ in range(16)]
    comedy = catalog.matching({"genres": ["comedy"]})
    cases = {
        "no filter": lambda h: RecommendJob(h, 10, True),
        "filter genres=comedy (13 items)": lambda h: RecommendJob(
            h, 10, True, allowed=catalog.matching({"genres": ["comedy"]})),
        "filter title=red (4 items)": lambda h: RecommendJob(h, 10, True, allowed=catalog.matching({"title": ["red"]})),
        "the 13-item filter as 27 exclude_items": lambda h: RecommendJob(
            h, 10, True, exclude_items=tuple(i for i in items if i not in comedy)),
        "5 exclude_items": lambda h: RecommendJob(h, 10, True, exclude_items=tuple(items[-5:])),
    }
    one = median_ms({name: lambda job=job: engine.recommend_batch([job(histories[0])])
                     for name, job in cases.items()}, repeat)
    batch = median_ms({name: lambda job=job: engine.recommend_batch([job(h) for h in histories])
                       for name, job in cases.items()}, max(3, repeat // 4))
    rows = [{"case": name, "one_ms": one[name], "batch16_ms": batch[name], "one_vs_unfiltered": one[name] / one["no filter"],
             "batch16_vs_unfiltered": batch[name] / batch["no filter"]} for name in cases]
    resolve = median_ms({"resolve": lambda: catalog.matching({"genres": ["comedy", "drama"], "title": ["red", "blue"]})},
                        200)
    rows.append({"case": "resolving a 2-field filter (catalog index)", "one_ms": resolve["resolve"]})
    return rows


def scale_part(size: int, repeat: int) -> dict:
    sequences = synthetic_ids(size)
    trie = TextualIdTrie([str(i) for i in range(size)], sequences, EOS)
    tables = trie.tables()
    rng = np.random.default_rng(1)
    index = FilterIndex()  # items numbered by their trie index, as the catalog does
    for item, genres in enumerate(rng.integers(0, len(GENRES), size=(size, 2)).tolist()):
        index.add(item, {"genres": [GENRES[g] for g in genres]})
    one_word = {"genres": [GENRES[0]]}
    allowed = index.matching(one_word).tolist()
    complement = sorted(set(range(size)) - set(allowed))
    timed = median_ms({
        "resolve_ms": lambda: index.matching(one_word),
        "as_item_ids_ms": lambda: frozenset(IndexedItems(index.matching(one_word), trie)),  # what an item-table
        # method reads; IDGenRec takes the indices as they are
        "live_nodes_of_allowed_ms": lambda: tables.live_node_keys([allowed]),
        "dead_nodes_of_complement_ms": lambda: tables.dead_node_keys([complement]),
    }, max(3, repeat // 4))
    return {"size": size, "qualifying": len(allowed), **timed}


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], bundle_required=False)
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--repeat", type=int, default=40)
    args = p.parse_args(argv)
    setup(args)
    rows = bundle_part(args.repeat)
    print_table("tiny test bundle (IDGenRec, 40 items, 10 beams), k=10: median ms",
                ["case", "one_ms", "batch16_ms", "one_vs_unfiltered", "batch16_vs_unfiltered"],
                [[r["case"], r["one_ms"], r.get("batch16_ms", ""), r.get("one_vs_unfiltered", ""),
                  r.get("batch16_vs_unfiltered", "")] for r in rows])
    scale = [scale_part(int(size), args.repeat) for size in args.sizes.split(",")]
    print_table("catalog scale: a one-word filter (~10% of the items qualify), one request: median ms",
                ["size", "qualifying", "resolve_ms", "as_item_ids_ms", "live_nodes_of_allowed_ms",
                 "dead_nodes_of_complement_ms"],
                [[r[c] for c in ("size", "qualifying", "resolve_ms", "as_item_ids_ms", "live_nodes_of_allowed_ms",
                                 "dead_nodes_of_complement_ms")] for r in scale])
    result = {"bundle": rows, "scale": scale}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
