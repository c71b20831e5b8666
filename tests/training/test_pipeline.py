"""End to end: a small synthetic catalog through the whole pipeline into a bundle, and the CLI."""

import json
import random
from collections import Counter

import pytest

from genrec.bundle import load_bundle, verify_bundle
from genrec.modeling import ModelConfig
from training.cli import main as cli_main
from training.pipeline import load_config_dataset, run
from training.presets import preset

GENRES = ["action", "comedy", "drama", "horror", "romance", "thriller", "animation", "western"]
WORDS = ["star", "night", "city", "river", "ghost", "love", "war", "king", "dream", "storm", "blue", "iron"]


def write_atomic_dataset(folder, users=24, items=40, seed=0):
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for i in range(1, items + 1):
        title = " ".join(rng.sample(WORDS, 2)).title()
        lines.append(f"{i}\t{title}\t{1980 + i % 20}\t{' '.join(rng.sample(GENRES, 2)).title()}")
    (folder / "synth.item").write_text("\n".join(lines) + "\n")
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(1, users + 1):
        for t, item in enumerate(rng.sample(range(1, items + 1), rng.randint(6, 12))):
            lines.append(f"{u}\t{item}\t4\t{1000 + t}")
    (folder / "synth.inter").write_text("\n".join(lines) + "\n")


def small_config(data_dir):
    config = preset("tiny")
    config.data.dataset = "synth"
    config.data.data_dir = str(data_dir)
    config.data.kcore = 0
    config.tokenizer.vocab_size = 200
    tiny = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16, dropout_rate=0.0)
    config.generator.model = tiny
    config.generator.warmup_epochs = 2
    config.recommender.model = ModelConfig(**tiny.to_dict())
    config.recommender.epochs = 2
    config.recommender.batch_size = 16
    config.recommender.valid_users = None
    config.eval.num_beams = 10
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    write_atomic_dataset(root / "data")
    result = run(small_config(root / "data"), root / "bundle", progress=False)
    return root / "bundle", result


def test_pipeline_writes_a_verified_bundle_with_unique_ids(trained):
    bundle_dir, _ = trained
    verify_bundle(bundle_dir)
    bundle = load_bundle(bundle_dir)
    assert bundle.kind == "idgenrec"
    assert len(bundle.items) == 40
    ids = [item.textual_id for item in bundle.items]
    assert all(ids) and len(set(ids)) == len(ids)
    assert bundle.manifest["id_stats"]["items"] == 40
    assert bundle.config["data"]["dataset"] == "synth"
    for name in ("report.md", "eval.json", "training.png", "id_lengths.png"):
        assert (bundle_dir / name).is_file(), name


def test_eval_json_has_the_documented_shape(trained):
    bundle_dir, result = trained
    saved = json.loads((bundle_dir / "eval.json").read_text())
    metrics = {"hr@5", "hr@10", "ndcg@5", "ndcg@10"}
    for split in ("valid", "test"):
        assert metrics <= set(saved[split])
        assert metrics <= set(saved["baselines"]["popularity"][split])
        assert all(0.0 <= saved[split][m] <= 1.0 for m in metrics)
    assert saved["test"] == pytest.approx(result["test"])


def test_cli_evaluate_reproduces_the_metrics(trained, capsys):
    bundle_dir, result = trained
    assert cli_main(["evaluate", "--bundle", str(bundle_dir), "--no-progress"]) == 0
    saved = json.loads((bundle_dir / "eval.json").read_text())
    assert saved["test"] == pytest.approx(result["test"], abs=1e-9)
    assert "| IDGenRec |" in capsys.readouterr().out
    verify_bundle(bundle_dir)


def test_cli_evaluate_quantized_leaves_the_recorded_metrics(trained, capsys):
    bundle_dir, _result = trained
    recorded = (bundle_dir / "eval.json").read_text(), (bundle_dir / "manifest.json").read_text()
    assert cli_main(["evaluate", "--bundle", str(bundle_dir), "--no-progress", "--quantize", "int8"]) == 0
    assert "| IDGenRec |" in capsys.readouterr().out
    assert ((bundle_dir / "eval.json").read_text(), (bundle_dir / "manifest.json").read_text()) == recorded


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert cli_main(["run", "--config", "nope", "--out", str(tmp_path / "b")]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err
    assert cli_main(["run", "--config", "tiny", "--out", str(tmp_path / "b"), "--set", "recommender.nope=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert cli_main(["evaluate", "--bundle", str(tmp_path / "missing")]) == 2
    assert "error" in capsys.readouterr().err


def test_the_bundle_holds_the_training_popularity_list(trained):
    """Every bundle carries the interactions per item of the training part of the split (not the
    valid or test items), most first, which the service answers users without a history with."""
    bundle_dir, _ = trained
    bundle = load_bundle(bundle_dir)
    split = load_config_dataset(bundle.train_config).split
    expected = Counter(item for sequence in split.train.values() for item in sequence)
    assert dict(bundle.popularity) == dict(expected)
    counts = [count for _, count in bundle.popularity]
    assert counts == sorted(counts, reverse=True)
    assert sum(counts) == sum(len(s) for s in split.train.values()) < sum(len(s) + 2 for s in split.train.values())
    assert "popularity.json" in bundle.manifest["files"]
