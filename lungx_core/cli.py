"""The ``lungx`` command line. Heavy libraries (torch, MONAI, SimpleITK) load only inside commands, so
``lungx --help`` starts fast. Errors are one line on stderr; ``--debug`` shows the traceback."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="LungX: chest-imaging toolkit. Segment chest radiographs (lungs, heart, clavicles, CTR, QC) and chest CT "
    "(lungs R/L, volumes) on the input's exact grid; suppress ribs, remove lung opacity and synthesise pathological "
    "radiographs (research); score against references (evaluate). Outputs are Slicer-ready (.seg.nrrd).",
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


class Task(str, Enum):
    auto = "auto"
    cxr_anatomy = "cxr-anatomy"
    ct_lungs = "ct-lungs"


def _choices(task: str, option: str) -> dict[str, str]:
    """A registry option's choices as Enum members: the CLI offers what the Slicer panel and worker offer."""
    from lungx_core.tasks.registry import TASKS

    return {c: c for c in TASKS[task].option(option).choices}


CTMethod = Enum("CTMethod", _choices("ct-lungs", "method"), type=str)


class Backend(str, Enum):
    auto = "auto"
    torch = "torch"
    onnx = "onnx"
    bf16 = "bf16"


class OutputFormat(str, Enum):
    seg_nrrd = "seg.nrrd"
    nii_gz = "nii.gz"
    nrrd = "nrrd"
    png = "png"
    dicom_seg = "dicom-seg"


class NoduleFormat(str, Enum):
    markups = "markups"
    dicom_sr = "dicom-sr"


def _stderr():
    from rich.console import Console

    # soft_wrap: a one-line error stays one line when stderr is a file or a pipe (no hard wrap at 80 columns)
    return Console(stderr=True, soft_wrap=True)


def _absolute(path: Path) -> Path:
    """The output folder as an absolute path: Dask workers may run in another working directory."""
    return path.absolute()


OutputOption = Annotated[Path, typer.Option("--output", "-o", help="Output folder.", callback=_absolute)]


def _version(value: bool) -> None:
    if value:
        from lungx_core import __version__

        typer.echo(f"lungx {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for internal errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    _state["debug"] = debug


def _write_results(path: Path, rows: list[dict]) -> None:
    """results.csv: the shared columns, then each task's own ones (a batch may mix radiographs and CTs)."""
    from lungx_core.tasks import ct_lungs, cxr_segmentation
    from lungx_core.tasks.common import COMMON_COLUMNS, TRAILING_COLUMNS

    tasks = {r.get("task") for r in rows}
    columns = list(COMMON_COLUMNS)
    if "cxr-anatomy" in tasks or not rows:  # every row, error rows too, names its task
        columns += cxr_segmentation.RESULT_COLUMNS
    if "ct-lungs" in tasks:
        columns += ct_lungs.RESULT_COLUMNS
    _write_table(path, rows, columns + TRAILING_COLUMNS)


@app.command()
def segment(
    inputs: Annotated[
        list[Path] | None, typer.Argument(help="Radiographs, CT volumes, folders or DICOM folders.")
    ] = None,
    output: OutputOption = Path("lungx_out"),
    task: Annotated[
        Task, typer.Option(help="auto: CT volumes and CT DICOM series go to ct-lungs, images to cxr-anatomy.")
    ] = Task.auto,
    fmt: Annotated[
        OutputFormat,
        typer.Option("--format", "-f", help="Mask file format. dicom-seg (DICOM inputs, the 'dicom' extra): a DICOM "
                     "Segmentation <id>_seg.dcm in the source's study that references the source instances."),
    ] = OutputFormat.seg_nrrd,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.auto,
    model: Annotated[
        str | None, typer.Option(help="Shipped model name or a .safetensors path (default: the task's).")
    ] = None,
    method: Annotated[
        CTMethod, typer.Option(help="CT: the trained network, or the classical pipeline (no model).")
    ] = CTMethod.net,
    series: Annotated[
        str | None, typer.Option(help="CT DICOM: series to read (UID, UID prefix or series number).")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="CXR probability threshold (default: the model's).")] = None,
    backend: Annotated[
        Backend,
        typer.Option(help="What runs the network: torch, or ONNX Runtime (the 'fast' extra; exported once per "
                     "model to ~/.cache/lungx/onnx, or $LUNGX_CACHE_DIR; the same masks, faster on CPU), or "
                     "bf16: the CT network in bfloat16 (a GPU or a CPU with AVX512-BF16/AMX; about 1.7x faster, "
                     "lungs within Dice 0.998 of float32; radiographs stay in float32, their clavicles would "
                     "move). auto: ONNX Runtime on CPU where it is installed, else torch."),
    ] = Backend.auto,
    overlay: Annotated[bool, typer.Option(help="Write <id>_overlay.png QC pictures.")] = True,
    sample: Annotated[
        bool,
        typer.Option(
            "--sample",
            help="Add the embedded samples: the chest CT that the slicerio package ships, and a radiograph "
            "rendered from it.",
        ),
    ] = False,
    input_check: InputCheckOption = True,
    quiet: QuietOption = False,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    resume: ResumeOption = False,
):
    """Segment chest radiographs (lungs L/R, heart, clavicles L/R) and chest CTs (lungs R/L).

    Writes <id>.seg.nrrd (or the chosen format) on each input's exact grid, <id>_overlay.png and
    results.csv with areas or volumes, cardiothoracic ratio and QC flags. A bad input is reported and
    skipped; the exit code is 1 when any input failed. --workers N spreads the cases over N processes (Dask),
    --resume continues an interrupted run.
    """
    from functools import partial

    from lungx_core.io.inputs import Case, collect_cases, detect_kind

    err = _stderr()
    inputs = list(inputs or [])
    if not inputs and not sample:
        raise typer.BadParameter("give at least one input, or --sample", param_hint="INPUTS")
    cases = collect_cases(inputs, output)
    forced = {Task.cxr_anatomy: "cxr", Task.ct_lungs: "ct"}.get(task)
    for case in cases:
        case.kind = forced or detect_kind(case)
    sample_kinds = [k for k in ("cxr", "ct") if sample and forced in (None, k)]
    kinds = {c.kind for c in cases} | set(sample_kinds)
    _check_segment_options(kinds, model, fmt)
    if backend is Backend.bf16 and "ct" in kinds:  # refused before any case runs, not at the first CT
        from lungx_core.models.bf16 import require_native_bf16
        from lungx_core.models.store import resolve_device

        try:
            require_native_bf16(resolve_device(device.value))
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--backend") from None
    from lungx_core.batch import claim_output

    run = _Batch("segment", workers, scheduler, resume, quiet)
    claim_output(output, run.command)  # makes the folder; refuses another command's before the samples go in
    if sample_kinds:
        from lungx_core.io.sample import sample_ct, sample_radiograph
        from lungx_core.io.writers import write_image

        samples = []
        if "cxr" in sample_kinds:
            write_image(output / "sample_drr.nrrd", sample_radiograph())
            samples.append(Case("sample_drr", output / "sample_drr.nrrd", kind="cxr"))
        if "ct" in sample_kinds:
            write_image(output / "sample_ct.nrrd", sample_ct())
            samples.append(Case("sample_ct", output / "sample_ct.nrrd", kind="ct"))
        cases = samples + cases

    from lungx_core.batch import by_kind
    from lungx_core.tasks import ct_lungs, cxr_segmentation

    common = {"out_dir": output, "device": device.value, "fmt": fmt.value, "overlay": overlay,
              "backend": backend.value}
    steps = {}
    if "cxr" in kinds:
        # bf16 is for the CT network only: it moves radiograph clavicles (lungx_core.models.bf16)
        cxr_common = {**common, "backend": "torch" if backend is Backend.bf16 else backend.value}
        steps["cxr"] = partial(cxr_segmentation.run_one, **cxr_common, model=model or cxr_segmentation.DEFAULT_MODEL,
                               threshold=threshold, input_check=_on_off(input_check))
    if "ct" in kinds:
        steps["ct"] = partial(ct_lungs.run_one, **common, model=model or ct_lungs.DEFAULT_MODEL,
                              method=method.value, series=series)
    # radiographs only: two films in flight in this process, one read and written while the other is computed
    # (CT volumes stay one at a time: memory)
    overlap = 2 if {k or "cxr" for k in kinds} == {"cxr"} else 1
    rows = _run_batch(cases, partial(by_kind, steps=steps), output, run, "segmenting", _write_results, overlap)
    failed = [r for r in rows if r["status"] != "ok"]
    flagged = [r for r in rows if r["status"] == "ok" and r.get("qc_flags")]
    err.print(
        f"{len(rows) - len(failed)} segmented, {len(failed)} failed, {len(flagged)} with QC flags; "
        f"results in {output / 'results.csv'}",
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


def _run_batch(cases, step, output, run: _Batch, description, write_results, overlap: int = 1) -> list[dict]:
    """Every command's batch loop: run ``step`` over ``cases`` (here, or on Dask workers; see lungx_core.batch)
    with a progress bar over completed cases, errors printed as they come, and results.csv rewritten every 20
    cases and at the end (also on Ctrl-C: every finished case keeps its row next to its outputs)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from lungx_core.batch import run_cases

    where = run.scheduler or (f"{run.workers} Dask workers" if run.workers > 1 else "")
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    rows: list[dict] = []
    results_path = output / "results.csv"
    try:
        with Progress(*columns, console=_stderr(), disable=run.quiet, transient=True) as progress:
            bar = progress.add_task(f"{description} on {where}" if where else description, total=len(cases))

            def on_row(row: dict) -> None:
                rows.append(row)
                if row["status"] != "ok":
                    progress.console.print(f"[red]error[/red] {row['error']}", highlight=False, markup=True)
                progress.advance(bar)
                if len(rows) % 20 == 0:  # keep results on disk during long runs; each rewrite is atomic
                    write_results(results_path, rows)

            ordered = run_cases(cases, step, output, workers=run.workers, scheduler=run.scheduler,
                                resume=run.resume, on_row=on_row, overlap=overlap)
    finally:
        write_results(results_path, rows)
    write_results(results_path, ordered)  # the final table in input order, whatever order cases completed in
    return ordered


def _check_segment_options(kinds: set[str], model: str | None, fmt: OutputFormat) -> None:
    """Options that do not fit the inputs' tasks are refused before any work (one line, naming the option)."""
    if "ct" in kinds and fmt == OutputFormat.png:
        raise typer.BadParameter(
            "PNG masks are for radiographs; CT writes seg.nrrd, nii.gz, nrrd or dicom-seg", param_hint="--format"
        )
    if model is None:
        return
    from lungx_core.models.store import read_model_config

    model_task = read_model_config(model).get("task")
    needed = {"cxr": "cxr-anatomy", "ct": "ct-lungs"}
    for kind in sorted(kinds):
        if model_task != needed[kind]:
            raise typer.BadParameter(
                f"{model} is a {model_task} model, but the inputs include {kind.upper()} images ({needed[kind]}); "
                "segment them in separate runs, or pick the inputs' task with --task",
                param_hint="--model",
            )


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

    from lungx_core.eval.evaluate import discover_cases
    from lungx_core.eval.runners import score_cxr

    id_list = _id_list(ids)
    scores = _CaseScores("dice_", digits=4)
    skipped: list[str] = []
    with Progress(console=_stderr(), transient=True) as progress:
        bar = progress.add_task("evaluating", total=len(discover_cases(directory, id_list)))

        def on_case(case_id: str, case_scores: dict[str, float]) -> None:
            scores(case_id, case_scores)
            progress.advance(bar)

        summary = score_cxr(directory, id_list, model, device.value, on_case,
                            on_skip=lambda case_id, cls: skipped.append(f"{case_id}/{cls}"))
    if skipped:
        _stderr().print(
            f"skipped {len(skipped)} empty (unannotated) reference masks: {', '.join(skipped)}", highlight=False
        )
    scores.report(summary, per_case)


@evaluate_app.command("ct")
def evaluate_ct_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Folder of <case>/ct.nii.gz with <case>/mask_lung_lr.nii.gz (1 right, 2 left).")
    ],
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.auto,
    model: Annotated[str, typer.Option(help="Shipped model name or a .safetensors path.")] = "ct_lungs",
    method: Annotated[CTMethod, typer.Option(help="The trained network or the classical pipeline.")] = CTMethod.net,
    per_case: Annotated[Path | None, typer.Option(help="Also write per-case Dice to this CSV.")] = None,
):
    """Dice, volume error (%) and HD95 (mm) per lung: {"n", "dice", "volume_error_pct", "hd95_mm",
    "seconds_per_case"} as one JSON object."""
    from lungx_core.eval.runners import score_ct

    scores = _CaseScores("dice_", digits=4)
    scores.report(score_ct(directory, model, method.value, device.value, on_case=scores), per_case)


class Modality(str, Enum):
    cxr = "cxr"
    ct = "ct"


SynthesisMethod = Enum("SynthesisMethod", _choices("cxr-synthesis", "method"), type=str)
LesionSide = Enum("LesionSide", _choices("cxr-synthesis", "side"), type=str)
LesionKind = Enum("LesionKind", _choices("cxr-synthesis", "kind"), type=str)


WorkersOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Worker processes: N > 1 runs the cases on an embedded Dask LocalCluster of N processes (the 'batch' "
        "extra); 1 runs them here.",
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Address of an existing Dask scheduler (tcp://host:8786) to run the cases on; its workers must see "
        "the inputs and the output folder at the same paths. Overrides --workers.",
    ),
]
ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Skip the cases that an earlier run of the same command and options completed (their outputs all "
        "present, per <output>/.lungx_done); run the rest.",
    ),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


@dataclass(frozen=True)
class _Batch:
    """How a command's cases run (see lungx_core.batch)."""

    command: str  # the command's name: its output folder is refused to another command (batch.claim_output)
    workers: int = 1
    scheduler: str | None = None
    resume: bool = False
    quiet: bool = False


KeepNodulesOption = Annotated[
    bool,
    typer.Option(
        "--keep-nodules/--no-keep-nodules",
        help="Bone mode: let the nodule detector (cxr_nodules) look first and take the bone image out of each "
        "finding, so the subtraction leaves the nodules it finds (a nodule it misses is still dimmed).",
    ),
]
InputCheckOption = Annotated[
    bool,
    typer.Option(
        "--input-check/--no-input-check",
        help="Refuse radiographs that the frontal-chest gate (cxr_gate) does not take for a frontal chest film: CT "
        "slices, lateral or oblique views, inverted films, non-chest pictures. --no-input-check processes them "
        "anyway (phantoms, a film the gate wrongly refuses).",
    ),
]
LungMaskOption = Annotated[
    Path | None,
    typer.Option(
        help="Lung-field mask on the input's grid (PNG, NRRD/NIfTI label map or .seg.nrrd); for several "
        "inputs a folder of <id>.<ext> masks. Default: lungs from the cxr_anatomy model."
    ),
]


@app.command()
def synthesize(
    inputs: Annotated[list[Path], typer.Argument(help="Healthy frontal chest radiographs or folders of them.")],
    output: OutputOption = Path("lungx_synth"),
    lung_mask: LungMaskOption = None,
    modality: Annotated[Modality, typer.Option(help="Input modality (a CT generator is not shipped yet).")] = (
        Modality.cxr
    ),
    method: Annotated[SynthesisMethod, typer.Option(
        help="insert: lesions of the lesion model (measured on real opacity masks) drawn into the lung field, "
        "nothing else changes; cyclegan: a CycleGAN generator (--model) on the thoracic crop; a lesion-guided "
        "model (research preview) lets its change in only through a lesion drawn as insert draws it.")
    ] = SynthesisMethod.insert,
    area: Annotated[float | None, typer.Option(
        min=0.01, max=0.9, help="insert and lesion-guided cyclegan: share of the lung field to cover (default: "
        "drawn from the lesion model, 5-60 %).")] = None,
    side: Annotated[LesionSide, typer.Option(help="insert and lesion-guided cyclegan: the patient's side(s); "
                                                  "any = drawn.")] = LesionSide.any,
    kind: Annotated[LesionKind, typer.Option(help="insert and lesion-guided cyclegan: ground glass, consolidation, "
                                             "consolidated cores in ground glass, or a basal/lateral white-out "
                                             "reaching the lung border.")] = LesionKind.mixed,
    seed: Annotated[
        int | None, typer.Option(help="insert and lesion-guided cyclegan: seeds the lesion draw, mixed with a "
                                 "digest of each film's pixels (default 0; lx.synthesize draws the same); other "
                                 "cyclegan models: shifts the crop window by a seeded few pixels for a different "
                                 "variant.")
    ] = None,
    model: Annotated[str, typer.Option(help="cyclegan: shipped generator name or a .safetensors path.")] = (
        "cxr_synthesis"
    ),
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device.auto,
    input_check: InputCheckOption = True,
    quiet: QuietOption = False,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    resume: ResumeOption = False,
):
    """Turn healthy chest radiographs into pathological-looking ones whose lung mask stays valid.

    Writes <id>_synthetic.<png|nrrd|nii.gz|dcm> (the input's grid and format family; DICOM as a derived image
    in a new series), <id>_synthetic.seg.nrrd (its lung mask; with --method insert also the inserted lesion as
    segment 'opacity'), <id>_synthesis.png (input | synthetic) and results.csv. A bad input is reported and
    skipped; the exit code is 1 when any input failed.
    """
    from functools import partial

    from lungx_core.tasks import synthesis
    from lungx_core.tasks.common import COMMON_COLUMNS, TRAILING_COLUMNS

    if modality == Modality.ct:
        raise typer.BadParameter("no CT synthesis generator ships yet; use radiographs", param_hint="--modality")
    step = partial(synthesis.run_one, out_dir=output, device=device.value, model=model, seed=seed,
                   input_check=_on_off(input_check), method=method.value, area=area or 0.0, side=side.value,
                   kind=kind.value)
    _run_image_task(
        inputs, output, lung_mask, _Batch("synthesize", workers, scheduler, resume, quiet), "synthesising",
        "synthesised", step,
        COMMON_COLUMNS + synthesis.RESULT_COLUMNS + TRAILING_COLUMNS[1:],
        models=(model,) if method == SynthesisMethod.cyclegan else (),
    )


def _run_image_task(
    inputs, output, mask, run: _Batch, description, verb, step, columns, mask_option="--lung-mask", models=(),
    finish=None, overlap: int = 2,
) -> None:
    """The radiograph commands: collect inputs, match the given masks (one file, or a folder of <id>.<ext>;
    ``mask_option`` names the option) to cases, check that ``models`` exist, run ``step`` (a task's run_one bound
    to its options) over the cases with _run_batch, then ``finish(rows)`` (run-level files), and exit 1 when any
    input failed. ``overlap`` films are in flight at once in this process, as in ``segment`` (one read and written
    while the other is computed); 1 for a step whose models keep state between calls."""
    from lungx_core.batch import claim_output
    from lungx_core.io.inputs import collect_cases
    from lungx_core.models.store import read_model_config

    cases = collect_cases(inputs, output)
    if mask is not None and not mask.is_dir() and len(cases) > 1:
        raise typer.BadParameter("one mask file fits one input; give a folder of <id> masks", param_hint=mask_option)
    for name in models:
        read_model_config(name)  # a wrong --model is one error now, not one per case
    for case in cases:
        case.mask = mask
        if mask is not None and mask.is_dir():
            case.mask = next(iter(sorted(mask.glob(f"{case.case_id}.*"))), mask / f"{case.case_id}.png")
    claim_output(output, run.command)  # makes the folder; refuses another command's before anything is written
    rows = _run_batch(cases, step, output, run, description, lambda path, rows: _write_table(path, rows, columns),
                      overlap)
    if finish is not None:
        finish(rows)
    failed = sum(r["status"] != "ok" for r in rows)
    _stderr().print(f"{len(rows) - failed} {verb}, {failed} failed; results in {output / 'results.csv'}")
    if failed:
        raise typer.Exit(1)


@evaluate_app.command("synthesis")
def evaluate_synthesis_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder with images/ and masks/lung/ (healthy films).")],
    ids: Annotated[Path | None, typer.Option(help="Text file of image IDs to score (one per line).")] = None,
    method: Annotated[SynthesisMethod, typer.Option(help="Synthesis method, as for lungx synthesize.")] = (
        SynthesisMethod.insert
    ),
    kind: Annotated[LesionKind, typer.Option(help="insert and lesion-guided cyclegan: lesion kind.")] = (
        LesionKind.mixed),
    model: Annotated[str, typer.Option(help="cyclegan: generator name or a .safetensors path.")] = "cxr_synthesis",
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device.auto,
    per_case: Annotated[Path | None, typer.Option(help="Also write per-case scores to this CSV.")] = None,
):
    """{"n", "mae_surroundings", "lung_dice_preserved", "pathological_rate"} as one JSON object (insert: lesion
    area drawn from the lesion model, seeded by the film's position in the list)."""
    from lungx_core.eval.runners import score_synthesis

    scores = _CaseScores()
    summary = score_synthesis(directory, _id_list(ids), method.value, kind.value, model, device.value,
                              on_case=scores)
    scores.report(summary, per_case)


@app.command("remove-opacity")
def remove_opacity(
    inputs: Annotated[list[Path], typer.Argument(help="Frontal chest radiographs or folders of them.")],
    output: OutputOption = Path("lungx_opacity"),
    lung_mask: LungMaskOption = None,
    model: Annotated[
        str, typer.Option(help="Shipped generator name or a .safetensors path.")
    ] = "cxr_opacity_removal",
    score: Annotated[
        bool, typer.Option(help="Add the opacity classifier's probability before and after to results.csv.")
    ] = True,
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device.auto,
    input_check: InputCheckOption = True,
    quiet: QuietOption = False,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    resume: ResumeOption = False,
):
    """Remove lung opacity (consolidation, ground glass) from chest radiographs, changing nothing else.

    Writes <id>_opacity_removed.<png|nrrd|nii.gz|dcm> (the input's grid and format family; DICOM as a derived
    image in a new series), <id>_opacity_mask.seg.nrrd (the activation mask: outside it every pixel is the
    input's), <id>_opacity_removal.png (before | mask | after) and results.csv. A film with no opacity found is
    written unchanged and flagged no_opacity_found. A bad input is reported and skipped; the exit code is 1
    when any input failed.
    """
    from functools import partial

    from lungx_core.tasks import opacity_removal
    from lungx_core.tasks.common import COMMON_COLUMNS, TRAILING_COLUMNS

    step = partial(opacity_removal.run_one, out_dir=output, device=device.value, model=model,
                   input_check=_on_off(input_check), score=score)
    _run_image_task(
        inputs, output, lung_mask, _Batch("remove-opacity", workers, scheduler, resume, quiet),
        "removing opacity", "processed", step,
        COMMON_COLUMNS + opacity_removal.RESULT_COLUMNS + TRAILING_COLUMNS[1:], models=(model,),
    )


SuppressionMode = Enum("SuppressionMode", _choices("cxr-rib-suppression", "mode"), type=str)
Scheduler = Enum("Scheduler", _choices("cxr-rib-suppression", "scheduler"), type=str)


@app.command()
def classify(
    inputs: Annotated[list[Path], typer.Argument(help="Frontal chest radiographs or folders of them.")],
    output: OutputOption = Path("lungx_classify"),
    lung_mask: LungMaskOption = None,
    model: Annotated[str, typer.Option(help="Classifier name or a .safetensors path.")] = "cxr_pathology",
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device.auto,
    input_check: InputCheckOption = True,
    quiet: QuietOption = False,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    resume: ResumeOption = False,
):
    """Triage score: probability of lung pathology on each chest radiograph (research, not a diagnosis).

    Writes results.csv with pathology_probability and pathological (1 at or above the model card's operating
    threshold). The shipped judge (cxr_pathology v3) was trained against style and source: gamma, CLAHE and
    histogram matching leave at most 0.18 of healthy validation films called pathological; it finds 0.875 of
    the real pathological ones, is weak within one source and hardly responds to drawn lesions (see its model
    card). A bad input is reported and skipped; the exit code is 1 when any input failed.
    """
    from functools import partial

    from lungx_core.tasks import classification
    from lungx_core.tasks.common import COMMON_COLUMNS, TRAILING_COLUMNS

    step = partial(classification.run_one, out_dir=output, device=device.value, model=model,
                   input_check=_on_off(input_check))
    _run_image_task(
        inputs, output, lung_mask, _Batch("classify", workers, scheduler, resume, quiet), "classifying",
        "classified", step,
        COMMON_COLUMNS + classification.RESULT_COLUMNS + TRAILING_COLUMNS[1:], models=(model,),
    )


@app.command("detect-nodules")
def detect_nodules(
    inputs: Annotated[list[Path], typer.Argument(help="Frontal chest radiographs or folders of them.")],
    output: OutputOption = Path("lungx_nodules"),
    model: Annotated[str, typer.Option(help="Nodule model name or a .safetensors path.")] = "cxr_nodules",
    fmt: Annotated[NoduleFormat, typer.Option("--format", help="markups: CSV, Slicer markups and a picture per "
                                              "film; dicom-sr: also a DICOM SR (TID 1500) per DICOM film, in "
                                              "its study.")] = NoduleFormat.markups,
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.auto,
    input_check: InputCheckOption = True,
    quiet: QuietOption = False,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    resume: ResumeOption = False,
):
    """Lung nodule candidates on chest radiographs: ranked centres with diameter and probability (research).

    Writes nodules.csv (every candidate above the model's floor: case_id, rank, col, row, x_mm, y_mm,
    diameter_mm, probability; col/row on the input's pixel array, mm from its first pixel when the pixel size is
    known), results.csv (per film: n_findings at or above the model card's operating point, max_probability),
    and per film <id>_nodules.csv, <id>_nodules.mrk.json (Slicer markups, one point per finding, in LPS) and
    <id>_nodules.png (findings circled). Cross-validated sensitivity and false positives per image: the
    cxr_nodules model card. A bad input is reported and skipped; the exit code is 1 when any input failed.
    """
    from functools import partial

    from lungx_core.tasks import nodule_detection
    from lungx_core.tasks.common import COMMON_COLUMNS, TRAILING_COLUMNS

    step = partial(nodule_detection.run_one, out_dir=output, device=device.value, model=model,
                   input_check=_on_off(input_check), fmt=fmt.value)
    _run_image_task(
        inputs, output, None, _Batch("detect-nodules", workers, scheduler, resume, quiet), "detecting nodules",
        "searched", step, COMMON_COLUMNS + nodule_detection.RESULT_COLUMNS + TRAILING_COLUMNS, models=(model,),
        finish=lambda rows: nodule_detection.write_run_candidates(output, rows),
    )


@evaluate_app.command("nodules")
def evaluate_nodules_cmd(
    directory: Annotated[Path, typer.Argument(
        help="Folder with images/<id> and nodules.csv (id, x, y, diameter_px on the 512-px film; optional "
             "diameter_mm, subtlety); films without a row are normals.")],
    model: Annotated[str, typer.Option(help="Nodule model name or a .safetensors path.")] = "cxr_nodules",
    device: Annotated[Device, typer.Option(help="Where the model runs.")] = Device.auto,
    per_case: Annotated[Path | None, typer.Option(help="Also write per-film counts to this CSV.")] = None,
    suppress_ribs: Annotated[str | None, typer.Option(
        "--suppress-ribs", help="Bone model name or .safetensors path (e.g. cxr_bone): detect on each film after "
                                "its bone suppression (bone mode, no findings spared), to see what the bone "
                                "model does to the nodules a "
                                "detector finds. Compare with a run without it.")] = None,
):
    """{"n_films", "n_nodules", "sensitivity" at 0.125-8 false positives per image, "cpm", "auc",
    "sensitivity_at_2fp_by_subtlety", ...} as one JSON object. A hit is a candidate within the nodule's radius
    (at least 4 mm); each nodule counts once; every other candidate is a false positive. AUC: each film's
    highest probability, nodule films against normals. With reference lung masks (masks/lung/<id>.png, the
    jsrt_scr layout) also "lung_field": the same over the films whose nodules lie in the lung field."""
    from lungx_core.eval.runners import score_nodules

    scores = _CaseScores(digits=4)
    summary = score_nodules(directory, model, device.value, on_case=scores, bone_model=suppress_ribs)
    scores.report(summary, per_case)


SUPPRESSION_MODE_HELP = (
    "bone: subtract the bone image that cxr_bone estimates (nothing regenerated: vessels under a rib are the "
    "film's own); inpaint: diffusion inpainting replaces the rib pixels (research: it hallucinates under the "
    "mask and erases what a rib hides); inpaint-subtract: only the inpainting's smooth bone signal is subtracted "
    "(research)."
)


@app.command("suppress-ribs")
def suppress_ribs(
    inputs: Annotated[list[Path], typer.Argument(help="Frontal chest radiographs or folders of them.")],
    output: OutputOption = Path("lungx_ribs"),
    rib_mask: Annotated[
        Path | None,
        typer.Option(help="Rib mask on the input's grid (PNG, NRRD/NIfTI label map or .seg.nrrd, segments named "
                     "like 'rib'); for several inputs a folder of <id>.<ext> masks. Bone mode: restricts the "
                     "subtraction to it (default: the whole film). Diffusion modes: the mask to inpaint (default: "
                     "the cxr_ribs model inside the lung fields)."),
    ] = None,
    mode: Annotated[SuppressionMode, typer.Option(help=SUPPRESSION_MODE_HELP)] = SuppressionMode.bone,
    strength: Annotated[
        float, typer.Option(min=0.0, max=5.0, help="Bone mode: 1 subtracts the model card's fitted amount, 0 "
                            "nothing, 2 twice as much.")
    ] = 1.0,
    model: Annotated[str, typer.Option(help="Bone-layer model name or a .safetensors path.")] = "cxr_bone",
    inpainting_model: Annotated[
        str, typer.Option(help="Diffusion modes: inpainting model name or a .safetensors path.")
    ] = "cxr_inpainting",
    steps: Annotated[
        int, typer.Option(min=1, max=1000, help="Diffusion modes: denoising steps (10-50 is the useful range).")
    ] = 25,
    seed: Annotated[int, typer.Option(help="Diffusion modes: seed of the sampling noise.")] = 0,
    sampler: Annotated[
        Scheduler, typer.Option(help="Diffusion modes: the sampler (a diffusers scheduler): DDIM, DPM-Solver++ or "
                            "RePaint.")
    ] = Scheduler.ddim,
    keep_nodules: KeepNodulesOption = True,
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device.auto,
    input_check: InputCheckOption = True,
    quiet: QuietOption = False,
    workers: WorkersOption = 1,
    scheduler: SchedulerOption = None,
    resume: ResumeOption = False,
):
    """Suppress the bone (ribs, clavicles, scapulae) of chest radiographs: estimate the bone image, subtract it.

    Measured on the 6 dual-energy pairs of bs_gusarev_des_samples, leave-one-out: see the cxr_bone model card
    (lungx_core/weights/cxr_bone.md) for PSNR, SSIM and BSR against the soft-tissue images. The bone model
    takes part of a soft-tissue nodule for bone; by default (--keep-nodules) the nodule detector looks first and
    the bone image is taken out of each of its findings, so a nodule it finds keeps its contrast. Known limit: a
    nodule the detector misses is still dimmed (about 30 % of its contrast taken): look for nodules on the
    original film too. Writes
    <id>_ribs_suppressed.<png|nrrd|nii.gz|dcm> (the input's grid and format family; DICOM as a derived image in a
    new series), <id>_bone.<same> (the subtracted bone image), <id>_bone.seg.nrrd (where it is strong),
    <id>_rib_suppression.png (before | bone | after) and results.csv; the diffusion modes write
    <id>_ribs.seg.nrrd (the inpainted mask) instead of the bone files. A bad input is reported and skipped; the
    exit code is 1 when any input failed.
    """
    from functools import partial

    from lungx_core.tasks import rib_suppression
    from lungx_core.tasks.common import COMMON_COLUMNS, TRAILING_COLUMNS

    step = partial(rib_suppression.run_one, out_dir=output, device=device.value, model=model, mode=mode.value,
                   strength=strength, inpainting_model=inpainting_model, steps=steps, seed=seed,
                   scheduler=sampler.value, input_check=_on_off(input_check), keep_nodules=_on_off(keep_nodules))
    _run_image_task(
        inputs, output, rib_mask, _Batch("suppress-ribs", workers, scheduler, resume, quiet),
        "suppressing bone", "suppressed",
        step, COMMON_COLUMNS + rib_suppression.RESULT_COLUMNS + TRAILING_COLUMNS[1:], mask_option="--rib-mask",
        models=(model,) if mode == SuppressionMode.bone else (inpainting_model,),
        overlap=2 if mode == SuppressionMode.bone else 1,  # the diffusion modes' schedulers keep state
    )


@evaluate_app.command("bone-suppression")
def evaluate_bone_suppression_cmd(
    directory: Annotated[Path, typer.Argument(
        help="Folder with images/<id> and soft_tissue/<id> pairs, and/or a nodules.csv (jsrt_scr layout).")],
    mode: Annotated[SuppressionMode, typer.Option(help=SUPPRESSION_MODE_HELP)] = SuppressionMode.bone,
    strength: Annotated[float, typer.Option(min=0.0, max=5.0, help="Bone mode: strength (1: fitted).")] = 1.0,
    model: Annotated[str, typer.Option(help="Bone-layer model name or a .safetensors path.")] = "cxr_bone",
    inpainting_model: Annotated[
        str, typer.Option(help="Diffusion modes: inpainting model name or a .safetensors path.")
    ] = "cxr_inpainting",
    steps: Annotated[int, typer.Option(min=1, max=1000, help="Diffusion modes: denoising steps.")] = 25,
    seed: Annotated[int, typer.Option(help="Diffusion modes: seed of the sampling noise.")] = 0,
    sampler: Annotated[
        Scheduler, typer.Option(help="Diffusion modes: the sampler (a diffusers scheduler).")
    ] = Scheduler.ddim,
    keep_nodules: KeepNodulesOption = True,
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device.auto,
    per_case: Annotated[Path | None, typer.Option(help="Also write per-case scores to this CSV.")] = None,
):
    """{"n", "psnr_input", "psnr_output", "ssim_input", "ssim_output", "bsr", "seconds_per_image"} as one JSON
    object: the films against their soft-tissue images in the lung field, after a linear intensity match. With a
    nodules.csv (id, x, y, diameter_px on the 512-px film, subtlety), also "nodules": each nodule's conspicuity
    (disc minus ring over the spread around it) before and after, median ratio after/before, share dimmed, per
    subtlety grade.
    Scores of the shipped model on the films it was fitted on are optimistic: the model card's leave-one-out
    numbers come from training/eval_bone_loo.py."""
    from lungx_core.eval.runners import score_bone_suppression

    scores = _CaseScores()
    summary = score_bone_suppression(directory, mode.value, strength, model, inpainting_model, steps, seed,
                                     sampler.value, device.value, on_case=scores, keep_nodules=keep_nodules)
    scores.report(summary, per_case)


@evaluate_app.command("opacity-removal")
def evaluate_opacity_removal_cmd(
    directory: Annotated[
        Path, typer.Argument(help="Folder with images/, masks/lung/ and masks/opacity/ (the GB layout).")
    ],
    ids: Annotated[Path | None, typer.Option(help="Text file of image IDs to score (one per line).")] = None,
    model: Annotated[
        str, typer.Option(help="Shipped generator name or a .safetensors path.")
    ] = "cxr_opacity_removal",
    probe: Annotated[
        str, typer.Option(help="Lung model that scores the films (trained on clear films only).")
    ] = "cxr_lung_probe",
    second_probe: Annotated[
        str, typer.Option(help="A second clear-film lung model scoring the same films ('none' skips it).")
    ] = "cxr_lung_probe_attention",
    device: Annotated[Device, typer.Option(help="Where the models run.")] = Device.auto,
    per_case: Annotated[Path | None, typer.Option(help="Also write per-case scores to this CSV.")] = None,
):
    """{"n", "lung_dice_before", "lung_dice_after", "lung_dice_ceiling", "lung_recall_in_opacity_before",
    "lung_recall_in_opacity_after", "recovered_share", "lung_recall_in_opacity_ceiling", "recovered_share_ceiling",
    "change_outside_mask", "change_outside_activation",
    "brighter_share", "gradient_energy_ratio_outside", "structure_kept_inside", "opacity_score_before",
    "opacity_score_after",
    "second_probe_lung_recall_in_opacity_before", "second_probe_lung_recall_in_opacity_after",
    "second_probe_recovered_share"} as one JSON object. recovered_share: (recall after - before) / (1 - before) of
    the probe's lung recall under the reference opacity; recovered_share_ceiling: the most any remover confined to
    this one's activation mask could give back (the probe finding every hidden lung pixel in it); brighter_share:
    of the changed pixels, those made brighter; gradient_energy_ratio_outside: edges outside the opacity, after
    over before; structure_kept_inside: inside the remover's mask, the correlation of the vessel-to-rib band
    before and after."""
    from lungx_core.eval.runners import score_opacity_removal

    scores = _CaseScores()
    summary = score_opacity_removal(directory, _id_list(ids), model, probe, device.value, on_case=scores,
                                    second_probe=None if second_probe.lower() == "none" else second_probe)
    scores.report(summary, per_case)


class _CaseScores:
    """The evaluate commands' per-case rows (rounded, optionally prefixed): collected as an ``on_case`` callback,
    then written to --per-case with the summary printed as one JSON line on stdout."""

    def __init__(self, prefix: str = "", digits: int = 5):
        self.rows: list[dict] = []
        self.prefix, self.digits = prefix, digits

    def __call__(self, case_id: str, scores: dict[str, float]) -> None:
        rounded = {f"{self.prefix}{k}": None if v is None else round(v, self.digits) for k, v in scores.items()}
        self.rows.append({"case_id": case_id, **rounded})

    def report(self, summary: dict, per_case: Path | None) -> None:
        if per_case:
            _write_per_case(per_case, self.rows)
        sys.stdout.write(json.dumps(summary) + "\n")


def _id_list(ids: Path | None) -> list[str] | None:
    return None if ids is None else [x.strip() for x in ids.read_text().split() if x.strip()]


def _write_table(path: Path, rows: list[dict], columns: list[str]) -> None:
    from lungx_core.io.writers import write_csv_atomic

    write_csv_atomic(path, rows, columns)


def _write_per_case(path: Path, rows: list[dict]) -> None:
    _write_table(path, rows, sorted({k for r in rows for k in r}, key=lambda k: (k != "case_id", k)))


@app.command()
def tasks(
    as_json: Annotated[bool, typer.Option("--json", help="The registry as JSON, for front ends.")] = False,
):
    """List the tasks this installation offers."""
    from lungx_core.tasks import registry

    if as_json:
        sys.stdout.write(json.dumps(registry.as_json()) + "\n")
        return
    for t in registry.TASKS.values():
        typer.echo(f"{t.name}\t{t.modality}\t{t.output_kind}\t{t.title}")


def main() -> None:
    """Console entry point: one-line errors instead of tracebacks or boxes (also when stderr is a file)."""
    from lungx_core.errors import LungXError

    try:
        code = app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("lungx: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:  # usage errors: bad option values, unknown commands
        ctx = getattr(exc, "ctx", None)
        where = f"{ctx.command_path}: " if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"lungx: error: {where}{message}".replace("\n", " "), file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except (LungXError, FileNotFoundError, RuntimeError, ValueError) as exc:
        if _state["debug"]:
            raise
        msg = str(exc) or type(exc).__name__
        print(f"lungx: error: {msg}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lungx: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _on_off(flag: bool) -> str:
    """The registry's spelling of a boolean option (input_check=on|off)."""
    return "on" if flag else "off"
