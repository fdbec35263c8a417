"""The lesion model: insertion changes only lung pixels, follows its parameters, is reproducible; the fitted model
file is valid; insertion synthesis through the task, the API and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungx_core.generative.lesions import (
    MODEL_FILE,
    LesionModel,
    LesionRequest,
    apply_lesion,
    insert_lesions,
    plan_lesion,
    shipped_model,
    split_lungs,
)


def chest(shape=(300, 260), seed=0):
    """A film-like array: bright mediastinum and chest wall, two dark lungs with vessel-like texture."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 180.0)
    lung = np.zeros(shape, bool)
    for cx in (0.3 * shape[1], 0.7 * shape[1]):
        lung |= ((rows - 0.5 * shape[0]) / (0.35 * shape[0])) ** 2 + ((cols - cx) / (0.15 * shape[1])) ** 2 < 1
    image[lung] = 70.0
    image += rng.normal(0, 6, shape)
    return np.clip(image, 0, 255).astype(np.uint8), lung


def test_split_lungs_names_the_patients_sides():
    _, lung = chest()
    sides = split_lungs(lung)
    # display orientation: the patient's right lung is on the viewer's left
    assert np.nonzero(sides["right"])[1].mean() < np.nonzero(sides["left"])[1].mean()
    assert not (sides["right"] & sides["left"]).any()
    assert ((sides["right"] | sides["left"]) == lung).all()


@pytest.mark.parametrize("kind", ["ggo", "consolidation", "mixed", "whiteout"])
def test_insertion_changes_only_the_lung_and_raises_density(kind):
    image, lung = chest()
    result = insert_lesions(image, lung, LesionRequest(area=0.3, side="both", kind=kind), seed=3)
    changed = result.array != image
    assert changed.any()
    assert not changed[~lung].any()  # surroundings bit-exact, the lung mask stays valid
    assert not changed[~result.support].any()
    assert result.array.dtype == image.dtype
    inside = result.lesion.hard
    assert result.array[inside].astype(float).mean() > image[inside].astype(float).mean() + 3  # denser


def test_insertion_is_reproducible_under_a_seed():
    image, lung = chest()
    a = insert_lesions(image, lung, LesionRequest(area=0.2), seed=11)
    b = insert_lesions(image, lung, LesionRequest(area=0.2), seed=11)
    c = insert_lesions(image, lung, LesionRequest(area=0.2), seed=12)
    assert np.array_equal(a.array, b.array)
    assert not np.array_equal(a.array, c.array)


@pytest.mark.parametrize("area", [0.05, 0.3, 0.6])
def test_area_is_respected(area):
    _, lung = chest()
    lesion = plan_lesion(lung, LesionRequest(area=area, side="both", strokes=0), seed=1)
    assert lesion.hard.sum() / lung.sum() == pytest.approx(area, abs=0.05)


@pytest.mark.parametrize("side", ["left", "right"])
def test_side_is_respected(side):
    _, lung = chest()
    other = split_lungs(lung)["right" if side == "left" else "left"]
    lesion = plan_lesion(lung, LesionRequest(area=0.2, side=side), seed=2)
    assert lesion.sides == (side,)
    assert lesion.hard.any() and not (lesion.support & other).any()


def test_consolidation_is_denser_than_ground_glass():
    image, lung = chest()
    lift = {}
    for kind in ("ggo", "consolidation"):
        r = insert_lesions(image, lung, LesionRequest(area=0.3, side="both", kind=kind, strokes=0), seed=5)
        lift[kind] = float((r.array.astype(float) - image)[r.lesion.hard].mean())
    assert lift["consolidation"] > lift["ggo"] > 0


def test_whiteout_reaches_the_border_and_takes_its_contrast_away():
    image, lung = chest()
    from scipy import ndimage as ndi

    border = lung & ~ndi.binary_erosion(lung, iterations=2)
    lesions = {kind: plan_lesion(lung, LesionRequest(area=0.4, side="both", kind=kind, strokes=0), seed=6)
               for kind in ("consolidation", "whiteout")}
    # the other kinds keep a rim of aerated lung; a white-out is opaque up to the lung's own edge
    assert (lesions["consolidation"].alpha[border] > 0.5).sum() == 0
    assert (lesions["whiteout"].alpha[border] > 0.5).sum() > 0.2 * border.sum()
    assert lesions["whiteout"].local_level and not lesions["consolidation"].local_level
    assert lesions["whiteout"].alpha.max() > lesions["consolidation"].alpha.max()
    # lower zones first: the lesion's centre lies below the lung field's
    assert np.nonzero(lesions["whiteout"].hard)[0].mean() > np.nonzero(lung)[0].mean()
    out = apply_lesion(image.astype(np.float32), lung, lesions["whiteout"])
    edge = border & (lesions["whiteout"].alpha > 0.8)
    wall = ndi.binary_dilation(edge, iterations=3) & ~lung  # the tissue just outside those border pixels
    before = abs(image[edge].astype(float).mean() - image[wall].astype(float).mean())
    after = abs(out[edge].mean() - out[wall].mean())
    assert after < 0.3 * before  # the lung's edge against the chest wall has (almost) gone: the silhouette sign


def test_oracle_removal_gives_back_the_clear_film():
    image, lung = chest()
    film = image.astype(np.float32)
    lesion = plan_lesion(lung, LesionRequest(area=0.4), seed=4)
    opaque = apply_lesion(film, lung, lesion)
    restored = np.where(lesion.support, film, opaque)  # an oracle that knows the clear pixels behind the lesion
    assert np.array_equal(restored, film)
    assert not np.array_equal(opaque, film)


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="area"):
        LesionRequest(area=1.5)
    with pytest.raises(ValueError, match="side"):
        LesionRequest(side="middle")
    with pytest.raises(ValueError, match="kind"):
        LesionRequest(kind="nodule")
    with pytest.raises(ValueError, match="empty"):
        plan_lesion(np.zeros((50, 50), bool))


def test_shipped_model_file_is_fitted_and_valid():
    data = json.loads(MODEL_FILE.read_text())
    model = shipped_model()
    assert isinstance(model, LesionModel)
    assert model.source.startswith("covid_cxr_gb_seg training split")
    assert 0 < model.gain_ggo[0] < model.gain_ggo[1] <= model.gain_consolidation[1] < 1
    assert 0 < model.area[0] < model.area[1] < 1
    assert data["measured"]["films"] > 20
    with pytest.raises(ValueError, match="unknown key"):
        LesionModel.from_dict({**data["model"], "gain": 1})


def test_insertion_task_writes_lesion_segment(tmp_path):
    import slicerio
    from PIL import Image

    from lungx_core.io.inputs import Case
    from lungx_core.tasks.synthesis import run_one

    image, lung = chest((400, 360))
    Image.fromarray(image).save(tmp_path / "film.png")
    Image.fromarray((lung * 255).astype(np.uint8)).save(tmp_path / "lung.png")
    out = tmp_path / "out"
    out.mkdir()
    case = Case("film", tmp_path / "film.png", mask=tmp_path / "lung.png")
    row = run_one(case, out, device="cpu", seed=1, input_check="off", method="insert", area=0.25, kind="mixed")
    assert row["status"] == "ok", row
    assert row["method"] == "insert"
    assert row["lesion_fraction"] == pytest.approx(0.25, abs=0.05)
    synthetic = np.asarray(Image.open(out / "film_synthetic.png"))
    assert np.array_equal(synthetic[~lung], image[~lung])
    seg = slicerio.read_segmentation(str(out / "film_synthetic.seg.nrrd"))
    assert {s["name"] for s in seg["segments"]} == {"lung", "opacity"}
    again = run_one(case, tmp_path, device="cpu", seed=1, input_check="off", method="insert", area=0.25)
    assert again["status"] == "ok"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "film_synthetic.png")), synthetic)


def test_synthesize_cli_insert_options(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from lungx_core.cli import app

    image, lung = chest((400, 360))
    Image.fromarray(image).save(tmp_path / "film.png")
    Image.fromarray((lung * 255).astype(np.uint8)).save(tmp_path / "lung.png")
    args = ["synthesize", str(tmp_path / "film.png"), "--lung-mask", str(tmp_path / "lung.png"), "-o",
            str(tmp_path / "out"), "--no-input-check", "--device", "cpu", "--area", "0.2", "--side", "right",
            "--kind", "consolidation", "--seed", "4", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    synthetic = np.asarray(Image.open(tmp_path / "out" / "film_synthetic.png"))
    changed = synthetic != image
    left = split_lungs(lung)["left"]
    assert changed.any() and not changed[left].any() and not changed[~lung].any()
    bad = CliRunner().invoke(app, args[:-9] + ["--side", "middle"])
    assert bad.exit_code != 0


def test_batch_films_draw_different_lesions_reproducibly():
    from lungx_core.image import MedicalImage
    from lungx_core.tasks.synthesis import LesionInserter, Synthesizer, film_seed

    films = [MedicalImage(np.full((64, 64), v, np.uint8), source=name) for v, name in ((1, "a"), (2, "b"), (3, "c"))]
    a = films[0]
    inserter = LesionInserter()
    assert film_seed(inserter, a, 0) == film_seed(inserter, a, 0)
    assert film_seed(inserter, a, 0) == film_seed(inserter, MedicalImage(a.array.copy(), source="renamed"), 0)
    assert len({film_seed(inserter, f, 0) for f in films}) == 3
    assert film_seed(inserter, a, 0) != film_seed(inserter, a, 1)
    assert film_seed(inserter, a, None) == film_seed(inserter, a, 0)
    cyclegan = Synthesizer.__new__(Synthesizer)  # no weights needed: only lesion_guided is read
    cyclegan.lesion_guided = False  # a generator applied to the whole crop: the seed shifts its window as given
    assert film_seed(cyclegan, a, 5) == 5 and film_seed(cyclegan, a, None) is None
    cyclegan.lesion_guided = True  # draws lesions: seeded per film, as insert
    assert film_seed(cyclegan, a, 0) == film_seed(inserter, a, 0)


def test_the_front_ends_offer_exactly_the_lesion_models_sides_and_kinds():
    from lungx_core import cli
    from lungx_core.generative.lesions import KINDS, SIDES
    from lungx_core.tasks.registry import TASKS

    synthesis = TASKS["cxr-synthesis"]
    assert set(synthesis.option("side").choices) == set(SIDES) == {m.value for m in cli.LesionSide}
    assert set(synthesis.option("kind").choices) == set(KINDS) == {m.value for m in cli.LesionKind}
