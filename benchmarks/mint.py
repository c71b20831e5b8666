"""Whole-catalog minting with the bundle's ID generator: batched (the bundle's mint batch size)
vs one item at a time, same uniqueness rule (claims in an in-memory set)."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from genrec.bundle import load_bundle
from genrec.idgenrec.minting import MintConfig
from genrec.item_text import metadata_values_text
from genrec.method import load_method
from training.id_generator import mint_catalog

from .common import load_split, parser, plot_path, print_table, pyplot, setup, write_json


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=200, help="catalog items to mint (default 200)")
    p.add_argument(
        "--batch", type=int, default=None, help="batch size (default: the bundle's mint batch_size)"
    )
    args = p.parse_args(argv)
    setup(args)
    bundle = load_bundle(args.bundle)
    dataset = load_split(bundle)
    item_ids = list(dataset.catalog.items)[: args.items]
    texts = [dataset.item_text[i] for i in item_ids]
    vocabulary = [metadata_values_text(dataset.catalog.items[i]) for i in item_ids]
    config: MintConfig = bundle.train_config.generator.mint
    batched_config = replace(config, batch_size=args.batch or config.batch_size)
    single_config = replace(config, batch_size=1)
    model, tok = load_method(bundle).id_generator, bundle.tokenizer

    mint_catalog(model, tok, texts[:4], vocabulary[:4], batched_config, progress=False)  # warm-up
    runs = {}
    for name, cfg in [("batched", batched_config), ("one at a time", single_config)]:
        start = time.perf_counter()
        minted, stats = mint_catalog(model, tok, texts, vocabulary, cfg, progress=False)
        seconds = time.perf_counter() - start
        ids = [m.textual_id for m in minted]
        runs[name] = {
            "seconds": seconds,
            "items_per_s": len(ids) / seconds,
            "unique": len(set(ids)) == len(ids),
            "generator_calls": stats.generator_calls,
            "raised_penalty": stats.raised_penalty,
            "suffixed": stats.suffixed,
            "ids": ids,
        }
    same = sum(a == b for a, b in zip(runs["batched"]["ids"], runs["one at a time"]["ids"], strict=True))
    result = {
        "items": len(item_ids),
        "batch_size": batched_config.batch_size,
        "torch_threads": torch.get_num_threads(),
        "batched_s": runs["batched"]["seconds"],
        "single_s": runs["one at a time"]["seconds"],
        "speedup": runs["one at a time"]["seconds"] / runs["batched"]["seconds"],
        "unique_batched": runs["batched"]["unique"],
        "unique_single": runs["one at a time"]["unique"],
        "same_ids": same,
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "ids"} for k, v in runs.items()},
    }
    print_table(
        f"minting {len(item_ids)} items",
        ["mode", "s", "items/s", "unique", "generator calls", "raised penalty", "suffixed"],
        [
            [
                name,
                r["seconds"],
                r["items_per_s"],
                r["unique"],
                r["generator_calls"],
                r["raised_penalty"],
                r["suffixed"],
            ]
            for name, r in runs.items()
        ],
    )
    print(
        f"speedup batched / one at a time: {result['speedup']:.2f}x; same IDs for {same}/{len(item_ids)} items"
    )
    write_json(args.out, result)
    png = plot_path(args.out)
    if png is not None:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.bar(list(runs), [r["items_per_s"] for r in runs.values()])
        ax.set_ylabel("items minted per second")
        ax.set_title(f"{len(item_ids)} items")
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        print(f"wrote {png}")
    return result


if __name__ == "__main__":
    main()
