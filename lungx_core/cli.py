"""The ``lungx`` command line. Heavy libraries (torch, MONAI, SimpleITK) load only inside commands, so
``lungx --help`` starts fast. Errors are one line on stderr; ``--debug`` shows the traceback."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="LungX: chest X-ray anatomy segmentation with exact geometry, Slicer-ready outputs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
evaluate_app = typer.Typer(
    help="Score LungX against reference masks; prints one JSON object on stdout.", no_args_is_help=True
)
app.add_typer(evaluate_app, name="evaluate")

_state = {"debug": False}


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class OutputFormat(str, Enum):
    seg_nrrd = "seg.nrrd"
    nii_gz = "nii.gz"
    nrrd = "nrrd"
    png = "png"


def _stderr():
    from rich.console import Console

    return Console(stderr=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for internal errors.")] = False,
):
    _state["debug"] = debug


def _write_results(path: Path, rows: list[dict]) -> None:
    from lungx_core.io.writers import write_text_atomic
    from lungx_core.tasks.cxr_segmentation import RESULT_COLUMNS

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


@app.command()
def segment(
    inputs: Annotated[list[Path] | None, typer.Argument(help="Radiograph files, folders or DICOM folders.")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Output folder.")] = Path("lungx_out"),
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Mask file format.")] = OutputFormat.seg_nrrd,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.auto,
    model: Annotated[str, typer.Option(help="Shipped model name or a .safetensors path.")] = "cxr_anatomy",
    threshold: Annotated[float | None, typer.Option(help="Probability threshold (default: the model's).")] = None,
    overlay: Annotated[bool, typer.Option(help="Write <id>_overlay.png QC pictures.")] = True,
    sample: Annotated[
        bool,
        typer.Option(
            "--sample",
            help="Add the embedded sample radiograph (a DRR of the CT that the slicerio package ships).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
):
    """Segment lungs (left/right), heart and clavicles (left/right) on chest radiographs.

    Writes <id>.seg.nrrd (or the chosen format) on each input's exact grid, <id>_overlay.png and
    results.csv with areas, cardiothoracic ratio and QC flags. A bad input is reported and skipped; the
    exit code is 1 when any input failed.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lungx_core.io.inputs import Case, collect_cases

    err = _stderr()
    inputs = list(inputs or [])
    if not inputs and not sample:
        raise typer.BadParameter("give at least one input, or --sample", param_hint="INPUTS")
    output.mkdir(parents=True, exist_ok=True)
    cases = collect_cases(inputs)
    if sample:
        from lungx_core.io.writers import write_image
        from lungx_core.sample import sample_radiograph

        sample_path = output / "sample_drr.nrrd"
        write_image(sample_path, sample_radiograph())
        cases.insert(0, Case("sample_drr", sample_path))

    from lungx_core.tasks.cxr_segmentation import CXRSegmenter, process_case

    segmenter = CXRSegmenter(model, device.value, threshold)
    rows: list[dict] = []
    results_path = output / "results.csv"
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, disable=quiet, transient=True) as progress:
        task = progress.add_task(f"segmenting on {segmenter.device}", total=len(cases))
        for i, case in enumerate(cases):
            row = process_case(case, segmenter, output, fmt.value, overlay)
            rows.append(row)
            if row["status"] != "ok":
                progress.console.print(f"[red]error[/red] {row['error']}", highlight=False, markup=True)
            progress.advance(task)
            if i % 20 == 19:  # keep results on disk during long runs; each rewrite is atomic
                _write_results(results_path, rows)
    _write_results(results_path, rows)
    failed = [r for r in rows if r["status"] != "ok"]
    flagged = [r for r in rows if r["status"] == "ok" and r.get("qc_flags")]
    err.print(
        f"{len(rows) - len(failed)} segmented, {len(failed)} failed, {len(flagged)} with QC flags; "
        f"results in {results_path}",
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


@evaluate_app.command("cxr")
def evaluate_cxr_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Folder with images/ and masks/<class>/ (or Montgomery/Shenzhen layout).")
    ],
    ids: Annotated[Path | None, typer.Option(help="Text file of image IDs to score (one per line).")] = None,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.auto,
    model: Annotated[str, typer.Option(help="Shipped model name or a .safetensors path.")] = "cxr_anatomy",
    per_case: Annotated[Path | None, typer.Option(help="Also write per-case Dice to this CSV.")] = None,
):
    """Mean Dice, IoU and HD95 (px) per class: {"n", "dice", "iou", "hd95_px"} as one JSON object."""
    from rich.progress import Progress

    from lungx_core.evaluate import discover_cases, evaluate_cxr
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    id_list = None if ids is None else [x.strip() for x in ids.read_text().split() if x.strip()]
    segmenter = CXRSegmenter(model, device.value)
    per_case_rows: list[dict] = []
    total = len(discover_cases(directory, id_list))
    with Progress(console=_stderr(), transient=True) as progress:
        task = progress.add_task("evaluating", total=total)

        def on_case(case_id: str, scores: dict[str, float]) -> None:
            per_case_rows.append({"case_id": case_id, **{f"dice_{k}": round(v, 4) for k, v in scores.items()}})
            progress.advance(task)

        skipped: list[str] = []
        summary = evaluate_cxr(
            directory,
            lambda p: segmenter.segment(read_radiograph(p)).masks,
            id_list,
            on_case,
            on_skip=lambda case_id, cls: skipped.append(f"{case_id}/{cls}"),
        )
    if skipped:
        _stderr().print(
            f"skipped {len(skipped)} empty (unannotated) reference masks: {', '.join(skipped)}", highlight=False
        )
    if per_case:
        from lungx_core.io.writers import write_text_atomic

        keys = sorted({k for r in per_case_rows for k in r}, key=lambda k: (k != "case_id", k))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(per_case_rows)
        write_text_atomic(per_case, buf.getvalue())
    sys.stdout.write(json.dumps(summary) + "\n")


@app.command()
def tasks():
    """List the tasks this installation offers."""
    from lungx_core.tasks.registry import TASKS

    for t in TASKS.values():
        typer.echo(f"{t.name}\t{t.modality}\t{t.output_kind}\t{t.title}")


def main() -> None:
    """Console entry point: one-line errors instead of tracebacks."""
    from lungx_core.errors import LungXError

    try:
        app()
    except (LungXError, FileNotFoundError, RuntimeError, ValueError) as exc:
        if _state["debug"]:
            raise
        msg = str(exc) or type(exc).__name__
        print(f"lungx: error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lungx: interrupted", file=sys.stderr)
        sys.exit(130)
