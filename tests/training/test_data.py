"""Tests of training/data.py: loaders (RecBole atomic, Amazon), k-core, sequences, split, item text."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from genrec.errors import ConfigError, DataError
from training.data import (
    Interaction,
    ItemMetadata,
    SplitData,
    build_sequences,
    find_recbole_dataset,
    flatten_item_text,
    kcore_filter,
    leave_one_out,
    load_amazon,
    load_dataset,
    load_recbole_atomic,
)

# --------------------------------------------------------------------------- fixtures / helpers


def write_atomic(folder: Path, name: str, inter: list[str] | None, item: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if inter is not None:
        (folder / f"{name}.inter").write_text("\n".join(inter) + "\n", encoding="utf-8")
    if item is not None:
        (folder / f"{name}.item").write_text("\n".join(item) + "\n", encoding="utf-8")
    return folder


INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"


def dense_inter_rows(users: int, items: int) -> list[str]:
    """Every user rates every item once, timestamps increasing with the item index."""
    return [f"u{u}\ti{i}\t3\t{1000 + i}" for u in range(users) for i in range(items)]


def write_jsonl(path: Path, records: list, gz: bool = False) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


REVIEWS = [
    {"reviewerID": "A1", "asin": "B1", "unixReviewTime": 100, "overall": 5.0},
    {"reviewerID": "A1", "asin": "B2", "unixReviewTime": 200},
    {"reviewerID": "A2", "asin": "B1", "unixReviewTime": "150"},
    {"reviewerID": "A2", "asin": "B9", "unixReviewTime": 160},  # B9 has no meta record
]
META = [
    {
        "asin": "B1",
        "title": "Red  Lipstick",
        "brand": "Acme",
        "categories": [["Beauty", "Makeup", "Lips"], ["Beauty", "Makeup"]],
        "price": 12.99,
        "description": ["Long lasting.", "Matte finish."],
        "imUrl": "http://example.invalid/x.jpg",
    },
    # Amazon 2014 meta style: a Python dict literal with single quotes.
    "{'asin': 'B2', 'title': 'Face Cream', 'categories': ['Beauty', 'Skin Care'], 'price': '$5', "
    "'description': 'Soft.'}",
    {"asin": "B3", "title": "Never Reviewed", "price": 3.0},
]


# --------------------------------------------------------------------------- RecBole atomic files


def test_atomic_loads_catalog_and_interactions(tmp_path):
    folder = write_atomic(
        tmp_path / "toy",
        "toy",
        [INTER_HEADER, "u1\t1\t5\t10", "u1\t2\t3\t5", "u2\t3\t4\t7.5"],
        [ITEM_HEADER, "1\tToy Story\t1995\tAnimation Comedy", "2\tHeat\t\tAction", "4\tUnseen\t2000\tDrama"],
    )
    catalog, inter = load_recbole_atomic(folder)
    assert inter == [Interaction("u1", "1", 10.0), Interaction("u1", "2", 5.0), Interaction("u2", "3", 7.5)]
    # item-file order first, then items only in .inter (empty metadata); empty values skipped
    assert list(catalog.items) == ["1", "2", "4", "3"]
    assert catalog.items["1"] == {
        "movie_title": "Toy Story",
        "release_year": "1995",
        "class": "Animation Comedy",
    }
    assert catalog.items["2"] == {"movie_title": "Heat", "class": "Action"}
    assert catalog.items["3"] == {}


def test_atomic_explicit_name_and_missing_item_file(tmp_path):
    folder = write_atomic(tmp_path / "whatever", "toy", [INTER_HEADER, "u1\t1\t5\t10", "u1\t2\t5\t11"])
    catalog, inter = load_recbole_atomic(folder, "toy")
    assert len(inter) == 2
    assert catalog.items == {"1": {}, "2": {}}


def test_atomic_missing_inter_file(tmp_path):
    folder = write_atomic(tmp_path / "toy", "toy", None, [ITEM_HEADER, "1\tA\t1995\tDrama"])
    with pytest.raises(DataError, match=r"toy\.inter.*not found"):
        load_recbole_atomic(folder)


def test_atomic_missing_timestamp_column(tmp_path):
    folder = write_atomic(tmp_path / "toy", "toy", ["user_id:token\titem_id:token\trating:float", "u1\t1\t5"])
    with pytest.raises(DataError, match=r"toy\.inter.*timestamp"):
        load_recbole_atomic(folder)


def test_atomic_non_numeric_timestamp(tmp_path):
    folder = write_atomic(tmp_path / "toy", "toy", [INTER_HEADER, "u1\t1\t5\t10", "u1\t2\t5\tyesterday"])
    with pytest.raises(DataError, match=r"toy\.inter, line 3.*yesterday"):
        load_recbole_atomic(folder)


def test_atomic_item_file_without_item_id(tmp_path):
    folder = write_atomic(tmp_path / "toy", "toy", [INTER_HEADER, "u1\t1\t5\t10"], ["title:token_seq", "A"])
    with pytest.raises(DataError, match=r"toy\.item.*item_id"):
        load_recbole_atomic(folder)


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ([INTER_HEADER, "u1\t1\t5\t10\textra"], r"line 2.*5 tab-separated"),
        ([INTER_HEADER, "\t1\t5\t10"], r"line 2.*user_id"),
        ([INTER_HEADER], r"no interactions"),
        ([], r"empty file"),
    ],
)
def test_atomic_malformed_rows(tmp_path, rows, pattern):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text("\n".join(rows), encoding="utf-8")
    with pytest.raises(DataError, match=pattern):
        load_recbole_atomic(folder)


def test_atomic_latin1_item_file(tmp_path):
    folder = write_atomic(tmp_path / "toy", "toy", [INTER_HEADER, "u1\t1\t5\t10"])
    (folder / "toy.item").write_bytes(f"{ITEM_HEADER}\n1\tCité\t1995\tDrama\n".encode("latin-1"))
    catalog, _ = load_recbole_atomic(folder)
    assert catalog.items["1"]["movie_title"] == "Cité"


# --------------------------------------------------------------------------- Amazon


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_plain_and_gzipped(tmp_path, gz):
    suffix = ".json.gz" if gz else ".json"
    reviews = write_jsonl(tmp_path / f"reviews_Beauty{suffix}", REVIEWS, gz)
    meta = write_jsonl(tmp_path / f"meta_Beauty{suffix}", META, gz)
    catalog, inter = load_amazon(reviews, meta)
    assert inter[0] == Interaction("A1", "B1", 100.0)
    assert inter[2] == Interaction("A2", "B1", 150.0)
    assert list(catalog.items) == ["B1", "B2", "B3", "B9"]
    assert catalog.items["B1"] == {
        "title": "Red Lipstick",
        "brand": "Acme",
        "categories": "Beauty Makeup Lips",
        "price": "12.99",
        "description": "Long lasting. Matte finish.",
    }
    assert catalog.items["B2"] == {
        "title": "Face Cream",
        "categories": "Beauty Skin Care",
        "price": "$5",
        "description": "Soft.",
    }
    assert catalog.items["B3"]["price"] == "3"
    assert catalog.items["B9"] == {}


def test_amazon_gzip_detected_by_magic_bytes(tmp_path):
    reviews = write_jsonl(tmp_path / "reviews.json", REVIEWS, gz=True)  # gzip data, no .gz suffix
    meta = write_jsonl(tmp_path / "meta.json", META)
    _, inter = load_amazon(reviews, meta)
    assert len(inter) == 4


def test_amazon_broken_line_names_file_and_line(tmp_path):
    reviews = write_jsonl(tmp_path / "reviews_X.json", REVIEWS)
    meta = write_jsonl(tmp_path / "meta_X.json", [META[0], "{'asin': 'B2', 'title': ", META[2]])
    with pytest.raises(DataError, match=r"meta_X\.json, line 2"):
        load_amazon(reviews, meta)


def test_amazon_literal_fallback_does_not_evaluate_code(tmp_path):
    reviews = write_jsonl(tmp_path / "reviews_X.json", REVIEWS)
    meta = write_jsonl(tmp_path / "meta_X.json", ["{'asin': __import__('os').getcwd()}"])
    with pytest.raises(DataError, match=r"meta_X\.json, line 1"):
        load_amazon(reviews, meta)


@pytest.mark.parametrize(
    "record, pattern",
    [
        ({"asin": "B1", "unixReviewTime": 1}, r"reviewerID"),
        ({"reviewerID": "A1", "unixReviewTime": 1}, r"asin"),
        ({"reviewerID": "A1", "asin": "B1"}, r"unixReviewTime"),
        ({"reviewerID": "A1", "asin": "B1", "unixReviewTime": "soon"}, r"soon"),
        ([1, 2], r"expected an object"),
    ],
)
def test_amazon_bad_review_records(tmp_path, record, pattern):
    reviews = write_jsonl(tmp_path / "reviews_X.json", [REVIEWS[0], record])
    meta = write_jsonl(tmp_path / "meta_X.json", META)
    with pytest.raises(DataError, match=rf"reviews_X\.json, line 2.*{pattern}"):
        load_amazon(reviews, meta)


def test_amazon_missing_or_corrupt_files(tmp_path):
    reviews = write_jsonl(tmp_path / "reviews_X.json", REVIEWS)
    with pytest.raises(DataError, match=r"meta_X\.json.*not found"):
        load_amazon(reviews, tmp_path / "meta_X.json")
    broken = tmp_path / "meta_X.json.gz"
    broken.write_bytes(gzip.compress(b'{"asin": "B1"}\n' * 50)[:30])  # truncated gzip stream
    with pytest.raises(DataError, match=r"meta_X\.json\.gz"):
        load_amazon(reviews, broken)
    not_gzip = tmp_path / "meta_Y.json.gz"
    not_gzip.write_text('{"asin": "B1"}\n')
    with pytest.raises(DataError, match=r"meta_Y\.json\.gz.*not gzip"):
        load_amazon(reviews, not_gzip)


# --------------------------------------------------------------------------- item text


def test_flatten_item_text_ml100k_style():
    meta = {"release_year": "1995", "class": "Animation  Children's\tComedy", "movie_title": "Toy Story"}
    assert flatten_item_text(meta) == "title: Toy Story; year: 1995; genres: Animation Children's Comedy"


def test_flatten_item_text_order_labels_and_empty_values():
    meta = {"brand": "Acme", "sale_price": "3", "name": "Thing", "title": "Real Title", "note": "  "}
    assert flatten_item_text(meta) == "title: Real Title; name: Thing; brand: Acme; sale price: 3"
    assert flatten_item_text({}) == ""


def test_flatten_item_text_truncates():
    text = flatten_item_text({"title": "A very long title indeed"}, max_chars=12)
    assert len(text) <= 12
    assert text == "title: A ver"
    with pytest.raises(ConfigError):
        flatten_item_text({"title": "x"}, max_chars=0)


def test_flatten_item_text_truncated_is_never_empty_when_there_is_text():
    """The cut drops a trailing separator, but never the whole text: metadata with text (the
    service's rule for a new item) always give the generator something to read."""
    assert flatten_item_text({" ": ";;;;;;;;;; words"}, max_chars=8) == ": ;;;;;;"


# --------------------------------------------------------------------------- k-core and sequences


def test_kcore_needs_two_passes():
    # u1: i1 i2, u2: i1 i2, u3: i1 i3. With k=2 the first pass drops only i3 (count 1);
    # that leaves u3 with one interaction, so a second pass must drop u3 too.
    data = [
        Interaction("u1", "i1", 1),
        Interaction("u1", "i2", 2),
        Interaction("u2", "i1", 3),
        Interaction("u2", "i2", 4),
        Interaction("u3", "i1", 5),
        Interaction("u3", "i3", 6),
    ]
    one_pass = [x for x in data if x.item_id != "i3"]
    assert any(x.user_id == "u3" for x in one_pass)  # a single pass would not be enough
    assert kcore_filter(data, 2) == data[:4]


def test_kcore_cascade_to_empty_and_small_k():
    data = [Interaction("u1", "i1", 1), Interaction("u1", "i2", 2), Interaction("u2", "i1", 3)]
    assert kcore_filter(data, 2) == []
    for k in (0, 1):
        out = kcore_filter(data, k)
        assert out == data and out is not data


def test_build_sequences_sorts_by_time_stable_for_ties():
    data = [
        Interaction("u2", "z", 5),
        Interaction("u1", "c", 3),
        Interaction("u1", "a", 1),
        Interaction("u1", "t2", 2),
        Interaction("u1", "t1", 2),
        Interaction("u2", "y", 5),
    ]
    seqs = build_sequences(data)
    assert list(seqs) == ["u2", "u1"]
    assert seqs["u1"] == ["a", "t2", "t1", "c"]
    assert seqs["u2"] == ["z", "y"]


# --------------------------------------------------------------------------- leave-one-out


def test_leave_one_out_and_history():
    seqs = {"u1": [f"i{n}" for n in range(30)], "u2": ["a", "b"], "u3": ["x", "y", "z"]}
    split = leave_one_out(seqs)
    assert list(split.train) == ["u1", "u3"]  # u2 has < 3 interactions
    assert split.train["u1"] == [f"i{n}" for n in range(28)]
    assert split.valid["u1"] == "i28" and split.test["u1"] == "i29"
    assert split.train["u3"] == ["x"] and split.valid["u3"] == "y" and split.test["u3"] == "z"

    for user in split.train:
        valid_hist = split.history(user, "valid")
        test_hist = split.history(user, "test")
        assert split.valid[user] not in valid_hist and split.test[user] not in valid_hist
        assert split.test[user] not in test_hist
        assert test_hist[-1] == split.valid[user]
        assert len(valid_hist) <= 20 and len(test_hist) <= 20

    assert split.history("u1", "valid") == [f"i{n}" for n in range(8, 28)]
    assert split.history("u1", "test") == [f"i{n}" for n in range(9, 29)]
    assert split.history("u1", "test", max_len=3) == ["i26", "i27", "i28"]
    assert split.history("u3", "valid") == ["x"]


def test_history_bad_arguments():
    split = SplitData(train={"u": ["a"]}, valid={"u": "b"}, test={"u": "c"})
    with pytest.raises(ConfigError):
        split.history("u", "train")
    with pytest.raises(ConfigError):
        split.history("u", "test", max_len=0)
    with pytest.raises(DataError, match="nobody"):
        split.history("nobody", "test")


def test_leave_one_out_nobody_left():
    with pytest.raises(DataError, match="at least 3"):
        leave_one_out({"u1": ["a", "b"], "u2": ["c"]})


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_atomic_with_kcore(tmp_path):
    rows = dense_inter_rows(users=4, items=5)
    rows.append("lonely\ti0\t1\t5000")  # user with a single interaction: removed by 2-core
    rows.append("u0\trare\t1\t6000")  # item with a single interaction: removed by 2-core
    items = [ITEM_HEADER] + [f"i{i}\tMovie {i}\t199{i}\tDrama" for i in range(4, -1, -1)]
    items.append("never\tNever Seen\t2000\tDrama")
    folder = write_atomic(tmp_path / "toy", "toy", [INTER_HEADER, *rows], items)

    ds = load_dataset("toy", data_dir=folder, kcore=2, max_text_chars=100)
    assert ds.name == "toy"
    assert list(ds.catalog.items) == ["i4", "i3", "i2", "i1", "i0"]  # item-file order, unused dropped
    assert list(ds.split.train) == ["u0", "u1", "u2", "u3"]
    assert ds.split.train["u0"] == ["i0", "i1", "i2"]
    assert ds.split.valid["u0"] == "i3" and ds.split.test["u0"] == "i4"
    assert ds.item_text["i1"] == "title: Movie 1; year: 1991; genres: Drama"
    assert set(ds.item_text) == set(ds.catalog.items)

    # the parent folder works too (data_dir/<name>/<name>.inter)
    assert load_dataset("toy", data_dir=tmp_path, kcore=2).catalog.items == ds.catalog.items


def test_load_dataset_items_without_metadata_get_fallback_text(tmp_path):
    folder = write_atomic(tmp_path / "toy", "toy", [INTER_HEADER, *dense_inter_rows(2, 3)])
    ds = load_dataset("toy", data_dir=folder, kcore=0)
    assert ds.item_text["i0"] == "item: i0"


def test_load_dataset_amazon(tmp_path):
    reviews = [
        {"reviewerID": f"A{u}", "asin": f"B{i}", "unixReviewTime": 100 * i}
        for u in range(3)
        for i in range(4)
    ]
    meta = [{"asin": f"B{i}", "title": f"Product {i}", "categories": [["Beauty"]]} for i in range(5)]
    sub = tmp_path / "amz"
    sub.mkdir()
    write_jsonl(sub / "reviews_Beauty_5.json.gz", reviews, gz=True)
    write_jsonl(sub / "meta_Beauty.json.gz", meta, gz=True)

    ds = load_dataset("amazon:Beauty", data_dir=sub, kcore=3)
    assert list(ds.catalog.items) == ["B0", "B1", "B2", "B3"]
    assert ds.split.test == {"A0": "B3", "A1": "B3", "A2": "B3"}
    assert ds.item_text["B0"] == "title: Product 0; categories: Beauty"
    # a folder of reviews_*/meta_* files is read as Amazon data whatever the name
    assert load_dataset("beauty", data_dir=sub, kcore=3).split.test == ds.split.test
    # the category's own sub-folder is found as well
    assert load_dataset("amazon:Beauty", data_dir=tmp_path / "amz", kcore=3).split.test == ds.split.test


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="data directory"):
        load_dataset("amazon:Beauty")
    with pytest.raises(DataError, match="no Amazon files"):
        load_dataset("amazon:Beauty", data_dir=tmp_path)
    with pytest.raises(DataError, match="no data for"):
        load_dataset("toy", data_dir=tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset("toy", data_dir=tmp_path / "nope")
    folder = write_atomic(tmp_path / "toy", "toy", [INTER_HEADER, "u1\t1\t5\t1", "u2\t2\t5\t2"])
    with pytest.raises(DataError, match=r"toy.*5-core"):
        load_dataset("toy", data_dir=folder, kcore=5)
    with pytest.raises(DataError, match=r"toy.*at least 3"):
        load_dataset("toy", data_dir=folder, kcore=0)


def test_find_recbole_dataset_unknown_name():
    with pytest.raises(DataError, match="recbole"):
        find_recbole_dataset("no-such-dataset-xyz")
    with pytest.raises(DataError):
        find_recbole_dataset("../etc")


# --------------------------------------------------------------------------- real ml-100k


def _ml100k_folder() -> Path | None:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    return folder if (folder / "ml-100k.inter").is_file() else None


@pytest.mark.skipif(_ml100k_folder() is None, reason="recbole's ml-100k files are not installed")
def test_real_ml100k_counts():
    assert find_recbole_dataset("ml-100k") == _ml100k_folder()
    catalog, inter = load_recbole_atomic(find_recbole_dataset("ml-100k"))
    assert isinstance(catalog, ItemMetadata)
    assert len(inter) == 100_000
    assert len(catalog.items) == 1682
    assert len({x.user_id for x in inter}) == 943

    ds = load_dataset("ml-100k", kcore=0)
    assert len(ds.split.train) == 943
    assert len(ds.catalog.items) == 1682
    lengths = [len(seq) + 2 for seq in ds.split.train.values()]
    assert sum(lengths) == 100_000
    assert min(lengths) >= 20
    assert ds.item_text["1"] == "title: Toy Story; year: 1995; genres: Animation Children's Comedy"
