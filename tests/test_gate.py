"""The frontal-chest gate: what is not a frontal chest film is refused with a one-line reason, real films pass."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
from conftest import SHARED_DATA, phantom_radiograph
from PIL import Image

from lungx_core.cxr.gate import GATE_SIZE, FrontalChestGate, gate_input, optional_gate
from lungx_core.errors import InputError
from lungx_core.image import MedicalImage


@pytest.fixture(scope="module")
def gate() -> FrontalChestGate:
    return FrontalChestGate(device="cpu")


def _image(array: np.ndarray, name: str = "x.png", **metadata) -> MedicalImage:
    return MedicalImage(np.asarray(array), spacing=(0.2, 0.2, 1.0), source=name, metadata=metadata)


def _ct_slice() -> np.ndarray:
    """An axial slice through the lungs of the CT that slicerio ships, in a lung window, as a PNG would hold it."""
    from lungx_core.io.sample import sample_ct

    hu = sample_ct().array[17]
    return np.round((np.clip(hu, -1000, 400) + 1000) / 1400 * 255).astype(np.uint8)


def _lateral_drr() -> np.ndarray:
    """The sample CT projected from the side (left-right), scaled to 8 bits like an exported film."""
    from lungx_core.ct.drr import hu_to_mu
    from lungx_core.io.sample import sample_ct

    ct = sample_ct()
    side = hu_to_mu(ct.array).sum(axis=2) * ct.spacing[0]  # array (k, j, i): i runs left-right, so sum along it
    side = side[::-1] if ct.direction[8] > 0 else side  # head at the top
    side = np.kron(side, np.ones((int(round(ct.spacing[2] / ct.spacing[1])), 1)))  # square pixels
    return np.round(side / side.max() * 255).astype(np.uint8)


def test_gate_input_letterboxes_any_image_onto_a_square():
    out = gate_input(np.arange(300 * 100, dtype=np.uint16).reshape(300, 100))
    assert out.shape == (GATE_SIZE, GATE_SIZE) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not out[:, :40].any() and out[:, 50:70].any()  # black side bars: the image keeps its aspect
    with pytest.raises(ValueError, match="2-D"):
        gate_input(np.zeros((2, 3, 4)))


def test_input_check_off_means_no_gate():
    assert optional_gate(False) is None and optional_gate("off") is None


def test_the_embedded_sample_film_passes(gate):
    from lungx_core.io.sample import sample_radiograph

    probabilities = gate.check(sample_radiograph())
    assert probabilities["frontal_chest"] >= gate.threshold
    assert abs(sum(probabilities.values()) - 1.0) < 1e-4


@pytest.mark.parametrize(
    "make, looks_like",
    [
        (_ct_slice, "a CT slice"),
        (lambda: 255 - _sample_film_uint8(), "an inverted (negative) film"),
        (_lateral_drr, "a lateral or oblique view"),
    ],
    ids=["ct-slice", "inverted", "lateral"],
)
def test_what_is_not_a_frontal_chest_film_is_refused_with_a_reason(gate, make, looks_like):
    with pytest.raises(InputError) as caught:
        gate.check(_image(make(), "study/x.png"))
    message = str(caught.value)
    assert message.startswith("study/x.png: not a frontal chest radiograph: looks like ")
    assert "\n" not in message
    assert looks_like in message, message


def _sample_film_uint8() -> np.ndarray:
    from lungx_core.io.sample import sample_radiograph

    a = sample_radiograph().array
    return np.round((a - a.min()) / np.ptp(a) * 255).astype(np.uint8)


def test_the_gate_sees_the_film_in_display_orientation(gate):
    """A DICOM stored upside down (PatientOrientation L\\H) is a frontal film once shown the standard way."""
    film = _sample_film_uint8()
    gate.check(_image(film[::-1], "flipped.dcm", patient_orientation=["L", "H"]))


def test_a_volume_is_not_a_radiograph(gate):
    with pytest.raises(InputError, match="not a radiograph"):
        gate.check(MedicalImage(np.zeros((4, 8, 8)), spacing=(1, 1, 1), source="ct.nrrd"))


@pytest.mark.slow
def test_cli_refuses_a_ct_slice_and_keeps_going(tmp_path):
    from test_cli import run_lungx

    Image.fromarray(_ct_slice()).save(tmp_path / "slice.png")
    Image.fromarray(_sample_film_uint8()).save(tmp_path / "film.png")
    out = tmp_path / "out"
    proc = run_lungx("segment", str(tmp_path / "slice.png"), str(tmp_path / "film.png"), "-o", str(out), "-q")
    assert proc.returncode == 1
    with open(out / "results.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert rows["film"]["status"] == "ok"
    assert rows["slice"]["status"] == "error"
    assert "not a frontal chest radiograph: looks like a CT slice" in rows["slice"]["error"]
    assert not list(out.glob("slice*"))  # nothing written for a refused input
    # the same slice goes through when the user turns the check off
    proc = run_lungx("segment", str(tmp_path / "slice.png"), "-o", str(tmp_path / "o2"), "-q", "--no-input-check")
    assert "not a frontal" not in proc.stderr


def test_api_refuses_and_can_be_told_not_to(gate, tmp_path):
    import lungx_core as lx

    Image.fromarray(phantom_radiograph()).save(tmp_path / "phantom.png")
    with pytest.raises(InputError, match="phantom.png: not a frontal chest radiograph"):
        lx.segment(tmp_path / "phantom.png", device="cpu")
    seg = lx.segment(tmp_path / "phantom.png", device="cpu", input_check=False)
    assert seg.masks["lung_left"].shape == (512, 480)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data")
def test_real_frontal_films_pass(gate):
    """A seeded sample of the frontal films of every shared film set (the export checks all 1,041)."""
    from lungx_core.io.readers import read_radiograph

    films = []
    for folder in ("jsrt_scr", "covid_cxr_gb_seg", "covid_cxr_v7labs", "cxr_nih_nofinding_pneumonia",
                   "bs_gusarev_des_samples"):
        films += sorted((SHARED_DATA / folder / "images").glob("*"))
    refused = []
    for path in random.Random(0).sample(films, 80):
        try:
            gate.check(read_radiograph(path))
        except InputError as exc:
            refused.append(str(exc))
    assert not refused, refused
