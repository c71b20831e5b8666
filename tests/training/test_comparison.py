"""The evaluation harness: the paired bootstrap on a hand-computed case, the baselines, the
new-item (cold) split, and `genrec-train compare` end to end on small presets."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from genrec.bundle import items_trie, load_bundle
from genrec.errors import ConfigError
from genrec.method import Query, load_method
from training import pipeline
from training.baselines import ContentTfIdf, Popularity, Transitions, visible_counts
from training.bootstrap import bootstrap_mean, paired_bootstrap
from training.cli import main as cli_main
from training.cold import cold_users, cold_view, receive_new_items, withheld_items
from training.data import load_dataset
from training.methods import idgenrec as idgenrec_trainer

from .test_pipeline import small_config, write_atomic_dataset

# --------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_on_a_hand_computed_case():
    # Differences (1, 0): a resample of two users has mean difference 0 (prob. 1/4), 0.5 (1/2) or
    # 1 (1/4); the 2.5% and 97.5% percentiles are 0 and 1, the observed mean 0.5.
    interval = paired_bootstrap([1.0, 0.0], [0.0, 0.0], resamples=4000, seed=1)
    assert interval.mean == 0.5 and interval.low == 0.0 and interval.high == 1.0
    assert not interval.excludes_zero()
    # Every user better by exactly 0.25: no spread, the interval is the point.
    same = paired_bootstrap([0.5, 0.75, 1.0], [0.25, 0.5, 0.75], resamples=1000, seed=0)
    assert (same.mean, same.low, same.high) == pytest.approx((0.25, 0.25, 0.25))
    assert same.excludes_zero()
    # Pairing matters: a has the same values as b but each user's own is 0.1 higher.
    b = np.random.default_rng(0).random(200)
    paired = paired_bootstrap(b + 0.1, b, resamples=1000, seed=0)
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    # Seeded: the same draw twice; another seed, another draw.
    assert paired_bootstrap([1, 0, 1, 0], [0, 0, 1, 1], seed=3) == paired_bootstrap([1, 0, 1, 0], [0, 0, 1, 1], seed=3)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_bootstrap_mean_brackets_the_mean():
    values = np.random.default_rng(1).random(500)
    interval = bootstrap_mean(values, resamples=1000, seed=0)
    assert interval.low < values.mean() < interval.high
    assert interval.high - interval.low < 0.1


# --------------------------------------------------------------------------- baselines


def test_popularity_and_content_baselines():
    pop = Popularity(visible_counts(type("S", (), {"train": {"u": ["a", "b", "b"]}, "valid": {}})(), "valid"))
    (row,) = pop.recommend([Query(history=["b"], exclude=["b"])], 5)
    assert [r.item_id for r in row] == ["a"]
    content = ContentTfIdf({"a": "title: space war", "b": "title: space opera", "c": "title: garden love",
                            "d": "title: love story"})
    (row,) = content.recommend([Query(history=["a"], exclude=["a"])], 3)
    assert [r.item_id for r in row][0] == "b"  # shares "space" with a
    assert "a" not in [r.item_id for r in row]
    scores = content.scores(["a"])
    assert scores[content.index["a"]] == pytest.approx(1.0)  # cosine of an item with itself
    assert scores[content.index["c"]] == pytest.approx(0.0, abs=1e-9) or scores[content.index["c"]] < scores[content.index["b"]]


def test_content_words_keep_their_combining_marks():
    """`हिन्दी` and `हिन्द` are two words; Python's \\w cut both into ह न द, one vector for both."""
    content = ContentTfIdf({"a": "title: हिन्दी", "b": "title: हिन्द", "c": "title: ภูมิศาสตร์"})
    assert set(content.vectors[content.index["a"]]) == {"title", "हिन्दी"}
    assert set(content.vectors[content.index["c"]]) == {"title", "ภูมิศาสตร์"}
    assert content.scores(["a"])[content.index["b"]] < 0.5  # only "title" in common


def test_transitions_follow_the_latest_item_then_popularity():
    ranker = Transitions([["a", "b", "c"], ["a", "b"], ["a", "c"], ["d", "a"]], Counter("abcabacda"))
    (row,) = ranker.recommend([Query(history=["d", "a"], exclude=["d", "a"])], 3)
    assert [r.item_id for r in row] == ["b", "c"][:2] + [r.item_id for r in row][2:]  # b (2x) before c (1x)
    assert row[0].score == 2.0 and len(row) == 2  # only b and c are left unseen
    (row,) = ranker.recommend([Query(history=["c"], exclude=["c"])], 2)  # nothing follows c: popularity
    assert [r.item_id for r in row] == ["a", "b"]


# --------------------------------------------------------------------------- the new-item split


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    write_atomic_dataset(root / "data", users=30, items=40, seed=3)
    return root / "data"


def test_withheld_items_are_the_latest_first_seen(data_dir):
    dataset = load_dataset("synth", data_dir, kcore=0)
    withheld = withheld_items(dataset, 0.2)
    assert len(withheld) == round(0.2 * len(dataset.catalog))
    latest_warm = max(t for i, t in dataset.first_seen.items() if i not in withheld)
    assert all(dataset.first_seen[i] >= latest_warm for i in withheld)
    view = cold_view(dataset, 0.2)
    gone = set(withheld)
    assert not gone & {i for seq in view.train.split.train.values() for i in seq}
    assert not gone & set(view.train.catalog.items) and not gone & set(view.train.item_text)
    assert not gone & set(view.train.split.valid.values())
    assert cold_view(dataset, 0.0).train is dataset
    with pytest.raises(ConfigError):
        withheld_items(dataset, 1.0)


def test_a_cold_run_never_sees_the_new_items_and_mints_them_all(data_dir, tmp_path, monkeypatch):
    dataset = load_dataset("synth", data_dir, kcore=0)
    withheld = set(withheld_items(dataset, 0.2))
    secret = {dataset.item_text[i] for i in withheld}
    corpora, warm_texts = [], []
    real_tokenizer, real_warm_up = pipeline.train_tokenizer, idgenrec_trainer.warm_up_generator
    monkeypatch.setattr(pipeline, "train_tokenizer", lambda corpus, size: corpora.append(list(corpus))
                        or real_tokenizer(corpus, size))
    monkeypatch.setattr(idgenrec_trainer, "warm_up_generator", lambda model, tok, texts, *a, **k: warm_texts.append(
        list(texts)) or real_warm_up(model, tok, texts, *a, **k))
    config = small_config(data_dir)
    config.data.cold_items = 0.2
    result = pipeline.run(config, tmp_path / "bundle", progress=False)
    (corpus,) = corpora
    assert corpus and not secret & set(corpus)
    (texts,) = warm_texts
    assert texts and not secret & set(texts)
    bundle = load_bundle(tmp_path / "bundle")
    assert not withheld & {i.item_id for i in bundle.items}  # the bundle holds what training saw
    new = result["new_items"]
    assert new["withheld"] == len(withheld) == new["minted"]
    assert new["users"] == len(cold_users(dataset.split, "test", sorted(withheld))) > 0
    assert set(new["baselines"]) == {"popularity", "transitions", "content"}
    # Every new item is minted by the trained generator, unique, and decodable from the trie.
    method = load_method(bundle)
    minted = receive_new_items(method, dataset, bundle.items, sorted(withheld), bundle.tokenizer.eos_token_id)
    trie = items_trie(bundle.items + minted, bundle.tokenizer.eos_token_id)
    ids = [i.textual_id for i in bundle.items + minted]
    assert len(set(ids)) == len(ids)
    for item in minted:
        index = trie.index_of(item.item_id)
        assert index is not None and list(trie.sequence(index)) == item.token_ids
        assert bundle.tokenizer.decode(item.token_ids[:-1]).strip() == item.textual_id
    # A new item can be recommended by IDGenRec: constrained decoding reaches it.
    found = method.recommend([Query(history=[sorted(withheld)[0]], exclude=())], 40, trie)
    assert withheld & {r.item_id for r in found[0]}


# --------------------------------------------------------------------------- compare, end to end


def test_compare_end_to_end_on_small_presets(data_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    small = ["data.dataset=synth", f"data.data_dir={data_dir}", "data.kcore=0", "tokenizer.vocab_size=200",
             "generator.model.d_model=32", "generator.model.d_ff=64", "generator.model.num_layers=1",
             "generator.model.num_decoder_layers=1", "generator.model.num_heads=2", "generator.model.d_kv=16",
             "generator.warmup_epochs=1", "recommender.model.d_model=32", "recommender.model.d_ff=64",
             "recommender.model.num_layers=1", "recommender.model.num_decoder_layers=1",
             "recommender.model.num_heads=2", "recommender.model.d_kv=16", "recommender.epochs=1",
             "recommender.valid_users=null", "eval.num_beams=10",
             "cllm4rec.model.d_model=32", "cllm4rec.model.d_ff=64", "cllm4rec.model.num_layers=1",
             "cllm4rec.model.num_decoder_layers=1", "cllm4rec.model.num_heads=2", "cllm4rec.model.d_kv=16",
             "cllm4rec.pretrain_epochs=1", "cllm4rec.finetune_epochs=1", "cllm4rec.batch_size=8"]
    args = ["compare", "--configs", "tiny,cllm4rec-tiny", "--out", str(out), "--cold-items", "0.2",
            "--resamples", "200", "--latency-users", "8", "--no-progress", "--baseline-kinds", "cllm4rec"]
    for assignment in small:
        args += ["--set", assignment]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "compare.json").read_text())
    assert (out / "compare.png").is_file() and "Strongest baseline" in (out / "compare.md").read_text()
    names = [r["name"] for r in summary["all_users"]["rows"]]
    assert names == ["IDGenRec (tiny)", "CLLM4Rec (cllm4rec-tiny)", "popularity", "transitions", "content"]
    assert summary["all_users"]["best_baseline"] in {"CLLM4Rec (cllm4rec-tiny)", "popularity", "transitions", "content"}
    for section in ("all_users", "new_items"):
        for row in summary[section]["rows"]:
            assert set(row["test"]) == {"hr@5", "hr@10", "ndcg@5", "ndcg@10"}
            if row["name"] != summary[section]["best_baseline"]:
                vs = row["vs_best_baseline"]
                assert vs["low"] <= vs["mean"] <= vs["high"] and vs["resamples"] == 200
            assert row["latency_ms"]["batch1_ms"] > 0 and row["latency_ms"]["batch32_ms"] > 0
    assert summary["new_items"]["users"]["test"] > 0
    assert summary["data"]["cold_items"] == 0.2
    assert "IDGenRec (tiny)" in printed
    # The bundles are reused by a second run (no retraining: same config) and may be given as folders.
    again = out / "again"
    bundles = sorted(str(p) for p in (out / "bundles").iterdir())
    assert cli_main(["compare", "--configs", ",".join(bundles), "--out", str(again), "--resamples", "200",
                     "--latency-users", "4", "--no-progress"]) == 0
    before = {r["name"]: r["test"] for r in summary["all_users"]["rows"]}
    after = {r["name"]: r["test"] for r in json.loads((again / "compare.json").read_text())["all_users"]["rows"]}
    assert after.keys() == before.keys()
    for name, metrics in after.items():
        assert metrics == pytest.approx(before[name]), name
    # Two bundles of one config get rows of their own (the tables key rows by name).
    twice = out / "twice"
    tiny = next(p for p in bundles if Path(p).name.startswith("tiny"))
    assert cli_main(["compare", "--configs", f"{tiny},{tiny}", "--out", str(twice), "--resamples", "50",
                     "--latency-users", "2", "--no-progress"]) == 0
    rows = json.loads((twice / "compare.json").read_text())["all_users"]["rows"]
    names = [r["name"] for r in rows]
    assert names[:2] == ["IDGenRec (tiny)", f"IDGenRec (tiny, {Path(tiny).name})"] and len(set(names)) == len(names)
    # Presets whose bundles exist with the same config are not trained again.
    stamp = {p.name: (p / "manifest.json").stat().st_mtime for p in (out / "bundles").iterdir()}
    assert cli_main(args) == 0
    assert stamp == {p.name: (p / "manifest.json").stat().st_mtime for p in (out / "bundles").iterdir()}


def test_compare_refuses_an_override_no_preset_has(tmp_path, capsys):
    assert cli_main(["compare", "--configs", "cllm4rec-tiny", "--out", str(tmp_path), "--set",
                     "recommender.epochs=1"]) == 2
    assert "match no section" in capsys.readouterr().err
