"""Regression tests for the defects a review found (issue 15): each test fails on the code before its fix."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import phantom_radiograph, write_dicom
from PIL import Image

from lungx_core.io.inputs import collect_cases
from lungx_core.io.readers import read_radiograph, short_message


def _lungx(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI with stderr a pipe, not a terminal, and no COLUMNS: how batch jobs and logs see it."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "lungx_core", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_model_option_is_checked_against_every_task_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = _lungx("segment", "--sample", "--model", "cxr_anatomy", "-o", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cxr_anatomy is a cxr-anatomy model" in lines[0] and "CT" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_png_masks_for_ct_are_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = _lungx("segment", "--sample", "--task", "ct-lungs", "--format", "png", "-o", str(out))
    assert proc.returncode == 2 and "PNG masks are for radiographs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_version_and_help_name_every_command():
    from lungx_core import __version__

    assert _lungx("--version").stdout.strip() == f"lungx {__version__}"
    help_text = _lungx("--help").stdout
    for command in ("segment", "synthesize", "remove-opacity", "suppress-ribs", "evaluate", "tasks"):
        assert command in help_text
    assert "Segment chest radiographs" in help_text and "suppress ribs" in help_text


def test_dotted_model_names_keep_every_part():
    from lungx_core.models.store import model_paths, read_model_config

    weights, config = model_paths("runs/run1.best.safetensors")
    assert (weights.name, config.name) == ("run1.best.safetensors", "run1.best.json")
    assert model_paths("cxr_anatomy.v2")[0].name == "cxr_anatomy.v2.safetensors"
    with pytest.raises(FileNotFoundError, match=r"cxr_anatomy\.v2\.json"):
        read_model_config("cxr_anatomy.v2")  # never silently cxr_anatomy


def test_series_choice_exact_number_or_uid_wins_and_prefix_must_be_unique(tmp_path):
    from lungx_core.errors import InputError
    from lungx_core.io.ct import SeriesInfo, choose_series

    series = [SeriesInfo("1.2.840.1.5", 5, "thin", "CT"), SeriesInfo("1.2.840.1.6", 1, "thick", "CT"),
              SeriesInfo("1.3.7", 2, "other", "CT")]
    assert choose_series(tmp_path, series, "1").number == 1  # not the first UID starting with "1"
    assert choose_series(tmp_path, series, "1.2.840.1.5").number == 5
    assert choose_series(tmp_path, series, "1.3").number == 2  # a unique prefix
    with pytest.raises(InputError, match="matches 2 series"):
        choose_series(tmp_path, series, "1.2.840")


def test_fill_holes_fills_a_lone_enclosed_hole():
    from lungx_core.postprocess import fill_holes

    ring = np.ones((9, 9), bool)
    ring[3:6, 3:6] = False  # the only background region, enclosed
    assert fill_holes(ring).all()
    open_mask = np.zeros((9, 9), bool)
    open_mask[2:7, 2:7] = True
    np.testing.assert_array_equal(fill_holes(open_mask), open_mask)


def test_case_ids_never_collide(tmp_path):
    names = ["film.png", "film.jpg", "film_2.png", "other.png", "other.tif"]
    for name in names:
        Image.fromarray(phantom_radiograph(64, 64)).save(tmp_path / name)
    ids = [c.case_id for c in collect_cases([tmp_path / n for n in names])]
    assert len(set(ids)) == len(ids), ids
    assert ids[0] == "film" and ids[2] == "film_2" and ids[3] == "other"


def test_bone_suppression_time_excludes_scoring(tmp_path, monkeypatch):
    import time

    from lungx_core.eval import evaluate

    for sub in ("images", "soft_tissue"):
        (tmp_path / sub).mkdir()
        Image.fromarray(phantom_radiograph(96, 96)).save(tmp_path / sub / "a.png")

    def slow_scores(*args):
        time.sleep(0.3)
        return {"psnr_input": 1.0, "psnr_output": 1.0, "ssim_input": 1.0, "ssim_output": 1.0, "bsr": 0.0}

    monkeypatch.setattr(evaluate, "bone_suppression_scores", slow_scores)
    lung = np.ones((96, 96), bool)
    summary = evaluate.evaluate_bone_suppression(tmp_path, lambda image, lung: image.array, lambda a: lung)
    assert summary["seconds_per_image"] < 0.2


def test_reading_a_bitmap_keeps_pils_decompression_bomb_guard(tmp_path):
    guard = Image.MAX_IMAGE_PIXELS
    Image.fromarray(phantom_radiograph(64, 64)).save(tmp_path / "a.png")
    read_radiograph(tmp_path / "a.png")
    assert guard == Image.MAX_IMAGE_PIXELS and guard is not None


def test_library_messages_lose_programmer_advice_and_are_cut_at_a_word():
    garbage = short_message(ValueError("File is missing DICOM File Meta Information header or the 'DICM' prefix is "
                                       "missing from the header. Use force=True to force reading."))
    assert "force=True" not in garbage and garbage.endswith("from the header")
    truncated = short_message(ValueError("The number of bytes of pixel data is less than expected (245358 vs 491520 "
                                         "bytes) - the dataset may be corrupted, have an invalid group 0028 element "
                                         "value, or the transfer syntax may be incorrect"))
    assert truncated == "The number of bytes of pixel data is less than expected (245358 vs 491520 bytes)"
    long = short_message(ValueError("word " * 60), limit=50)
    assert long.endswith("...") and long[:-3].split(" ")[-1] == "word"


def test_bad_dicom_errors_are_one_unwrapped_line_each(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", phantom_radiograph(256, 240))
    (tmp_path / "truncated.dcm").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "garbage.dcm").write_bytes(b"not a dicom file " * 40)
    good.unlink()
    out = tmp_path / "out"
    proc = _lungx("segment", str(tmp_path / "truncated.dcm"), str(tmp_path / "garbage.dcm"), "-o", str(out), "-q")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr  # one line per bad file, one summary line, however long
    assert lines[0].startswith("error ") and "truncated.dcm" in lines[0] and "less than expected" in lines[0]
    assert "garbage.dcm" in lines[1] and "force=True" not in lines[1]
    with open(out / "results.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["error", "error"]


def test_derived_dicom_description_names_lungx_once(tmp_path):
    import pydicom

    from lungx_core.io.derived import write_derived_dicom

    source = write_dicom(tmp_path / "film.dcm", phantom_radiograph(128, 120))
    out = tmp_path / "derived.dcm"
    write_derived_dicom(out, source, phantom_radiograph(128, 120), "Rib-suppressed chest radiograph (lungx)")
    assert pydicom.dcmread(out).SeriesDescription == "Rib-suppressed chest radiograph (lungx)"


def test_chosen_series_flag_counts_series_not_series_numbers():
    from lungx_core.tasks.ct_lungs import qc_flags

    labels = np.zeros((8, 16, 16), np.uint8)
    labels[2:6, 4:8, 2:7], labels[2:6, 4:8, 9:14] = 1, 2
    flags = qc_flags(labels, {"lung_right": 2500.0, "lung_left": 2200.0},
                     {"n_series": 2, "series_number": 5, "series_index": 2}, 0.0)
    assert "chose_series_2_of_2" in flags


def test_interrupted_segment_run_keeps_the_rows_of_finished_cases(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lungx_core import cli
    from lungx_core.tasks import cxr_segmentation

    for name in ("a", "b", "c"):
        Image.fromarray(phantom_radiograph(64, 64)).save(tmp_path / f"{name}.png")
    def fake_case(case, segmenter, output, fmt, overlay, gate=None):
        if case.case_id == "b":  # by name: cases run two at a time, so call order is not input order
            raise KeyboardInterrupt
        return {"case_id": case.case_id, "input": str(case.path), "task": "cxr-anatomy", "status": "ok"}

    monkeypatch.setattr(cxr_segmentation, "process_case", fake_case)
    monkeypatch.setattr(cxr_segmentation, "CXRSegmenter", lambda *a, **k: SimpleNamespace(device="cpu"))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli.app, ["segment", *(str(tmp_path / f"{n}.png") for n in "abc"), "-o", str(out),
                                          "-q"])
    assert result.exit_code == 130  # interrupted
    with open(out / "results.csv", newline="") as f:
        assert [r["case_id"] for r in csv.DictReader(f)] == ["a"]
