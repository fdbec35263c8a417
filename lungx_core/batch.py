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
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lungx_core.io.inputs import Case
from lungx_core.tasks.common import error_row

Step = Callable[[Case], dict[str, Any]]
RECORDS_DIR = ".lungx_done"


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


def _completed(case: Case, out_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The recorded row of ``case`` when its record is for this input and step and its outputs all exist."""
    try:
        record = json.loads(record_path(out_dir, case.case_id).read_text())
    except (OSError, ValueError):
        return None
    row = record.get("row", {})
    if record.get("fingerprint") != fingerprint or record.get("input") != str(case.path) or row.get("status") != "ok":
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
    write_text_atomic(path, json.dumps({"fingerprint": fingerprint, "input": str(case.path), "row": row}) + "\n")


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

    Returns:
        One row per case; a case that failed anywhere (bad input, a worker that died too often) is an error
        row naming the input and the problem.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
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
    results = _local(cases, todo, step) if scheduler is None and workers <= 1 else _dask(
        cases, todo, step, workers, scheduler)
    for i, row in results:
        if row.get("status") == "ok":
            _record(cases[i], out_dir, fingerprint, row)  # last: the outputs are already complete
        rows[i] = row
        if on_row:
            on_row(row)
    return [r for r in rows if r is not None]


def _local(cases: list[Case], todo: list[int], step: Step) -> Iterator[tuple[int, dict[str, Any]]]:
    for i in todo:
        yield i, step(cases[i])


def _dask(
    cases: list[Case], todo: list[int], step: Step, workers: int, scheduler: str | None
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
        # one thread per worker process: torch and the image libraries get the process's cores to themselves
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
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
