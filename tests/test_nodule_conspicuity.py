"""Nodule conspicuity in `lungx evaluate bone-suppression` (issue 39 item 2): the metric exact on a fixture, the
evaluation with a nodules.csv and without soft-tissue targets, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import phantom_radiograph
from PIL import Image

from lungx_core.eval.metrics import nodule_conspicuity, nodule_contrast


def _disc_film(size: int = 64, radius: float = 4.0, contrast: float = 10.0) -> np.ndarray:
    """Flat 100 with a disc of +contrast at (32, 32) and a column of +5 at x = 44 (a 'rib' in the ring)."""
    yy, xx = np.mgrid[:size, :size]
    film = np.full((size, size), 100.0)
    film[np.hypot(yy - 32, xx - 32) <= radius] += contrast
    return film


def test_conspicuity_is_exact_on_a_fixture():
    film = _disc_film()
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 32, xx - 32)
    expected = (film[d <= 2.8].mean() - film[(d >= 5.2) & (d <= 8.8)].mean()) / film[d <= 16].std()
    assert nodule_conspicuity(film, (32, 32), 4.0) == pytest.approx(expected)
    assert nodule_conspicuity(film * 3 + 7, (32, 32), 4.0) == pytest.approx(expected)  # grey-level invariant
    cluttered = film.copy()
    cluttered[:, 38:40] += 8  # a rib edge inside the ring and the 4-radius window
    assert nodule_conspicuity(cluttered, (32, 32), 4.0) < expected
    edge = film.copy()
    edge[np.hypot(yy - 3, xx - 3) <= 4] += 10
    assert nodule_conspicuity(edge, (3, 3), 4.0) > 0  # cut by the image edge: the pixels inside count
    with pytest.raises(ValueError, match="outside the image"):
        nodule_conspicuity(film, (400, 400), 4.0)


def test_contrast_is_exact_and_counts_only_the_nodule():
    film = _disc_film()
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 32, xx - 32)
    expected = film[d <= 2.8].mean() - film[(d >= 5.2) & (d <= 8.8)].mean()
    assert nodule_contrast(film, (32, 32), 4.0) == pytest.approx(expected)
    assert nodule_contrast(film, (32, 32), 4.0) == pytest.approx(10.0)  # the disc's +10, the ring flat
    ribbed = film.copy()
    ribbed[:, 44:48] += 30  # a rib beyond the ring: conspicuity falls (more spread), the nodule's contrast does not
    assert nodule_contrast(ribbed, (32, 32), 4.0) == pytest.approx(10.0)
    assert nodule_conspicuity(ribbed, (32, 32), 4.0) < nodule_conspicuity(film, (32, 32), 4.0)
    assert nodule_contrast(film * 3 + 7, (32, 32), 4.0) == pytest.approx(30.0)  # grey levels, not invariant
    with pytest.raises(ValueError, match="outside the image"):
        nodule_contrast(film, (400, 400), 4.0)


def _nodule_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    for i in range(2):
        film = phantom_radiograph(256, 256, seed=i).astype(np.float32)
        yy, xx = np.mgrid[:256, :256]
        film[np.hypot(yy - 100, xx - 80 - 20 * i) <= 6] += 40
        Image.fromarray(np.clip(film, 0, 255).astype(np.uint8)).save(root / "images" / f"N{i}.png")
    # centres and diameters on the 512-px image: these films are 256 px, so everything halves
    (root / "nodules.csv").write_text("id,x,y,diameter_px,subtlety\nN0,160,200,24,5\nN1,200,200,24,2\n")
    return root


def test_evaluation_reports_before_after_ratio_and_dimmed_share(tmp_path):
    from lungx_core.eval.evaluate import evaluate_nodule_conspicuity

    root = _nodule_folder(tmp_path / "jsrt")
    cases = {}

    def dim(image, lung):  # takes half of the nodule away: every nodule dims
        out = image.array.astype(np.float64).copy()
        yy, xx = np.mgrid[:256, :256]
        for x in (80, 100):
            out[np.hypot(yy - 100, xx - x) <= 6] -= 20
        return out

    summary = evaluate_nodule_conspicuity(root, dim, lambda a: np.ones(a.shape, bool),
                                          on_case=lambda cid, s: cases.update({cid: s}))
    assert summary["n"] == 2 and summary["dimmed_share"] == 1.0 and summary["median_ratio"] < 1
    # half of each disc's +40 taken away: both keep a share of their contrast well under 0.8
    assert summary["contrast_kept"] < 0.8 and summary["kept_below_0.8_share"] == 1.0
    assert set(summary["per_subtlety"]) == {"2", "5"} and summary["per_subtlety"]["5"]["n"] == 1
    same = evaluate_nodule_conspicuity(root, lambda image, lung: image.array, lambda a: np.ones(a.shape, bool))
    assert same["median_ratio"] == 1.0 and same["dimmed_share"] == 0.0
    assert same["contrast_kept"] == 1.0 and same["kept_below_0.8_share"] == 0.0
    assert set(cases) == {"N0", "N1"} and cases["N0"]["conspicuity_before"] > 1  # the drawn nodule stands out


def test_a_nodule_without_measurable_contrast_has_no_kept_share(tmp_path):
    from lungx_core.eval.evaluate import evaluate_nodule_conspicuity

    (tmp_path / "images").mkdir()
    film = np.full((256, 256), 100, np.uint8)
    film[np.hypot(*np.mgrid[-100:156, -80:176]) <= 6] = 140  # a nodule at (80, 100); (200, 200) is flat
    film[0, 0] = 0  # the film's grey range: 140
    Image.fromarray(film).save(tmp_path / "images" / "F.png")
    (tmp_path / "nodules.csv").write_text("id,x,y,diameter_px,subtlety\nF,160,200,24,3\nF,400,400,24,3\n")
    summary = evaluate_nodule_conspicuity(tmp_path, lambda image, lung: image.array, lambda a: np.ones(a.shape, bool))
    assert summary["n"] == 2 and summary["contrast_n"] == 1 and summary["contrast_kept"] == 1.0


@pytest.mark.slow
def test_cli_scores_a_nodule_folder_without_soft_tissue_targets(tmp_path):
    root = _nodule_folder(tmp_path / "jsrt")
    proc = subprocess.run([sys.executable, "-m", "lungx_core", "evaluate", "bone-suppression", str(root),
                           "--device", "cpu", "--per-case", str(tmp_path / "cases.csv")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["nodules"]["n"] == 2 and "psnr_input" not in summary
    assert "conspicuity_after" in (tmp_path / "cases.csv").read_text()
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "lungx_core", "evaluate", "bone-suppression", str(empty)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "nor a nodules.csv" in proc.stderr
