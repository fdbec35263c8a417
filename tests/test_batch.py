"""Batch runs (lungx_core.batch): Dask workers give the single-process results, a killed run resumes to the
same outputs, bad inputs and dying workers do not stop the others."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from conftest import phantom_radiograph
from PIL import Image

from lungx_core.batch import record_path, run_cases, step_fingerprint
from lungx_core.io.inputs import Case, collect_cases
from lungx_core.tasks import cxr_segmentation

# per-case timings differ between runs; everything else in a row must not
TIMING = {"seconds"}


def _films(folder: Path, n: int = 4, broken: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(phantom_radiograph(96 + 8 * i, 96)).save(folder / f"film{i}.png")
    if broken:
        (folder / "broken.png").write_bytes(b"not a png")
    return folder


def _step(out: Path):
    return partial(cxr_segmentation.run_one, out_dir=out, device="cpu", input_check="off")


def _rows(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _files(out: Path) -> dict[str, bytes]:
    """Every output's bytes, less the time stamp that pynrrd writes into each .nrrd header."""
    return {p.name: re.sub(rb"\n# on [^\n]*\(GMT\)\.\n", b"\n", p.read_bytes())
            for p in sorted(out.iterdir()) if p.is_file() and p.name != "results.csv"}


def _counting_step(case, calls: list[str], inner, stop_after: int | None = None):
    calls.append(case.case_id)
    if stop_after is not None and len(calls) > stop_after:
        raise KeyboardInterrupt  # a run killed between cases
    return inner(case)


def test_local_run_records_each_good_case_and_lists_the_broken_one(tmp_path):
    films = _films(tmp_path / "in")
    out = tmp_path / "out"
    rows = run_cases(collect_cases([films]), _step(out), out)
    assert [r["case_id"] for r in rows] == ["broken", "film0", "film1", "film2", "film3"]
    assert rows[0]["status"] == "error" and "broken.png" in rows[0]["error"]
    assert all(r["status"] == "ok" for r in rows[1:])
    assert not record_path(out, "broken").exists()  # a failed case is tried again on resume
    assert all(record_path(out, f"film{i}").is_file() for i in range(4))


def test_overlapped_cases_give_the_rows_and_files_of_one_case_after_another(tmp_path):
    """Issue 38: ``overlap`` keeps two films in flight in threads; the outputs must not change, and two cases
    must really run at once."""
    import threading

    films = _films(tmp_path / "in", n=5)
    in_flight, most = [0], [0]
    lock = threading.Lock()

    import torch

    threads_before, threads_seen = torch.get_num_threads(), set()

    def watched(case, inner):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            threads_seen.add(torch.get_num_threads())
        try:
            time.sleep(0.05)  # long enough for the other thread to start its case
            return inner(case)
        finally:
            with lock:
                in_flight[0] -= 1

    one = run_cases(collect_cases([films]), _step(tmp_path / "one"), tmp_path / "one")
    two = run_cases(collect_cases([films]), partial(watched, inner=_step(tmp_path / "two")), tmp_path / "two",
                    overlap=2, fingerprint="same step")
    assert most[0] == 2
    # the two cases share torch's intra-op threads instead of each asking for all of them; restored after
    assert threads_seen == {max(1, threads_before // 2)} and torch.get_num_threads() == threads_before
    assert _rows(two) == _rows(one)  # in the order of the cases, whatever order they finished in
    assert _files(tmp_path / "two") == _files(tmp_path / "one")


def test_resume_after_an_interrupted_run_gives_the_uninterrupted_outputs(tmp_path):
    films = _films(tmp_path / "in")
    whole = tmp_path / "whole"
    expected = run_cases(collect_cases([films]), _step(whole), whole)

    out = tmp_path / "out"
    calls: list[str] = []
    same = step_fingerprint(_step(out))  # the counting wrapper runs the same step
    with pytest.raises(KeyboardInterrupt):
        run_cases(collect_cases([films]), partial(_counting_step, calls=calls, inner=_step(out), stop_after=3), out,
                  fingerprint=same)
    assert len(calls) == 4  # three cases done, the fourth interrupted
    resumed_calls: list[str] = []
    rows = run_cases(collect_cases([films]), partial(_counting_step, calls=resumed_calls, inner=_step(out)), out,
                     resume=True, fingerprint=same)
    # the broken file is tried again (it has no record); the two good finished films are not
    assert resumed_calls == ["broken", "film2", "film3"]
    assert _rows(rows) == _rows(expected)
    assert _files(out) == _files(whole)


def test_resume_reruns_a_case_whose_outputs_or_options_changed(tmp_path):
    films = _films(tmp_path / "in", n=2, broken=False)
    out = tmp_path / "out"
    run_cases(collect_cases([films]), _step(out), out)
    (out / "film0_overlay.png").unlink()  # an output lost after its record was written
    calls: list[str] = []
    run_cases(collect_cases([films]), partial(_counting_step, calls=calls, inner=_step(out)), out, resume=True,
              fingerprint=step_fingerprint(_step(out)))
    assert calls == ["film0"] and (out / "film0_overlay.png").is_file()
    # other options: other outputs, so nothing of the earlier run counts as done
    calls.clear()
    other = partial(_step(out), threshold=0.6)
    run_cases(collect_cases([films]), partial(_counting_step, calls=calls, inner=other), out, resume=True,
              fingerprint=step_fingerprint(other))
    assert calls == ["film0", "film1"]


def test_step_fingerprint_is_stable_and_tells_options_apart(tmp_path):
    a = _step(tmp_path)
    assert step_fingerprint(a) == step_fingerprint(_step(tmp_path))
    assert step_fingerprint(a) != step_fingerprint(partial(a, threshold=0.6))
    assert step_fingerprint(a) != step_fingerprint(_step(tmp_path / "elsewhere"))


def _die_once(case, marker: Path, inner):
    """Kill this worker process the first time any worker reaches ``case`` film1 (Dask retries it elsewhere)."""
    if case.case_id == "film1" and not marker.exists():
        marker.write_text("died")
        os._exit(1)
    return inner(case)


@pytest.mark.slow
def test_dask_local_cluster_gives_the_single_process_results(tmp_path):
    pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    films = _films(tmp_path / "in")
    single = tmp_path / "single"
    expected = run_cases(collect_cases([films]), _step(single), single)
    out = tmp_path / "dask"
    marker = tmp_path / "died"
    seen: list[str] = []
    rows = run_cases(collect_cases([films]), partial(_die_once, marker=marker, inner=_step(out)), out, workers=2,
                     on_row=lambda row: seen.append(row["case_id"]))
    assert marker.exists()  # a worker did die on film1, and its case was retried on a fresh one
    assert sorted(seen) == sorted(r["case_id"] for r in expected)
    assert _rows(rows) == _rows(expected)  # same rows in the same (input) order; the broken film an error row
    assert _files(out) == _files(single)


def _environment_row(case):
    return {"case_id": case.case_id, "status": "ok", "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_", ""),
            "omp_threads": os.environ.get("OMP_NUM_THREADS", "")}


@pytest.mark.slow
def test_embedded_dask_workers_keep_glibcs_adaptive_malloc(tmp_path):
    """Dask's default MALLOC_TRIM_THRESHOLD_ makes every image-sized array a fresh mmap (97 -> 159 ms per film):
    the embedded cluster's workers start without it, and keep Dask's other settings (one OpenMP thread)."""
    pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    cases = [Case(f"case{i}", tmp_path / f"case{i}.png") for i in range(4)]
    rows = run_cases(cases, _environment_row, tmp_path / "out", workers=2)
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert all(r["malloc_trim"] == "" and r["omp_threads"] == "1" for r in rows), rows


@pytest.mark.slow
def test_cli_run_killed_midway_resumes_to_the_uninterrupted_outputs(tmp_path):
    films = _films(tmp_path / "in", n=6)
    lungx = [sys.executable, "-m", "lungx_core", "segment", str(films), "-q", "--no-input-check"]
    whole = tmp_path / "whole"
    subprocess.run([*lungx, "-o", str(whole)], capture_output=True, timeout=300)
    out = tmp_path / "out"
    proc = subprocess.Popen([*lungx, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not record_path(out, "film1").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind
    proc.wait()
    assert not record_path(out, "film5").exists()
    done = subprocess.run([*lungx, "-o", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "broken.png" in done.stderr  # the broken film is still reported

    def table(folder: Path) -> list[dict]:
        with open(folder / "results.csv", newline="") as f:
            return _rows(list(csv.DictReader(f)))

    assert table(out) == table(whole)
    assert _files(out) == _files(whole)


@pytest.mark.slow
def test_run_on_an_existing_dask_scheduler(tmp_path):
    """--scheduler: the cases go to a cluster that someone else started (here a LocalCluster with its own
    scheduler address), and the client leaves that cluster running."""
    distributed = pytest.importorskip("distributed")
    films = _films(tmp_path / "in", n=2)
    single = tmp_path / "single"
    expected = run_cases(collect_cases([films]), _step(single), single)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = tmp_path / "remote"
        rows = run_cases(collect_cases([films]), _step(out), out, scheduler=cluster.scheduler_address)
        assert _rows(rows) == _rows(expected) and _files(out) == _files(single)
        assert len(cluster.scheduler_info["workers"]) == 1  # still up for its owner
