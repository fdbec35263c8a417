"""`lungx classify`: one row per film with the judge's probability; bad and non-chest inputs are error rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
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


def test_style_transforms_keep_the_anatomy_and_change_the_look():
    from training.style import PLACEBOS, augment, match_histogram

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0.4, 0.1, (64, 64)), 0, 1).astype(np.float32)
    ref = rng.beta(5, 2, (64, 64)).astype(np.float32)
    matched = match_histogram(x, ref)
    assert abs(np.median(matched) - np.median(ref)) < 0.02  # the reference's distribution ...
    assert np.corrcoef(matched.ravel(), x.ravel())[0, 1] > 0.95  # ... on the film's own ranks
    for name, fn in PLACEBOS.items():
        y = fn(x, ref)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1, name
        assert not np.allclose(y, x), name
    assert augment(x, ref, np.random.default_rng(1)).shape == x.shape


@pytest.mark.slow
def test_shipped_judge_placebo_table_on_validation_films(shared_data):
    """The model card's placebo table: healthy validation films restyled stay healthy (<= 0.2 each)."""
    from lungx_core.cxr.pathology import PathologyClassifier
    from lungx_core.cxr.thoracic import thoracic_crop
    from lungx_core.models.store import read_model_config
    from training.style import PLACEBOS

    root = shared_data / "jsrt_scr"
    ids = (Path(__file__).parents[1] / "training" / "splits" / "jsrt_scr_val.txt").read_text().split()
    gb = shared_data / "covid_cxr_gb_seg"
    gb_ids = (Path(__file__).parents[1] / "training" / "splits" / "covid_cxr_gb_seg_val.txt").read_text().split()
    if not (root / "images").is_dir() or not (gb / "images").is_dir():
        pytest.skip("jsrt_scr or covid_cxr_gb_seg not in the shared data")
    judge = PathologyClassifier(device="cpu")

    def crop(folder, id_):
        image = np.asarray(Image.open(folder / "images" / f"{id_}.png").convert("L"))
        lung = np.asarray(Image.open(folder / "masks" / "lung" / f"{id_}.png")) > 127
        return thoracic_crop(image, lung, judge.spec).image

    healthy = np.stack([crop(root, i) for i in ids])
    sick = np.stack([crop(gb, i) for i in gb_ids])
    threshold = float(read_model_config("cxr_pathology")["threshold"])
    for name, fn in PLACEBOS.items():
        restyled = np.stack([fn(x, sick[k % len(sick)]) for k, x in enumerate(healthy)])
        rate = float((judge.probability_of_crops(restyled) >= threshold).mean())
        assert rate <= 0.2, f"{name}: {rate:.2f} of healthy JSRT validation films called pathological"
