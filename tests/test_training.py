"""Training pieces that must hold for the shipped model to be right: left/right-aware mirroring, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.cxr_data import Sample, make_splits, split_by_side
from training.train_cxr import mirror


def test_mirror_swaps_left_and_right_labels():
    image = np.zeros((1, 8, 8), np.float32)
    image[0, :, 6] = 1
    masks = np.zeros((5, 8, 8), np.float32)
    masks[0, :, 6:] = 1  # lung_left on the image right
    masks[1, :, :2] = 1  # lung_right on the image left
    masks[2, 4:, 3:6] = 1  # heart (no side)
    masks[3, 0, 5:] = 1  # clavicle_left
    weight = np.ones((1, 8, 8), np.float32)
    im2, m2, _ = mirror(image, masks, weight)
    assert im2[0, 0, 1] == 1
    assert np.array_equal(m2[0], masks[1][:, ::-1])  # the new lung_left is the mirrored old lung_right
    assert np.array_equal(m2[1], masks[0][:, ::-1])
    assert np.array_equal(m2[2], masks[2][:, ::-1])
    assert np.array_equal(m2[4], masks[3][:, ::-1])


def test_split_by_side_assigns_patient_left_to_image_right():
    mask = np.zeros((10, 20), bool)
    mask[2:8, 1:6] = True
    mask[2:8, 12:19] = True
    patient_left, patient_right = split_by_side(mask)
    assert patient_left[:, 12:].any() and not patient_left[:, :10].any()
    assert patient_right[:, :6].any() and not patient_right[:, 10:].any()
    one_blob = np.zeros((10, 20), bool)
    one_blob[2:8, 2:18] = True
    assert split_by_side(one_blob) is None


def test_splits_keep_patients_together():
    samples = [Sample("covid_cxr_v7labs", f"v{i}", f"covid:{i // 3}") for i in range(60)]
    samples += [Sample("jsrt_scr", f"j{i}", f"jsrt:j{i}") for i in range(50)]
    splits = make_splits(samples, seed=0)
    by_group: dict[str, set[str]] = {}
    for s in samples:
        by_group.setdefault(s.group, set()).add(splits[f"{s.dataset}/{s.id}"])
    assert all(len(v) == 1 for v in by_group.values())
    assert 0.1 < sum(v == "val" for v in splits.values()) / len(splits) < 0.3


def test_the_committed_splits_are_the_split_every_run_uses(shared_data):
    """A run with its own seed (a second probe, a seed-spread study) must train and validate on the committed
    films: the cache's split comes from SPLIT_SEED, never from the run's seed (it once rewrote the files)."""
    import inspect

    from training.cxr_data import DATASETS, SPLITS_DIR, build_cache, list_samples

    assert "seed" not in inspect.signature(build_cache).parameters
    samples = list_samples(shared_data)
    splits = make_splits(samples)
    for ds in DATASETS:
        for part in ("train", "val"):
            expected = [s.id for s in samples if s.dataset == ds and splits[f"{ds}/{s.id}"] == part]
            assert (SPLITS_DIR / f"{ds}_{part}.txt").read_text().split() == expected, f"{ds}_{part}.txt"


def test_every_training_config_fits_its_schema_and_misspelt_keys_are_refused(tmp_path):
    import json
    from pathlib import Path

    import pytest

    from training import schemas

    by_prefix = (("bone", schemas.BoneRun), ("clavicles", schemas.ClavicleRun),
                 ("ct_unet", schemas.CTSegmentationRun), ("cxr_unet", schemas.CXRSegmentationRun),
                 ("deopacifier", schemas.DeopacifierRun), ("gate", schemas.GateRun),
                 ("inpainting", schemas.InpaintingRun), ("laterality", schemas.LateralityRun),
                 ("nodules", schemas.NoduleRun),
                 ("opacity_removal", schemas.TranslationRun),
                 ("opacity", schemas.OpacityRun), ("pathology", schemas.PathologyRun), ("ribs", schemas.RibsRun),
                 ("synthesis", schemas.TranslationRun))
    folder = Path(__file__).parents[1] / "training" / "configs"
    configs = sorted(folder.glob("*.json"))
    assert len(configs) >= 16
    for path in configs:
        schema = next(s for prefix, s in by_prefix if path.stem.startswith(prefix))
        assert schemas.read_config(path, schema)["name"]
    bone = json.loads((folder / "bone_cxr.json").read_text())
    bone["des"]["epoch"] = bone["des"].pop("epochs")
    (tmp_path / "bad.json").write_text(json.dumps(bone))
    with pytest.raises(ValueError, match=r"bad.json: BoneRun des: unknown key 'epoch'"):
        schemas.read_config(tmp_path / "bad.json", schemas.BoneRun)
    del bone["des"]
    (tmp_path / "bad.json").write_text(json.dumps(bone))
    with pytest.raises(ValueError, match="missing key 'des'"):
        schemas.read_config(tmp_path / "bad.json", schemas.BoneRun)


def test_insertion_pairs_differ_only_inside_the_lesion_region():
    """The paired pre-training's pairs (issue 18): the lesion model's insertion, nothing outside its region."""
    import numpy as np

    from training.synthesis_data import insertion_pairs

    yy, xx = np.mgrid[0:48, 0:48]
    lungs = np.stack([(((yy - 22) / 14) ** 2 + ((xx - 24 - s * 10) / 6) ** 2 < 1) | (
        ((yy - 22) / 14) ** 2 + ((xx - 24 + s * 10) / 6) ** 2 < 1) for s in (1, 1)])
    images = np.where(lungs, 0.3, 0.7).astype(np.float16) + np.random.default_rng(0).normal(0, 0.01, lungs.shape)
    pairs = insertion_pairs(images, lungs, np.array([0, 1]), 40, np.random.default_rng(1), (0.2, 0.4))
    clear, opaque, region = pairs
    assert clear.shape == opaque.shape == region.shape == (2, 40, 40)
    assert (opaque != clear).any() and not (opaque != clear)[region == 0].any()
    assert (opaque[region > 0.5] >= clear[region > 0.5] - 1e-6).mean() > 0.9  # lesions are denser than lung
    again = insertion_pairs(images, lungs, np.array([0, 1]), 40, np.random.default_rng(1), (0.2, 0.4))
    assert all(np.array_equal(x, y) for x, y in zip(pairs, again, strict=True))


def probe_films(n: int = 2, crop: int = 16, size: int = 64):
    """RealFilms of flat views with a centred square lung and a crop box on rows 8-40, cols 16-56."""
    from training.probe_guidance import RealFilms

    lungs = np.zeros((n, size, size), bool)
    lungs[:, 16:48, 16:48] = True
    return RealFilms(
        crops=np.full((n, crop, crop), 0.5, np.float32), masks=np.ones((n, crop, crop), np.float32),
        views=np.where(lungs, 0.3, 0.6).astype(np.float32), lungs=lungs,
        places=np.array([[8, 40, 16, 56]] * n), gains=np.full(n, 0.5, np.float32), ids=np.array(["a", "b"][:n]))


def test_probe_guidance_puts_the_change_in_its_box_scaled_and_passes_clahe_straight_through():
    """The de-opacifier's crop change lands in the crop's box on the probe's grid, in the probe's intensity
    units; CLAHE is exact forward and the identity backward."""
    import torch

    from lungx_core.preprocess import clahe
    from training.probe_guidance import clahe_straight_through, onto_probe_grid

    films = probe_films()
    change = torch.full((2, 1, 16, 16), 0.2)
    out = onto_probe_grid(change, films, np.array([0, 1]))
    assert out.shape == (2, 1, 64, 64)
    assert torch.allclose(out[:, :, 8:40, 16:56], torch.tensor(0.1))
    out[:, :, 8:40, 16:56] = 0
    assert not out.any()
    view = torch.from_numpy(films.views[:1, None]).requires_grad_(True)
    y = clahe_straight_through(view, 0.01)
    assert np.allclose(y.detach()[0, 0].numpy(), clahe(films.views[0], 0.01))
    y.sum().backward()
    assert torch.equal(view.grad, torch.ones_like(view))


def test_probe_loss_reaches_the_change_only_through_its_box():
    """The shipped lung probe, frozen, scores the changed view; its gradient flows back into the crop change."""
    import torch

    from training.probe_guidance import ProbeLoss, RealFilms

    probe = ProbeLoss("cxr_lung_probe")
    assert not any(p.requires_grad for p in probe.net.parameters())
    films = probe_films(size=probe.preprocess.size)
    films = RealFilms(**{**films.__dict__, "places": np.array([[40, 200, 60, 220]] * 2)})
    change = torch.zeros((2, 1, 16, 16), requires_grad=True)
    loss, dice = probe(change, films, np.array([0, 1]), np.random.default_rng(0))
    assert 0 <= float(loss) <= 1 and 0 <= dice <= 1
    loss.backward()
    assert change.grad.abs().sum() > 0


def region_films():
    """Four 32-px crops: opaque film 0 with a region on the left lung, opaque film 1 whose own mask covers that
    region, opaque film 2 clear there, clear film 3 whose lung field is on the right only."""
    from training.region_adversary import RegionFilms

    lungs = np.zeros((4, 32, 32), bool)
    lungs[:3, 4:28, 4:28] = True
    lungs[3, 4:28, 18:28] = True
    masks = np.zeros((4, 32, 32), np.float32)
    masks[0, 8:20, 6:12] = 1.0
    masks[1, 8:20, 6:14] = 1.0
    masks[2, 20:26, 20:26] = 1.0
    crops = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    return RegionFilms(crops, masks, lungs, np.array([True, True, True, False]), np.array(list("abcd")))


def test_region_partners_show_the_same_place_clear():
    """A partner's lung covers the fake's region and its own opacity does not; a mirrored lung counts; a region
    nothing shows clear falls back to the clear films that show most of it."""
    from training.region_adversary import RegionFilms, partners

    films = region_films()
    pairs = partners(films, grid=32)
    first = {tuple(r) for r in pairs[0]}
    assert (2, 0) in first and (1, 0) not in first and (0, 0) not in first  # film 1's own mask takes the region
    assert (3, 1) in first and (3, 0) not in first  # film 3's right lung, mirrored, shows a left-sided region
    wide = RegionFilms(**{**films.__dict__, "masks": np.where(films.lungs, 1.0, 0.0).astype(np.float32)})
    fallback = partners(RegionFilms(**{**wide.__dict__, "opaque": np.array([True, True, True, False])}), grid=32)
    assert all(set(p[:, 0]) == {3} for p in fallback)


def test_region_discriminator_sees_only_the_region_and_its_losses_are_weighted_there():
    import torch

    from training.region_adversary import RegionDiscriminator, brightening, lsgan, region_weights

    disc = RegionDiscriminator(8).eval()
    region = torch.zeros(1, 1, 32, 32)
    region[..., 8:16, 8:16] = 1
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    b[..., 8:16, 8:16] = a[..., 8:16, 8:16]
    assert torch.equal(disc(a, region), disc(b, region))  # what lies outside the region is not seen
    logits = disc(a, region)
    w = region_weights(region, logits)
    assert logits.shape == w.shape == (1, 1, 4, 4) and torch.isclose(w.sum(), torch.tensor(1.0))
    assert w[..., 1, 1] == 1 and lsgan(torch.ones_like(logits), 1.0, w) == 0
    assert torch.isclose(lsgan(torch.zeros_like(logits), 1.0, w), torch.tensor(1.0))
    x = torch.full((1, 1, 4, 4), 0.5)
    out = x.clone()
    out[..., 0, 0] = 0.9  # brighter inside the mask
    out[..., 3, 3] = 0.1  # darker: not penalised
    mask = torch.ones_like(x)
    assert torch.isclose(brightening(out, x, mask), torch.tensor(0.4 / 16))
    mask[..., 0, 0] = 0
    assert brightening(out, x, mask) == 0


def test_source_critics_learn_sources_and_confusion_is_bounded_by_the_uniform_guess():
    import torch

    from training.train_pathology import SourceCritics

    torch.manual_seed(0)
    critics = SourceCritics(4, [2, 3])
    classes = torch.tensor([0, 0, 1, 1, 1, 0])
    sources = torch.tensor([0, 1, 0, 1, 2, 1])
    feats = torch.nn.functional.one_hot(sources, 4).float() + classes[:, None] * 0.5
    # the confusion loss is at least log(2) + log(3), reached by heads that guess uniformly
    with torch.no_grad():
        for head in critics.heads:
            head[-1].weight.zero_()
            head[-1].bias.zero_()
    assert abs(critics.confusion_loss(feats, classes).item() - (np.log(2) + np.log(3))) < 1e-5
    opt = torch.optim.Adam(critics.parameters(), lr=0.05)
    first = critics.source_loss(feats, classes, sources).item()
    for _ in range(100):
        opt.zero_grad()
        loss = critics.source_loss(feats, classes, sources)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first  # separable sources are learnt
    assert critics.confusion_loss(feats, classes).item() > np.log(2) + np.log(3)


def test_opacity_loss_targets_each_cells_share_of_the_mask_on_known_films_only():
    import torch

    from training.train_pathology import opacity_loss

    head = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.zero_()
    opacity = torch.zeros(2, 1, 8, 8)
    opacity[:, :, :4, :4] = 1  # the top-left cell of a 2x2 map is all opacity
    share = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).expand(2, 1, 2, 2)
    logits = torch.logit(share.clamp(0.01, 0.99))  # the head passes these through unchanged
    loss = opacity_loss(head, logits, opacity, torch.tensor([True, False]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[:1], share[:1])
    assert torch.isclose(loss, expected)
    assert opacity_loss(head, logits, opacity, torch.tensor([False, False])).item() == 0


def test_field_of_view_crops_cut_image_and_labels_together_and_letterbox_like_inference():
    """Issue 34: the CT network is trained on smaller fields of view; each crop keeps the labels on the lungs it
    shows and is centred in air the way inference letterboxes a cropped series."""
    from training.train_ct import FOV_KINDS, field_of_view_crop

    size = 128
    hu = np.full((size, size), -1024.0, np.float32)
    labels = np.zeros((size, size), np.uint8)
    hu[20:108, 10:118] = 40.0  # body
    hu[30:100, 20:60] = -850.0  # the patient's right lung (image left, canonical columns run right to left)
    hu[30:100, 68:108] = -850.0
    labels[30:100, 20:60], labels[30:100, 68:108] = 1, 2
    rng = np.random.default_rng(0)
    for kind in FOV_KINDS:
        for _ in range(20):
            out_hu, out_lab = field_of_view_crop(hu, labels, rng, kind)
            assert out_hu.shape == out_lab.shape == (size, size)
            lung = out_lab > 0
            assert lung.any() and (out_hu[lung] < -300).mean() > 0.97, kind  # labels stay on the lungs
            assert (out_hu[out_lab == 0] > -700).any(), kind  # the body is kept around them
            right, left = np.nonzero(out_lab == 1)[1], np.nonzero(out_lab == 2)[1]
            if len(right) and len(left):
                assert right.mean() < left.mean(), kind  # sides never swap
    out_hu, _ = field_of_view_crop(hu, labels, np.random.default_rng(1), "hemithorax")
    body_cols = np.nonzero((out_hu > -500).any(axis=0))[0]
    assert len(body_cols) < 0.7 * size and abs((body_cols[0] + body_cols[-1]) / 2 - size / 2) < 3  # centred


def test_lung_levels_run_from_the_bases_to_the_apices_per_case():
    from training.ct_data import lung_levels

    labels = np.zeros((7, 8, 8), np.uint8)
    labels[1:4, 2:5, 2:5] = 1  # case a: lung on slices 1-3 of 0-3
    labels[5:7, 2:5, 2:5] = 2  # case b: slices 5-6 of 4-6
    data = {"case": np.array(["a"] * 4 + ["b"] * 3), "labels": labels}
    np.testing.assert_allclose(lung_levels(data), [-1, 0, 0.5, 1, -1, 0, 1])


def test_no_mass_is_painted_near_the_lung_bases(monkeypatch):
    import training.train_ct as train_ct

    seen = []

    def record(h, side, rng, kind=None, kinds=()):
        seen.append((int(h[0, 0]) - 40, "mass" in kinds))  # the slice, told by its corner, and whether a mass may come
        return h

    monkeypatch.setattr(train_ct, "insert_pathology", record)
    labels = np.zeros((4, 32, 32), np.uint8)
    labels[:, 8:24, 4:14], labels[:, 8:24, 18:28] = 1, 2
    hu = np.where(labels > 0, -850, 40 + np.arange(4)[:, None, None]).astype(np.int16)
    cfg = {"augment": {"pathology_prob": 1.0, "hu_shift": 0, "noise_hu": 0, "rotate_deg": 0, "scale": 1.0,
                       "translate": 0.0, "pathology_kinds": ["dependent", "mass"], "mass_min_level": 0.25}}
    train_ct.make_batch(hu, labels, cfg, np.random.default_rng(0), np.array([0.1, 0.2, 0.3, 0.9]))
    assert {i for i, _ in seen} == {0, 1, 2, 3}
    assert all(may_mass == (i >= 2) for i, may_mass in seen)  # levels 0.1 and 0.2 lie below 0.25


def test_field_variants_cut_labels_as_they_cut_the_volume():
    from training.eval_ct_fields import VARIANTS, block_labels, variant

    rng = np.random.default_rng(0)
    hu = rng.normal(0, 1, (16, 40, 60)).astype(np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    labels[2:14, 10:30, 8:26], labels[2:14, 10:30, 34:52] = 1, 2
    masses = np.zeros_like(labels)
    masses[5:9, 12:16, 8:12] = 1  # against the right lung's lateral border
    for name in VARIANTS:
        v_hu, v_lab, spacing, v_mass = variant(hu, labels, (1.0, 0.7, 0.7), name, masses)
        assert v_hu.shape == v_lab.shape == v_mass.shape, name
        assert np.prod(spacing) * v_hu.size <= 0.7 * 0.7 * hu.size + 1e-6, name
        assert not (v_mass & (v_lab != 1)).any(), name  # cut with the labels, not on its own
    assert variant(hu, labels, (1.0, 0.7, 0.7), "thick5")[2][0] == 5.0
    np.testing.assert_array_equal(variant(hu, labels, (1.0, 0.7, 0.7), "whole")[1], labels)
    np.testing.assert_array_equal(block_labels(labels, 2, 2)[2:14, 10:30, 4:13], 1)


def test_pseudo_labels_keep_only_plausible_structures():
    from lungx_core.anatomy import CXR_CLASSES
    from lungx_core.postprocess import clean_masks
    from training.cxr_pseudo_labels import accepted

    p = np.zeros((len(CXR_CLASSES), 200, 200), np.float32)
    p[0, 40:160, 110:170] = 0.99  # lung_left on the image right
    p[1, 40:160, 30:90] = 0.99
    p[2, 110:170, 80:130] = 0.99  # heart: CTR 50/140
    p[3, 20:30, 110:170] = 0.99
    p[4, 20:30, 30:90] = 0.99
    keep = dict(zip(CXR_CLASSES, accepted(clean_masks(p), p), strict=True))
    assert all(keep.values())
    ragged = p.copy()
    for c in range(82, 130, 4):  # a comb, not a heart
        ragged[2, 130:170, c : c + 2] = 0
    ragged[4] = 0
    ragged[4, 20:25, 30:40] = 0.99  # a speck (50 px) where the right clavicle should be
    keep = dict(zip(CXR_CLASSES, accepted(clean_masks(ragged), ragged), strict=True))
    assert keep["lung_left"] and keep["clavicle_left"] and not keep["heart"] and not keep["clavicle_right"]
    unsure = p.copy()
    unsure[1, 40:160, 30:90] = 0.6  # a lung the model hesitates over: nothing on the film is a target
    assert not accepted(clean_masks(unsure), unsure).any()


def test_nih_films_are_split_by_patient(tmp_path):
    from training.cxr_pseudo_labels import NIH, nih_anatomy_splits

    (tmp_path / NIH).mkdir()
    rows = ["id,patient_id"] + [f"f{i},{i // 4}" for i in range(200)]
    (tmp_path / NIH / "index.csv").write_text("\n".join(rows) + "\n")
    splits = nih_anatomy_splits(tmp_path)
    by_patient: dict[int, set[str]] = {}
    for i in range(200):
        by_patient.setdefault(i // 4, set()).add(splits[f"f{i}"])
    assert all(len(v) == 1 for v in by_patient.values())
    assert 0.15 < sum(v == "val" for v in splits.values()) / 200 < 0.25


def test_plausibility_summary_counts_ragged_hearts_and_clavicles():
    from training.eval_cxr_plausibility import summarise

    rows = [{"id": "a", "split": "train", "adult": True, "heart_solidity": 0.97, "clavicles_found": 2,
             "clavicles_plausible": 2},
            {"id": "b", "split": "val", "adult": True, "heart_solidity": 0.80, "clavicles_found": 1,
             "clavicles_plausible": 1},
            {"id": "c", "split": "val", "adult": False, "heart_solidity": None, "clavicles_found": 2,
             "clavicles_plausible": 1}]
    s = summarise(rows)
    assert s["all"]["n"] == 3 and s["all"]["heart_ragged"] == 2 / 3 and s["all"]["clavicles_both"] == 2 / 3
    assert s["all"]["clavicles_both_plausible"] == 1 / 3
    assert s["val_adults"] == {"n": 1, "heart_ragged": 1.0, "median_heart_solidity": 0.8, "clavicles_both": 0.0,
                               "clavicles_both_plausible": 0.0}


def test_nodule_crops_centre_on_hard_negatives():
    """With ``hard_negatives`` 1, every crop holds the mined place (a marked pixel), whatever film kind is drawn."""
    from training.train_nodules import sample

    x = np.zeros((1, 96, 96), np.float16)
    x[0, 70, 20] = 1.0  # the hard negative
    lung = np.ones((1, 96, 96), bool)
    films = {"x": x, "lung": lung, "ids": np.array(["JPCNN001"]), "source": np.array(["jsrt"])}
    cfg = {"crop": 48, "mix": [0.0, 1.0, 0.0], "simulate": 0.0, "centred": 0.0, "sigma_fraction": 0.25,
           "hard_negatives": 1.0}
    rng = np.random.default_rng(0)
    hard = np.array([[0, 70, 20]], np.float32)
    for _ in range(20):
        crop, heat, _, _ = sample(films, [[], [0], []], {}, cfg, rng, hard)
        assert crop.max() > 0.5 and not heat.any()  # the place is in the crop, and it is no nodule


def test_nodule_bone_channel_is_the_film_less_its_bone_and_keeps_a_share_of_simulated_nodules():
    """With ``bone_channel`` a crop has two channels: the film, and the film less its stored bone image, into
    which a simulated nodule goes at the drawn share (here exactly a half); both get the same grey-level gamma."""
    from training.train_nodules import sample

    films = {"x": np.full((1, 96, 96), 0.5, np.float16), "bone": np.full((1, 96, 96), 0.1, np.float16),
             "lung": np.ones((1, 96, 96), bool), "ids": np.array(["JPCNN001"]), "source": np.array(["jsrt"])}
    cfg = {"crop": 64, "mix": [0.0, 1.0, 0.0], "simulate": 1.0, "centred": 1.0, "sigma_fraction": 0.25,
           "diameter_px": [20, 24], "contrast": [0.2, 0.2], "bone_channel": "cxr_bone", "bone_keep": [0.5, 0.5]}
    crop, heat, _, _ = sample(films, [[], [0], []], {}, cfg, np.random.default_rng(3))
    assert crop.shape == (2, 64, 64) and heat.shape == (1, 64, 64) and heat.max() == 1.0
    film = crop[0]
    gamma = np.log(np.median(film)) / np.log(0.5)  # most of the crop is the plain 0.5 background
    nodule = film ** (1 / gamma) - 0.5
    assert nodule.max() > 0.1
    assert np.allclose(crop[1] ** (1 / gamma), 0.4 + 0.5 * nodule, atol=2e-3)


def test_warm_start_widened_inputs_start_as_the_one_channel_network():
    """A network reading an extra input channel, warm-started with ``widen_inputs``, computes what the one-channel
    network computes whatever the extra channel holds: the shipped weights on the first channel, zeros after."""
    import torch

    from lungx_core.models.networks import build_network
    from training.common import warm_start

    options = {"channels": [16, 32, 64, 128, 256], "num_res_units": 2}
    one, two = build_network("unet", 1, 2, **options), build_network("unet", 2, 2, **options)
    warm_start(one, "cxr_anatomy")
    warm_start(two, "cxr_anatomy", widen_inputs=True)
    state, widened = two.state_dict(), 0
    for k, v in one.state_dict().items():
        if state[k].shape == v.shape:
            state[k] = v  # the fresh output layer, drawn differently for the two
        else:
            assert torch.equal(state[k][:, :1], v) and not state[k][:, 1:].any()
            widened += 1
    assert widened >= 1
    two.load_state_dict(state)
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(one.eval()(x), two.eval()(torch.cat([x, torch.rand_like(x)], 1)), atol=1e-5)


def test_distractors_darken_only_outside_the_lungs():
    """Drawn regions never touch the (grown) lung field, so the masks stay the label; they are darker than the
    tissue they replace, and films without a lung label pass unchanged."""
    from training.distractors import Distractors, draw_distractors

    rows, cols = np.mgrid[:128, :128]
    lung = np.zeros((128, 128), bool)
    for centre in (40, 88):
        lung |= ((rows - 55) / 35) ** 2 + ((cols - centre) / 18) ** 2 < 1
    image = np.where(lung, 0.3, 0.8).astype(np.float32)
    changed_any = False
    for seed in range(5):
        out = draw_distractors(image, lung, np.random.default_rng(seed))
        assert out.shape == image.shape and out.dtype == image.dtype
        assert np.array_equal(out[lung], image[lung])
        moved = out != image
        changed_any |= bool(moved.any())
        assert (out[moved] <= image[moved] + 1e-6).mean() > 0.9
    assert changed_any
    masks = np.zeros((5, 128, 128), np.uint8)
    assert Distractors({"p": 1.0}, seed=0)(image, masks) is image


def test_healthy_runs_are_not_selected_by_pathological_masks():
    from training.train_cxr import selection_score

    val = {"jsrt/lung": 0.9, "jsrt/heart": 0.8, "covid/lung": 0.1, "covid/heart": 0.1}
    assert selection_score(val, {"jsrt"}) == pytest.approx(0.85)
    assert selection_score(val) == pytest.approx(0.475)


def test_retrocardiac_lungs_run_straight_down_behind_the_heart():
    from training.lung_convention import retrocardiac_lungs

    right = np.zeros((100, 100), bool)  # the patient's right lung: the image's left
    left = np.zeros((100, 100), bool)
    right[10:90, 10:40] = True
    left[10:90, 60:90] = True
    heart = np.zeros((100, 100), bool)
    heart[55:90, 30:80] = True
    right[55:90, 30:40] = left[55:90, 60:80] = False  # SCR: each lung stops at the heart's border
    new_left, new_right = retrocardiac_lungs(left, right, heart)
    assert new_left[55:90, 60:80].all() and new_right[55:90, 30:40].all()  # behind the heart, straight down
    assert not (new_left | new_right)[:, 40:60].any()  # the middle (spine, mediastinum) stays out
    assert (new_left >= left).all() and (new_right >= right).all()
    same = retrocardiac_lungs(left, right, np.zeros_like(heart))
    assert np.array_equal(same[0], left) and np.array_equal(same[1], right)


def test_placebo_sets_match_each_healthy_film_to_several_pathological_films():
    from training.style import PLACEBOS, match_histogram
    from training.train_pathology import PLACEBO_DRAWS, placebo_sets

    rng = np.random.default_rng(0)
    images = rng.random((7, 20, 20), dtype=np.float32)
    images[4:] **= 3  # the "pathological" films have another intensity distribution
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    sets = placebo_sets(images, labels, 16)
    healthy, sick = sets["healthy"], sets["pathological"]
    assert healthy.shape == (4, 16, 16) and sick.shape == (3, 16, 16)
    assert sets["histogram_matched"].shape == (PLACEBO_DRAWS * 4, 16, 16)
    assert all(sets[k].shape == healthy.shape for k in PLACEBOS if k != "histogram_matched")
    for k, matched in enumerate(sets["histogram_matched"]):  # every one is its healthy film matched to a sick one
        assert any(np.allclose(matched, match_histogram(healthy[k % 4], s)) for s in sick)


def test_style_augment_histogram_chance():
    from training.style import augment, match_histogram

    x = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    other = x**4
    seeds = range(40)
    # with chance 1 every crop is matched first; with chance 0 none is, so outputs follow x's own distribution
    matched = [augment(x, other, np.random.default_rng(s), histogram_p=1.0) for s in seeds]
    plain = [augment(x, other, np.random.default_rng(s), histogram_p=0.0) for s in seeds]
    assert np.mean([m.mean() for m in matched]) < np.mean([p.mean() for p in plain]) - 0.1
    assert match_histogram(x, other).mean() < x.mean() - 0.2


def test_a_training_run_takes_its_seed_from_the_command_line_and_records_it(tmp_path):
    """`--seed` runs one recipe over several seeds (issue 36: every recipe over at least three) without a config
    file per seed; the run's config.json records the seed it ran with."""
    import json

    import torch

    from training.common import start_run
    from training.schemas import CXRSegmentationRun

    config = Path(__file__).resolve().parents[1] / "training" / "configs" / "cxr_unet_healthy_ft.json"
    threads = str(torch.get_num_threads())
    for extra, seed in (([], 0), (["--seed", "2"], 2)):
        run = tmp_path / f"run{seed}"
        _, cfg = start_run("doc", CXRSegmentationRun, ["--config", str(config), "--run", str(run),
                                                       "--threads", threads, *extra])
        assert cfg["seed"] == seed and json.loads((run / "config.json").read_text())["seed"] == seed
        assert cfg["init"] == "cxr_lung_probe" and "synthesis" not in cfg


def test_two_trainings_building_one_shared_cache_at_once_both_finish(tmp_path):
    """Folds of one run started together build the run's shared caches (films.npz, bone.npz) at the same time;
    each writes under its own temporary name, so neither renames the other's file away (a fold crashed on
    that), and what is left is one whole cache."""
    from concurrent.futures import ThreadPoolExecutor

    from training.common import save_npz

    out = tmp_path / "run" / "films.npz"
    arrays = {"x": np.arange(2_000_000, dtype=np.float32).reshape(20, 100_000), "ids": np.array(["a", "b"])}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: save_npz(out, **arrays), range(8)))
    assert sorted(p.name for p in out.parent.iterdir()) == ["films.npz"]
    with np.load(out) as z:
        assert np.array_equal(z["x"], arrays["x"]) and list(z["ids"]) == ["a", "b"]
