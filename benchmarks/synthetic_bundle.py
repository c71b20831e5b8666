"""A synthetic IDGenRec bundle of any size, for measuring the service on a large catalog (not
for quality): `python -m benchmarks.synthetic_bundle --items 1000000 --out /tmp/synthetic-1m`.

- Item metadata from word lists: a title of 2 to 4 pseudo-words drawn from a lexicon of 30,000
  with Zipf-like frequencies (a few words are common, most rare, as in real titles), a year and
  two genres.
- Textual IDs shaped like IDGenRec's: the title's first three words (the real ml-100k IDs have
  3.6 words on average), made unique as minting makes them (a genre word added, then a numeric
  suffix), encoded with the bundle's tokenizer and EOS: rare words split into several tokens,
  so the trie is deeper and wider than ml-100k's.
- The tokenizer (BPE, 5,000 tokens as the presets use) is trained on the first 50,000 items,
  which are the same whatever the size (items are made in chunks seeded by their position), and
  the models are untrained T5s of the `ml100k` preset's size with fixed seeds: every size gets
  the same tokenizer and the same model, so recommendation costs compare across sizes.
- Written by the real bundle writer (genrec.bundle.write_bundle), with a popularity list, so
  the service loads it like any bundle.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK = 10_000  # items made from one seed
LEXICON_SIZE = 30_000
TOKENIZER_ITEMS = 50_000
GENRES = ["drama", "comedy", "action", "horror", "romance", "animation", "thriller", "documentary",
          "fantasy", "western", "musical", "mystery", "crime", "family", "sport", "history"]
_ONSETS = ["b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "l", "m", "n", "p", "pl",
           "r", "s", "sh", "st", "t", "tr", "v", "w", "z"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
_CODAS = ["", "", "", "n", "r", "s", "l", "m", "nd", "rt", "x"]


def lexicon(size: int = LEXICON_SIZE, seed: int = 0) -> list[str]:
    """`size` distinct pseudo-words of one to three syllables, the shortest first (so the
    frequent words, drawn from the front, are short, as in real text)."""
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        syllables = 1 + int(rng.integers(0, 3)) if len(words) > 2000 else 1 + int(rng.integers(0, 2))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(syllables)
        )
        words.setdefault(word, None)
    return list(words)


def _zipf_weights(size: int, exponent: float = 1.0, offset: float = 20.0) -> np.ndarray:
    weights = 1.0 / (np.arange(size) + offset) ** exponent
    return weights / weights.sum()


def metadata_chunks(count: int, seed: int = 0) -> Iterator[list[dict]]:
    """Item metadata, CHUNK items at a time; the items at a position are the same whatever `count`."""
    words = lexicon(seed=seed)
    cdf = np.cumsum(_zipf_weights(len(words)))
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        rng = np.random.default_rng([seed, start // CHUNK])
        lengths = rng.integers(2, 5, size=n)
        picks = np.minimum(np.searchsorted(cdf, rng.random((n, 4))), len(words) - 1)
        years = rng.integers(1950, 2025, size=n)
        genres = rng.integers(0, len(GENRES), size=(n, 2))
        yield [
            {
                "title": " ".join(words[w] for w in picks[i, : lengths[i]]),
                "year": int(years[i]),
                "genres": list(dict.fromkeys((GENRES[genres[i, 0]], GENRES[genres[i, 1]]))),
            }
            for i in range(n)
        ]


def textual_ids(metadata: list[dict]) -> list[str]:
    """Unique IDs the way minting makes them: the title's first three words; when taken, with a
    genre word; then with a numeric suffix."""
    taken: set[str] = set()
    next_suffix: dict[str, int] = {}
    out = []
    for m in metadata:
        words = m["title"].split(" ")
        candidate = " ".join(words[:3])
        if candidate in taken:
            candidate = f"{candidate} {m['genres'][0]}"
        if candidate in taken:
            base = candidate
            n = next_suffix.get(base, 2)
            while f"{base} {n}" in taken:
                n += 1
            next_suffix[base] = n + 1
            candidate = f"{base} {n}"
        taken.add(candidate)
        out.append(candidate)
    return out


def build(items: int, out: Path, seed: int = 0, quiet: bool = False, tokenizer_items: int = TOKENIZER_ITEMS) -> Path:
    """Writes the synthetic bundle of `items` items at `out`; returns its path. `tokenizer_items`:
    the items the tokenizer is trained on (fewer: a quicker build, another tokenizer)."""
    import torch

    from genrec.bundle import BundleItem, write_bundle
    from genrec.idgenrec.prompts import prompt_corpus
    from genrec.item_text import flatten_item_text, flatten_metadata
    from genrec.modeling import build_t5
    from genrec.tokenization import encode_texts
    from training.presets import preset
    from training.tokenizer_training import train_tokenizer

    def say(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:6.1f} s] {message}", flush=True)

    t0 = time.perf_counter()
    torch.set_num_threads(1)
    metadata = [m for chunk in metadata_chunks(items, seed) for m in chunk]
    texts = [flatten_item_text(flatten_metadata(m)) for m in metadata]
    say(f"{items} items' metadata")
    corpus_items = texts if items >= tokenizer_items else [
        flatten_item_text(flatten_metadata(m)) for chunk in metadata_chunks(tokenizer_items, seed) for m in chunk
    ]
    digits = " ".join(str(n) for n in range(100))
    tokenizer = train_tokenizer(corpus_items[:tokenizer_items] + [digits] + prompt_corpus(), vocab_size=5000)
    say("tokenizer")
    ids = textual_ids(metadata)
    eos = tokenizer.eos_token_id
    bundle_items: list[BundleItem] = []
    for start in range(0, items, 100_000):
        encoded = encode_texts(tokenizer, ids[start : start + 100_000])
        bundle_items.extend(
            BundleItem(f"i{start + j}", tid, tokens + [eos], texts[start + j])
            for j, (tid, tokens) in enumerate(zip(ids[start : start + 100_000], encoded, strict=True))
        )
    if tokenizer.unk_token_id is not None and any(tokenizer.unk_token_id in i.token_ids for i in bundle_items):
        raise RuntimeError("a synthetic ID has unknown tokens")
    mean_tokens = sum(len(i.token_ids) - 1 for i in bundle_items) / max(1, items)
    say(f"textual IDs: mean {mean_tokens:.2f} tokens")
    config = preset("ml100k")
    model_config = config.method.recommender.model
    recommender = build_t5(model_config, tokenizer, seed=0).eval()
    generator = build_t5(config.method.generator.model, tokenizer, seed=1).eval()
    config_dict = config.to_dict()
    popularity = {f"i{i}": max(1, int(2000 / (i + 1) ** 0.7)) for i in range(min(items, 20_000))}
    path = write_bundle(
        out,
        kind="idgenrec",
        tokenizer=tokenizer,
        models={"recommender": recommender, "id_generator": generator},
        items=bundle_items,
        config=config_dict,
        dataset=f"synthetic-{items}",
        id_stats={"unique": items, "mean_tokens": mean_tokens, "synthetic": True},
        metrics={},
        popularity=popularity,
    )
    say(f"bundle written at {path}")
    return path


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--out", type=Path, default=None, help="bundle folder (default /tmp/genrec-synthetic-<items>)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    return build(args.items, args.out or Path(f"/tmp/genrec-synthetic-{args.items}"), args.seed)


if __name__ == "__main__":
    main()
