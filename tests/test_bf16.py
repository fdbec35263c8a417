"""The bfloat16 backend (issue 38): the CT network in bf16 keeps the lungs of float32, radiographs stay float32
through the CLI, and a CPU that would only emulate bf16 is refused with a one-line reason."""

from __future__ import annotations

import numpy as np
import pytest


def _native() -> bool:
    from lungx_core.models.bf16 import native_bf16

    return native_bf16("cpu")


needs_bf16 = pytest.mark.skipif(not _native(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 1.0 if not (a.any() or b.any()) else 2.0 * (a & b).sum() / (a.sum() + b.sum())


@needs_bf16
def test_ct_bf16_labels_agree_with_float32():
    import torch

    from lungx_core.io.sample import sample_ct
    from lungx_core.models.store import load_model
    from lungx_core.tasks.ct_lungs import CTLungSegmenter

    net, _ = load_model("ct_lungs", "cpu", backend="bf16")
    with torch.inference_mode():
        assert net(torch.zeros(2, 1, 64, 64)).dtype == torch.float32  # callers get float32 logits
    image = sample_ct()
    a = CTLungSegmenter("net", "ct_lungs", "cpu", backend="torch").segment(image)
    b = CTLungSegmenter("net", "ct_lungs", "cpu", backend="bf16").segment(image)
    assert not np.array_equal(a.labels, b.labels)  # it is another computation, not float32 under a new name
    for label in (1, 2):
        assert (a.labels == label).any() and _dice(a.labels == label, b.labels == label) >= 0.995
    for name, ml in a.volumes_ml.items():
        assert b.volumes_ml[name] == pytest.approx(ml, rel=0.005)


def test_a_cpu_without_native_bf16_is_refused(monkeypatch):
    from lungx_core.models import bf16
    from lungx_core.models.store import load_model

    monkeypatch.setattr(bf16, "native_bf16", lambda device: False)
    with pytest.raises(ValueError, match="needs a GPU or a CPU with AVX512-BF16 or AMX"):
        load_model("ct_lungs", "cpu", backend="bf16")


def test_the_cli_refuses_bf16_before_any_case_runs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lungx_core import cli
    from lungx_core.models import bf16

    monkeypatch.setattr(bf16, "native_bf16", lambda device: False)
    result = CliRunner().invoke(cli.app, ["segment", "--sample", "--backend", "bf16", "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "AVX512-BF16" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out" / "results.csv").exists()  # nothing ran


@needs_bf16
def test_cli_bf16_runs_the_ct_in_bf16_and_keeps_radiographs_in_float32(tmp_path):
    import SimpleITK as sitk
    from typer.testing import CliRunner

    from lungx_core import cli

    labels = {}
    for backend in ("torch", "bf16"):
        out = tmp_path / backend
        result = CliRunner().invoke(cli.app, ["segment", "--sample", "-o", str(out), "-q", "--no-overlay",
                                              "--backend", backend])
        assert result.exit_code == 0, result.output
        labels[backend] = {case: sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.seg.nrrd")))
                           for case in ("sample_drr", "sample_ct")}
    np.testing.assert_array_equal(labels["bf16"]["sample_drr"], labels["torch"]["sample_drr"])
    assert not np.array_equal(labels["bf16"]["sample_ct"], labels["torch"]["sample_ct"])
