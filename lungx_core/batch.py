"""Run one command's per-case step over many cases: in this process, on an embedded Dask ``LocalCluster``, or on
an existing Dask cluster, with the same step and the same results table either way; resumable.

A step is a picklable callable ``step(case) -> row``: a task's module-level ``run_one`` bound to its options
with :func:`functools.partial`. It loads its models through :func:`lungx_core.models.store.shared_model`, so
each process (this one, or each Dask worker) loads a model once and keeps it. Dask does the scheduling: it
spreads cases over workers, and a case whose worker dies is retried on another (``distributed.scheduler.
allowed-failures`` times) before it is reported as failed. Nothing here schedules by itself.

After a case succeeds, its completion record ``<out>/.lungx_done/<case_id>.json`` (the row, the input and a
fingerprint of the step and its options) is written atomically, after the case's own outputs. ``resume=True``
skips a case whose record matches the same input and step and whose outputs are all present; everything else
runs again. Outputs are written atomically, so a run killed at any moment and resumed ends with the outputs
and results of an uninterrupted run.

Example:
    >>> from functools import partial
    >>> from lungx_core.io.inputs import collect_cases
    >>> from lungx_core.tasks import cxr_segmentation
    >>> step = partial(cxr_segmentation.run_one, out_dir=Path("out"), device="cpu")
    >>> rows = run_cases(collect_cases([Path("films/")]), step, Path("out"), workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from lungx_core.io.inputs import RECORDS_DIR, Case
from lungx_core.tasks.common import error_row

Step = Callable[[Case], dict[str, Any]]
COMMAND_MARKER = ".lungx_command"  # the command whose output folder this is (claim_output)


def by_kind(case: Case, steps: dict[str, Step]) -> dict[str, Any]:
    """Run ``steps[case.kind]``: one batch that mixes radiographs and CTs (bind ``steps`` with partial)."""
    return steps[case.kind or "cxr"](case)


def step_fingerprint(step: Step) -> str:
    """A short hash of what ``step`` does: its function's qualified name and its bound options (nested partials
    included), never memory addresses, so the same command line gives the same fingerprint in every run."""

    def describe(obj: Any) -> Any:
        if isinstance(obj, functools.partial):
            return {"func": describe(obj.func), "args": [describe(a) for a in obj.args],
                    "keywords": {k: describe(v) for k, v in sorted(obj.keywords.items())}}
        if callable(obj):
            return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
        if isinstance(obj, dict):
            return {str(k): describe(v) for k, v in sorted(obj.items())}
        if isinstance(obj, list | tuple):
            return [describe(v) for v in obj]
        if isinstance(obj, Path):
            return str(obj.resolve())
        return obj if isinstance(obj, str | int | float | bool | type(None)) else repr(obj)

    text = json.dumps(describe(step), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_path(out_dir: Path, case_id: str) -> Path:
    return out_dir / RECORDS_DIR / f"{case_id}.json"


def input_signature(case: Case) -> dict[str, Any]:
    """What the case's result depends on besides the step's options: the input (its path, and the size and
    modification time of each of its files) and the mask given with it (its path and a hash of its bytes)."""
    path = case.path
    # a folder case (a CT DICOM series) is read from the files directly in it (io.ct.dicom_files)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    stats = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            stats.append([f.name, None])
            continue
        stats.append([str(f.relative_to(path)) if path.is_dir() else f.name, st.st_size, st.st_mtime_ns])
    signature: dict[str, Any] = {"input": str(path), "files": hashlib.sha256(json.dumps(stats).encode()).hexdigest()}
    if case.mask is not None:
        try:
            digest = hashlib.sha256(case.mask.read_bytes()).hexdigest()
        except OSError:
            digest = None
        signature["mask"] = [str(case.mask), digest]
    return signature


def _completed(case: Case, out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The recorded row of ``case`` when its record is for this input (and mask, same content) and step and its
    outputs all exist."""
    try:
        record = json.loads(record_path(out_dir, case.case_id).read_text())
    except (OSError, ValueError):
        return None
    row = record.get("row", {})
    if (record.get("fingerprint") != fingerprint or record.get("signature") != input_signature(case)
            or row.get("status") != "ok"):
        return None
    outputs = [n for n in str(row.get("outputs", "")).split(";") if n]
    return row if all((out_dir / n).is_file() for n in outputs) else None


def _remove_partials(out_dir: Path) -> None:
    """Delete the temporary files (``.<name>.<random>.part<suffix>``, io.writers.atomic_path) that a killed run
    left mid-write: they were never outputs, and the cases they belonged to run again."""
    for folder in (out_dir, out_dir / RECORDS_DIR):
        for path in folder.glob(".*.part*"):
            if path.is_file():
                path.unlink(missing_ok=True)


def _record(case: Case, out_dir: Path, fingerprint: str, row: dict[str, Any]) -> None:
    from lungx_core.io.writers import write_text_atomic

    path = record_path(out_dir, case.case_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"fingerprint": fingerprint, "input": str(case.path), "signature": input_signature(case), "row": row}
    write_text_atomic(path, json.dumps(record) + "\n")


def claim_output(out_dir: Path, command: str) -> None:
    """Mark ``out_dir`` as the output folder of ``command`` (``<out>/.lungx_command``), or refuse it when it
    already holds another command's run: its results table and completion records would be overwritten."""
    from lungx_core.io.writers import write_text_atomic

    marker = out_dir / COMMAND_MARKER
    try:
        owner = marker.read_text().strip()
    except OSError:
        owner = ""
    if owner and owner != command:
        raise RuntimeError(f"{out_dir} holds the results of `lungx {owner}`; give `lungx {command}` another output "
                           "folder (-o), so that neither run's results.csv and records are overwritten")
    if not owner:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, command + "\n")


def run_cases(
    cases: list[Case],
    step: Step,
    out_dir: Path,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    fingerprint: str | None = None,
    command: str | None = None,
    overlap: int = 1,
) -> list[dict[str, Any]]:
    """Run ``step`` on every case; return the rows in the order of ``cases``.

    Args:
        cases: the inputs (``collect_cases``); a case's ``case_id`` names its outputs and its record.
        step: picklable ``step(case) -> row`` that never raises for a bad input (tasks' ``run_one``).
        out_dir: where the step writes; the completion records go to ``out_dir/.lungx_done``.
        workers: 1 runs here, in this process; N > 1 starts an embedded Dask ``LocalCluster`` of N worker
            processes (one thread each) for this run.
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``); its workers must see
            ``out_dir`` and the inputs at the same paths. Overrides ``workers``.
        resume: skip cases already completed by an earlier run of the same step (see the module docstring).
        on_row: called with each row as it completes (skipped cases first), for progress bars and periodic
            results tables.
        fingerprint: what makes this run's outputs what they are, for ``resume`` (default
            :func:`step_fingerprint` of ``step``); a caller that wraps a step (timing, instrumentation) passes
            the inner step's.
        command: the command this run belongs to (``segment``, ``classify``, ...): ``out_dir`` is refused when
            it holds another command's run (:func:`claim_output`).
        overlap: in this process (``workers`` 1, no scheduler), how many cases are in flight at once, each in
            its own thread, so one film is read and written while another is computed (numpy, torch, zlib and
            Pillow release the GIL). Only for steps that are thread-safe: models shared read-only, no global
            random state (the ``segment`` command's radiograph step; measured in benchmarks/bench_cxr_segment.py).

    Returns:
        One row per case; a case that failed anywhere (bad input, a worker that died too often) is an error
        row naming the input and the problem.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if command is not None:
        claim_output(out_dir, command)
    # a Dask worker may run in another working directory, or on another machine: paths travel absolute
    cases = [replace(c, path=c.path.absolute(), mask=None if c.mask is None else c.mask.absolute()) for c in cases]
    fingerprint = fingerprint or step_fingerprint(step)
    if resume:
        _remove_partials(out_dir)
    rows: list[dict[str, Any] | None] = [None] * len(cases)
    todo: list[int] = []
    for i, case in enumerate(cases):
        done = _completed(case, out_dir, fingerprint) if resume else None
        if done is not None:
            rows[i] = done
            if on_row:
                on_row(done)
        else:
            todo.append(i)
    results = _local(cases, todo, step, overlap) if scheduler is None and workers <= 1 else _dask(
        cases, todo, step, workers, scheduler, out_dir.absolute())
    for i, row in results:
        if row.get("status") == "ok":
            _record(cases[i], out_dir, fingerprint, row)  # last: the outputs are already complete
        rows[i] = row
        if on_row:
            on_row(row)
    return [r for r in rows if r is not None]


def _local(cases: list[Case], todo: list[int], step: Step, overlap: int = 1) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows in this process, in the order of ``todo``: one case after another, or ``overlap`` cases running at
    once in threads (one more queued, so a thread never waits for the next case to be handed over)."""
    if overlap <= 1:
        for i in todo:
            yield i, step(cases[i])
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    queue = iter(todo)
    with _shared_intra_op_threads(overlap), ThreadPoolExecutor(overlap, thread_name_prefix="lungx-case") as pool:
        pending = deque((i, pool.submit(step, cases[i])) for i in itertools.islice(queue, overlap + 1))
        while pending:
            i, future = pending.popleft()
            row = future.result()  # the oldest case: rows, errors and progress keep the input order
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(step, cases[following])))
            yield i, row


@contextmanager
def _shared_intra_op_threads(cases_in_flight: int):
    """While ``cases_in_flight`` cases run in threads, torch's intra-op pool is split between them (restored
    after): two films each calling the networks on every core oversubscribe them (512-px films, 2 cores: 14.5
    films/s with 2 threads each, 16.2 with 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, before // cases_in_flight))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _missing_paths(paths: list[str]) -> list[str]:
    """Run on a Dask worker: which of ``paths`` it cannot see (the first one, the output folder, must also be
    writable)."""
    missing = [p for p in paths if not os.path.exists(p)]
    if paths and paths[0] not in missing and not os.access(paths[0], os.W_OK):
        missing.insert(0, paths[0])
    return missing


def _not_visible_on_workers(client: Any, out_dir: Path, cases: list[Case]) -> dict[Path, list[str]]:
    """Ask every worker of ``client`` whether it sees ``out_dir`` (writable) and each case's input and mask.
    Raises RuntimeError naming the worker when the output folder is not there; returns the inputs some worker
    cannot see, with those workers' addresses."""
    paths = [str(out_dir)] + [str(p) for c in cases for p in (c.path, c.mask) if p is not None]
    hidden: dict[Path, list[str]] = {}
    for address, missing in sorted(client.run(_missing_paths, paths).items()):
        if str(out_dir) in missing:
            raise RuntimeError(f"Dask worker {address} cannot write to the output folder {out_dir}: the workers "
                               "must see inputs and outputs at the same paths as this machine (a shared file "
                               "system)")
        gone = set(missing)
        for c in cases:
            if str(c.path) in gone or (c.mask is not None and str(c.mask) in gone):
                hidden.setdefault(c.path, []).append(address)
    return hidden


def _dask(
    cases: list[Case], todo: list[int], step: Step, workers: int, scheduler: str | None, out_dir: Path
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows as Dask workers complete them; the client (and an embedded cluster) closes when the run ends."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise RuntimeError(
            "--workers/--scheduler need Dask distributed: pip install 'lungx-core[batch]'"
        ) from None
    if scheduler is not None:
        client, cluster = Client(scheduler), None
    else:
        import dask

        # One thread per worker process: torch and the image libraries get the process's cores to themselves.
        # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (memory back to the OS sooner); any value turns
        # off glibc's adaptive mmap threshold, so every image-sized array becomes a fresh mmap and its pages fault
        # in again: 97 -> 159 ms per 512-px film on one core. Our workers keep glibc's default.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        if not todo:
            return
        if scheduler is not None:  # an existing cluster's workers may not share this machine's file system
            hidden = _not_visible_on_workers(client, out_dir, [cases[i] for i in todo])
            for i in [i for i in todo if cases[i].path in hidden]:
                workers_text = ", ".join(hidden[cases[i].path])
                yield i, error_row(cases[i], f"{cases[i].path}: not visible on Dask worker(s) {workers_text}; the "
                                             "workers must see the inputs at the same paths as this machine")
            todo = [i for i in todo if cases[i].path not in hidden]
            if not todo:
                return
        futures = client.map(step, [cases[i] for i in todo], pure=False)
        where = {f.key: i for f, i in zip(futures, todo, strict=True)}
        for future in as_completed(futures):
            i = where[future.key]
            try:
                row = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: this case's workers kept dying
                case = cases[i]
                row = error_row(case, f"{case.path}: failed on the Dask cluster ({type(exc).__name__}: "
                                      f"{str(exc)[:160]})")
            future.release()
            yield i, row
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
