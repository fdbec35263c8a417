"""Lung-opacity removal (issue 7): adaptive activation masks, compositing, the alignment loss, the region-aware
engine step, the remover, the CLI round trip and its bad inputs, and the evaluation JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import REPO
from PIL import Image
from test_synthesis import _inputs, assert_bad_mask_inputs_fail_cleanly, phantom_lung

from lungx_core.cxr.thoracic import CropSpec
from lungx_core.generative.opacity import ActivationSpec, activation_mask, adaptive_threshold, composite
from lungx_core.image import MedicalImage
from training.losses import feature_alignment


def _disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def test_composite_leaves_pixels_outside_the_mask_bit_exact():
    rng = np.random.default_rng(0)
    x = rng.random((64, 64), dtype=np.float32)
    y = rng.random((64, 64), dtype=np.float32)
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 10:30] = 1.0
    mask[19, 10:30] = 0.3  # a soft edge
    out = composite(x, y, mask)
    assert np.array_equal(out[mask == 0], x[mask == 0])
    assert np.array_equal(out[mask == 1], y[mask == 1])
    assert np.allclose(out[19, 10:30], 0.3 * y[19, 10:30] + 0.7 * x[19, 10:30])
    t = composite(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask))
    assert torch.equal(t[torch.from_numpy(mask == 0)], torch.from_numpy(x[mask == 0]))


def test_adaptive_threshold_on_toy_maps():
    spec = ActivationSpec()
    lung = _disc((128, 128), (64, 40), 30) | _disc((128, 128), (64, 88), 30)
    # a clear film: weak, flat responses -> nothing activates
    assert not activation_mask(np.full((128, 128), 0.2, np.float32), lung, spec).any()
    # an opacity in the left lung over a quiet background: Otsu's cut falls between, the blob is found
    prob = np.full((128, 128), 0.1, np.float32)
    blob = _disc((128, 128), (70, 40), 12)
    prob[blob] = 0.9
    t = adaptive_threshold(prob, lung, spec)
    assert spec.floor <= t <= spec.ceiling
    mask = activation_mask(prob, lung, spec)
    assert mask[blob].min() >= 0.5 and mask.dtype == np.float32 and mask.min() >= 0 and mask.max() <= 1
    assert mask[_disc((128, 128), (64, 88), 20)].max() == 0  # the other lung stays untouched
    assert 0 < mask[~blob].max() < 1  # grown and softened edge
    # a film opaque throughout: Otsu would split dense from denser; the ceiling keeps all of the opacity
    prob = np.full((128, 128), 0.05, np.float32)
    prob[lung] = 0.8
    prob[blob] = 0.99
    assert adaptive_threshold(prob, lung, spec) == pytest.approx(spec.ceiling)
    assert activation_mask(prob, lung, spec)[lung].min() >= 0.5
    # responses far outside the lung fields and specks below the minimum size are ignored
    prob = np.full((128, 128), 0.1, np.float32)
    prob[:8, :8] = 0.99
    prob[70:72, 40:42] = 0.99
    prob[blob & (np.arange(128)[:, None] > 200)] = 0.9
    assert not activation_mask(prob, lung, ActivationSpec(image_floor=0.0)).any()
    # the image-level gate: a strong but tiny response on an otherwise clear film stays out
    prob = np.full((128, 128), 0.1, np.float32)
    prob[_disc((128, 128), (64, 40), 4)] = 0.9
    assert not activation_mask(prob, lung, spec).any()


def test_alignment_loss_is_zero_for_identical_inputs_and_weights_the_mask():
    from lungx_core.models.networks import build_network
    from lungx_core.models.translation import FrozenEncoder

    torch.manual_seed(0)
    classifier = build_network("classifier", 1, 1, size=32, channels=(4, 8, 8), strides=(2, 2, 2), num_res_units=1)
    encoder = FrozenEncoder(classifier, 2)
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training  # stays frozen in eval mode inside a training loop
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    assert feature_alignment(encoder(x), encoder(x), mask).item() == 0.0
    inside = x.clone()
    inside[..., 12:20, 12:20] += 0.5
    outside = x.clone()
    outside[..., 0:8, 0:8] += 0.5
    loss_in = feature_alignment(encoder(x), encoder(inside), mask, inside_weight=0.1)
    loss_out = feature_alignment(encoder(x), encoder(outside), mask, inside_weight=0.1)
    assert 0 < loss_in < loss_out
    y = x.clone().requires_grad_(True)
    feature_alignment(encoder(x), encoder(y), mask).backward()  # gradients reach the image
    assert y.grad is not None


def test_region_aware_step_composites_and_needs_an_encoder():
    from lungx_core.models.networks import build_network
    from lungx_core.models.translation import FrozenEncoder, GeneratorConfig
    from training.translation import CycleGANTrainer, TranslationConfig, sample_grid

    config = TranslationConfig(size=32, generator=GeneratorConfig(base=8, n_blocks=1, residual=True), disc_base=8,
                               pool_size=2, lambda_align=1.0)
    with pytest.raises(ValueError, match="encoder"):
        CycleGANTrainer(config)
    classifier = build_network("classifier", 1, 1, size=32, channels=(4, 8), strides=(2, 2), num_res_units=1)
    trainer = CycleGANTrainer(config, encoder=FrozenEncoder(classifier, 2))
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1, torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:20, 8:20] = 1
    losses = trainer.step(a, b, mask_a=mask, mask_b=mask)
    assert losses["align"] > 0 and all(np.isfinite(v) for v in losses.values())
    out = trainer.translate(b, "ba", mask)
    assert torch.equal(out[mask == 0], b[mask == 0]) and not torch.equal(out[mask == 1], b[mask == 1])
    grid = sample_grid(trainer, a[:1], b[:1], mask[:1], mask[:1])
    assert grid.shape == (64, 5 * 32) and grid.dtype == np.uint8


def test_residual_generator_adds_its_change_to_the_input():
    from lungx_core.models.translation import GeneratorConfig, ResnetGenerator, init_weights

    torch.manual_seed(0)
    net = init_weights(ResnetGenerator(GeneratorConfig(base=8, n_blocks=1, residual=True)))
    x = torch.rand(1, 1, 32, 32) * 1.6 - 0.8
    y = net(x)
    assert y.shape == x.shape and y.abs().max() <= 1 and torch.allclose(y, (x + net.model(x)).clamp(-1, 1))
    head = net.model[-2]
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    assert torch.equal(net(x), x)  # no change from the body: the input itself


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """An untrained generator and opacity model saved like shipped ones. The activation settings let any
    response through, so the mask is the (dilated) lung field: deterministic without a trained model."""
    from lungx_core.models.networks import build_network
    from lungx_core.models.store import save_model

    folder = tmp_path_factory.mktemp("opacity_models")
    torch.manual_seed(0)
    crop = CropSpec(size=64).as_dict()
    unet = {"channels": [4, 8, 16], "num_res_units": 1}
    save_model(build_network("unet", 1, 1, **unet).state_dict(),
               {"arch": "unet", "in_channels": 1, "classes": ["opacity"], "arch_options": unet, "crop": crop},
               folder / "opacity.safetensors")
    options = {"base": 4, "n_down": 2, "n_blocks": 1, "upsample": "resize"}
    activation = ActivationSpec(image_floor=0.0, floor=0.0, ceiling=1.0, min_fraction=0.0).as_dict()
    config = {"arch": "resnet_generator", "in_channels": 1, "classes": ["image"], "arch_options": options,
              "crop": crop, "region_aware": {"opacity_model": str(folder / "opacity.safetensors"),
                                             "activation": activation}}
    return save_model(build_network("resnet_generator", 1, 1, **options).state_dict(), config,
                      folder / "generator.safetensors")


def test_remover_changes_only_the_activation_mask(phantom, tiny_models):
    from lungx_core.tasks.opacity_removal import OpacityRemover

    remover = OpacityRemover(str(tiny_models), "cpu")
    lung = phantom_lung(phantom.shape)
    out, changeable, box = remover.remove_display(phantom, lung)
    assert out.dtype == phantom.dtype and out.shape == phantom.shape
    assert changeable.any() and np.array_equal(out[~changeable], phantom[~changeable])
    assert not np.array_equal(out[changeable], phantom[changeable])
    assert not changeable[: box.r0].any() and not changeable[box.r1 :].any()
    again, _, _ = remover.remove_display(phantom, lung)
    assert np.array_equal(out, again)  # deterministic
    # a film the opacity model calls clear comes back untouched, with an empty mask
    remover.activation = ActivationSpec()
    remover.opacity.probability_of_crops = lambda crops: np.full(crops.shape, 0.05, np.float32)
    out, changeable, _ = remover.remove_display(phantom, lung)
    assert not changeable.any() and np.array_equal(out, phantom)


@pytest.fixture(scope="module")
def tiny_deopacifier(tiny_models) -> Path:
    """An untrained mask-conditioned de-opacifier (crop and mask in, a change out) saved like the shipped one,
    with the same permissive activation as ``tiny_models``."""
    from lungx_core.models.networks import build_network
    from lungx_core.models.store import read_model_config, save_model

    torch.manual_seed(1)
    unet = {"channels": [4, 8, 16], "num_res_units": 1}
    config = {**read_model_config(str(tiny_models)), "arch": "unet", "in_channels": 2, "arch_options": unet,
              "conditioning": "mask"}
    return save_model(build_network("unet", 2, 1, **unet).state_dict(), config,
                      tiny_models.parent / "deopacifier.safetensors")


def test_deopacifier_changes_only_the_activation_mask(phantom, tiny_deopacifier):
    from lungx_core.tasks.opacity_removal import OpacityRemover, changed_fraction

    remover = OpacityRemover(str(tiny_deopacifier), "cpu")
    lung = phantom_lung(phantom.shape)
    out, changeable, _ = remover.remove_display(phantom, lung)
    assert changeable.any() and np.array_equal(out[~changeable], phantom[~changeable])
    assert not np.array_equal(out, phantom)
    assert 0 < changed_fraction(phantom, out) <= changeable.mean() + 1e-4
    crops = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    masks = np.zeros_like(crops)
    masks[:, 20:40, 20:40] = 1.0
    restored = remover.translate_crops(crops, masks)
    assert np.array_equal(restored[masks == 0], crops[masks == 0])  # bit for bit outside the mask


def test_changed_fraction_is_honest():
    from lungx_core.tasks.opacity_removal import changed_fraction

    film = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    assert changed_fraction(film, film.copy()) == 0.0
    one = film.copy()
    one[3, 4] += 1
    assert changed_fraction(film, one) == pytest.approx(0.0001)  # a single pixel shows


def test_unchanged_film_is_flagged_and_reports_zero(tmp_path, phantom, tiny_models, monkeypatch):
    from lungx_core.io.inputs import Case
    from lungx_core.tasks.opacity_removal import OpacityRemover, remove_opacity_case

    Image.fromarray(phantom).save(tmp_path / "film.png")
    Image.fromarray(phantom_lung(phantom.shape).astype(np.uint8) * 255).save(tmp_path / "lung.png")
    remover = OpacityRemover(str(tiny_models), "cpu")
    # a generator that gives back its input: the mask is not empty, yet nothing changes
    monkeypatch.setattr(OpacityRemover, "translate_crops", lambda self, crops, masks: crops)
    row = remove_opacity_case(Case("film", tmp_path / "film.png"), remover, tmp_path, tmp_path / "lung.png")
    assert row["status"] == "ok" and row["changed_fraction"] == 0.0 and row["qc_flags"] == "unchanged"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "film_opacity_removed.png")), phantom)


@pytest.mark.slow
def test_cli_round_trip_keeps_format_family_geometry_and_pixels_outside_the_mask(tmp_path, phantom, tiny_models):
    import pydicom
    import slicerio
    from test_cli import run_lungx

    files = _inputs(tmp_path / "in", phantom)
    masks = tmp_path / "masks"
    masks.mkdir()
    for cid in ("film_png", "film_nrrd", "film_dcm"):
        Image.fromarray(phantom_lung(phantom.shape).astype(np.uint8) * 255).save(masks / f"{cid}.png")
    out = tmp_path / "out"
    proc = run_lungx("remove-opacity", *map(str, files.values()), "-o", str(out), "--no-input-check",
                     "--lung-mask", str(masks),
                     "--model", str(tiny_models), "--device", "cpu", "-q")
    assert proc.returncode == 0, proc.stderr
    png = np.asarray(Image.open(out / "film_png_opacity_removed.png"))
    seg = slicerio.read_segmentation(str(out / "film_png_opacity_mask.seg.nrrd"))
    changeable = np.asarray(seg["voxels"])[..., 0].T > 0
    assert [s["name"] for s in seg["segments"]] == ["opacity"]
    assert png.dtype == np.uint8 and changeable.any() and not np.array_equal(png, phantom)
    assert np.array_equal(png[~changeable], phantom[~changeable])  # bit for bit outside the mask
    src, res = sitk.ReadImage(str(files["nrrd"])), sitk.ReadImage(str(out / "film_nrrd_opacity_removed.nrrd"))
    assert res.GetSize() == src.GetSize() and res.GetOrigin() == src.GetOrigin()
    assert res.GetSpacing() == src.GetSpacing() and res.GetDirection() == src.GetDirection()
    seg = slicerio.read_segmentation(str(out / "film_nrrd_opacity_mask.seg.nrrd"))
    assert np.allclose(seg["ijkToLPS"], MedicalImage.from_sitk(src).ijk_to_lps())
    original, derived = pydicom.dcmread(files["dcm"]), pydicom.dcmread(out / "film_dcm_opacity_removed.dcm")
    assert derived.StudyInstanceUID == original.StudyInstanceUID
    assert derived.SeriesInstanceUID != original.SeriesInstanceUID
    assert derived.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
    picture = np.asarray(Image.open(out / "film_png_opacity_removal.png"))
    assert picture.shape == (phantom.shape[0], 3 * phantom.shape[1], 3)
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",ok," in r for r in rows[1:]) and "opacity_score_after" in rows[0]


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_errors_without_partial_outputs(tmp_path, phantom, tiny_models):
    assert_bad_mask_inputs_fail_cleanly(tmp_path, phantom, "remove-opacity", "--lung-mask", "lung",
                                        ["--model", str(tiny_models), "--no-score"])


def _gb_fixture(root: Path, phantom: np.ndarray) -> np.ndarray:
    lung = phantom_lung(phantom.shape)
    opacity = lung & (np.arange(phantom.shape[0])[:, None] > phantom.shape[0] * 0.5)
    for sub in ("images", "masks/lung", "masks/opacity"):
        (root / sub).mkdir(parents=True)
    for cid in ("a", "b"):
        Image.fromarray(phantom).save(root / "images" / f"{cid}.png")
        Image.fromarray(lung.astype(np.uint8) * 255).save(root / "masks" / "lung" / f"{cid}.png")
        Image.fromarray(opacity.astype(np.uint8) * 255).save(root / "masks" / "opacity" / f"{cid}.png")
    Image.fromarray(phantom).save(root / "images" / "no_masks.png")  # not scored
    return opacity


def test_evaluate_opacity_removal_scores(tmp_path, phantom):
    from lungx_core.eval.evaluate import evaluate_opacity_removal

    opacity = _gb_fixture(tmp_path, phantom)
    lung = phantom_lung(phantom.shape)
    half = lung & (np.arange(phantom.shape[1])[None, :] < phantom.shape[1] * 0.5)
    span = float(phantom.max() - phantom.min())

    def darken_opacity(image):
        out = image.astype(np.float32)
        out[opacity] -= 0.1 * span
        return out, opacity

    def probe(image):  # sees all of the lung only once the opacity is darkened
        return lung if image.dtype == np.float32 else half

    result = evaluate_opacity_removal(tmp_path, darken_opacity, probe,
                                      lambda image, m: 0.2 if image.dtype == np.float32 else 0.9,
                                      second_probe=lambda image: half)  # a probe that removal does not move
    assert result.pop("structure_kept_inside") > 0.99  # a uniform darkening keeps what lies under it
    half_dice = 2 * half.sum() / (half.sum() + lung.sum())
    hidden = lung & opacity
    ceiling = 2 * (half | hidden).sum() / ((half | hidden).sum() + lung.sum())
    recall = round(float(half[hidden].mean()), 4)
    assert result == {"n": 2, "lung_dice_before": round(half_dice, 4), "lung_dice_after": 1.0,
                      "lung_dice_ceiling": round(ceiling, 4),
                      "lung_recall_in_opacity_before": recall, "lung_recall_in_opacity_after": 1.0,
                      "recovered_share": 1.0, "lung_recall_in_opacity_ceiling": 1.0, "recovered_share_ceiling": 1.0,
                      "change_outside_mask": 0.0, "change_outside_activation": 0.0,
                      "brighter_share": 0.0, "gradient_energy_ratio_outside": 1.0,
                      "opacity_score_before": 0.9, "opacity_score_after": 0.2,
                      "second_probe_lung_recall_in_opacity_before": recall,
                      "second_probe_lung_recall_in_opacity_after": recall, "second_probe_recovered_share": 0.0}

    yy, xx = np.mgrid[: phantom.shape[0], : phantom.shape[1]]
    part = opacity & (yy < phantom.shape[0] * 0.7)  # a remover whose mask covers only part of the opacity

    def darken_part(image):
        out = image.astype(np.float32)
        out[part] -= 0.1 * span
        return out, part

    scores = evaluate_opacity_removal(tmp_path, darken_part, probe, lambda i, m: 0.5)
    bound = round(float((half | part)[hidden].mean()), 4)
    assert 0.5 < bound < 1 and scores["lung_recall_in_opacity_ceiling"] == bound
    assert scores["recovered_share_ceiling"] == round((bound - recall) / (1 - recall), 4)

    stripes = (yy // 6) % 2 == 0

    def change_everything(image):  # brighter everywhere, with new edges (stripes) outside the opacity
        return image.astype(np.float32) + 0.5 * span + 0.2 * span * stripes, None

    scores = evaluate_opacity_removal(tmp_path, change_everything, probe, lambda i, m: 0.5)
    assert scores["change_outside_mask"] == pytest.approx(0.6, abs=0.05) and scores["brighter_share"] == 1.0
    assert scores["gradient_energy_ratio_outside"] > 1.05 and scores["change_outside_activation"] is None
    assert scores["structure_kept_inside"] is None  # no activation mask, nothing to keep structure in
    assert scores["lung_recall_in_opacity_ceiling"] is None and "recovered_share_ceiling" not in scores
    assert "second_probe_recovered_share" not in scores


@pytest.mark.slow
def test_evaluate_opacity_removal_cli_prints_one_json_object(tmp_path, phantom, tiny_models):
    from test_cli import run_lungx

    _gb_fixture(tmp_path / "ds", phantom)
    proc = run_lungx("evaluate", "opacity-removal", str(tmp_path / "ds"), "--model", str(tiny_models),
                     "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1
    result = json.loads(proc.stdout)
    assert set(result) == {"n", "lung_dice_before", "lung_dice_after", "lung_dice_ceiling",
                           "lung_recall_in_opacity_before", "lung_recall_in_opacity_after", "recovered_share",
                           "lung_recall_in_opacity_ceiling", "recovered_share_ceiling", "change_outside_mask",
                           "change_outside_activation", "brighter_share",
                           "gradient_energy_ratio_outside", "structure_kept_inside", "opacity_score_before",
                           "opacity_score_after",
                           "second_probe_lung_recall_in_opacity_before",
                           "second_probe_lung_recall_in_opacity_after", "second_probe_recovered_share"}
    assert result["n"] == 2 and 0 <= result["lung_dice_after"] <= 1 and 0 <= result["change_outside_mask"] < 1


def test_shipped_opacity_models_load_and_are_small():
    from lungx_core.models.store import model_paths, read_model_config

    for name in ("cxr_opacity", "cxr_opacity_removal", "cxr_lung_probe", "cxr_lung_probe_attention"):
        weights, _ = model_paths(name)
        if not weights.exists():
            pytest.skip(f"{name} not exported yet")
        assert weights.stat().st_size < 5_000_000
        assert weights.with_suffix(".md").exists(), f"{name} has no model card"
    config = read_model_config("cxr_opacity_removal")
    assert config["conditioning"] == "mask" and config["region_aware"]["opacity_model"] == "cxr_opacity"
    assert read_model_config("cxr_lung_probe")["training"]["config"]["train_datasets"] == ["jsrt_scr"]
    second = read_model_config("cxr_lung_probe_attention")["training"]["config"]  # another network, another seed
    assert second["train_datasets"] == ["jsrt_scr"] and second["arch"] != read_model_config("cxr_lung_probe")["arch"]
    assert second["seed"] != read_model_config("cxr_lung_probe")["training"]["config"]["seed"]


def test_the_two_lung_probes_agree_on_clear_films(shared_data):
    """Issue 37: the second probe is another model, yet on clear films it finds the same lungs (Dice >= 0.95)."""
    from lungx_core.eval.runners import lung_finder
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    first, second = (lung_finder(CXRSegmenter(name, "cpu")) for name in ("cxr_lung_probe", "cxr_lung_probe_attention"))
    ids = (REPO / "training" / "splits" / "jsrt_scr_val.txt").read_text().split()
    normals = [i for i in ids if i.startswith("JPCNN")][:6]
    assert normals
    for cid in normals:
        film = read_radiograph(shared_data / "jsrt_scr" / "images" / f"{cid}.png").array
        a, b = first(film), second(film)
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.95, cid


def test_structure_kept_sees_erased_or_carved_structure():
    from scipy import ndimage as ndi

    from lungx_core.eval.evaluate import structure_kept

    yy, xx = np.mgrid[:200, :200]
    film = 100.0 + 20.0 * ((yy // 8) % 2)  # rib-like stripes
    zone = np.zeros(film.shape, bool)
    zone[40:160, 40:160] = True
    darker = film - 30.0 * ndi.gaussian_filter(zone.astype(float), 20)  # broad density away: the stripes stay
    flat = np.where(zone, 90.0, film)  # the stripes erased
    carved = darker - 80.0 * ((xx > 100) & zone)  # a new border drawn through the zone
    assert structure_kept(film, darker, zone) > 0.95
    assert structure_kept(film, flat, zone) < 0.3
    assert structure_kept(film, 0.2 * flat + 0.8 * film, zone) > 0.95  # faded stripes are still the stripes
    assert structure_kept(film, carved, zone) < 0.8
    assert structure_kept(film, darker, None) is None and structure_kept(film, darker, zone & False) is None


def test_hysteresis_grows_the_mask_into_the_uncertain_border_it_touches():
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 20, xx - 20)
    probability = np.full((64, 64), 0.05, np.float32)
    probability[radius < 12] = 0.3  # the uncertain border of an opacity
    probability[radius < 8] = 0.9  # its confident core
    probability[45:55, 45:55] = 0.3  # an uncertain blob touching nothing confident
    lung = np.ones((64, 64), bool)
    plain = ActivationSpec(image_floor=0.0, min_fraction=0.0, grow=0, soften=0.0)
    core = activation_mask(probability, lung, plain) > 0
    grown = activation_mask(probability, lung, ActivationSpec(**{**plain.as_dict(), "hysteresis": 0.5})) > 0
    assert np.array_equal(core, radius < 8)
    assert np.array_equal(grown, radius < 12)  # the border joins; the lone blob stays out
