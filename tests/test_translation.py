"""The unpaired-translation engine (issue 6, carried on by opacity removal): networks, losses, image pool,
learning-rate schedule, exact resume, thoracic crops."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lungx_core.cxr.crops import Box, square_around, thoracic_box_ct, thoracic_box_cxr
from lungx_core.models.translation import GeneratorConfig, ResnetGenerator, build_discriminator
from training.losses import masked_l1, surroundings_l1
from training.translation import (
    CycleGANTrainer,
    ImagePool,
    PairedPretrainer,
    TranslationConfig,
    linear_decay,
    sample_grid,
)

TINY = TranslationConfig(size=32, generator=GeneratorConfig(base=8, n_blocks=1), disc_base=8, pool_size=3,
                         epochs=2, decay_epochs=2, lambda_surround=5.0)


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_generator_keeps_shape_and_range(upsample: str):
    g = ResnetGenerator(GeneratorConfig(base=8, n_blocks=2, upsample=upsample))
    y = g(torch.randn(2, 1, 64, 48) * 3)
    assert y.shape == (2, 1, 64, 48) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="multiples of 4"):
        g(torch.zeros(1, 1, 30, 32))


def test_reference_sizes():
    g = ResnetGenerator(GeneratorConfig(base=64, n_blocks=9))
    assert 11.3e6 < sum(p.numel() for p in g.parameters()) < 11.5e6  # the reference's 11.4 M
    d = build_discriminator(1, 64, 3)
    assert d(torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)  # 70x70 receptive-field PatchGAN


def test_surroundings_l1_ignores_the_lungs():
    real = torch.rand(1, 1, 16, 16)
    lung = torch.zeros(1, 1, 16, 16)
    lung[..., 4:12, 2:7] = 1
    changed_inside = real + 0.5 * lung
    assert surroundings_l1(real, changed_inside, lung) == 0
    changed_outside = real.clone()
    changed_outside[..., 0, 0] += 1.0
    assert surroundings_l1(real, changed_outside, lung) == pytest.approx(1.0 / (256 - 40))
    region = torch.zeros_like(lung)
    region[..., 8:, :] = 1  # the changed pixel is outside the thoracic region
    assert surroundings_l1(real, changed_outside, lung, region) == 0
    assert masked_l1(real, real + 2, torch.ones(1, 1, 1, 1)) == pytest.approx(2.0)


def test_image_pool_reference_behaviour_and_state():
    pool = ImagePool(2, seed=3)
    a, b = torch.full((1, 1, 2, 2), 1.0), torch.full((1, 1, 2, 2), 2.0)
    assert torch.equal(pool.query(a), a) and torch.equal(pool.query(b), b)  # filling: returned as given
    state = pool.state_dict()
    later = [pool.query(torch.full((1, 1, 2, 2), float(v))) for v in range(3, 9)]
    assert any(x.max() < 3 for x in later)  # sometimes an older image comes back
    again = ImagePool(2, seed=99)
    again.load_state_dict(state, "cpu")
    assert all(torch.equal(x, again.query(torch.full((1, 1, 2, 2), float(v)))) for x, v in zip(later, range(3, 9),
                                                                                             strict=True))
    assert torch.equal(ImagePool(0).query(a), a)


def test_linear_decay():
    f = linear_decay(3, 3)
    assert [round(f(e), 3) for e in range(6)] == [1.0, 1.0, 1.0, 0.75, 0.5, 0.25]


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    b = torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    lung = torch.zeros(2, 1, 32, 32)
    lung[..., 8:24, 4:14] = 1
    return a, b, lung


def test_resume_takes_the_same_next_step():
    trainer = CycleGANTrainer(TINY)
    for s in range(4):  # past the pool's filling, across an epoch boundary
        trainer.step(*_batch(s))
        if s == 1:
            trainer.end_epoch()
    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    expected = trainer.step(*_batch(10))
    expected_weights = trainer.g_ab.state_dict()

    buf.seek(0)
    resumed = CycleGANTrainer(TINY)
    torch.manual_seed(1234)  # whatever happened in between: the checkpoint restores the random state
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    got = resumed.step(*_batch(10))
    assert got == expected
    for k, v in resumed.g_ab.state_dict().items():
        assert torch.equal(v, expected_weights[k]), k
    assert resumed.opt_g.param_groups[0]["lr"] == trainer.opt_g.param_groups[0]["lr"]


def test_shape_aware_term_needs_masks_and_plain_config_skips_it():
    a, b, lung = _batch(0)
    with pytest.raises(ValueError, match="lung masks"):
        CycleGANTrainer(TINY).step(a, b)
    plain = CycleGANTrainer(TranslationConfig.from_dict({**TINY.as_dict(), "lambda_surround": 0.0}))
    assert plain.step(a, b)["surround"] == 0.0
    losses = CycleGANTrainer(TINY).step(a, b, lung)
    assert losses["surround"] > 0 and all(np.isfinite(v) for v in losses.values())


def test_cyclegan_warm_start_loads_the_paired_weights():
    """Issue 18: the CycleGAN starts from the paired pre-training's generators, not from random ones."""
    a, b, lung = _batch(0)
    pre = PairedPretrainer(TINY, lr=1e-2)
    region = lung.clone()
    first = pre.step(a, b, region)
    for _ in range(20):
        last = pre.step(a, b, region)
    assert last["paired_ab"] < first["paired_ab"] and last["paired_ba"] < first["paired_ba"]
    trainer = CycleGANTrainer(TINY)
    fresh = {k: v.clone() for k, v in trainer.g_ab.state_dict().items()}
    trainer.warm_start(pre.generators())
    for name in ("g_ab", "g_ba"):
        paired = getattr(pre, name).state_dict()
        for k, v in getattr(trainer, name).state_dict().items():
            assert torch.equal(v, paired[k]), (name, k)
    assert any(not torch.equal(fresh[k], v) for k, v in trainer.g_ab.state_dict().items())
    # the paired generators change nothing outside the region they are composited through
    from lungx_core.generative.opacity import composite

    out = composite(a, pre.g_ab(a), region)
    assert torch.equal(out[region == 0], a[region == 0])


def test_paired_pretraining_resumes_at_the_same_step():
    a, b, lung = _batch(0)
    pre = PairedPretrainer(TINY)
    pre.step(a, b, lung)
    buf = io.BytesIO()
    torch.save(pre.state_dict(), buf)
    expected = pre.step(*_batch(3))
    buf.seek(0)
    resumed = PairedPretrainer(TINY)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    assert resumed.step(*_batch(3)) == expected and resumed.steps == 2


def test_lung_only_discriminator_does_not_see_outside_the_lungs():
    """disc_region "lung": dataset style outside the lung fields cannot reach the critic (issue 18)."""
    config = TranslationConfig.from_dict({**TINY.as_dict(), "disc_region": "lung", "lambda_surround": 0.0})
    a, b, lung = _batch(0)
    other_b = b.clone()
    other_b[lung == 0] = -b[lung == 0]  # a different film style outside B's lungs only
    losses = []
    for real_b in (b, other_b):
        trainer = CycleGANTrainer(config)
        losses.append(trainer.step(a, real_b, lung, lung_b=lung)["d_b"])
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    with pytest.raises(ValueError, match="lung_a and lung_b"):
        CycleGANTrainer(config).step(a, b, lung)
    with pytest.raises(ValueError, match="disc_region"):
        TranslationConfig.from_dict({**TINY.as_dict(), "disc_region": "lungs"})


def test_sample_grid():
    trainer = CycleGANTrainer(TINY)
    a, b, _ = _batch(0)
    grid = sample_grid(trainer, a, b)
    assert grid.shape == (2 * 2 * 32, 3 * 32) and grid.dtype == np.uint8


def test_thoracic_box_cxr_wraps_lungs_and_clavicles():
    masks = {k: np.zeros((100, 80), bool) for k in ("lung_left", "lung_right", "clavicle_left", "clavicle_right")}
    masks["lung_right"][30:80, 10:35] = True
    masks["lung_left"][28:82, 45:70] = True
    masks["clavicle_left"][20:25, 40:65] = True
    box = thoracic_box_cxr(masks, margin=0.1)
    assert box.r0 < 20 and box.r1 > 82 and box.c0 < 10 and box.c1 > 70
    assert box == Box(14, 88, 4, 76)
    with pytest.raises(ValueError, match="no lung"):
        thoracic_box_cxr({"lung_left": np.zeros((5, 5), bool)})


def test_thoracic_box_ct_from_bone():
    yy, xx = np.mgrid[0:128, 0:128]
    hu = np.full((128, 128), -900.0)
    body = ((yy - 64) / 50) ** 2 + ((xx - 64) / 60) ** 2 < 1
    hu[body] = 40.0
    ring = body & (((yy - 64) / 44) ** 2 + ((xx - 64) / 54) ** 2 > 1)  # ribs near the body wall
    hu[ring] = 700.0
    hu[100:110, 58:70] = 500.0  # spine
    box = thoracic_box_ct(hu, margin=0.0)
    assert box is not None and box.r0 <= 15 and box.r1 >= 113 and box.c0 <= 5 and box.c1 >= 123
    assert thoracic_box_ct(np.full((64, 64), 40.0)) is None
    sq = square_around(Box(10, 30, 0, 80), (100, 90))
    assert sq.shape == (80, 80) and sq.c0 == 0 and sq.r0 >= 0 and sq.r1 <= 100
