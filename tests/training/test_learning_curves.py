"""`genrec-train curves`: every bundle's validation NDCG@10 by epoch read from its history.json,
one PNG and a JSON beside it; a folder without a history is refused naming it."""

from __future__ import annotations

import json

from training.cli import main as cli_main


def fake_bundle(folder, kind: str, name: str, values: list[float], best: int | None):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"kind": kind, "config": {"name": name}}))
    history = {"valid_ndcg@10": values, "loss": [1.0] * len(values)}
    if best is not None:
        history["best_epoch"] = best
    (folder / "history.json").write_text(json.dumps(history))
    return folder


def test_curves_of_several_bundles_in_one_plot(tmp_path, capsys):
    a = fake_bundle(tmp_path / "a", "idgenrec", "tiny", [0.01, 0.03, 0.02], 2)
    b = fake_bundle(tmp_path / "b", "sasrec", "sasrec-tiny", [0.02 + i / 1000 for i in range(50)], None)
    out = tmp_path / "plots" / "curves.png"
    assert cli_main(["curves", "--bundles", f"{a},{b}", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    written = json.loads(out.with_suffix(".json").read_text())
    assert [c["label"] for c in written] == ["IDGenRec (tiny, a)", "SASRec (sasrec-tiny, b)"]
    assert written[0]["valid_ndcg@10"] == [0.01, 0.03, 0.02] and written[0]["best_epoch"] == 2
    assert written[1]["best_epoch"] is None and len(written[1]["valid_ndcg@10"]) == 50
    assert "IDGenRec (tiny, a): 3 epochs, best 0.0300, kept epoch 2" in capsys.readouterr().out


def test_a_folder_without_a_history_or_a_png_path_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["curves", "--bundles", str(empty), "--out", str(tmp_path / "c.png")]) == 2
    assert f"{empty}: not a bundle with a training history" in capsys.readouterr().err
    flat = fake_bundle(tmp_path / "flat", "idgenrec", "tiny", [], None)
    assert cli_main(["curves", "--bundles", str(flat), "--out", str(tmp_path / "c.png")]) == 2
    assert "has no valid_ndcg@10 by epoch" in capsys.readouterr().err
    good = fake_bundle(tmp_path / "good", "idgenrec", "tiny", [0.1], 1)
    assert cli_main(["curves", "--bundles", str(good), "--out", str(tmp_path / "c.svg")]) == 2
    assert "give a .png path" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
