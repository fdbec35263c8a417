"""`lungx classify`: one row per film with the judge's probability; bad and non-chest inputs are error rows."""

from __future__ import annotations

import csv

import pytest
from PIL import Image
from test_gate import _ct_slice, _sample_film_uint8

import lungx_core as lx


@pytest.mark.slow
def test_classify_cli_scores_films_and_reports_bad_inputs(tmp_path):
    from test_cli import run_lungx

    Image.fromarray(_sample_film_uint8()).save(tmp_path / "film.png")
    Image.fromarray(_ct_slice()).save(tmp_path / "slice.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    proc = run_lungx("classify", str(tmp_path), "-o", str(out), "--device", "cpu", "-q")
    assert proc.returncode == 1  # two inputs failed
    assert "Traceback" not in proc.stderr
    with open(out / "results.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"film", "slice", "broken"}
    film = rows["film"]
    assert film["status"] == "ok" and film["task"] == "cxr-classify"
    probability = float(film["pathology_probability"])
    assert 0.0 <= probability <= 1.0
    # the CLI and the Python API give the same score for the same film
    assert probability == pytest.approx(
        lx.classify(tmp_path / "film.png", device="cpu").measurements["pathology_probability"], abs=1e-4
    )
    from lungx_core.models.store import read_model_config

    threshold = float(read_model_config("cxr_pathology").get("threshold", 0.5))
    assert int(film["pathological"]) == int(probability >= threshold)
    assert "looks like a CT slice" in rows["slice"]["error"]
    assert rows["broken"]["status"] == "error" and rows["broken"]["error"].startswith(str(tmp_path / "broken.png"))
