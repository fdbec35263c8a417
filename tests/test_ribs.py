"""Rib suppression: CT-derived radiographs, the rib-mask model, diffusion inpainting, blending, CLI, evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from test_synthesis import _inputs, assert_bad_mask_inputs_fail_cleanly, phantom_lung

from lungx_core.image import MedicalImage


def chest_ct_phantom(size: int = 96, slices: int = 80, spacing: float = 3.0) -> tuple[MedicalImage, np.ndarray]:
    """(CT in HU, posterior-rib mask) of a cylindrical chest: soft-tissue body, two lungs, a spine, and
    posterior ribs as tubes that leave the spine, run laterally round the back and descend towards the front."""
    k, j, i = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
    z, y, x = k * spacing, (j - size / 2) * spacing, (i - size / 2) * spacing  # LPS: y grows posterior
    a, b = size * spacing * 0.45, size * spacing * 0.32
    hu = np.full(z.shape, -1000.0, np.float32)
    body = (x / a) ** 2 + (y / b) ** 2 <= 1
    hu[body] = 40.0
    for side in (-1, 1):
        hu[((x - side * a * 0.45) / (a * 0.35)) ** 2 + (y / (b * 0.7)) ** 2 <= 1] = -850.0
    spine = (x**2 + (y - b * 0.7) ** 2 <= (b * 0.2) ** 2)
    hu[spine] = 600.0
    ribs = np.zeros(z.shape, bool)
    theta = np.arctan2(y / b, x / a)  # pi/2 at the spine (posterior), 0 and pi laterally
    radius = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    shell = (radius > 0.86) & (radius < 0.96)
    lateral = np.abs(np.cos(theta))  # 0 at the spine, 1 at the side
    for level in range(6):
        z0 = 30 + level * 36.0
        ribs |= shell & (y > 0) & (np.abs(z - (z0 + 30 * lateral)) < 5)
    hu[ribs] = 700.0
    ct = MedicalImage(hu, spacing=(spacing, spacing, spacing), origin=(0.0, 0.0, 0.0), modality="CT",
                      spacing_known=True, source="chest phantom")
    return ct, ribs


# ---- DRR -------------------------------------------------------------------------------------------------------


def test_bone_pair_geometry_matches_the_drr_and_removal_lowers_only_bone_rays():
    from lungx_core.ct.drr import bone_by_hu, render_bone_pair, render_drr

    ct, _ = chest_ct_phantom()
    bone = bone_by_hu(ct)
    pair = render_bone_pair(ct, bone, pixel_spacing=2.0)
    plain = render_drr(ct, pixel_spacing=2.0)
    for img in (pair.with_bone, pair.soft_tissue, pair.bone_mm):
        assert img.array.shape == plain.array.shape
        assert img.origin == plain.origin and img.direction == plain.direction and img.spacing == plain.spacing
    assert np.allclose(pair.with_bone.array, plain.array)
    drop = pair.with_bone.array - pair.soft_tissue.array
    through_bone = pair.bone_mm.array > 1e-3
    assert through_bone.any() and (~through_bone).any()
    assert np.all(drop >= -1e-5)  # removing bone never brightens
    assert np.all(drop[through_bone] > 0) and np.allclose(drop[~through_bone], 0, atol=1e-5)
    # bone path length: the ribs are 10 mm tubes, the spine wider; nothing longer than the body
    assert 0 < pair.bone_mm.array.max() < ct.array.shape[1] * ct.spacing[1]


def test_drr_is_monotonic_in_hu():
    from lungx_core.ct.drr import render_drr

    ct, _ = chest_ct_phantom(size=48, slices=30)
    denser = ct.array.copy()
    denser[10:20, 20:30, 20:30] += 300.0
    base = render_drr(ct, 3.0).array
    more = render_drr(MedicalImage(denser, ct.spacing, ct.origin, ct.direction, "CT", True), 3.0).array
    assert np.all(more >= base - 1e-5) and (more > base + 1e-3).any()


def test_bone_pair_rejects_a_mask_of_another_shape():
    from lungx_core.ct.drr import render_bone_pair

    ct, _ = chest_ct_phantom(size=32, slices=10)
    with pytest.raises(ValueError, match="bone mask"):
        render_bone_pair(ct, np.zeros((5, 5, 5), bool))


# ---- inpainting, schedulers, blending -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_inpainter(tmp_path_factory) -> Path:
    """An untrained diffusion UNet saved like the shipped model: fast, deterministic, changes its hole."""
    from lungx_core.models.networks import build_network
    from lungx_core.models.store import save_model

    torch.manual_seed(0)
    options = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
               "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}
    config = {"arch": "diffusion_unet", "in_channels": 3, "classes": ["image"], "arch_options": options,
              "diffusion": {"size": 64, "prediction_type": "sample"}}
    return save_model(build_network("diffusion_unet", 3, 1, **options).state_dict(), config,
                      tmp_path_factory.mktemp("inpainting") / "inpainting.safetensors")


class _CountingNet(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, t):
        self.calls += 1
        return self.net(x, t)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm", "repaint"])
@pytest.mark.parametrize("steps", [10, 25])
def test_sampler_runs_the_network_once_per_step(tiny_inpainter, scheduler, steps):
    from lungx_core.generative.inpainting import DiffusionInpainter, inpaint, network_calls

    model = DiffusionInpainter(tiny_inpainter, "cpu")
    net = _CountingNet(model.net)
    known = torch.rand(1, 1, 32, 32) * 2 - 1
    hole = torch.zeros_like(known)
    hole[..., 10:16, :] = 1
    out = inpaint(net, known, hole, model.spec, steps=steps, seed=0, scheduler=scheduler)
    assert net.calls == network_calls(steps, scheduler)
    assert net.calls == steps if scheduler != "repaint" else net.calls > steps
    assert torch.equal(out[hole == 0], known[hole == 0])
    assert out.abs().max() <= 1


def test_blending_is_bit_exact_outside_the_feathered_mask():
    from lungx_core.generative.blending import blend_weight, suppress

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4096, (120, 100)).astype(np.uint16)
    hole = np.zeros(image.shape, bool)
    hole[40:52, 10:90] = True
    known = np.full((64, 64), 2000.0, np.float32)
    filled = known.copy()
    filled[20:28, 5:60] = 1500.0  # darker: bone removed there
    for mode in ("inpaint", "subtract"):
        out, changeable = suppress(image, hole, known, filled, mode, feather_px=3)
        assert out.dtype == image.dtype
        assert np.array_equal(out[~changeable], image[~changeable])
        assert changeable[hole].all() and changeable.sum() < (hole.sum() + 2 * 4 * (80 + 12) + 40)
    weight = blend_weight(hole, 3)
    assert weight[hole].min() == 1 and weight[~hole].max() < 1 and weight[0, 0] == 0
    # subtract only ever darkens (bone adds attenuation)
    out, _ = suppress(image.astype(np.float32), hole, known, filled, "subtract", 3)
    assert np.all(out <= image + 1e-3)


def test_suppressor_changes_only_the_mask_and_is_deterministic(phantom, tiny_inpainter):
    from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings

    suppressor = RibSuppressor(inpainting_model=tiny_inpainter, device="cpu")
    image = MedicalImage(phantom)
    ribs = np.zeros(phantom.shape, bool)
    ribs[200:215, 60:200] = True
    for mode in ("inpaint", "inpaint-subtract"):
        settings = SuppressionSettings(mode=mode, steps=5, seed=3)
        a = suppressor.suppress(image, ribs, settings)
        b = suppressor.suppress(image, ribs, settings)
        assert np.array_equal(a.array, b.array)
        assert np.array_equal(a.array[~a.changeable], phantom[~a.changeable])
        assert a.changeable[ribs].all()
    inpainted = suppressor.suppress(image, ribs, SuppressionSettings(mode="inpaint", steps=5, seed=3)).array
    other_seed = suppressor.suppress(image, ribs, SuppressionSettings(mode="inpaint", steps=5, seed=4)).array
    assert not np.array_equal(inpainted, other_seed) and not np.array_equal(inpainted, phantom)


def test_bad_rib_masks_are_clear_errors(phantom, tiny_inpainter):
    from lungx_core.errors import InputError
    from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings

    suppressor = RibSuppressor(inpainting_model=tiny_inpainter, device="cpu")
    image = MedicalImage(phantom, source="film.png")
    with pytest.raises(InputError, match="rib mask is 20x10 pixels"):
        suppressor.suppress(image, np.ones((10, 20), bool), SuppressionSettings(mode="inpaint"))
    with pytest.raises(InputError, match="rib mask is empty"):
        suppressor.suppress(image, np.zeros(phantom.shape, bool), SuppressionSettings(mode="inpaint"))
    with pytest.raises(ValueError, match="needs a rib mask"):
        suppressor.suppress(image, None, SuppressionSettings(mode="inpaint"))


# ---- CLI and evaluation -----------------------------------------------------------------------------------------


def _rib_band(shape: tuple[int, int]) -> np.ndarray:
    band = np.zeros(shape, bool)
    band[shape[0] // 2 - 8 : shape[0] // 2 + 8, shape[1] // 5 : 4 * shape[1] // 5] = True
    return band & phantom_lung(shape)


@pytest.mark.slow
def test_cli_round_trip_keeps_format_family_geometry_and_pixels_outside_the_mask(tmp_path, phantom, tiny_inpainter):
    import pydicom
    import slicerio
    from test_cli import run_lungx

    files = _inputs(tmp_path / "in", phantom)
    masks = tmp_path / "masks"
    masks.mkdir()
    for cid in ("film_png", "film_nrrd", "film_dcm"):
        Image.fromarray(_rib_band(phantom.shape).astype(np.uint8) * 255).save(masks / f"{cid}.png")
    out = tmp_path / "out"
    proc = run_lungx("suppress-ribs", *map(str, files.values()), "-o", str(out), "--no-input-check",
                     "--rib-mask", str(masks),
                     "--inpainting-model", str(tiny_inpainter), "--steps", "4", "--mode", "inpaint", "--device",
                     "cpu", "-q")
    assert proc.returncode == 0, proc.stderr
    png = np.asarray(Image.open(out / "film_png_ribs_suppressed.png"))
    seg = slicerio.read_segmentation(str(out / "film_png_ribs.seg.nrrd"))
    ribs = np.asarray(seg["voxels"])[..., 0].T > 0
    assert [s["name"] for s in seg["segments"]] == ["ribs"] and np.array_equal(ribs, _rib_band(phantom.shape))
    assert png.dtype == np.uint8 and not np.array_equal(png, phantom)
    from scipy import ndimage as ndi

    border = ndi.binary_dilation(ribs, iterations=5)
    assert np.array_equal(png[~border], phantom[~border])  # bit for bit beyond the feathered border
    src, res = sitk.ReadImage(str(files["nrrd"])), sitk.ReadImage(str(out / "film_nrrd_ribs_suppressed.nrrd"))
    assert res.GetSize() == src.GetSize() and res.GetOrigin() == src.GetOrigin()
    assert res.GetSpacing() == src.GetSpacing() and res.GetDirection() == src.GetDirection()
    seg = slicerio.read_segmentation(str(out / "film_nrrd_ribs.seg.nrrd"))
    assert np.allclose(seg["ijkToLPS"], MedicalImage.from_sitk(src).ijk_to_lps())
    original, derived = pydicom.dcmread(files["dcm"]), pydicom.dcmread(out / "film_dcm_ribs_suppressed.dcm")
    assert derived.StudyInstanceUID == original.StudyInstanceUID
    assert derived.SeriesInstanceUID != original.SeriesInstanceUID
    picture = np.asarray(Image.open(out / "film_png_rib_suppression.png"))
    assert picture.shape == (phantom.shape[0], 3 * phantom.shape[1], 3)
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and all(",ok," in r for r in rows[1:]) and "rib_fraction" in rows[0]


@pytest.mark.slow
def test_cli_bad_inputs_are_one_line_errors_without_partial_outputs(tmp_path, phantom, tiny_inpainter):
    assert_bad_mask_inputs_fail_cleanly(tmp_path, phantom, "suppress-ribs", "--rib-mask", "rib",
                                        ["--inpainting-model", str(tiny_inpainter), "--steps", "2", "--mode",
                                         "inpaint"])


def test_bone_suppression_scores_reward_removing_the_bone_signal(phantom):
    from lungx_core.eval.evaluate import bone_suppression_scores

    soft = phantom.astype(np.float64)
    lung = phantom_lung(phantom.shape)
    bone = np.zeros_like(soft)
    bone[::40] = 30.0  # horizontal "ribs"
    original = 0.8 * (soft + bone) + 7  # another brightness and contrast: the linear match takes it out
    s = bone_suppression_scores(original, soft, soft, lung)
    assert s["psnr_output"] > 200 and s["ssim_output"] == pytest.approx(1.0) and s["bsr"] == pytest.approx(1.0)
    half = bone_suppression_scores(original, 0.8 * (soft + bone / 2) + 7, soft, lung)
    assert half["psnr_input"] < half["psnr_output"] and half["ssim_input"] < half["ssim_output"]
    assert half["bsr"] == pytest.approx(0.75, abs=0.02)  # half the bone signal left: a quarter of the error
    same = bone_suppression_scores(original, original, soft, lung)
    assert same["bsr"] == pytest.approx(0.0) and same["psnr_input"] == pytest.approx(same["psnr_output"])


@pytest.mark.slow
def test_evaluate_bone_suppression_cli_prints_one_json_object(tmp_path, tiny_inpainter):
    import json

    from test_cli import run_lungx

    from lungx_core.ct.drr import bone_by_hu, render_bone_pair
    from lungx_core.io.sample import sample_ct

    ct = sample_ct()
    pair = render_bone_pair(ct, bone_by_hu(ct), pixel_spacing=1.5)
    low, high = np.percentile(pair.with_bone.array, [0.5, 99.5])
    for sub, img in (("images", pair.with_bone), ("soft_tissue", pair.soft_tissue)):
        (tmp_path / "ds" / sub).mkdir(parents=True)
        scaled = np.clip((img.array - low) / (high - low), 0, 1) * 65535
        Image.fromarray(scaled.astype(np.uint16)).save(tmp_path / "ds" / sub / "sample.png")
    proc = run_lungx("evaluate", "bone-suppression", str(tmp_path / "ds"), "--inpainting-model", str(tiny_inpainter),
                     "--mode", "inpaint-subtract", "--steps", "3", "--device", "cpu", "--per-case",
                     str(tmp_path / "per_case.csv"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert list(result) == ["n", "psnr_input", "psnr_output", "ssim_input", "ssim_output", "bsr",
                            "seconds_per_image"]
    assert result["n"] == 1 and all(np.isfinite(v) for v in result.values())
    assert 10 < result["psnr_input"] < 60 and 0 < result["ssim_input"] <= 1
    assert "sample" in (tmp_path / "per_case.csv").read_text()


# ---- shipped models ---------------------------------------------------------------------------------------------


def test_shipped_rib_model_finds_the_ribs_of_a_ct_phantom_radiograph():
    from lungx_core.ct.drr import bone_by_hu, project_ap, render_bone_pair
    from lungx_core.cxr.ribs import RibMasker

    ct, ribs = chest_ct_phantom()
    pair = render_bone_pair(ct, bone_by_hu(ct))
    target = project_ap(ct, ribs.astype(np.float32)).array >= 2
    film = pair.soft_tissue.array + 2.5 * (pair.with_bone.array - pair.soft_tissue.array)  # film-like bone contrast
    probability = RibMasker(device="cpu").probability(film)
    predicted = probability >= 0.5
    dice = 2 * (predicted & target).sum() / (predicted.sum() + target.sum())
    assert dice > 0.45  # 0.556 measured: the phantom's ribs are cruder than a real CT's
    assert probability[target].mean() > probability[~target].mean() + 0.25


def test_shipped_rib_suppression_models_load_and_are_small():
    from lungx_core.models.store import WEIGHTS_DIR, read_model_config
    from lungx_core.tasks.rib_suppression import RibSuppressor

    for name in ("cxr_ribs", "cxr_inpainting"):
        assert (WEIGHTS_DIR / f"{name}.safetensors").stat().st_size < 4_000_000
        assert (WEIGHTS_DIR / f"{name}.md").exists()
        assert "metrics" in read_model_config(name)
    suppressor = RibSuppressor(device="cpu")
    assert suppressor.inpainter.spec.prediction_type == "sample" and suppressor.inpainter.spec.size == 256
