"""Nodule detection: FROC and AUC exact on hand-made candidates, an obvious simulated nodule found, CLI and API
agreeing, bad inputs as error rows, Slicer markups at the right RAS on an oblique film in real MRML, and the
run's nodules.csv the same with workers and after a resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from test_gate import _lateral_drr, _sample_film_uint8

import lungx_core as lx
from lungx_core.eval.metrics import froc, match_candidates, roc_auc
from lungx_core.image import MedicalImage

# -- the measures, exact


def test_match_counts_each_nodule_once_and_everything_else_as_false_positive():
    nodules = {"a": [(10.0, 10.0, 5.0)], "b": [(50.0, 50.0, 8.0), (80.0, 80.0, 4.0)]}
    candidates = {
        "a": [(11.0, 10.0, 0.9), (12.0, 10.0, 0.8), (40.0, 40.0, 0.7)],  # a hit, a second on it, a miss
        "b": [(50.0, 57.0, 0.6), (86.0, 80.0, 0.95)],  # a hit at 7 px (radius 8), a miss at 6 px (radius 4)
        "c": [(1.0, 1.0, 0.5)],  # a normal film
    }
    matched = match_candidates(candidates, nodules)
    assert sorted(matched, key=lambda m: -m[0]) == [
        (0.95, 0, -1), (0.9, 1, 0), (0.8, 0, -1), (0.7, 0, -1), (0.6, 1, 1), (0.5, 0, -1)]


def test_froc_sensitivities_and_cpm_by_hand():
    # 3 nodules, 2 films; by probability: hit, FP, hit, FP, FP, FP
    matched = [(0.9, 1, 0), (0.8, 0, -1), (0.7, 1, 1), (0.6, 0, -1), (0.5, 0, -1), (0.4, 0, -1)]
    result = froc(matched, n_nodules=3, n_films=2, rates=(0.25, 0.5, 1.0, 2.0))
    # FP/image after each threshold: 0, 0.5, 0.5, 1.0, 1.5, 2.0 with sensitivity 1/3, 1/3, 2/3, 2/3, 2/3, 2/3
    assert result["sensitivity"] == {0.25: pytest.approx(1 / 3), 0.5: pytest.approx(2 / 3), 1.0: pytest.approx(2 / 3),
                                     2.0: pytest.approx(2 / 3)}
    assert result["cpm"] == pytest.approx((1 / 3 + 2 / 3 * 3) / 4)


def test_tied_probabilities_are_one_threshold():
    matched = [(0.5, 1, 0), (0.5, 0, -1)]  # a hit and an FP at the same probability: no point with the hit alone
    assert froc(matched, 1, 1, rates=(0.5, 1.0))["sensitivity"] == {0.5: 0.0, 1.0: 1.0}


def test_auc_counts_ties_half():
    assert roc_auc([0.9, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_froc_summary_per_subtlety_and_the_four_millimetre_floor():
    from lungx_core.eval.evaluate import froc_summary

    truth = [{"id": "n1", "x": "100", "y": "100", "diameter_px": "4", "diameter_mm": "2.8", "subtlety": "2"},
             {"id": "n2", "x": "200", "y": "200", "diameter_px": "20", "diameter_mm": "14", "subtlety": "5"}]
    # n1's radius is 2 px, but at 0.7 mm/px a hit may lie 4 mm = 5.7 px away; n2's candidate is 11 px off (>10)
    candidates = {"n1": [(105.0, 100.0, 0.8)], "n2": [(211.0, 200.0, 0.9)], "normal": [(5.0, 5.0, 0.3)]}
    summary = froc_summary(candidates, truth)
    assert summary["n_films"] == 3 and summary["n_nodules"] == 2
    assert summary["sensitivity"]["2.0"] == 0.5
    assert summary["sensitivity_at_2fp_by_subtlety"] == {"2": 1.0, "5": 0.0}
    assert summary["auc"] == 1.0  # both nodule films outrank the normal
    assert summary["operating_point"]["fp_per_image"] <= 1.0


# -- the shipped detector


def _film_with_nodule(contrast: float = 0.15, diameter: float = 16.0, at=(300.0, 200.0)) -> np.ndarray:
    """The embedded sample film (8 bits, 512 px wide) with an obvious simulated nodule at (column, row)."""
    from training.nodule_sim import Nodule, render_nodules

    film = _sample_film_uint8().astype(np.float32) / 255
    nodule = Nodule(at[0], at[1], diameter, contrast, "solid")
    film = film + render_nodules(film.shape, [nodule], np.random.default_rng(0))
    return np.round(np.clip(film, 0, 1) * 255).astype(np.uint8)


@pytest.mark.slow
def test_an_obvious_nodule_is_found_within_its_radius_and_the_clean_film_scores_lower():
    film = _film_with_nodule()
    result = lx.detect_nodules(MedicalImage(film), device="cpu")
    top = result.nodules[0]
    assert np.hypot(top["col"] - 300, top["row"] - 200) <= 15
    assert top["probability"] >= result.measurements["threshold"] and result.measurements["n_findings"] >= 1
    clean = lx.detect_nodules(MedicalImage(_sample_film_uint8()), device="cpu")
    near = [c["probability"] for c in clean.nodules if np.hypot(c["col"] - 300, c["row"] - 200) <= 15]
    assert max(near, default=0.0) < top["probability"]


def test_scales_average_logits_on_the_input_grid_and_one_scale_is_the_plain_pass():
    import torch

    from lungx_core.cxr.nodules import predict_heat

    class Echo(torch.nn.Module):  # logit = the input, whatever the grid: the scales must map it back in place
        def forward(self, t):
            return torch.cat([t, torch.zeros_like(t)], dim=1)

    yy, xx = np.mgrid[:200, :184]
    x = 4 * np.exp(-((yy - 60) ** 2 + (xx - 130) ** 2) / (2 * 12.0**2)) - 2  # a smooth, off-centre blob
    one = predict_heat(Echo(), x)
    assert np.allclose(one, 1 / (1 + np.exp(-x)), atol=1e-6)  # the mirror pass, mirrored back, agrees
    both = predict_heat(Echo(), x, scales=(1.0, 0.75))
    assert both.shape == x.shape
    assert np.unravel_index(both.argmax(), both.shape) == np.unravel_index(one.argmax(), one.shape)
    assert np.abs(both - one).max() < 0.02  # resampling a smooth map down and back changes it little


def test_bone_channel_is_the_film_less_its_bone_image_and_the_padding_stays_out():
    """The second channel of a bone-channel detector: the film part of the input less ``alpha`` times the bone
    image made from that part alone, the letterbox padding untouched; the first channel is the input itself."""
    from lungx_core.cxr.bone import BoneLayerModel
    from lungx_core.cxr.nodules import detector_input, with_bone_channel

    film = _sample_film_uint8()[:, 40:-60]  # not square: the input has padding at the sides
    x, box = detector_input(film, 256)
    bone_model = BoneLayerModel("cxr_bone", device="cpu")
    two = with_bone_channel(x, box, bone_model)
    assert two.shape == (2, 256, 256) and np.array_equal(two[0], x)
    (r0, c0), (rows, cols) = box.offset, box.resized_shape
    assert c0 > 0 and np.array_equal(two[1][:, :c0], x[:, :c0]) and np.array_equal(two[1][:, c0 + cols:],
                                                                                   x[:, c0 + cols:])
    part = np.ascontiguousarray(x[r0:r0 + rows, c0:c0 + cols])
    taken = x[r0:r0 + rows, c0:c0 + cols] - two[1][r0:r0 + rows, c0:c0 + cols]
    assert np.allclose(taken, bone_model.alpha * bone_model.bone_image(part), atol=1e-6)
    assert taken.max() > 0.02  # ribs are in it


def test_a_bone_channel_detector_reads_the_film_and_its_suppressed_twin(tmp_path):
    """The shipped detector's config names ``bone_channel`` (what ``train_nodules --export`` writes for such a run):
    it loads that bone model, reads it once and mirrored (``bone_single_view``) and feeds the network two channels.
    With the suppressed channel's first-layer weights at zero it gives what a one-channel network holding the film
    channel's weights gives, so the second channel is the only difference; and that channel counts."""
    import torch

    from lungx_core.cxr.nodules import NoduleDetector
    from lungx_core.models.networks import build_network
    from lungx_core.models.store import read_model_config, save_model

    shipped = NoduleDetector()
    config = read_model_config("cxr_nodules")
    assert config["in_channels"] == 2 and config["bone_channel"] == "cxr_bone" and shipped.bone is not None
    assert not shipped.bone.spec.tta_shifts and len(shipped.bone.spec.tta_sizes) == 1  # 2 passes, not 20
    state = shipped.net.state_dict()
    one_config = {k: v for k, v in config.items() if k not in ("bone_channel", "bone_single_view")}
    one_config["in_channels"] = 1
    one_shape = build_network(config["arch"], 1, 2, **config["arch_options"]).state_dict()
    widened = [k for k in state if state[k].shape != one_shape[k].shape]
    assert widened and all(state[k].shape[1] == 2 for k in widened)
    film_only = {**state, **{k: state[k][:, :1].clone() for k in widened}}
    blind = {**state, **{k: torch.cat([state[k][:, :1], torch.zeros_like(state[k][:, 1:])], 1) for k in widened}}
    one = NoduleDetector(save_model(film_only, one_config, tmp_path / "one.safetensors", fp16=False))
    two = NoduleDetector(save_model(blind, config, tmp_path / "blind.safetensors", fp16=False))
    film = _film_with_nodule(contrast=0.1)
    a, b = one.detect(film), two.detect(film)
    assert a and [(c.rank, round(c.col, 2), round(c.row, 2)) for c in a] == [
        (c.rank, round(c.col, 2), round(c.row, 2)) for c in b]
    assert np.allclose([c.probability for c in a], [c.probability for c in b], atol=2e-3)
    seen = shipped.detect(film)
    assert abs(seen[0].probability - a[0].probability) > 1e-3  # the suppressed channel changes what it sees
    full = NoduleDetector(save_model(blind, {**config, "bone_single_view": False}, tmp_path / "full.safetensors",
                                     fp16=False))
    assert len(full.bone.spec.tta_shifts) > 1  # without the key: the bone card's full reading


def test_evaluate_nodules_can_detect_on_bone_suppressed_films(tmp_path):
    """`lungx evaluate nodules --suppress-ribs cxr_bone` scores the detector on each film after suppression by the
    bone model alone: the same candidates as suppressing (no findings spared) and detecting by hand, and not those
    of the film as it is."""
    from lungx_core.eval.runners import score_nodules
    from lungx_core.io.readers import read_radiograph

    (tmp_path / "images").mkdir()
    film = _film_with_nodule(contrast=0.1)
    Image.fromarray(film).save(tmp_path / "images" / "N1.png")
    scale = 512 / film.shape[1]  # nodules.csv is on the 512-px film
    (tmp_path / "nodules.csv").write_text(f"id,x,y,diameter_px,subtlety\nN1,{300 * scale},{200 * scale},"
                                          f"{16 * scale},5\n")
    seen: dict[str, dict] = {}
    plain = score_nodules(tmp_path, device="cpu", on_case=lambda case, row: seen.setdefault("plain", row))
    suppressed = score_nodules(tmp_path, device="cpu", bone_model="cxr_bone",
                               on_case=lambda case, row: seen.setdefault("suppressed", row))
    assert plain["n_nodules"] == suppressed["n_nodules"] == 1
    by_hand = lx.detect_nodules(lx.suppress_ribs(read_radiograph(tmp_path / "images" / "N1.png"), device="cpu",
                                                 input_check=False, keep_nodules=False).output, device="cpu")
    assert seen["suppressed"]["max_probability"] == pytest.approx(by_hand.measurements["max_probability"], abs=1e-6)
    assert seen["suppressed"]["max_probability"] != pytest.approx(seen["plain"]["max_probability"], abs=1e-6)


@pytest.mark.slow
def test_positions_follow_the_stored_orientation():
    """A film stored mirrored with PatientOrientation saying so: the candidate is reported on the stored array."""
    film = _film_with_nodule()
    upright = lx.detect_nodules(MedicalImage(film), device="cpu").nodules[0]
    stored = MedicalImage(np.ascontiguousarray(film[:, ::-1]), metadata={"patient_orientation": ["R", "F"]})
    mirrored = lx.detect_nodules(stored, device="cpu").nodules[0]
    assert mirrored["col"] == pytest.approx(film.shape[1] - 1 - upright["col"], abs=0.5)
    assert mirrored["row"] == pytest.approx(upright["row"], abs=0.5)


@pytest.mark.slow
def test_cli_and_api_agree_and_bad_inputs_are_error_rows(tmp_path):
    from test_cli import run_lungx

    films = tmp_path / "films"
    films.mkdir()
    Image.fromarray(_film_with_nodule()).save(films / "film.png")
    Image.fromarray(_lateral_drr()).save(films / "lateral.png")
    (films / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    proc = run_lungx("detect-nodules", str(films), "-o", str(out), "--device", "cpu", "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    with open(out / "results.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert rows["film"]["status"] == "ok" and int(rows["film"]["n_findings"]) >= 1
    assert rows["lateral"]["status"] == "error" and "lateral" in rows["lateral"]["error"]
    assert rows["broken"]["error"].startswith(str(films / "broken.png"))
    with open(out / "nodules.csv", newline="") as f:
        cli = list(csv.DictReader(f))
    assert {r["case_id"] for r in cli} == {"film"}
    api = lx.detect_nodules(films / "film.png", device="cpu")
    assert len(cli) == len(api.nodules)
    for row, c in zip(cli, api.nodules, strict=True):
        assert int(row["rank"]) == c["rank"]
        assert float(row["col"]) == pytest.approx(c["col"], abs=0.01)
        assert float(row["probability"]) == pytest.approx(c["probability"], abs=1e-4)
        assert row["diameter_mm"] == "" and row["x_mm"] == ""  # a PNG has no pixel size
    markups = json.loads((out / "film_nodules.mrk.json").read_text())["markups"][0]
    assert len(markups["controlPoints"]) == int(rows["film"]["n_findings"])
    assert Image.open(out / "film_nodules.png").mode == "RGB"


@pytest.mark.slow
def test_resume_and_workers_give_the_same_nodules_csv(tmp_path):
    from test_cli import run_lungx

    films = tmp_path / "films"
    films.mkdir()
    for i, at in enumerate([(300.0, 200.0), (180.0, 260.0), (330.0, 300.0)]):
        Image.fromarray(_film_with_nodule(at=at)).save(films / f"film{i}.png")
    one = tmp_path / "one"
    assert run_lungx("detect-nodules", str(films), "-o", str(one), "--device", "cpu", "-q").returncode == 0
    expected = (one / "nodules.csv").read_text()
    two = tmp_path / "two"
    assert run_lungx("detect-nodules", str(films), "-o", str(two), "--device", "cpu", "-q",
                     "--workers", "2").returncode == 0
    assert (two / "nodules.csv").read_text() == expected
    (one / "nodules.csv").unlink()
    for p in one.glob("film1_*"):
        p.unlink()  # as if the run had stopped before film1
    assert run_lungx("detect-nodules", str(films), "-o", str(one), "--device", "cpu", "-q",
                     "--resume").returncode == 0
    assert (one / "nodules.csv").read_text() == expected


# -- Slicer: the markups in real MRML


def _oblique_film(film: np.ndarray) -> MedicalImage:
    a = np.deg2rad(25.0)  # a film plane turned about the superior axis, with non-square pixels
    direction = np.array([[np.cos(a), 0, -np.sin(a)], [np.sin(a), 0, np.cos(a)], [0, 1.0, 0]])
    return MedicalImage(film, spacing=(0.4, 0.5, 1.0), origin=(-100.0, 30.0, 150.0),
                        direction=tuple(direction.ravel()), spacing_known=True)


@pytest.mark.slow
def test_markups_load_in_real_mrml_on_the_nodule_in_ras(tmp_path, monkeypatch):
    import importlib

    from slicer_mrml import install, volume_node

    from lungx_core.io.writers import write_image

    image = _oblique_film(_film_with_nodule())
    result = lx.detect_nodules(image, device="cpu")
    assert result.measurements["n_findings"] >= 1
    top = result.nodules[0]
    assert top["diameter_mm"] == pytest.approx(top["diameter_px"] * 0.45)
    paths = result.save(tmp_path, "film")
    write_image(tmp_path / "film.nrrd", image)

    slicer = install(monkeypatch)
    module = importlib.import_module("LungXSlicer")
    node = volume_node(image, "film")
    markups_path = next(p for p in paths if p.name.endswith(".mrk.json"))
    markups = module.LungXSlicerLogic()._importMarkups(markups_path, node, "cxr-nodules")
    assert markups.GetNumberOfControlPoints() == result.measurements["n_findings"]
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras_matrix = slicer.util.arrayFromVTKMatrix(m)
    for i, c in enumerate(result.nodules[: result.measurements["n_findings"]]):  # findings: the most probable
        expected = ijk_to_ras_matrix @ np.array([c["col"], c["row"], 0.0, 1.0])
        ras = [0.0, 0.0, 0.0]
        markups.GetNthControlPointPosition(i, ras)
        np.testing.assert_allclose(ras, expected[:3], atol=1e-2)
        assert markups.GetNthControlPointLabel(i).startswith(f"nodule {c['rank']}")
    # the top finding sits on the simulated nodule: (300, 200) on the film's array, in RAS
    nodule_ras = ijk_to_ras_matrix @ np.array([300.0, 200.0, 0.0, 1.0])
    ras = [0.0, 0.0, 0.0]
    markups.GetNthControlPointPosition(0, ras)
    assert np.linalg.norm(np.array(ras) - nodule_ras[:3]) <= 15 * 0.5


@pytest.mark.slow
def test_dicom_sr_references_the_source_in_its_study(tmp_path):
    import highdicom as hd
    import pydicom
    from conftest import write_dicom
    from test_cli import run_lungx

    film = _film_with_nodule().astype(np.uint16) * 16  # 12 bits
    source = write_dicom(tmp_path / "film.dcm", film, pixel_spacing=(0.7, 0.7))
    out = tmp_path / "out"
    proc = run_lungx("detect-nodules", str(source), "-o", str(out), "--device", "cpu", "-q", "--format", "dicom-sr")
    assert proc.returncode == 0, proc.stderr
    src = pydicom.dcmread(source)
    sr = hd.sr.srread(out / "film_nodules_sr.dcm")
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.SeriesInstanceUID != src.SeriesInstanceUID
    groups = sr.content.get_planar_roi_measurement_groups()
    with open(out / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert len(groups) == int(row["n_findings"]) >= 1
    region = groups[0].roi
    assert region.GraphicType == "CIRCLE"
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    centre = np.asarray(region.GraphicData[:2]) - 0.5  # SCOORD: pixel corners, (column, row)
    assert np.hypot(*(centre - [300, 200])) <= 15
    diameter = [m for m in groups[0].get_measurements() if m.name.meaning == "Diameter"]
    assert diameter and diameter[0].unit.value == "mm"


def test_dicom_sr_is_refused_for_a_film_that_is_not_dicom(tmp_path):
    from lungx_core.errors import InputError
    from lungx_core.tasks.nodule_detection import NoduleFindings, write_outputs

    with pytest.raises(InputError, match="needs a DICOM input"):
        write_outputs(tmp_path, "film", MedicalImage(_sample_film_uint8(), source=str(tmp_path / "film.png")),
                      NoduleFindings([], 0.5), fmt="dicom-sr")
    assert list(tmp_path.iterdir()) == []  # all or nothing


def test_dicom_sr_of_a_film_without_findings_says_none(tmp_path):
    import highdicom as hd
    from conftest import write_dicom

    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.nodule_detection import NoduleFindings, write_outputs

    source = write_dicom(tmp_path / "film.dcm", _sample_film_uint8().astype(np.uint16) * 16)
    paths = write_outputs(tmp_path / "out", "film", read_radiograph(source), NoduleFindings([], 0.5), "dicom-sr")
    sr = hd.sr.srread(next(p for p in paths if p.name.endswith("_sr.dcm")))
    assert sr.content.get_planar_roi_measurement_groups() == []
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == 1 and groups[0].finding_type.meaning == "None"


def test_evaluate_nodules_adds_the_lung_field_subset_when_lung_masks_are_there(tmp_path):
    """With ``masks/lung/`` beside ``images/`` the summary gains ``lung_field``: films whose nodule centre lies
    outside the reference lung (scaled from the film's width to the mask's) are left out, the rest scored alike;
    without the masks there is no such key."""
    from lungx_core.eval.evaluate import evaluate_nodules

    (tmp_path / "images").mkdir()
    for film_id in ("in", "out", "normal"):
        Image.fromarray(np.tile(np.arange(128, dtype=np.uint8), (128, 1))).save(tmp_path / "images" / f"{film_id}.png")
    # on the 512-px film: "in" at (128, 128) -> (32, 32) on the 128-px film, "out" at (448, 448) -> (112, 112)
    (tmp_path / "nodules.csv").write_text("id,x,y,diameter_px,subtlety\nin,128,128,40,3\nout,448,448,40,3\n")
    found = {"in": [(32.0, 32.0, 0.9)], "out": [(10.0, 10.0, 0.8)], "normal": [(60.0, 60.0, 0.5)]}

    def detector():
        """Candidates by film, in the order evaluate_nodules reads the films (sorted file names)."""
        order = ["in", "normal", "out"]
        return lambda image: found[order.pop(0)]

    plain = evaluate_nodules(tmp_path, detector())
    assert "lung_field" not in plain and plain["n_nodules"] == 2 and plain["sensitivity"]["8.0"] == 0.5

    lung = np.zeros((64, 64), np.uint8)
    lung[8:40, 8:40] = 255  # (32, 32) on the film is (16, 16) here: inside; (112, 112) -> (56, 56): outside
    (tmp_path / "masks" / "lung").mkdir(parents=True)
    for film_id in ("in", "out"):
        Image.fromarray(lung).save(tmp_path / "masks" / "lung" / f"{film_id}.png")
    summary = evaluate_nodules(tmp_path, detector())
    field = summary["lung_field"]
    assert field["films_left_out"] == ["out"] and field["n_films"] == 2 and field["n_nodules"] == 1
    assert field["sensitivity"]["0.125"] == 1.0 and field["auc"] == 1.0 and "curve" not in field
    assert summary["n_nodules"] == 2  # the whole set's figures are unchanged beside it
