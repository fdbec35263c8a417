"""What this installation of lungx_core can do: front ends (the CLI, the Slicer module) list tasks from here
instead of hard-coding them, so a new task appears everywhere once it is registered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TaskOption:
    """One of a task's own options, as front ends offer it: ``kind`` is str, int, float or choice (one of
    ``choices``); ``default`` None means "the task decides" (e.g. the shipped model); ``low``/``high`` bound
    numbers."""

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None

    def parse(self, value: Any, task: str) -> Any:
        """``value`` (a string from a command line, or already typed) as this option's type; ValueError naming
        the task, the option and what it accepts otherwise."""
        where = f"task {task} option {self.name}"
        if self.kind == "choice":
            if str(value) not in self.choices:
                raise ValueError(f"{where}: {value!r} is not one of {', '.join(self.choices)}")
            return str(value)
        if self.kind == "str":
            return str(value)
        try:
            number = int(value) if self.kind == "int" else float(value)
        except (TypeError, ValueError):
            wanted = "an integer" if self.kind == "int" else "a number"
            raise ValueError(f"{where}: {value!r} is not {wanted}") from None
        if self.kind == "int" and isinstance(value, float) and value != int(value):
            raise ValueError(f"{where}: {value!r} is not an integer")
        if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
            raise ValueError(f"{where}: {number} is outside [{self.low}, {self.high}]")
        return number


def _model(default: str) -> TaskOption:
    return TaskOption("model", "str", None, f"Model name or a .safetensors path (default: the shipped {default}).")


INPUT_CHECK = TaskOption(
    "input_check", "choice", "on", "on: refuse an image that the frontal-chest gate does not take for a frontal chest "
    "radiograph (a CT slice, a lateral or oblique view, an inverted film, a non-chest picture); off: process it "
    "anyway (phantoms, a film the gate wrongly refuses).", choices=("on", "off"))
SEED = TaskOption("seed", "int", 0, "Seed of the random draws: the same seed gives the same pixels.", low=0,
                  high=2**31 - 1)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    title: str
    modality: str  # input: CXR or CT
    output_kind: str  # segmentation, volume or markups
    model: str  # shipped model name
    structures: tuple[str, ...] = ()
    # "module:function" that runs one input file for the worker process (lungx_core.worker) and for batch runs
    # (lungx_core.batch); its options beyond (case, out_dir, device, fast, progress) are the task's own,
    # described in ``options``; keyword-only ones after them are the command line's (output format, pictures)
    runner: str = ""
    options: tuple[TaskOption, ...] = ()

    def option(self, name: str) -> TaskOption:
        for option in self.options:
            if option.name == name:
                return option
        names = ", ".join(o.name for o in self.options) or "none"
        raise ValueError(f"task {self.name} has no option {name!r}; it takes: {names}")


TASKS: dict[str, TaskInfo] = {
    "cxr-anatomy": TaskInfo(
        name="cxr-anatomy",
        title="Chest X-ray: lungs, heart, clavicles",
        modality="CXR",
        output_kind="segmentation",
        model="cxr_anatomy",
        structures=("lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"),
        runner="lungx_core.tasks.cxr_segmentation:run_one",
        options=(
            _model("cxr_anatomy"),
            TaskOption("threshold", "float", 0.5, "Probability above which a pixel belongs to a structure.",
                       low=0.05, high=0.95),
            INPUT_CHECK,
        ),
    ),
    "ct-lungs": TaskInfo(
        name="ct-lungs",
        title="Chest CT: right and left lungs, volumes",
        modality="CT",
        output_kind="segmentation",
        model="ct_lungs",
        structures=("lung_right", "lung_left"),
        runner="lungx_core.tasks.ct_lungs:run_one",
        options=(
            _model("ct_lungs"),
            TaskOption("method", "choice", "net", "net: the lung network (holds on pathological lungs); classical: "
                       "thresholds and morphology, no model.", choices=("net", "classical")),
            TaskOption("series", "str", None, "For a DICOM folder: the series to read (UID, UID prefix or series "
                       "number); default the one with the most slices."),
        ),
    ),
    "cxr-synthesis": TaskInfo(
        name="cxr-synthesis",
        title="Chest X-ray: synthetic pathological version (lung mask kept)",
        modality="CXR",
        output_kind="volume",
        model="cxr_synthesis",
        structures=("lung", "opacity"),  # opacity: the drawn lesion (insert, lesion-guided cyclegan)
        runner="lungx_core.tasks.synthesis:run_one",
        options=(
            _model("cxr_synthesis"), SEED, INPUT_CHECK,
            TaskOption("method", "choice", "insert", "insert: lesions of the lesion model (measured on real opacity "
                       "masks) drawn into the lung field, nothing else changes; cyclegan: a CycleGAN generator on the "
                       "thoracic crop (a lesion-guided one changes only a drawn lesion).",
                       choices=("insert", "cyclegan")),
            TaskOption("area", "float", 0.0, "insert, lesion-guided cyclegan: share of the lung field the "
                       "lesions cover; 0 draws it from the lesion model (5-60 %).", low=0.0, high=0.9),
            TaskOption("side", "choice", "any", "insert, lesion-guided cyclegan: the patient's side(s) with "
                       "lesions; any = drawn.",
                       choices=("any", "both", "left", "right")),
            TaskOption("kind", "choice", "mixed", "insert, lesion-guided cyclegan: ground glass (ggo), "
                       "consolidation, consolidated cores in ground glass (mixed), or a near-opaque basal and "
                       "lateral white-out that runs into the lung border (whiteout).",
                       choices=("mixed", "ggo", "consolidation", "whiteout")),
        ),
    ),
    "cxr-opacity-removal": TaskInfo(
        name="cxr-opacity-removal",
        title="Chest X-ray: remove lung opacity (changed region as a segment)",
        modality="CXR",
        output_kind="volume",
        model="cxr_opacity_removal",
        structures=("opacity",),
        runner="lungx_core.tasks.opacity_removal:run_one",
        options=(_model("cxr_opacity_removal"), INPUT_CHECK),
    ),
    "cxr-rib-suppression": TaskInfo(
        name="cxr-rib-suppression",
        title="Chest X-ray: suppress bone (bone image estimated and subtracted; bone image as a volume)",
        modality="CXR",
        output_kind="volume",
        model="cxr_bone",
        structures=("bone",),
        runner="lungx_core.tasks.rib_suppression:run_one",
        options=(
            _model("cxr_bone"),
            TaskOption("mode", "choice", "bone", "bone: subtract the estimated bone image (vessels under a rib are "
                       "the film's own); inpaint / inpaint-subtract: diffusion inpainting under a rib mask "
                       "(research; inpaint hallucinates under the mask).",
                       choices=("bone", "inpaint", "inpaint-subtract")),
            TaskOption("strength", "float", 1.0, "Bone mode: 1 subtracts the model card's fitted amount, 0 nothing, "
                       "2 twice as much.", low=0.0, high=5.0),
            TaskOption("keep_nodules", "choice", "on", "Bone mode, on: the nodule detector looks first and the bone "
                       "image is taken out of each finding, so the subtraction leaves the nodules it finds (a "
                       "nodule it misses is still dimmed); off: subtract the bone image as the model gives it.",
                       choices=("on", "off")),
            TaskOption("inpainting_model", "str", "cxr_inpainting", "Diffusion modes: inpainting model name or a "
                       ".safetensors path."),
            TaskOption("steps", "int", 25, "Diffusion modes: denoising steps (10-50 is the useful range; fast mode "
                       "uses 10).", low=1, high=1000),
            SEED,
            TaskOption("scheduler", "choice", "ddim", "Diffusion modes: DDIM, DPM-Solver++ or RePaint.",
                       choices=("ddim", "dpm", "repaint")),
            INPUT_CHECK,
        ),
    ),
    "cxr-nodules": TaskInfo(
        name="cxr-nodules",
        title="Chest X-ray: lung nodule candidates (research; ranked points with size and probability)",
        modality="CXR",
        output_kind="markups",
        model="cxr_nodules",
        runner="lungx_core.tasks.nodule_detection:run_one",
        options=(_model("cxr_nodules"), INPUT_CHECK),
    ),
}


def task_info(name: str) -> TaskInfo:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; this lungx_core offers: {', '.join(TASKS)}")
    return TASKS[name]


def as_json() -> list[dict]:
    """The registry as plain data, for front ends that run in another Python (``lungx tasks --json``)."""
    from dataclasses import asdict

    return [asdict(t) for t in TASKS.values()]
