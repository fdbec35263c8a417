"""The worker process that the Slicer module runs (lungx_core.worker) and the module's process handling
(LungXSlicerLib.process): JSON progress lines, exit codes, manifest, cancel kills the tree, no partial outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import phantom_radiograph
from LungXSlicerLib.process import (
    EXIT_CANCELLED,
    EXIT_INPUT,
    EXIT_OK,
    WorkerProcess,
    format_status,
    parse_line,
    remaining_seconds,
    worker_command,
)

from lungx_core.image import MedicalImage
from lungx_core.io.writers import write_image


def _run_worker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lungx_core.worker", *args], capture_output=True, text=True, timeout=300
    )


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]  # every stdout line is one JSON event


@pytest.fixture
def radiograph_nrrd(tmp_path: Path) -> Path:
    """A one-slice LPS volume as Slicer writes a radiograph node: 0.2 mm pixels, coronal plane."""
    image = MedicalImage(
        phantom_radiograph(256, 240), spacing=(0.2, 0.2, 1.0), origin=(-24.0, 0.0, 25.6),
        direction=(1, 0, 0, 0, 0, 1, 0, -1, 0), spacing_known=True,
    )
    path = tmp_path / "input.nrrd"
    write_image(path, image)
    return path


def test_parse_line():
    assert parse_line('{"event": "progress", "fraction": 0.5, "message": "half"}\n').fraction == 0.5
    assert parse_line('{"event": "done", "manifest": "/x/manifest.json"}').manifest == "/x/manifest.json"
    assert parse_line("Warning: something from a library\n").event == "log"
    assert parse_line('{"no": "event"}').event == "log"
    assert parse_line('["a list"]').event == "log"
    bad = parse_line(b"caf\xe9 \xff".decode("utf-8", errors="replace"))
    assert bad.event == "log" and "caf" in bad.message


def test_status_text_estimates_time_left():
    assert remaining_seconds(10.0, 0.5) == pytest.approx(10.0)
    assert remaining_seconds(1.0, 0.01) is None  # too early to say
    assert "about 30 s left" in format_status("segmenting", 10.0, 0.25)
    assert "left" not in format_status("starting", 1.0, None)


def test_worker_command_options():
    cmd = worker_command("ct-lungs", Path("/in.nrrd"), Path("/out"), "cpu", True, {"method": "classical", "x": 0.5},
                         python="py")
    assert cmd[:3] == ["py", "-m", "lungx_core.worker"]
    assert "--fast" in cmd and "method=classical" in cmd and "x=0.5" in cmd
    assert cmd[cmd.index("--device") + 1] == "cpu"


@pytest.mark.slow
def test_worker_cxr_progress_manifest_and_segmentation(radiograph_nrrd: Path, tmp_path: Path):
    from LungXSlicerLib.geometry import lps_to_ras
    from LungXSlicerLib.results import read_manifest, read_segmentation, table_rows

    out = tmp_path / "out"
    proc = _run_worker("--task", "cxr-anatomy", "--input", str(radiograph_nrrd), "--output-dir", str(out),
                       "--device", "cpu", "--fast", "--option", "input_check=off")  # a phantom
    assert proc.returncode == EXIT_OK, proc.stderr
    events = _events(proc.stdout)
    fractions = [e["fraction"] for e in events if e["event"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["event"] == "done"
    outputs = read_manifest(Path(events[-1]["manifest"]))
    assert outputs.task == "cxr-anatomy" and outputs.device == "cpu"
    assert [p.name for p in outputs.segmentations] == ["input.seg.nrrd"]
    assert outputs.pictures == []  # --fast: no QC picture
    assert 0.2 < outputs.measurements["ctr"] < 0.8
    rows = dict(table_rows(outputs))
    assert rows["qc_flags"] == ("; ".join(outputs.qc_flags) or "none")
    assert rows["ctr"] == f"{outputs.measurements['ctr']:.4g}"
    seg = read_segmentation(outputs.segmentations[0])
    assert [s.segment_id for s in seg.segments] == ["lung_left", "lung_right", "heart", "clavicle_left",
                                                   "clavicle_right"]
    assert all(s.mask_kji.shape == (1, 256, 240) for s in seg.segments)
    assert "SCT^39607008^Lung" in seg.segments[0].terminology and "7771000" in seg.segments[0].terminology
    image = MedicalImage(np.zeros((256, 240)), spacing=(0.2, 0.2, 1.0), origin=(-24.0, 0.0, 25.6),
                         direction=(1, 0, 0, 0, 0, 1, 0, -1, 0))
    np.testing.assert_allclose(seg.ijk_to_ras, lps_to_ras(image.ijk_to_lps()), atol=1e-6)
    assert seg.segments[0].mask_kji.sum() > 1000


def test_worker_bad_input_is_exit_2_with_the_file_named(tmp_path: Path):
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 10 10 10\nencoding: raw\n\n\x00\x01")
    proc = _run_worker("--task", "ct-lungs", "--input", str(bad), "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == EXIT_INPUT
    last = _events(proc.stdout)[-1]
    assert last["event"] == "error" and "broken.nrrd" in last["message"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_worker_wrong_modality_and_unknown_option(radiograph_nrrd: Path, tmp_path: Path):
    proc = _run_worker("--task", "ct-lungs", "--input", str(radiograph_nrrd), "--output-dir", str(tmp_path / "o"))
    assert proc.returncode == EXIT_INPUT
    assert "radiograph goes to the CXR task" in _events(proc.stdout)[-1]["message"]
    proc = _run_worker("--task", "ct-lungs", "--input", str(radiograph_nrrd), "--output-dir", str(tmp_path / "o"),
                       "--option", "colour=red")
    assert proc.returncode == EXIT_INPUT
    assert "no option 'colour'" in _events(proc.stdout)[-1]["message"]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed, waiting to be reaped by init
    except psutil.NoSuchProcess:
        return True


def test_cancel_kills_the_whole_tree(tmp_path: Path):
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = WorkerProcess([sys.executable, "-c", script])
    deadline = time.monotonic() + 30
    child_pid = None
    while child_pid is None and time.monotonic() < deadline:
        for event in proc.poll():
            if event.event == "log" and event.message.isdigit():
                child_pid = int(event.message)
        time.sleep(0.05)
    assert child_pid is not None and psutil.pid_exists(child_pid)
    proc.cancel()
    assert proc.returncode == EXIT_CANCELLED
    time.sleep(0.2)
    assert _gone(proc.pid) and _gone(child_pid)


@pytest.mark.slow
def test_cancelled_ct_worker_leaves_no_outputs_and_a_full_run_reports_progress(tmp_path: Path):
    from lungx_core.io.sample import sample_ct_path

    out = tmp_path / "cancelled"
    proc = WorkerProcess(worker_command("ct-lungs", sample_ct_path(), out, "cpu", python=sys.executable))
    deadline = time.monotonic() + 120
    seen: list = []
    while not any(e.event == "progress" and e.message.startswith("segmenting") for e in seen):
        assert time.monotonic() < deadline and proc.running, proc.stderr_lines
        seen += proc.poll()
        time.sleep(0.02)
    proc.cancel()
    leftovers = [p.name for p in out.glob("*") if not p.name.startswith(".")] if out.exists() else []
    assert leftovers == []  # no manifest, no final-named output: partial writes only ever exist as .*.part files

    out = tmp_path / "full"
    proc = WorkerProcess(worker_command("ct-lungs", sample_ct_path(), out, "cpu", python=sys.executable))
    assert proc.wait(timeout=300) == EXIT_OK, proc.stderr_lines
    events = proc.poll()
    fractions = [e.fraction for e in events if e.event == "progress"]
    assert fractions == sorted(fractions) and len(fractions) >= 5
    assert any("slices" in e.message for e in events)
    assert events[-1].event == "done" and Path(events[-1].manifest).exists()
    manifest = json.loads(Path(events[-1].manifest).read_text())
    assert {o["kind"] for o in manifest["outputs"]} == {"segmentation", "picture"}
    assert manifest["measurements"]["volume_ml_lung"] > 1000


def test_registry_as_json_and_every_runner_resolves():
    import importlib
    import inspect

    proc = subprocess.run([sys.executable, "-m", "lungx_core", "tasks", "--json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    tasks = json.loads(proc.stdout)
    assert {t["name"] for t in tasks} >= {"cxr-anatomy", "ct-lungs"}
    for t in tasks:
        assert t["modality"] in ("CXR", "CT") and t["output_kind"] in ("segmentation", "volume", "markups")
        module_name, _, function_name = t["runner"].partition(":")
        runner = getattr(importlib.import_module(module_name), function_name)
        params = [n for n, p in inspect.signature(runner).parameters.items() if p.kind != p.KEYWORD_ONLY]
        assert params[:5] == ["case", "out_dir", "device", "fast", "progress"]
        # the worker accepts exactly the runner's own options, each described for the front ends (keyword-only
        # parameters are the command line's: output format, QC pictures)
        assert {o["name"] for o in t["options"]} == set(params[5:])
        for o in t["options"]:
            assert o["kind"] in ("str", "int", "float", "choice") and o["help"]
            assert o["kind"] != "choice" or o["default"] in o["choices"]


def test_options_are_typed_and_checked_by_the_registry():
    from lungx_core.tasks.registry import task_info
    from lungx_core.worker import parse_options

    ribs = task_info("cxr-rib-suppression")
    assert parse_options(["steps=10", "mode=inpaint", "seed=3", "strength=0.5"], ribs) == {
        "steps": 10, "mode": "inpaint", "seed": 3, "strength": 0.5}
    with pytest.raises(ValueError, match="option mode: 'blur' is not one of bone, inpaint, inpaint-subtract"):
        parse_options(["mode=blur"], ribs)
    with pytest.raises(ValueError, match="option steps: 'many' is not an integer"):
        parse_options(["steps=many"], ribs)
    with pytest.raises(ValueError, match=r"outside \[1, 1000\]"):
        parse_options(["steps=0"], ribs)
    assert parse_options(["series=3"], task_info("ct-lungs")) == {"series": "3"}  # a series number stays text
    assert parse_options(["threshold=0.4"], task_info("cxr-anatomy")) == {"threshold": 0.4}
