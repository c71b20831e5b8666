"""Retraining from an export (issue 17, part 2): `--data-dir` reads an export over its base data,
and `--previous-bundle` keeps the textual IDs the previous bundle and the service's catalog gave,
where the new tokenizer allows."""

import json

import pytest

from genrec.bundle import load_bundle
from genrec.errors import DataError
from genrec.exports import CATALOG_NAME, FORMAT, FORMAT_VERSION, MANIFEST_NAME
from genrec.modeling import ModelConfig, build_t5
from training.cli import main as cli_main
from training.data import load_dataset
from training.id_generator import mint_catalog
from training.pipeline import run
from training.stable_ids import kept_ids
from training.title_ids import title_id_items
from training.tokenizer_training import train_tokenizer

from .test_pipeline import small_config, write_atomic_dataset

NEW_TITLE = "Brand New Thing"
NEW_ID = "brand new thing"


def write_export(folder, base_dir, ids: dict[str, str], *, base=True):
    """An export as `genrec-serve export` writes it: the service's catalog (the base's items and a
    minted one, "41"), events of three users (one a repeat of a base event), the textual IDs."""
    folder.mkdir(parents=True)
    (folder / "synth.item").write_text(
        "item_id:token\ttitle:token_seq\tgenres:token_seq\n"
        + "".join(f"{i}\tsome title {i}\tdrama\n" for i in ids)
        + f"41\t{NEW_TITLE}\tanimation western\n42\tNobody Watched This\tdrama\n")
    rows = [("1", "41", 2000.0), ("1", "3", 2001.0), ("2", "41", 2000.0), ("2", "5", 2002.0), ("99", "41", 2000.0),
            ("99", "2", 2001.0), ("99", "7", 2002.0)]
    if (base_dir / "synth.inter").is_file():
        first = (base_dir / "synth.inter").read_text().splitlines()[1].split("\t")
        rows.append((first[0], first[1], float(first[-1])))  # a base event posted again
    (folder / "synth.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                        + "".join(f"{u}\t{i}\t{t!r}\n" for u, i, t in rows))
    catalog = [{"item_id": i, "textual_id": t, "source": "bundle"} for i, t in ids.items()]
    catalog += [{"item_id": "41", "textual_id": NEW_ID, "source": "minted"},
                {"item_id": "42", "textual_id": "nobody watched", "source": "minted"}]
    (folder / CATALOG_NAME).write_text("".join(json.dumps(row) + "\n" for row in catalog))
    (folder / MANIFEST_NAME).write_text(json.dumps({
        "format": FORMAT, "format_version": FORMAT_VERSION, "catalog": "synth-0123456789ab", "dataset": "synth",
        "name": "synth", "base": {"dataset": "synth", "data_dir": str(base_dir)} if base else None,
        "files": {"synth.item": "", "synth.inter": "", CATALOG_NAME: ""},
    }))
    return rows


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    write_atomic_dataset(root / "data")
    run(small_config(root / "data"), root / "v1", progress=False)
    v1 = load_bundle(root / "v1")
    write_export(root / "export", root / "data", {i.item_id: i.textual_id for i in v1.items})
    run(small_config(root / "export"), root / "v2", progress=False, previous_bundle=root / "v1")
    return root, v1, load_bundle(root / "v2")


def test_an_export_is_read_over_its_base(versions):
    root, _, _ = versions
    base = load_dataset("synth", root / "data", kcore=0)
    merged = load_dataset("synth", root / "export", kcore=0)
    assert list(merged.catalog.items) == list(base.catalog.items) + ["41", "42"]
    assert merged.catalog.items["1"] == base.catalog.items["1"]  # the base's metadata win
    assert merged.item_text["41"] == f"title: {NEW_TITLE}; genres: animation western"
    assert "42" in merged.catalog  # no events: kept, the service's catalog carries over whole
    assert merged.split.test["99"] == "7" and merged.split.train["99"] == ["41"]
    assert merged.split.test["1"] == "3" and merged.split.valid["1"] == "41"
    total = sum(len(s) + 2 for s in merged.split.train.values())
    assert total == sum(len(s) + 2 for s in base.split.train.values()) + 7  # the repeated event once


def test_previous_bundle_keeps_every_id_it_can(versions):
    _, v1, v2 = versions
    before = {i.item_id: i.textual_id for i in v1.items}
    after = {i.item_id: i.textual_id for i in v2.items}
    assert {i: after[i] for i in before} == before
    assert after["41"] == NEW_ID and len(set(after.values())) == len(after) == len(before) + 2
    previous = v2.manifest["id_stats"]["previous"]
    assert previous == {"previous_items": len(before) + 2, "kept": len(before) + 2, "kept_share": 1.0}
    assert v2.manifest["id_stats"]["kept"] == len(before) + 2
    assert v2.config["data"]["data_dir"].endswith("export")


def test_an_export_without_base_or_events_is_refused(tmp_path):
    write_atomic_dataset(tmp_path / "data")
    write_export(tmp_path / "alone", tmp_path / "data", {}, base=False)
    assert len(load_dataset("synth", tmp_path / "alone", kcore=0).catalog) == 7  # 41, 42 and the events' items
    (tmp_path / "alone" / "synth.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n")
    with pytest.raises(DataError, match="no interactions, and the export has no base"):
        load_dataset("synth", tmp_path / "alone", kcore=0)
    write_export(tmp_path / "lost", tmp_path / "moved", {})  # a base folder that is gone
    with pytest.raises(DataError, match="the export's base data .* cannot be read"):
        load_dataset("synth", tmp_path / "lost", kcore=0)


def test_cli_refuses_a_missing_data_dir_or_previous_bundle(tmp_path, capsys):
    assert cli_main(["run", "--config", "tiny", "--out", str(tmp_path / "b"), "--data-dir", str(tmp_path / "no")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert cli_main(["run", "--config", "tiny", "--out", str(tmp_path / "b"), "--previous-bundle", str(tmp_path)]) == 2
    assert "not a bundle" in capsys.readouterr().err


def test_cli_names_the_new_bundle_after_the_exports_dataset(tmp_path, monkeypatch):
    """The new bundle continues the exported service's dataset (so the service carries over from
    the catalog that served), unless --set data.dataset names another."""
    import training.pipeline

    seen = []
    monkeypatch.setattr(training.pipeline, "run", lambda config, out, **kwargs: seen.append(config.data.dataset))
    write_atomic_dataset(tmp_path / "data")
    write_export(tmp_path / "export", tmp_path / "data", {})
    manifest = json.loads((tmp_path / "export" / MANIFEST_NAME).read_text())
    (tmp_path / "export" / MANIFEST_NAME).write_text(json.dumps({**manifest, "dataset": "shop"}))
    args = ["run", "--config", "tiny", "--out", str(tmp_path / "b"), "--data-dir", str(tmp_path / "export")]
    assert cli_main(args) == 0
    assert cli_main([*args, "--set", "data.dataset=other"]) == 0
    assert cli_main(["run", "--config", "tiny", "--out", str(tmp_path / "b"), "--data-dir", str(tmp_path / "data")]) == 0
    assert seen == ["shop", "other", "ml-100k"]


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["title: Toy Story; genres: animation", "title: Star Wars; genres: war", "title: Fargo; genres: crime"]
    return train_tokenizer(texts * 3 + ["0 1 2 3 4 5 6 7 8 9"], vocab_size=120)


def test_only_ids_the_tokenizer_keeps_as_they_are_are_kept(tokenizer):
    previous = {"a": "toy story", "b": "toy story", "c": "Star Wars", "d": "fargo crime", "e": "zebra ünicode"}
    kept = kept_ids(tokenizer, ["a", "b", "c", "d", "e", "f"], previous)
    assert [k[0] if k else None for k in kept] == ["toy story", None, None, "fargo crime", None, None]


def test_title_ids_are_made_around_the_kept_ones(tokenizer):
    texts = ["title: Toy Story; genres: animation", "title: Star Wars; genres: war", "title: Fargo; genres: crime"]
    items, stats = title_id_items(tokenizer, ["1", "2", "3"], texts, {"2": "toy story", "3": "fargo"})
    assert [i.textual_id for i in items] == ["toy story 2", "toy story", "fargo"]
    assert stats["previous"] == {"previous_items": 2, "kept": 2, "kept_share": 1.0}


def test_every_mint_keeps_the_kept_ids(tokenizer):
    """What alternate training's re-mints call: the kept IDs stay, the others are minted around them."""
    texts = ["title: Toy Story; genres: animation", "title: Star Wars; genres: war", "title: Fargo; genres: crime"]
    tiny = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
    generator = build_t5(tiny, tokenizer, seed=0)
    from genrec.idgenrec.minting import MintConfig

    config = MintConfig(num_groups=2, penalty_max=1.0, length_steps=1, extra_length=3)
    kept = kept_ids(tokenizer, ["1", "2", "3"], {"1": "star wars", "3": "fargo crime"})
    for _ in range(2):
        minted, stats = mint_catalog(generator, tokenizer, texts, texts, config, progress=False, kept=kept)
        assert minted[0].textual_id == "star wars" and minted[2].textual_id == "fargo crime"
        assert minted[1].textual_id not in ("star wars", "fargo crime")
        assert stats.items == 3 and stats.kept == 2


def test_an_export_of_a_bundle_trained_on_an_export_stacks_on_it(tmp_path):
    """The next service's export names the last export as its base: the chain is read whole."""
    write_atomic_dataset(tmp_path / "data")
    write_export(tmp_path / "week1", tmp_path / "data", {})
    (tmp_path / "week2").mkdir()
    write_export(tmp_path / "week2" / "x", tmp_path / "week1", {})
    week2 = tmp_path / "week2" / "x"
    (week2 / "synth.item").write_text("item_id:token\ttitle:token_seq\n43\tThird Week Hit\n")
    (week2 / "synth.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n99\t43\t3000.0\n")
    dataset = load_dataset("synth", week2, kcore=0)
    assert list(dataset.catalog.items)[-3:] == ["41", "42", "43"]
    assert dataset.split.test["99"] == "43" and dataset.split.valid["99"] == "7"
    (week2 / MANIFEST_NAME).write_text((week2 / MANIFEST_NAME).read_text().replace(
        str(tmp_path / "week1"), str(week2)))  # an export based on itself
    with pytest.raises(DataError, match="more than 64 deep"):
        load_dataset("synth", week2, kcore=0)
