"""The public Python API (``import lungx_core as lx``): cheap import, one call per task, results that save the
CLI's files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import lungx_core as lx


@pytest.fixture(scope="module")
def film():
    from lungx_core.io.sample import sample_radiograph

    return sample_radiograph()


def test_import_is_cheap_and_lazy():
    code = ("import sys, time; t = time.perf_counter(); import lungx_core as lx; dt = time.perf_counter() - t; "
            "print(dt, 'torch' in sys.modules, 'monai' in sys.modules, 'lungx_core.api' in sys.modules)")
    seconds, torch_loaded, monai_loaded, api_loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert (torch_loaded, monai_loaded, api_loaded) == ("False", "False", "False")
    assert float(seconds) < 0.5


def test_public_names_resolve():
    for name in lx.__all__:
        assert getattr(lx, name) is not None, name
    assert {"segment", "read_image", "suppress_ribs", "remove_opacity", "synthesize", "classify"} <= set(dir(lx))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lx.nope  # noqa: B018


def test_read_image_picks_radiograph_or_ct(tmp_path, film):
    from lungx_core.io.sample import sample_ct
    from lungx_core.io.writers import write_image

    Image.fromarray((np.arange(80 * 70).reshape(80, 70) // 30).astype(np.uint8)).save(tmp_path / "film.png")
    assert lx.read_image(tmp_path / "film.png").array.shape == (80, 70)
    write_image(tmp_path / "ct.nrrd", sample_ct())
    ct = lx.read_image(tmp_path / "ct.nrrd")
    assert ct.array.ndim == 3 and ct.modality == "CT"
    with pytest.raises(lx.InputError, match="no such file"):
        lx.read_image(tmp_path / "missing.dcm")


def test_segment_a_radiograph_and_save_the_cli_files(tmp_path, film):
    seg = lx.segment(film, device="cpu")
    assert seg.task == "cxr-anatomy" and seg.output is None
    assert list(seg.masks) == ["lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"]
    assert all(m.shape == film.array.shape and m.dtype == bool for m in seg.masks.values())
    assert 0.3 < seg.measurements["ctr"] < 0.6
    assert seg.measurements["area_px_lung_left"] == int(seg.masks["lung_left"].sum())
    assert "ap_view_ctr_magnified" in seg.qc_flags  # the sample is an AP projection
    written = seg.save(tmp_path / "out", case_id="film")
    assert [p.name for p in written] == ["film.seg.nrrd", "film_overlay.png"]
    assert all(p.exists() for p in written)


def test_models_load_once_per_setting(film):
    from lungx_core.models.store import shared_model

    lx.segment(film, device="cpu")
    before = shared_model.cache_info()
    lx.segment(film, device="cpu")
    after = shared_model.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 3  # the segmenter, the gate, the mirror check


def test_bad_arguments_are_clear(film):
    with pytest.raises(TypeError, match="MedicalImage or a path"):
        lx.segment(42)
    with pytest.raises(lx.InputError, match="lung mask has shape"):
        lx.synthesize(film, lung_mask=np.ones((3, 3), bool), device="cpu")
    with pytest.raises(lx.InputError, match="radiograph is needed"):
        lx.suppress_ribs(lx.MedicalImage(np.zeros((3, 8, 8)), spacing=(1, 1, 1)), input_check=False)


def test_classify_has_nothing_to_save(film):
    result = lx.classify(film, device="cpu")
    assert 0.0 <= result.measurements["pathology_probability"] <= 1.0
    assert result.measurements["pathological"] in (0, 1)
    assert result.masks["lung"].shape == film.array.shape
    with pytest.raises(ValueError, match="no files to write"):
        result.save("unused")


@pytest.mark.slow
def test_image_tasks_return_an_image_on_the_input_grid(tmp_path, film):
    lung = lx.lung_fields(film, device="cpu")
    synthetic = lx.synthesize(film, lung_mask=lung, device="cpu")
    assert synthetic.output.array.shape == film.array.shape and synthetic.output.spacing == film.spacing
    assert np.array_equal(synthetic.masks["lung"], lung)
    cleared = lx.remove_opacity(film, lung_mask=lung, device="cpu")
    changed = cleared.output.array != film.array
    assert not changed[~cleared.masks["opacity"]].any()  # nothing changes outside the activation mask
    assert cleared.measurements["changed_fraction"] == pytest.approx(changed.mean(), abs=1e-4)
    names = [p.name for p in synthetic.save(tmp_path, "s")]
    assert names[0].startswith("s_synthetic") and "s_synthetic.seg.nrrd" in names


@pytest.mark.slow
def test_segment_a_ct():
    from lungx_core.io.sample import sample_ct

    ct = sample_ct()
    seg = lx.segment(ct, device="cpu")
    assert seg.task == "ct-lungs"
    assert list(seg.masks) == ["lung_right", "lung_left"]
    assert seg.masks["lung_right"].shape == ct.array.shape
    assert 1000 < seg.measurements["volume_ml_lung"] < 8000


@pytest.mark.slow
def test_the_embedded_samples_save_under_their_own_names(tmp_path):
    """The DRR is rendered from the sample CT; saving both into one folder must not overwrite either."""
    from lungx_core.io.sample import sample_ct, sample_radiograph

    written = [p.name for image in (sample_radiograph(), sample_ct())
               for p in lx.segment(image, device="cpu").save(tmp_path)]
    assert "sample_drr.seg.nrrd" in written and "CTChest4.seg.nrrd" in written
    assert len(set(written)) == len(written)
