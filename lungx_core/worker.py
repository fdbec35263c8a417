"""Run one task on one input file in its own process, reporting progress as JSON lines on stdout.

Front ends that must stay responsive and cancellable (the 3D Slicer module) start::

    python -m lungx_core.worker --task ct-lungs --input in.nrrd --output-dir OUT [--device cpu] [--fast]
                                [--option method=classical ...]

and read one JSON object per stdout line:

- ``{"event": "progress", "fraction": 0.4, "message": "segmenting slices 64/160"}``
- ``{"event": "done", "manifest": "OUT/manifest.json"}`` (last line on success)
- ``{"event": "error", "message": "in.nrrd: not a CT volume ..."}`` (last line on failure)

Exit codes: 0 done, 2 bad input or options, 3 internal error, 130 interrupted. Every output file, the manifest
last, is written atomically, so a worker killed at any moment leaves no partial file and no manifest.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from lungx_core.tasks.registry import TaskInfo

EXIT_OK, EXIT_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 2, 3, 130
MANIFEST_NAME = "manifest.json"
# result columns that describe the run rather than measure the image
_ROW_BOOKKEEPING = {"case_id", "input", "task", "status", "error", "qc_flags", "outputs"}


class Reporter:
    """Writes the JSON event lines (nowhere when ``stream`` is None); flushes each one so the reader sees
    progress as it happens."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream

    def emit(self, event: str, **fields: Any) -> None:
        if self.stream is None:
            return
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()

    def progress(self, fraction: float, message: str) -> None:
        self.emit("progress", fraction=round(min(max(float(fraction), 0.0), 1.0), 4), message=message)


def output_kind(name: str) -> str:
    """How a front end should show an output file: segmentation, markups (a Slicer point list), table (CSV),
    volume or picture."""
    if name.endswith(".seg.nrrd"):
        return "segmentation"
    if name.endswith(".mrk.json"):
        return "markups"
    if name.endswith(".csv"):
        return "table"
    if name.endswith(".png"):
        return "picture"
    return "volume"


def parse_options(pairs: list[str], task: TaskInfo) -> dict[str, Any]:
    """``key=value`` pairs, each checked and typed by the task's registered option (ValueError otherwise)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"option {pair!r} is not key=value")
        options[key] = task.option(key).parse(value, task.name)
    return options


def build_manifest(task: str, row: dict[str, Any], out_dir: Path, seconds: float, device: str) -> dict[str, Any]:
    names = [n for n in str(row.get("outputs", "")).split(";") if n]
    return {
        "task": task,
        "input": row.get("input", ""),
        "device": device,
        "seconds": round(seconds, 2),
        "outputs": [{"kind": output_kind(n), "path": str(out_dir / n)} for n in names],
        "qc_flags": [f for f in str(row.get("qc_flags", "")).split(";") if f],
        "measurements": {k: v for k, v in row.items() if k not in _ROW_BOOKKEEPING and v != ""},
    }


def run(
    task: str,
    input_path: Path,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    options: dict[str, Any] | None = None,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Run ``task`` on one file and write its outputs and ``manifest.json`` into ``out_dir``; returns the manifest.

    Raises :class:`lungx_core.errors.LungXError` for a bad input (the message names the file and the problem).
    """
    from lungx_core.errors import LungXError
    from lungx_core.io.inputs import Case, case_id_of
    from lungx_core.io.writers import write_text_atomic
    from lungx_core.models.store import resolve_device
    from lungx_core.tasks.registry import task_info

    info = task_info(task)
    device = str(resolve_device(device))  # "auto" becomes where it really runs, for the manifest
    reporter = reporter or Reporter(None)
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    module_name, _, function_name = info.runner.partition(":")
    runner = getattr(importlib.import_module(module_name), function_name)
    case = Case(case_id_of(input_path), input_path, kind=info.modality.lower())
    row = runner(case, out_dir, device=device, fast=fast, progress=reporter.progress, **(options or {}))
    if row["status"] != "ok":
        raise LungXError(row["error"])
    reporter.progress(0.95, "writing results")
    manifest = build_manifest(task, row, out_dir, time.perf_counter() - t0, device)
    write_text_atomic(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    from lungx_core.tasks.registry import TASKS

    parser = argparse.ArgumentParser(prog="python -m lungx_core.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--input", required=True, type=Path, help="image or volume file (NRRD, NIfTI, DICOM, PNG)")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--fast", action="store_true", help="skip the QC picture")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="task option")
    args = parser.parse_args(argv)

    from lungx_core.errors import LungXError

    reporter = Reporter(sys.stdout)
    try:
        options = parse_options(args.option, TASKS[args.task])
        reporter.progress(0.0, f"starting {args.task}")
        manifest_path = args.output_dir / MANIFEST_NAME
        run(args.task, args.input, args.output_dir, args.device, args.fast, options, reporter)
    except (LungXError, FileNotFoundError, ValueError) as exc:
        reporter.emit("error", message=str(exc) or type(exc).__name__)
        return EXIT_INPUT
    except KeyboardInterrupt:
        reporter.emit("error", message="interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the front end shows the message; details go to stderr
        import traceback

        traceback.print_exc(file=sys.stderr)
        reporter.emit("error", message=f"internal error ({type(exc).__name__}: {str(exc)[:300]})")
        return EXIT_INTERNAL
    reporter.progress(1.0, "done")
    reporter.emit("done", manifest=str(manifest_path))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
