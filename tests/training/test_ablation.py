"""The ablation script on a tiny synthetic dataset: alternate training and user IDs end to end."""

import json

import pytest

from genrec.bundle import load_bundle, verify_bundle
from tests.training.test_pipeline import small_config, write_atomic_dataset
from training.ablation import main as ablation_main
from training.ablation import run_ablation
from training.pipeline import reevaluate


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    write_atomic_dataset(root / "data", users=16, items=24)
    config = small_config(root / "data")
    config.recommender.epochs = 2
    config.generator.mint.num_groups = 4
    config.alternate.id_batch_size = 16
    config.alternate.id_lr = 1e-2
    config.alternate.id_phase_max_pairs = 32
    summary = run_ablation(config, root / "out", rounds=1, progress=False)
    return root / "out", summary


def test_ablation_writes_the_table_and_json(ablation):
    out, summary = ablation
    assert set(summary["variants"]) == {"keyword", "alternate", "alternate_user_ids", "popularity"}
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["variants"].keys() == summary["variants"].keys()
    table = (out / "ablation.md").read_text()
    for name in summary["variants"]:
        assert f"| {name} |" in table
    for row in summary["variants"].values():
        assert {"hr@5", "hr@10", "ndcg@5", "ndcg@10"} <= set(row["test"])
    # Same total recommender epochs for every trained variant.
    assert {summary["variants"][v]["recommender_epochs"] for v in ("keyword", "alternate", "alternate_user_ids")} == {2}


def test_alternate_bundle_ships_the_final_ids_and_reevaluates_with_user_ids(ablation):
    out, summary = ablation
    bundle_dir = out / "alternate_user_ids"
    verify_bundle(bundle_dir)
    bundle = load_bundle(bundle_dir)
    assert bundle.config["alternate"]["rounds"] == 1 and bundle.config["alternate"]["user_ids"] is True
    history = json.loads((bundle_dir / "history.json").read_text())
    assert [p["kind"] for p in history["phases"]] == ["id", "rec"]
    # The bundle's ID statistics are those of the re-mint after the ID phase.
    assert bundle.manifest["id_stats"] == history["phases"][0]["id_stats"]
    ids = [i.textual_id for i in bundle.items]
    assert len(set(ids)) == len(ids) == 24
    # Re-evaluation rebuilds the user IDs the same way (training part only) and gets the same numbers.
    again = reevaluate(bundle_dir, progress=False)
    assert again["test"] == pytest.approx(summary["variants"]["alternate_user_ids"]["test"], abs=1e-9)


def test_ablation_cli_rejects_unknown_variants(tmp_path, capsys):
    assert ablation_main(["--config", "tiny", "--out", str(tmp_path), "--variants", "keyword,nope"]) == 2
    assert "unknown variants: nope" in capsys.readouterr().err


def test_merge_joins_separate_runs_and_refuses_mismatches(ablation, tmp_path):
    _, summary = ablation
    parts = []
    for i, names in enumerate((("popularity", "keyword"), ("alternate",), ("alternate_user_ids",))):
        part = {**{k: summary[k] for k in ("config", "seed", "rounds")},
                "variants": {n: summary["variants"][n] for n in names}}
        path = tmp_path / f"part{i}.json"
        path.write_text(json.dumps(part))
        parts.append(path)
    out = tmp_path / "merged"
    assert ablation_main(["--out", str(out), "--merge", *map(str, parts)]) == 0
    merged = json.loads((out / "ablation.json").read_text())
    # The canonical variant order, whatever order the parts came in.
    assert list(merged["variants"]) == ["keyword", "alternate", "alternate_user_ids", "popularity"]
    assert merged["variants"]["alternate"]["test"] == summary["variants"]["alternate"]["test"]
    assert (out / "ablation.png").stat().st_size > 0 and "| alternate |" in (out / "ablation.md").read_text()
    # The same variant twice, or runs with another seed, are refused with a message.
    assert ablation_main(["--out", str(out), "--merge", str(parts[1]), str(parts[1])]) == 2
    other = json.loads(parts[2].read_text())
    other["seed"] = 999
    parts[2].write_text(json.dumps(other))
    assert ablation_main(["--out", str(out), "--merge", *map(str, parts)]) == 2


def test_rec_first_variant_has_as_many_recommender_phases_and_epochs_as_the_paper_order():
    from training.ablation import variant_configs
    from training.alternate import phase_schedule
    from training.presets import preset

    base = preset("tiny")
    base.recommender.epochs = 3
    configs = variant_configs(base, rounds=3)
    paper = phase_schedule(configs["alternate"].alternate, 3)
    rec_first = phase_schedule(configs["alternate_rec_first"].alternate, 3)
    assert [k for k, _ in paper] == ["id", "rec"] * 3
    assert [k for k, _ in rec_first] == ["rec", "id", "rec", "id", "rec"]
    assert [e for k, e in rec_first if k == "rec"] == [e for k, e in paper if k == "rec"] == [1, 1, 1]
    assert configs["keyword"].alternate.rounds == 0
