"""Do the ID caps (genrec/textual_ids.py) change any real ID? Mints the whole ml-100k catalog
twice, with the caps and with them lifted, through both paths that make IDs: IDGenRec's
uniqueness loop (a small untrained generator and the `tiny` preset's mint schedule, so that
many items reach the raised lengths and the numeric suffix) and title-word IDs (CLLM4Rec,
SASRec). Reports how many IDs differ and the longest ID of each kind.

    python -m benchmarks.id_caps [--out benchmarks/results/id_caps.json]
"""

from __future__ import annotations

import contextlib
import time

import genrec.idgenrec.minting as minting
import genrec.textual_ids as textual_ids
from genrec.idgenrec.minting import MintConfig
from genrec.idgenrec.prompts import prompt_corpus
from genrec.item_text import flatten_item_text, metadata_values_text
from genrec.modeling import ModelConfig, build_t5
from genrec.textual_ids import claim_in, title_textual_id
from training.data import find_recbole_dataset, load_recbole_atomic
from training.id_generator import mint_catalog
from training.presets import preset
from training.tokenizer_training import train_tokenizer

from .common import parser, print_table, setup, write_json

SMALL = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
CAPS = ("MAX_ID_WORDS", "MAX_ID_TOKENS", "MAX_ID_WORD_CHARS")


@contextlib.contextmanager
def caps_lifted():
    saved = {name: getattr(textual_ids, name) for name in CAPS}
    saved_minting = minting.MAX_ID_WORD_CHARS
    try:
        for name in CAPS:
            setattr(textual_ids, name, 10**9)
        minting.MAX_ID_WORD_CHARS = 10**9
        yield
    finally:
        for name, value in saved.items():
            setattr(textual_ids, name, value)
        minting.MAX_ID_WORD_CHARS = saved_minting


def mint_all(model, tokenizer, texts, vocabulary, config) -> dict:
    start = time.perf_counter()
    minted, stats = mint_catalog(model, tokenizer, texts, vocabulary, config, progress=False)
    taken: set[str] = set()
    titles = [title_textual_id(tokenizer, text, claim_in(taken)) for text in texts]
    return {"idgenrec": [m.textual_id for m in minted], "titles": [t.textual_id for t in titles],
            "stats": stats.to_dict(), "max_title_tokens": max(len(t.token_ids) for t in titles),
            "seconds": time.perf_counter() - start}


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], bundle_required=False)
    args = p.parse_args(argv)
    setup(args)
    catalog, _ = load_recbole_atomic(find_recbole_dataset("ml-100k"), "ml-100k")
    ids = list(catalog.items)
    texts = [flatten_item_text(catalog.items[i], max_chars=512) for i in ids]
    vocabulary = [metadata_values_text(catalog.items[i]) for i in ids]
    tokenizer = train_tokenizer(texts + prompt_corpus(), vocab_size=5000)
    model = build_t5(SMALL, tokenizer, seed=1).eval()
    config = MintConfig(**preset("tiny").to_dict()["generator"]["mint"])
    capped = mint_all(model, tokenizer, texts, vocabulary, config)
    with caps_lifted():
        lifted = mint_all(model, tokenizer, texts, vocabulary, config)
    differ = {kind: sum(a != b for a, b in zip(capped[kind], lifted[kind], strict=True)) for kind in ("idgenrec", "titles")}
    stats = capped["stats"]
    print_table(
        f"ml-100k: {len(ids)} items minted with and without the ID caps",
        ["path", "IDs that differ", "longest ID (tokens)", "suffixed", "raised length"],
        [["IDGenRec uniqueness loop", differ["idgenrec"], stats["max_tokens"], stats["suffixed"], stats["raised_length"]],
         ["title-word IDs", differ["titles"], capped["max_title_tokens"], "", ""]],
    )
    result = {"items": len(ids), "differ": differ, "caps": {name: getattr(textual_ids, name) for name in CAPS},
              "capped_stats": stats, "max_title_tokens": capped["max_title_tokens"],
              "seconds": {"capped": capped["seconds"], "lifted": lifted["seconds"]}}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
