import json
from pathlib import Path

import pytest
import torch

from genrec.bundle import (
    FORMAT_VERSION,
    BundleItem,
    load_bundle,
    read_items,
    read_manifest,
    update_bundle_files,
    update_manifest,
    verify_bundle,
    write_bundle,
)
from genrec.environment import environment, package_versions
from genrec.errors import BundleError
from genrec.idgenrec.method import IdGenRec
from genrec.idgenrec.prompts import prompt_corpus
from genrec.method import load_method
from genrec.modeling import ModelConfig, build_t5
from genrec.tokenization import encode_textual_id
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)

SENTENCES = [
    f"the {adj} {noun} of item number {i} is a nice thing to buy"
    for i, (adj, noun) in enumerate(
        [(a, n) for a in ("red", "blue", "green", "small", "large", "cheap") for n in ("shoe", "lamp", "book", "cup", "bag")]
    )
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES + prompt_corpus(), vocab_size=60)


@pytest.fixture(scope="module")
def models(tokenizer):
    rec = build_t5(TINY, tokenizer, seed=1).eval()
    gen = build_t5(TINY, tokenizer, seed=2).eval()
    return {"recommender": rec, "id_generator": gen}


@pytest.fixture(scope="module")
def items(tokenizer):
    out = []
    for i, tid in enumerate(["red shoe", "blue lamp", "green book", "small cup"]):
        out.append(
            BundleItem(
                item_id=f"I{i}",
                textual_id=tid,
                token_ids=encode_textual_id(tokenizer, tid),
                text=f"title: {tid} — ünïcode {i}",
            )
        )
    return out


def _write(out, tokenizer, models, items, **kw):
    args = dict(
        kind="idgenrec",
        tokenizer=tokenizer,
        models=models,
        items=items,
        config={"model": TINY.to_dict(), "epochs": 1},
        dataset="toy",
        id_stats={"n_items": len(items), "collisions": 0},
        metrics={"ndcg@10": 0.5},
    )
    args.update(kw)
    return write_bundle(out, **args)


@pytest.fixture
def bundle(tmp_path, tokenizer, models, items):
    return _write(tmp_path / "bundle", tokenizer, models, items)


def _logits(model, tokenizer):
    enc = tokenizer(["the red shoe is nice"], return_tensors="pt")
    dec = torch.tensor([[tokenizer.pad_token_id, 5, 7]])
    with torch.no_grad():
        return model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=dec).logits


def _siblings(path: Path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# --------------------------------------------------------------------------- round trip


def test_round_trip(bundle, tokenizer, models, items):
    loaded = load_bundle(bundle)
    assert loaded.kind == "idgenrec"
    assert loaded.items == items
    assert loaded.config == {"model": TINY.to_dict(), "epochs": 1}
    m = loaded.manifest
    assert m["format_version"] == FORMAT_VERSION
    assert m["dataset"] == "toy"
    assert m["id_stats"] == {"n_items": 4, "collisions": 0}
    assert m["metrics"] == {"ndcg@10": 0.5}
    assert m["created_at"].endswith("+00:00")
    assert "recommender/model.safetensors" in m["files"]
    assert "id_generator/model.safetensors" in m["files"]
    assert "items.jsonl" in m["files"]
    assert "manifest.json" not in m["files"]
    assert any(f.startswith("tokenizer/") for f in m["files"])
    method = load_method(loaded)
    assert isinstance(method, IdGenRec)
    assert not method.recommender_model.training and not method.id_generator.training
    for name, model in (("recommender", method.recommender_model), ("id_generator", method.id_generator)):
        assert torch.allclose(_logits(model, tokenizer), _logits(models[name], tokenizer), atol=1e-6)
    text = "the blue lamp of item number 3"
    assert loaded.tokenizer.encode(text) == tokenizer.encode(text)
    assert loaded.tokenizer.eos_token_id == tokenizer.eos_token_id
    # ensure_ascii=False: the raw file holds the characters themselves
    assert "ünïcode" in (bundle / "items.jsonl").read_text(encoding="utf-8")
    assert _siblings(bundle) == []  # no temp dir left behind


def test_a_method_without_its_model_folders_is_refused(bundle, tokenizer, models, items, tmp_path):
    out = _write(tmp_path / "b", tokenizer, {"recommender": models["recommender"]}, items)
    loaded = load_bundle(out)  # the bundle itself reads: its models are the method's business
    assert loaded.items == items
    with pytest.raises(BundleError, match="id_generator"):
        load_method(loaded)


def test_cllm4rec_kind_extra_dirs_and_files(tmp_path, tokenizer, models, items):
    report = tmp_path / "report.md"
    report.write_text("# report\n")

    def write_adapter(folder: Path):
        (folder / "weights.bin").write_bytes(b"\x00\x01\x02")

    out = _write(
        tmp_path / "b",
        tokenizer,
        {},
        items,
        kind="cllm4rec",
        extra_dirs={"llm": write_adapter},
        extra_files={"report.md": report},
    )
    manifest = verify_bundle(out)
    assert {"llm/weights.bin", "report.md"} <= set(manifest["files"])
    loaded = load_bundle(out)
    assert loaded.kind == "cllm4rec"
    with pytest.raises(BundleError, match="cllm4rec/"):
        load_method(loaded)  # its model folder is missing


def test_unknown_kind_refused_on_write(tmp_path, tokenizer, items):
    with pytest.raises(BundleError, match="unknown bundle kind"):
        _write(tmp_path / "b", tokenizer, {}, items, kind="nope")
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- verify refuses


def test_flipped_byte_in_safetensors(bundle):
    target = bundle / "recommender" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum mismatch for recommender/model.safetensors"):
        verify_bundle(bundle)
    with pytest.raises(BundleError, match="recommender/model.safetensors"):
        load_bundle(bundle)
    # verify=False skips the checksums
    load_bundle(bundle, verify=False)


def test_deleted_listed_file(bundle):
    (bundle / "id_generator" / "config.json").unlink()
    with pytest.raises(BundleError, match="id_generator/config.json.*missing"):
        verify_bundle(bundle)


def test_unlisted_file_is_ignored(bundle):
    (bundle / "notes.txt").write_text("hello")
    verify_bundle(bundle)


def test_unknown_format_version(bundle):
    update = read_manifest(bundle)
    update["format_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(update))
    with pytest.raises(BundleError, match=r"unknown format_version 99.*format_version 1"):
        verify_bundle(bundle)


def test_unknown_kind_in_manifest(bundle):
    update = read_manifest(bundle)
    update["kind"] = "other"
    (bundle / "manifest.json").write_text(json.dumps(update))
    with pytest.raises(BundleError, match="unknown kind 'other'"):
        verify_bundle(bundle)


def test_bad_json_manifest(bundle):
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json .*not valid JSON"):
        verify_bundle(bundle)


def test_missing_manifest_and_missing_dir(bundle, tmp_path):
    with pytest.raises(BundleError, match="bundle folder not found"):
        verify_bundle(tmp_path / "nowhere")
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        verify_bundle(bundle)


def test_malformed_items_line(bundle):
    lines = (bundle / "items.jsonl").read_text(encoding="utf-8").splitlines()
    lines[2] = '{"item_id": "I2", "textual_id": '
    update_bundle_files(bundle, {"items.jsonl": "\n".join(lines) + "\n"})
    verify_bundle(bundle)  # checksums are right; the content is not
    with pytest.raises(BundleError, match="items.jsonl line 3"):
        read_items(bundle)
    with pytest.raises(BundleError, match="items.jsonl line 3"):
        load_bundle(bundle)


def test_items_missing_field(tmp_path):
    f = tmp_path / "items.jsonl"
    f.write_text('{"item_id": "a", "textual_id": "x", "token_ids": [3, 1], "text": ""}\n{"item_id": "b"}\n')
    with pytest.raises(BundleError, match="line 2: missing field"):
        read_items(f)


def test_duplicate_textual_id(bundle):
    rows = [json.loads(line) for line in (bundle / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    rows[3]["textual_id"] = rows[1]["textual_id"]
    update_bundle_files(bundle, {"items.jsonl": "".join(json.dumps(r) + "\n" for r in rows)})
    with pytest.raises(BundleError, match="line 4: duplicate textual_id 'blue lamp' \\(first on line 2\\)"):
        read_items(bundle)


def test_duplicate_item_id(tmp_path):
    f = tmp_path / "items.jsonl"
    row = {"item_id": "a", "textual_id": "x", "token_ids": [3, 1], "text": ""}
    f.write_text(json.dumps(row) + "\n" + json.dumps({**row, "textual_id": "y"}) + "\n")
    with pytest.raises(BundleError, match="line 2: duplicate item_id 'a'"):
        read_items(f)


def test_write_refuses_duplicate_items(tmp_path, tokenizer, items):
    dup = [*items, BundleItem("I9", items[0].textual_id, items[0].token_ids, "")]
    with pytest.raises(BundleError, match="duplicate textual_id"):
        _write(tmp_path / "b", tokenizer, {}, dup)
    assert not (tmp_path / "b").exists()
    assert _siblings(tmp_path / "b") == []


# --------------------------------------------------------------------------- atomic rewrite


class _Exploding(torch.nn.Module):
    def save_pretrained(self, folder, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")


def test_failed_rewrite_keeps_old_bundle(bundle, tokenizer, models, items):
    before = verify_bundle(bundle)
    with pytest.raises(RuntimeError, match="disk full"):
        _write(bundle, tokenizer, {"recommender": models["recommender"], "id_generator": _Exploding()}, items,
               dataset="other")
    after = verify_bundle(bundle)
    assert after == before
    assert _siblings(bundle) == []  # the temp dir was removed
    assert load_bundle(bundle).items == items


def test_successful_rewrite_replaces(bundle, tokenizer, models, items):
    _write(bundle, tokenizer, {"recommender": models["recommender"]}, items[:2], dataset="second")
    m = verify_bundle(bundle)
    assert m["dataset"] == "second"
    assert not (bundle / "id_generator").exists()
    assert _siblings(bundle) == []
    loaded = load_bundle(bundle)
    assert len(loaded.items) == 2


# --------------------------------------------------------------------------- updates


def test_update_bundle_files_then_verify(bundle, tmp_path):
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG fake")
    update_bundle_files(
        bundle,
        {"report.md": "# Report\nndcg ✓\n", "eval.json": b'{"ndcg@10": 0.7}', "plots/plot.png": png},
    )
    m = verify_bundle(bundle)
    assert {"report.md", "eval.json", "plots/plot.png"} <= set(m["files"])
    assert (bundle / "report.md").read_text(encoding="utf-8") == "# Report\nndcg ✓\n"
    # replace an existing file: checksum follows
    update_bundle_files(bundle, {"report.md": "# Report v2\n"})
    verify_bundle(bundle)
    assert [p.name for p in bundle.iterdir() if ".tmp-" in p.name] == []


def test_update_bundle_files_refuses_escape(bundle):
    with pytest.raises(BundleError):
        update_bundle_files(bundle, {"../evil.txt": "x"})
    with pytest.raises(BundleError):
        update_bundle_files(bundle, {"manifest.json": "{}"})


def test_update_manifest_merges(bundle):
    update_manifest(bundle, metrics={"recall@10": 0.9}, notes="evaluated")
    m = verify_bundle(bundle)
    assert m["metrics"] == {"ndcg@10": 0.5, "recall@10": 0.9}
    assert m["notes"] == "evaluated"
    with pytest.raises(BundleError, match="cannot be set"):
        update_manifest(bundle, files={})


# --------------------------------------------------------------------------- popularity list


def test_popularity_round_trip_most_first_without_zero_counts(tmp_path, tokenizer, models, items):
    path = _write(tmp_path / "b", tokenizer, models, items, popularity={"I2": 3, "I0": 5, "I1": 3, "I3": 0})
    verify_bundle(path)  # popularity.json is checksummed like every file
    assert load_bundle(path).popularity == [("I0", 5), ("I1", 3), ("I2", 3)]


def test_the_manifest_records_the_environment_it_was_written_in(bundle):
    """Python, the platform and the versions of the libraries that shape a trained model, as
    installed (a model's quality moved between two installs that differed in these)."""
    import platform

    import numpy
    import tokenizers
    import transformers

    env = read_manifest(bundle)["environment"]
    assert env["python"] == platform.python_version() and env["platform"] == platform.platform()
    packages = env["packages"]
    assert packages["torch"] == torch.__version__ and packages["transformers"] == transformers.__version__
    assert packages["tokenizers"] == tokenizers.__version__ and packages["numpy"] == numpy.__version__
    assert {"safetensors", "marisa-trie", "genrec"} <= packages.keys()


def test_a_package_that_is_not_installed_is_left_out():
    assert package_versions(("numpy", "no-such-package-of-genrec")).keys() == {"numpy"}
    assert set(environment()) == {"python", "platform", "packages"}


def test_a_bundle_written_before_the_environment_was_recorded_loads(bundle, items):
    manifest = read_manifest(bundle)
    del manifest["environment"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    verify_bundle(bundle)
    loaded = load_bundle(bundle)
    assert "environment" not in loaded.manifest and loaded.items == items


def test_a_bundle_written_without_popularity_has_none(bundle):
    assert not (bundle / "popularity.json").exists()
    assert load_bundle(bundle).popularity is None


def test_popularity_of_items_not_in_the_bundle_is_refused(tmp_path, tokenizer, models, items):
    with pytest.raises(BundleError, match="not in the bundle"):
        _write(tmp_path / "b", tokenizer, models, items, popularity={"I0": 1, "elsewhere": 2})
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("content, message", [
    ("not json", "not valid JSON"),
    ('{"items": [["I0", "3"]]}', "expected"),
    ('{"items": [["I0", 0]]}', "expected"),
    ('[["I0", 1]]', "expected"),
    ('{"items": [["nope", 1]]}', "'nope' is not in items.jsonl"),
    ('{"items": [["I0", 2], ["I0", 1]]}', "listed twice"),
])
def test_a_malformed_popularity_list_is_refused(tmp_path, tokenizer, models, items, content, message):
    path = _write(tmp_path / "b", tokenizer, models, items, popularity={"I0": 1})
    update_bundle_files(path, {"popularity.json": content})
    with pytest.raises(BundleError, match=message):
        load_bundle(path)
