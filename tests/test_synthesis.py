"""Healthy -> pathological synthesis (issue 6): thoracic crop and residual, the lung-mask inputs, the derived
outputs in each format family, the CLI and its bad inputs, the evaluation JSON and the augmentation hook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_dicom
from PIL import Image

from lungx_core.cxr.thoracic import CropSpec, apply_residual, feather_window, thoracic_crop
from lungx_core.errors import InputError
from lungx_core.image import MedicalImage
from lungx_core.io.readers import read_radiograph
from lungx_core.io.writers import write_image


def phantom_lung(shape: tuple[int, int]) -> np.ndarray:
    """The lung fields of conftest's phantom radiograph."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    lung = np.zeros(shape, dtype=bool)
    for side in (-1, 1):
        dx = (xx - cols * 0.5 - side * cols * 0.2) / (cols * 0.13)
        lung |= (((yy - rows * 0.45) / (rows * 0.30)) ** 2 + dx**2) < 1
    return lung


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> Path:
    """An untrained, narrow generator saved like a shipped model: fast, deterministic, changes every pixel."""
    import torch

    from lungx_core.models.networks import build_network
    from lungx_core.models.store import save_model

    torch.manual_seed(0)
    options = {"base": 4, "n_down": 2, "n_blocks": 1, "upsample": "resize"}
    net = build_network("resnet_generator", 1, 1, **options)
    config = {"arch": "resnet_generator", "in_channels": 1, "classes": ["image"], "arch_options": options,
              "crop": CropSpec(size=64).as_dict()}
    return save_model(net.state_dict(), config, tmp_path_factory.mktemp("gen") / "tiny.safetensors")


def test_identity_translation_returns_the_input_bit_for_bit(phantom):
    lung = phantom_lung(phantom.shape)
    crop = thoracic_crop(phantom, lung, CropSpec(size=64))
    out = apply_residual(phantom, crop, crop.image)
    assert out.dtype == phantom.dtype and np.array_equal(out, phantom)


def test_residual_changes_only_the_crop_and_fades_at_its_border(phantom):
    lung = phantom_lung(phantom.shape)
    crop = thoracic_crop(phantom, lung, CropSpec(size=64))
    b = crop.box
    assert b.shape[0] == b.shape[1] and lung[: b.r0].sum() == 0 and lung[b.r1 :].sum() == 0
    out = apply_residual(phantom, crop, np.clip(crop.image + 0.2, 0, 1))
    outside = np.ones(phantom.shape, dtype=bool)
    outside[b.r0 : b.r1, b.c0 : b.c1] = False
    assert np.array_equal(out[outside], phantom[outside])
    third = b.shape[0] // 3
    centre = (slice(b.r0 + third, b.r1 - third), slice(b.c0 + third, b.c1 - third))
    assert (out[centre].astype(int) - phantom[centre]).mean() > 5  # brighter where the network said so
    assert np.abs(out[b.r0, b.c0:b.c1].astype(int) - phantom[b.r0, b.c0:b.c1]).max() <= 1  # faded out at the edge
    w = feather_window((50, 40), 0.1)
    assert w.max() == 1.0 and w[0].max() < 0.2 and w[25, 20] == 1.0


def test_crop_rejects_a_mask_of_another_size_and_a_flat_image(phantom):
    with pytest.raises(ValueError, match="lung mask is 10x10 pixels"):
        thoracic_crop(phantom, np.ones((10, 10), bool), CropSpec())
    with pytest.raises(ValueError, match="flat"):
        thoracic_crop(np.full_like(phantom, 7), phantom_lung(phantom.shape), CropSpec())


def test_shifted_crop_stays_inside_the_image(phantom):
    lung = phantom_lung(phantom.shape)
    crop = thoracic_crop(phantom, lung, CropSpec(), shift=(-10_000, 10_000))
    assert crop.box.r0 == 0 and crop.box.c1 == phantom.shape[1]


def test_synthesizer_is_deterministic_and_seed_gives_a_variant(phantom, tiny_generator):
    from lungx_core.tasks.synthesis import Synthesizer

    s = Synthesizer(tiny_generator, "cpu")
    image = MedicalImage(phantom, metadata={"format": "png", "bits": 8})
    lung = phantom_lung(phantom.shape)
    a, b = s.synthesize(image, lung), s.synthesize(image, lung)
    assert np.array_equal(a.array, b.array) and not np.array_equal(a.array, phantom)
    assert not np.array_equal(s.synthesize(image, lung, seed=3).array, a.array)
    assert np.array_equal(s.synthesize(image, lung, seed=3).array, s.synthesize(image, lung, seed=3).array)
    with pytest.raises(InputError, match="lung mask is empty"):
        s.synthesize(image, np.zeros_like(lung))


def test_lesion_guided_cyclegan_changes_only_its_lesion(phantom, tiny_generator, tmp_path):
    """A lesion-guided model (issue 18) lets the generator's change in through a lesion of the lesion model only:
    the same lesion insert would draw for that seed, every other pixel bit-exact, area and side respected."""
    import json

    from lungx_core.generative.lesions import LesionRequest, plan_lesion
    from lungx_core.tasks.synthesis import make_synthesizer

    guided = tmp_path / "guided.safetensors"
    guided.write_bytes(tiny_generator.read_bytes())
    config = json.loads(tiny_generator.with_suffix(".json").read_text())
    guided.with_suffix(".json").write_text(json.dumps({**config, "region": "lesion"}))
    s = make_synthesizer("cyclegan", guided, "cpu", area=0.3, side="right", kind="consolidation")
    assert s.lesion_guided and s.request == LesionRequest(area=0.3, side="right", kind="consolidation")
    image = MedicalImage(phantom, metadata={"format": "png", "bits": 8})
    lung = phantom_lung(phantom.shape)
    result = s.synthesize(image, lung, seed=5)
    lesion = plan_lesion(lung, s.request, 5)  # display orientation is the array's own for this phantom
    assert np.array_equal(result.lesion, lesion.hard)
    changed = result.array != phantom
    assert changed.any() and not changed[lesion.region == 0].any()
    half = phantom.shape[1] // 2  # display orientation: the patient's right lung is in the image's left half
    assert not changed[:, half:].any()
    assert abs(lesion.hard.sum() / lung.sum() - 0.3) < 0.05  # area: share of the whole lung field
    assert np.array_equal(s.synthesize(image, lung, seed=5).array, result.array)
    assert not np.array_equal(s.synthesize(image, lung, seed=6).lesion, result.lesion)
    unguided = make_synthesizer("cyclegan", tiny_generator, "cpu")
    assert not unguided.lesion_guided and unguided.synthesize(image, lung).lesion is None


def test_lung_mask_files_png_nrrd_and_segmentation(tmp_path, phantom):
    from lungx_core.anatomy import LUNGS
    from lungx_core.io.writers import write_seg_nrrd
    from lungx_core.tasks.synthesis import read_lung_mask

    lung = phantom_lung(phantom.shape)
    image = MedicalImage(phantom, spacing=(0.2, 0.3, 1.0), origin=(5.0, -3.0, 0.0), spacing_known=True,
                         source=str(tmp_path / "film.nrrd"))
    Image.fromarray(lung.astype(np.uint8) * 255).save(tmp_path / "lung.png")
    write_image(tmp_path / "lung.nrrd", image, lung.astype(np.uint8))
    write_seg_nrrd(tmp_path / "lung.seg.nrrd", image, {"lung": lung}, [LUNGS])
    for name in ("lung.png", "lung.nrrd", "lung.seg.nrrd"):
        assert np.array_equal(read_lung_mask(tmp_path / name, image), lung), name
    shifted = MedicalImage(phantom, spacing=(0.2, 0.3, 1.0), origin=(0.0, 0.0, 0.0), spacing_known=True)
    write_image(tmp_path / "other_grid.nrrd", shifted, lung.astype(np.uint8))
    with pytest.raises(InputError, match="geometry"):
        read_lung_mask(tmp_path / "other_grid.nrrd", image)
    Image.fromarray(lung[::2, ::2].astype(np.uint8) * 255).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="small.png: lung mask is 240x256 pixels"):
        read_lung_mask(tmp_path / "small.png", image)
    with pytest.raises(InputError, match="not found"):
        read_lung_mask(tmp_path / "absent.png", image)


def _inputs(folder: Path, phantom: np.ndarray) -> dict[str, Path]:
    folder.mkdir()
    Image.fromarray(phantom).save(folder / "film_png.png")
    oblique = MedicalImage(phantom, spacing=(0.15, 0.2, 1.0), origin=(-40.0, 12.5, 3.0),
                           direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), spacing_known=True)
    write_image(folder / "film_nrrd.nrrd", oblique)
    write_dicom(folder / "film_dcm.dcm", phantom.astype(np.uint16) * 16, photometric="MONOCHROME1")
    return {"png": folder / "film_png.png", "nrrd": folder / "film_nrrd.nrrd", "dcm": folder / "film_dcm.dcm"}


def assert_bad_mask_inputs_fail_cleanly(
    tmp_path: Path, phantom: np.ndarray, command: str, mask_option: str, what: str, extra: list[str]
) -> None:
    """``lungx <command>`` with a mask of another size, an empty mask, or a CT volume: exit 1, a one-line
    error naming the problem, no traceback and nothing in the output folder but results.csv."""
    from test_cli import run_lungx

    files = _inputs(tmp_path / "in", phantom)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros(phantom.shape, np.uint8)).save(tmp_path / "empty.png")
    ct = tmp_path / "in" / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 64, 64), np.int16)), str(ct))
    cases = {
        "mask of another size": ([files["png"], mask_option, tmp_path / "small.png"], f"{what} mask is 20x20 pixels"),
        "empty mask": ([files["png"], mask_option, tmp_path / "empty.png"], f"{what} mask is empty"),
        "ct volume": ([ct, mask_option, tmp_path / "small.png"], "3-D volume"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        proc = run_lungx(command, *map(str, args), "-o", str(out), *extra, "--device", "cpu", "-q", "--no-input-check")
        assert proc.returncode == 1, (name, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert sorted(p.name for p in out.iterdir()) == [".lungx_command", "results.csv"], name


@pytest.mark.slow
def test_cli_round_trip_keeps_format_family_and_geometry(tmp_path, phantom, tiny_generator):
    import pydicom
    from test_cli import run_lungx

    files = _inputs(tmp_path / "in", phantom)
    masks = tmp_path / "masks"
    masks.mkdir()
    for cid in ("film_png", "film_nrrd", "film_dcm"):
        Image.fromarray(phantom_lung(phantom.shape).astype(np.uint8) * 255).save(masks / f"{cid}.png")
    out = tmp_path / "out"
    proc = run_lungx("synthesize", *map(str, files.values()), "-o", str(out), "--no-input-check",
                     "--lung-mask", str(masks),
                     "--model", str(tiny_generator), "--device", "cpu", "-q")
    assert proc.returncode == 0, proc.stderr
    png = np.asarray(Image.open(out / "film_png_synthetic.png"))
    assert png.shape == phantom.shape and png.dtype == np.uint8 and not np.array_equal(png, phantom)
    src, syn = sitk.ReadImage(str(files["nrrd"])), sitk.ReadImage(str(out / "film_nrrd_synthetic.nrrd"))
    assert syn.GetSize() == src.GetSize() and syn.GetOrigin() == src.GetOrigin()
    assert syn.GetSpacing() == src.GetSpacing() and syn.GetDirection() == src.GetDirection()
    original, derived = pydicom.dcmread(files["dcm"]), pydicom.dcmread(out / "film_dcm_synthetic.dcm")
    assert derived.StudyInstanceUID == original.StudyInstanceUID
    assert derived.SeriesInstanceUID != original.SeriesInstanceUID
    assert derived.SOPInstanceUID != original.SOPInstanceUID
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert list(derived.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert derived.PhotometricInterpretation == "MONOCHROME2"
    assert [float(v) for v in derived.PixelSpacing] == [float(v) for v in original.PixelSpacing]
    back = read_radiograph(out / "film_dcm_synthetic.dcm")
    read = read_radiograph(files["dcm"])
    outside = np.zeros(phantom.shape, bool)
    outside[:5] = True  # above the thoracic crop: unchanged, up to a linear map
    # a DX for presentation carries a window that readers apply: the values come back linearly stretched
    gain, offset = np.polyfit(read.array[outside], back.array[outside], 1)
    assert gain > 0
    residual = back.array[outside] - (gain * read.array[outside] + offset)
    assert np.abs(residual).max() < 0.01 * np.ptp(back.array)
    import slicerio

    seg = slicerio.read_segmentation(str(out / "film_nrrd_synthetic.seg.nrrd"))
    assert np.allclose(seg["ijkToLPS"], MedicalImage.from_sitk(src).ijk_to_lps())
    assert (tmp_path / "out" / "film_png_synthesis.png").exists()
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",ok," in r for r in rows[1:])


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_errors_without_partial_outputs(tmp_path, phantom, tiny_generator):
    from test_cli import run_lungx

    files = _inputs(tmp_path / "in", phantom)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    ct = tmp_path / "in" / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 64, 64), np.int16)), str(ct))
    cases = {
        "mask of another size": ([files["png"], "--lung-mask", tmp_path / "small.png"], "lung mask is 20x20 pixels"),
        "missing mask": ([files["png"], "--lung-mask", tmp_path / "none.png"], "lung mask file not found"),
        "ct volume": ([ct, "--lung-mask", tmp_path / "small.png"], "3-D volume"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / name.replace(" ", "_")
        proc = run_lungx("synthesize", *map(str, args), "-o", str(out), "--model", str(tiny_generator),
                         "--device", "cpu", "-q", "--no-input-check")  # a phantom
        assert proc.returncode == 1, (name, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert sorted(p.name for p in out.iterdir()) == [".lungx_command", "results.csv"], name
    proc = run_lungx("synthesize", str(files["png"]), "--modality", "ct", "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no CT synthesis generator" in proc.stderr
    proc = run_lungx("synthesize", str(files["png"]), str(files["nrrd"]), "--lung-mask", str(tmp_path / "small.png"))
    assert proc.returncode == 2 and "one mask file fits one input" in proc.stderr


def test_evaluate_synthesis_scores(tmp_path, phantom):
    from lungx_core.eval.evaluate import evaluate_synthesis

    lung = phantom_lung(phantom.shape)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks" / "lung").mkdir(parents=True)
    for cid in ("a", "b"):
        Image.fromarray(phantom).save(tmp_path / "images" / f"{cid}.png")
        Image.fromarray(lung.astype(np.uint8) * 255).save(tmp_path / "masks" / "lung" / f"{cid}.png")

    def darken_lungs_and_one_stripe(path, mask):
        original = np.asarray(Image.open(path)).astype(np.float32)
        synthetic = original.copy()
        synthetic[mask] += 50
        synthetic[:, :10] += 255 * 0.4  # outside the region: not scored
        region = np.zeros(mask.shape, bool)
        region[:, 10:] = True
        return original, synthetic, region

    result = evaluate_synthesis(tmp_path, darken_lungs_and_one_stripe, lambda a: lung, lambda a, m: 0.8, 0.5)
    assert result == {"n": 2, "mae_surroundings": 0.0, "lung_dice_preserved": 1.0, "pathological_rate": 1.0}
    result = evaluate_synthesis(tmp_path, darken_lungs_and_one_stripe, lambda a: lung, lambda a, m: 0.3, 0.5)
    assert result["pathological_rate"] == 0.0


@pytest.mark.slow
def test_evaluate_synthesis_cli_prints_one_json_object(tmp_path, phantom, tiny_generator):
    from test_cli import run_lungx

    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks" / "lung").mkdir(parents=True)
    Image.fromarray(phantom).save(tmp_path / "ds" / "images" / "p1.png")
    lung = phantom_lung(phantom.shape).astype(np.uint8) * 255
    Image.fromarray(lung).save(tmp_path / "ds" / "masks" / "lung" / "p1.png")
    proc = run_lungx("evaluate", "synthesis", str(tmp_path / "ds"), "--method", "cyclegan", "--model",
                     str(tiny_generator), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    result = json.loads(proc.stdout)
    assert set(result) == {"n", "mae_surroundings", "lung_dice_preserved", "pathological_rate"} and result["n"] == 1
    assert 0 < result["mae_surroundings"] < 1 and 0 <= result["lung_dice_preserved"] <= 1
    # insertion changes lung pixels only: the surroundings are exact
    proc = run_lungx("evaluate", "synthesis", str(tmp_path / "ds"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mae_surroundings"] == 0.0


def test_augmentation_keeps_masks_aligned(phantom, tiny_generator, monkeypatch):
    from lungx_core.preprocess import PreprocessConfig, preprocess_radiograph
    from lungx_core.tasks.synthesis import Synthesizer
    from training.synthetic_augment import SyntheticSwap, synthetic_versions

    pre = PreprocessConfig(size=64)
    lung = phantom_lung(phantom.shape)
    # identity translation: the synthetic film must be exactly the original on the cached grid
    monkeypatch.setattr(Synthesizer, "translate_crops", lambda self, crops: crops)
    same = synthetic_versions([phantom], [lung], pre, tiny_generator)
    assert same.shape == (1, 64, 64)
    assert np.array_equal(same[0], preprocess_radiograph(phantom, pre)[0].astype(np.float16))
    monkeypatch.undo()
    changed = synthetic_versions([phantom], [lung], pre, tiny_generator)
    assert not np.array_equal(changed, same)

    has = np.array([False, True, False, True])
    synthetic = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0)])
    originals = [np.full((2, 2), -float(i)) for i in range(4)]
    never = SyntheticSwap(synthetic, has, 0.0, seed=0)
    assert all(np.array_equal(never.image(i, originals[i]), originals[i]) for i in range(4))
    always = SyntheticSwap(synthetic, has, 1.0, seed=0)
    got = [always.image(i, originals[i])[0, 0] for i in range(4)]
    assert got == [0.0, 1.0, -2.0, 3.0]  # sample 1 -> synthetic row 0, sample 3 -> row 1; others untouched
    half = SyntheticSwap(synthetic, has, 0.5, seed=0)
    swapped = np.mean([half.image(1, originals[1])[0, 0] == 1.0 for _ in range(400)])
    assert 0.4 < swapped < 0.6
    with pytest.raises(ValueError):
        SyntheticSwap(synthetic, has, 1.5, seed=0)
    # several versions per film: one drawn per swap, always of that film
    versions = np.stack([synthetic, synthetic + 10])
    many = SyntheticSwap(versions, has, 1.0, seed=0)
    drawn = {float(many.image(3, originals[3])[0, 0]) for _ in range(50)}
    assert drawn == {3.0, 13.0}


def test_insertion_versions_are_drawn_per_film_and_kind(phantom):
    from lungx_core.preprocess import PreprocessConfig
    from training.synthetic_augment import synthetic_versions

    pre = PreprocessConfig(size=64)
    lung = phantom_lung(phantom.shape)
    one = synthetic_versions([phantom, phantom], [lung, lung], pre, method="insert", kind="whiteout")
    three = synthetic_versions([phantom, phantom], [lung, lung], pre, method="insert",
                               kind=["whiteout", "ggo"], versions=3)
    assert one.shape == (2, 64, 64) and three.shape == (3, 2, 64, 64)
    assert np.array_equal(three[0, 0], one[0])  # version 0 of film 0: seed 0, the first kind
    assert not np.array_equal(three[0, 0], three[1, 0]) and not np.array_equal(three[0, 0], three[0, 1])


def test_shipped_generator_and_classifier_load_and_are_small():
    from lungx_core.models.store import model_paths, read_model_config

    for name in ("cxr_synthesis", "cxr_pathology"):
        weights, config = model_paths(name)
        if not weights.exists():
            pytest.skip(f"{name} not exported yet")
        assert weights.stat().st_size < 5_000_000
        assert (weights.with_suffix(".md")).exists(), f"{name} has no model card"
        assert read_model_config(name)["crop"]["size"] == 128
