"""The clavicle band (lungx_core/cxr/clavicles.py): where the band goes, how it maps to and from the film, and the
anatomy task's clavicles coming from it."""

import numpy as np
import pytest

from lungx_core.cxr.clavicles import BAND_COLS, BAND_ROWS, BAND_SHAPE, band_box, crop_band, paste_band


def _lungs(shape=(400, 360), rows=(80, 330), cols=(40, 320)):
    m = np.zeros(shape, dtype=bool)
    m[rows[0] : rows[1], cols[0] : cols[0] + 110] = True
    m[rows[0] : rows[1], cols[1] - 110 : cols[1]] = True
    return m


def test_band_box_follows_the_lung_fields():
    box = band_box(_lungs())
    h, w = 329 - 80, 319 - 40
    assert box == (round(80 + BAND_ROWS[0] * h), round(80 + BAND_ROWS[1] * h),
                   round(40 + BAND_COLS[0] * w), round(40 + BAND_COLS[1] * w))
    assert band_box(np.zeros((50, 50), dtype=bool)) is None


def test_a_structure_crops_into_the_band_and_pastes_back_where_it_was():
    film = np.full((400, 360), 0.2, dtype=np.float32)
    film[100:120, 60:180] = 0.9  # a bright bar where a clavicle would be
    box = band_box(_lungs())
    band = crop_band(film, box)
    assert band.shape == BAND_SHAPE and band.min() >= 0 and band.max() <= 1
    logits = np.where(band > 0.5, 5.0, -5.0)[None]
    back = paste_band(logits, box, film.shape)[0] > 0
    bar = film > 0.5
    assert 2 * (back & bar).sum() / (back.sum() + bar.sum()) > 0.95
    assert not back[box[1] :].any()  # nothing below the band


def test_a_band_reaching_beyond_the_film_is_padded_and_clipped():
    lungs = _lungs(rows=(4, 330))  # lungs to the film's top: the band starts above it
    box = band_box(lungs)
    assert box[0] < 0
    film = np.ones(lungs.shape, dtype=np.float32)
    band = crop_band(film, box)
    rows_outside = round(-box[0] / (box[1] - box[0]) * BAND_SHAPE[0])
    assert band[: rows_outside - 1].max() == 0 and band[rows_outside + 1 :].min() == 1
    pasted = paste_band(np.zeros((2, *BAND_SHAPE), np.float32), box, lungs.shape, fill=-20)
    assert pasted.shape == (2, *lungs.shape)
    inside = np.zeros(lungs.shape, dtype=bool)
    inside[: box[1], box[2] : box[3]] = True
    assert (pasted[:, inside] == 0).all() and (pasted[:, ~inside] == -20).all()


def test_the_anatomy_task_takes_its_clavicles_from_the_band(segmenter):
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    assert segmenter.config["clavicle_refiner"] == "cxr_clavicles" and segmenter.refiner is not None
    image = sample_radiograph()
    refined = segmenter.segment(image)
    alone = CXRSegmenter("cxr_anatomy", device="cpu", refine_clavicles=False).segment(image)
    for name in ("lung_left", "lung_right", "heart"):
        assert np.array_equal(refined.masks[name], alone.masks[name])
    box = band_box(refined.masks["lung_left"] | refined.masks["lung_right"])
    for name in ("clavicle_left", "clavicle_right"):
        outside = refined.masks[name].copy()
        outside[max(box[0], 0) : box[1], max(box[2], 0) : box[3]] = False
        assert not outside.any()
    assert not np.array_equal(refined.probabilities[3:], alone.probabilities[3:])


def test_without_a_band_the_clavicles_are_the_anatomy_networks_own(segmenter, monkeypatch):
    """The band network's channels are brought to full resolution only when it finds no band: then every
    probability and mask is that of the anatomy network alone (probabilities to float32 rounding: torch's
    bilinear upsampling of two channels and of five may round a value's last bit differently)."""
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    image = sample_radiograph()
    monkeypatch.setattr(segmenter.refiner, "logits", lambda windowed, lungs, out=None: None)
    fallback = segmenter.segment(image)
    alone = CXRSegmenter("cxr_anatomy", device="cpu", refine_clavicles=False).segment(image)
    assert np.abs(fallback.probabilities - alone.probabilities).max() < 1e-6
    assert all(np.array_equal(fallback.masks[k], alone.masks[k]) for k in alone.masks)
    assert list(fallback.masks) == list(alone.masks)


@pytest.mark.slow
def test_band_clavicles_beat_the_anatomy_network_on_jsrt_validation_films(shared_data, segmenter):
    from lungx_core.eval.evaluate import evaluate_cxr
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from training.cxr_data import SPLITS_DIR

    ids = (SPLITS_DIR / "jsrt_scr_val.txt").read_text().split()[:12]
    alone = CXRSegmenter("cxr_anatomy", device="cpu", refine_clavicles=False)
    scores = [evaluate_cxr(shared_data / "jsrt_scr", lambda p, s=s: s.segment(read_radiograph(p)).masks,
                           ids)["dice"]["clavicles"] for s in (alone, segmenter)]
    assert scores[1] > scores[0] + 0.005, scores


def test_training_bands_cut_film_and_masks_alike():
    from training.train_clavicles import band_masks, jittered_box

    lungs = _lungs()
    band = (BAND_ROWS, BAND_COLS)
    rng = np.random.default_rng(0)
    assert jittered_box(lungs, rng, 0.0, band) == band_box(lungs)
    boxes = [jittered_box(lungs, rng, 0.04, band, shift=0.1) for _ in range(20)]
    assert len(set(boxes)) == 20
    film = np.zeros(lungs.shape, dtype=np.float32)
    film[100:120, 60:180] = 1.0
    masks = np.stack([film > 0.5, np.zeros_like(lungs)])
    for box in boxes[:5]:
        m = band_masks(masks, box, BAND_SHAPE)
        f = crop_band(film, box) > 0.5
        assert m.shape == (2, *BAND_SHAPE) and not m[1].any()
        assert 2 * (m[0].astype(bool) & f).sum() / (m[0].sum() + f.sum()) > 0.95
