"""The ONNX Runtime backend gives the torch backend's masks, exports once per weights file, and the CLI takes it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LUNGX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not (a.any() or b.any()) else 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_cxr_onnx_masks_equal_torch_masks(cache):
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    image = sample_radiograph()
    torch_masks = CXRSegmenter("cxr_anatomy", "cpu", None, "torch").segment(image).masks
    onnx_segmenter = CXRSegmenter("cxr_anatomy", "cpu", None, "onnx")
    onnx_masks = onnx_segmenter.segment(image).masks
    # both networks (the anatomy network and its clavicle band network) cached by their weights' hash
    assert sorted(p.name for p in cache.iterdir()) == [onnx_segmenter.net.path.name,
                                                       onnx_segmenter.refiner.net.path.name]
    assert onnx_segmenter.net.path.name.startswith("cxr_anatomy-")
    assert onnx_segmenter.refiner.net.path.name.startswith("cxr_clavicles-")
    assert torch_masks["lung_left"].any() and torch_masks["lung_right"].any()
    for name, mask in torch_masks.items():
        assert _dice(mask, onnx_masks[name]) >= 0.999, name
    mtime = onnx_segmenter.net.path.stat().st_mtime_ns
    CXRSegmenter("cxr_anatomy", "cpu", None, "onnx")  # a second load reuses the export
    assert onnx_segmenter.net.path.stat().st_mtime_ns == mtime


def test_a_cached_onnx_network_needs_no_torch_network(cache, monkeypatch):
    """Once exported, the ONNX twin loads without building the torch network (a CT run then imports no MONAI)."""
    from lungx_core.models import store

    first, _ = store.load_model("ct_lungs", "cpu", "onnx")

    def no_torch(*args, **kwargs):
        raise AssertionError("the torch network was built although its ONNX file is cached")

    monkeypatch.setattr(store, "_torch_network", no_torch)
    again, config = store.load_model("ct_lungs", "cpu", "onnx")
    assert again.path == first.path and config["classes"] == ["lung_right", "lung_left"]
    (cache / first.path.name).unlink()
    with pytest.raises(AssertionError, match="torch network was built"):  # no file: the export needs it
        store.load_model("ct_lungs", "cpu", "onnx")


def test_onnx_threads_do_not_spin_between_calls(cache):
    """Issue 38: spinning onnxruntime threads took the 2 cores the rest of the pipeline needed (CXR end to end
    6.7 images/s against 11.3 without spinning; README)."""
    from lungx_core.models.store import load_model

    net, _ = load_model("cxr_anatomy", "cpu", backend="onnx")
    options = net.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_ct_onnx_labels_equal_torch_labels(cache):
    from lungx_core.io.sample import sample_ct
    from lungx_core.tasks.ct_lungs import CTLungSegmenter

    image = sample_ct()
    a = CTLungSegmenter("net", "ct_lungs", "cpu", backend="torch").segment(image).labels
    b = CTLungSegmenter("net", "ct_lungs", "cpu", backend="onnx").segment(image).labels
    for label in (1, 2):
        assert (a == label).any() and _dice(a == label, b == label) >= 0.999


def test_unknown_backend_is_refused():
    from lungx_core.models.store import load_model

    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        load_model("cxr_anatomy", "cpu", backend="tensorrt")


def test_cli_segment_with_onnx_backend_writes_the_torch_results(cache, tmp_path):
    import csv

    from typer.testing import CliRunner

    from lungx_core import cli

    tables = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        result = CliRunner().invoke(cli.app, ["segment", "--sample", "--task", "cxr-anatomy", "-o", str(out), "-q",
                                              "--backend", backend])
        assert result.exit_code == 0, result.output
        with open(out / "results.csv", newline="") as f:
            tables[backend] = [{k: v for k, v in r.items() if k != "input" and not k.startswith("confidence")}
                               for r in csv.DictReader(f)]
    torch_row, onnx_row = tables["torch"][0], tables["onnx"][0]
    assert torch_row["status"] == "ok" and torch_row.keys() == onnx_row.keys()
    for key in torch_row:  # float rounding may flip a pixel sitting on the threshold, no more
        if key.startswith("area_"):
            assert float(onnx_row[key]) == pytest.approx(float(torch_row[key]), rel=1e-3), key
        else:
            assert onnx_row[key] == torch_row[key], key


def test_auto_backend_is_onnx_runtime_on_cpu_where_installed_else_torch(cache, monkeypatch):
    """`lungx segment`'s default (and the API's): ONNX Runtime on CPU, the same masks faster (README); torch where
    the fast extra is missing, on a GPU, and where the export cache cannot be written (with a warning)."""
    import importlib.util

    from lungx_core.models import store

    assert store.auto_backend("cpu") == "onnx"
    net, _ = store.load_model("ct_lungs", "cpu", "auto")
    assert net.path.parent == cache  # exported and cached like --backend onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert store.auto_backend("cpu") == "torch"
    net, _ = store.load_model("ct_lungs", "cpu", "auto")
    assert hasattr(net, "parameters")  # the torch module itself
    monkeypatch.undo()
    import torch

    monkeypatch.setattr(store, "resolve_device", lambda device: torch.device("cuda"))  # a GPU keeps torch
    assert store.auto_backend("auto") == "torch"
    monkeypatch.undo()

    blocker = cache.parent.parent / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("LUNGX_CACHE_DIR", str(blocker))  # the cache folder cannot be made
    with pytest.warns(UserWarning, match="ONNX Runtime not usable here"):
        net, _ = store.load_model("cxr_anatomy", "cpu", "auto")
    assert hasattr(net, "parameters")


def test_cli_segment_defaults_to_auto_with_the_torch_labels_on_a_ct(cache, tmp_path):
    """The default backend gives the CT labels of --backend torch voxel for voxel (the sample CT; every shared CT
    in benchmarks/bench_backends.py)."""
    import slicerio
    from typer.testing import CliRunner

    from lungx_core import cli
    from lungx_core.models.store import shared_model

    shared_model.cache_clear()  # a CT segmenter an earlier test loaded would not export into this cache
    voxels = {}
    for extra in ([], ["--backend", "torch"]):
        out = tmp_path / ("default" if not extra else "torch")
        result = CliRunner().invoke(cli.app, ["segment", "--sample", "--task", "ct-lungs", "-o", str(out), "-q",
                                              *extra])
        assert result.exit_code == 0, result.output
        voxels[out.name] = slicerio.read_segmentation(str(out / "sample_ct.seg.nrrd"))["voxels"]
    assert any(p.name.startswith("ct_lungs-") for p in cache.iterdir())  # the default ran ONNX Runtime
    assert voxels["default"].any() and np.array_equal(voxels["default"], voxels["torch"])
