"""Regression tests for the defects found by trying LungX as a careful user would (issue 32): each test fails on
the code before its fix."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import phantom_radiograph, save_dicom, write_ct_series
from PIL import Image

from lungx_core.errors import InputError
from lungx_core.io.inputs import Case, collect_cases
from lungx_core.io.readers import read_radiograph


def _lungx(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "lungx_core", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


# 1. float bitmaps keep their values in derived images
def test_a_float_tiff_film_gives_a_derived_image_with_its_values(tmp_path):
    from lungx_core.io.derived import derived_suffix, write_derived

    values = phantom_radiograph(128, 120).astype(np.float32) / 255  # a mode-F TIFF in [0, 1]
    Image.fromarray(values).save(tmp_path / "filmf.tif")
    image = read_radiograph(tmp_path / "filmf.tif")
    processed = image.array * 0.9 + 0.01
    assert derived_suffix(image) == ".tif"
    write_derived(tmp_path / "out.tif", image, processed, "test")
    back = np.asarray(Image.open(tmp_path / "out.tif"))
    assert back.dtype == np.float32 and np.allclose(back, processed, atol=1e-6)
    assert len(np.unique(back)) > 50  # never 0s and 1s


def test_8_and_16_bit_films_still_give_pngs_of_their_depth(tmp_path):
    from lungx_core.io.derived import derived_suffix, write_derived

    for dtype, scale in ((np.uint8, 1), (np.uint16, 257)):
        path = tmp_path / f"film_{np.dtype(dtype).name}.png"
        Image.fromarray((phantom_radiograph(96, 96).astype(np.uint32) * scale).astype(dtype)).save(path)
        image = read_radiograph(path)
        assert derived_suffix(image) == ".png"
        write_derived(tmp_path / "out.png", image, image.array.astype(np.float32) + 0.4, "test")
        back = np.asarray(Image.open(tmp_path / "out.png"))
        assert back.dtype == np.dtype(dtype) and np.array_equal(back, image.array)


# 2. remote workers get absolute paths and are asked whether they see them
def test_runs_send_absolute_paths(tmp_path, monkeypatch):
    from lungx_core.batch import run_cases

    monkeypatch.chdir(tmp_path)
    Image.fromarray(phantom_radiograph(96, 96)).save("film.png")
    seen = []
    run_cases(collect_cases([Path("film.png")]), lambda c: seen.append(c) or {"status": "error"}, Path("out"))
    assert seen[0].path.is_absolute() and seen[0].path == tmp_path / "film.png"


def test_a_worker_that_cannot_see_the_output_folder_is_named(tmp_path):
    from lungx_core.batch import _not_visible_on_workers

    class Client:  # what distributed.Client.run answers: {worker address: the function's result there}
        def __init__(self, missing):
            self.missing = missing

        def run(self, function, paths):
            return {"tcp://w1:1": function([p for p in paths if p not in self.missing]) + self.missing}

    film = tmp_path / "film.png"
    film.write_bytes(b"x")
    cases = [Case("film", film), Case("gone", tmp_path / "gone.png")]
    hidden = _not_visible_on_workers(Client([str(tmp_path / "gone.png")]), tmp_path, cases)
    assert hidden == {tmp_path / "gone.png": ["tcp://w1:1"]}
    with pytest.raises(RuntimeError, match=r"tcp://w1:1 cannot write to the output folder"):
        _not_visible_on_workers(Client([str(tmp_path / "out")]), tmp_path / "out", cases)


@pytest.mark.slow
def test_scheduler_run_from_another_working_directory_writes_where_the_user_asked(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    from typer.testing import CliRunner

    from lungx_core.cli import app

    elsewhere, here = tmp_path / "worker_cwd", tmp_path / "user"
    elsewhere.mkdir(), here.mkdir()
    monkeypatch.chdir(elsewhere)  # the cluster's workers start here
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        monkeypatch.chdir(here)
        Image.fromarray(phantom_radiograph(128, 120)).save("film.png")
        result = CliRunner().invoke(app, ["segment", "film.png", "-o", "out", "--scheduler", cl.scheduler_address,
                                          "--no-input-check", "--device", "cpu", "-q", "--no-overlay"])
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader((here / "out" / "results.csv").read_text().splitlines()))
        assert rows[0]["status"] == "ok" and (here / "out" / "film.seg.nrrd").is_file()
        assert not (elsewhere / "out").exists()
        result = CliRunner().invoke(app, ["segment", str(here / "nothere.png"), "-o", "out2", "--scheduler",
                                          cl.scheduler_address, "--no-input-check", "-q"])
        rows = list(csv.DictReader((here / "out2" / "results.csv").read_text().splitlines()))
        assert "not visible on Dask worker" in rows[0]["error"]


# 3. NaN in NIfTI
def test_nan_in_a_nifti_film_or_ct_is_an_error(tmp_path):
    import nibabel

    from lungx_core.io.ct import read_ct

    film = phantom_radiograph(128, 120).astype(np.float32)
    film[10:20, 10:20] = np.nan
    nibabel.save(nibabel.Nifti1Image(film.T[:, :, None], np.eye(4)), tmp_path / "nanfilm.nii.gz")
    with pytest.raises(InputError, match="nanfilm.nii.gz: image contains NaN"):
        read_radiograph(tmp_path / "nanfilm.nii.gz")
    ct = np.full((64, 64, 12), -1000.0, np.float32)
    ct[20:40, 20:40, :] = 40.0
    ct[5, 5, 5] = np.inf
    nibabel.save(nibabel.Nifti1Image(ct, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="nan.nii.gz: volume contains NaN or infinite"):
        read_ct(tmp_path / "nan.nii.gz")
    ct[5, 5, 5] = -1000.0
    nibabel.save(nibabel.Nifti1Image(ct, np.eye(4)), tmp_path / "fine.nii.gz")
    assert read_ct(tmp_path / "fine.nii.gz").array.shape == (12, 64, 64)


def test_an_integer_nifti_is_not_opened_again_for_the_nan_check(tmp_path, monkeypatch):
    """Integer data cannot hold NaN: with ITK's integer image in hand the NaN check does not read the file again
    (nibabel, a quarter of a second to import, stays out of a CT run); a float file is still checked."""
    import nibabel

    from lungx_core.io.ct import read_ct

    ct = np.full((64, 64, 12), -1000, np.int16)
    ct[20:40, 20:40, :] = 40
    nibabel.save(nibabel.Nifti1Image(ct, np.eye(4)), tmp_path / "int.nii.gz")
    nibabel.save(nibabel.Nifti1Image(ct.astype(np.float32), np.eye(4)), tmp_path / "float.nii.gz")
    opened = []
    real_load = nibabel.load
    monkeypatch.setattr(nibabel, "load", lambda path, *a, **k: opened.append(path) or real_load(path, *a, **k))
    assert read_ct(tmp_path / "int.nii.gz").array.shape == (12, 64, 64) and opened == []
    assert read_ct(tmp_path / "float.nii.gz").array.shape == (12, 64, 64) and len(opened) == 1


# 4. non-image DICOM objects beside a CT series
def _dose_report(path: Path, study_uid: str | None = None) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.Modality, ds.SeriesNumber = "SR", 997
    save_dicom(ds, path)
    return path


def test_a_dose_report_in_a_ct_folder_is_ignored(tmp_path):
    from conftest import chest_phantom

    from lungx_core.io.ct import read_ct

    folder = tmp_path / "withsr"
    write_ct_series(folder, chest_phantom((12, 64, 64)))
    _dose_report(folder / "dose.dcm")
    cases = collect_cases([folder])
    assert [(c.case_id, c.kind, c.problem) for c in cases] == [("withsr", "ct", None)]
    assert read_ct(folder).metadata["n_series"] == 1  # no chose_series_1_of_2
    only = tmp_path / "only_sr"
    only.mkdir()
    _dose_report(only / "dose.dcm")
    assert "only non-image DICOM objects" in collect_cases([only])[0].problem


# 5. a folder search never collects LungX's own outputs
def test_a_second_run_in_the_same_folder_does_not_read_its_outputs(tmp_path, monkeypatch):
    from lungx_core.batch import run_cases

    films = tmp_path / "films"
    films.mkdir()
    Image.fromarray(phantom_radiograph(96, 96)).save(films / "film.png")

    def step(case, out):
        outputs = [f"{case.case_id}.seg.nrrd", f"{case.case_id}_overlay.png"]
        for name in outputs:
            Image.fromarray(phantom_radiograph(96, 96)).save(out / name, format="PNG")
        return {"case_id": case.case_id, "status": "ok", "outputs": ";".join(outputs)}

    monkeypatch.chdir(films)
    for out in (Path("lungx_out"), Path("lungx_out"), Path(".")):  # twice the default, then into the input folder
        cases = collect_cases([Path(".")], out)
        assert [c.path.name for c in cases] == ["film.png"], out
        run_cases(cases, partial(step, out=out), out)
    # an earlier run's output folder under another name is skipped too
    assert [c.path.name for c in collect_cases([Path(".")], Path("elsewhere"))] == ["film.png"]


# 6. resume sees a changed mask
def test_resume_reruns_a_case_whose_mask_changed(tmp_path):
    from lungx_core.batch import run_cases

    film, mask = tmp_path / "film.png", tmp_path / "mask.png"
    Image.fromarray(phantom_radiograph(96, 96)).save(film)
    mask.write_bytes(b"first mask")
    calls = []

    def step(case):
        calls.append(case.case_id)
        return {"case_id": case.case_id, "status": "ok", "outputs": ""}

    out = tmp_path / "out"

    def run(mask_file: Path) -> int:
        case = collect_cases([film])[0]
        case.mask = mask_file
        run_cases([case], step, out, resume=True)
        return len(calls)

    assert run(mask) == 1 and run(mask) == 1  # the same mask: done
    mask.write_bytes(b"a new mask")  # same name, new content
    assert run(mask) == 2 and run(mask) == 2
    other = tmp_path / "other.png"
    other.write_bytes(b"a new mask")
    assert run(other) == 3  # another mask file: the record names its mask


# 8. commands sharing an output folder
def test_another_command_does_not_overwrite_a_runs_results(tmp_path):
    from lungx_core.batch import claim_output, run_cases

    out = tmp_path / "out"
    film = tmp_path / "film.png"
    Image.fromarray(phantom_radiograph(96, 96)).save(film)
    run_cases(collect_cases([film]), lambda c: {"status": "ok", "outputs": ""}, out, command="segment")
    run_cases(collect_cases([film]), lambda c: {"status": "ok", "outputs": ""}, out, command="segment")  # a rerun
    with pytest.raises(RuntimeError, match=r"holds the results of `lungx segment`.*`lungx classify`"):
        claim_output(out, "classify")


def test_cli_refuses_another_commands_output_folder_and_keeps_its_results(tmp_path):
    film = tmp_path / "film.png"
    Image.fromarray(phantom_radiograph(128, 120)).save(film)
    out = tmp_path / "out"
    first = _lungx("segment", str(film), "-o", str(out), "--no-input-check", "--device", "cpu", "-q")
    assert first.returncode == 0, first.stderr
    table = (out / "results.csv").read_text()
    second = _lungx("classify", str(film), "-o", str(out), "--no-input-check", "--device", "cpu", "-q")
    assert second.returncode == 2 and "holds the results of `lungx segment`" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
    assert (out / "results.csv").read_text() == table


# 9. 16 bits per channel
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_48_bit_rgb_film_is_read_at_16_bits(tmp_path, suffix):
    import SimpleITK as sitk

    grey = (phantom_radiograph(96, 96).astype(np.uint32) * 257).astype(np.uint16)
    rgb = np.stack([grey, grey, np.clip(grey.astype(np.int64) + 300, 0, 65535).astype(np.uint16)], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / f"rgb16{suffix}"))
    image = read_radiograph(tmp_path / f"rgb16{suffix}")
    assert image.array.dtype == np.uint16 and image.metadata["converted_from_colour"]
    expected = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(image.array.astype(np.float32) - expected).max() <= 0.5  # 8 bits would be off by up to 128
    rgba = np.concatenate([rgb, np.full((96, 96, 1), 65535, np.uint16)], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), str(tmp_path / f"rgba16{suffix}"))
    assert read_radiograph(tmp_path / f"rgba16{suffix}").array.dtype == np.uint16


# 10. one seed rule for the API and the CLI
def test_api_and_cli_synthesis_with_a_seed_give_the_same_pixels(tmp_path):
    import lungx_core as lx

    film = phantom_radiograph(256, 240)
    Image.fromarray(film).save(tmp_path / "film.png")
    yy, xx = np.mgrid[0:256, 0:240]
    lung = np.zeros(film.shape, bool)
    for side in (-1, 1):
        lung |= ((yy - 115) / 75.0) ** 2 + ((xx - 120 - side * 48) / 30.0) ** 2 < 1
    Image.fromarray(lung.astype(np.uint8) * 255).save(tmp_path / "lung.png")
    api = lx.synthesize(str(tmp_path / "film.png"), seed=3, area=0.2, lung_mask=lung, input_check=False,
                        device="cpu")
    proc = _lungx("synthesize", str(tmp_path / "film.png"), "--seed", "3", "--area", "0.2", "--lung-mask",
                  str(tmp_path / "lung.png"), "-o", str(tmp_path / "out"), "--no-input-check", "--device", "cpu", "-q")
    assert proc.returncode == 0, proc.stderr
    cli = np.asarray(Image.open(tmp_path / "out" / "film_synthetic.png"))
    assert not np.array_equal(cli, film) and np.array_equal(cli, api.output.array)


# 11. colour DICOM
def test_a_tinted_rgb_dicom_is_flagged_as_converted_from_colour(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    grey = phantom_radiograph(96, 96)
    rgb = np.stack([grey, grey, np.clip(grey.astype(int) + 20, 0, 255).astype(np.uint8)], axis=-1)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    save_dicom(ds, tmp_path / "tinted.dcm")
    image = read_radiograph(tmp_path / "tinted.dcm")
    assert image.metadata.get("converted_from_colour") is True and image.array.shape == grey.shape


def test_the_completion_record_names_the_mask_and_its_content(tmp_path):
    from lungx_core.batch import record_path, run_cases

    film, mask = tmp_path / "film.png", tmp_path / "mask.png"
    Image.fromarray(phantom_radiograph(96, 96)).save(film)
    mask.write_bytes(b"mask")
    case = collect_cases([film])[0]
    case.mask = mask
    run_cases([case], lambda c: {"status": "ok", "outputs": ""}, tmp_path / "out")
    record = json.loads(record_path(tmp_path / "out", "film").read_text())
    assert record["signature"]["mask"][0] == str(mask) and len(record["signature"]["mask"][1]) == 64


# 7. mirrored films
@pytest.mark.slow
@pytest.mark.shared_data
def test_a_mirrored_jsrt_film_is_flagged_left_right_inconsistent(shared_data):
    import lungx_core as lx
    from lungx_core.image import MedicalImage
    from training.gate_data import is_validation

    ids = sorted(p.stem for p in (shared_data / "jsrt_scr" / "images").glob("*.png"))
    for film_id in [i for i in ids if is_validation(f"jsrt_scr:{i}")][:4]:  # the mirror check's validation films
        film = read_radiograph(shared_data / "jsrt_scr" / "images" / f"{film_id}.png")
        as_shown = lx.segment(film, input_check=False, device="cpu")
        mirrored = lx.segment(MedicalImage(film.array[:, ::-1].copy(), source="mirrored.png"), input_check=False,
                              device="cpu")
        assert "left_right_inconsistent" not in as_shown.qc_flags, film_id
        assert "left_right_inconsistent" in mirrored.qc_flags, film_id


def test_the_mirror_check_tells_the_embedded_sample_from_its_mirror_image():
    from lungx_core.cxr.laterality import MirrorCheck
    from lungx_core.io.sample import sample_radiograph

    check, film = MirrorCheck(), sample_radiograph().array
    assert check.probability_mirrored(film) < check.threshold <= check.probability_mirrored(film[:, ::-1])
