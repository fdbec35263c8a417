"""What this installation of lungx_core can do: front ends (the CLI, the Slicer module) list tasks from here
instead of hard-coding them, so a new task appears everywhere once it is registered."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    name: str
    title: str
    modality: str  # input: CXR or CT
    output_kind: str  # segmentation or volume
    model: str  # shipped model name
    structures: tuple[str, ...] = ()
    # "module:function" that runs one input file for the worker process (lungx_core.worker); its keyword
    # options beyond (case, out_dir, device, fast, progress) are the task's own, listed in ``options``
    runner: str = ""
    options: tuple[str, ...] = ()


TASKS: dict[str, TaskInfo] = {
    "cxr-anatomy": TaskInfo(
        name="cxr-anatomy",
        title="Chest X-ray: lungs, heart, clavicles",
        modality="CXR",
        output_kind="segmentation",
        model="cxr_anatomy",
        structures=("lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"),
        runner="lungx_core.tasks.cxr_segmentation:run_one",
        options=("model", "threshold"),
    ),
    "ct-lungs": TaskInfo(
        name="ct-lungs",
        title="Chest CT: right and left lungs, volumes",
        modality="CT",
        output_kind="segmentation",
        model="ct_lungs",
        structures=("lung_right", "lung_left"),
        runner="lungx_core.tasks.ct_lungs:run_one",
        options=("model", "method", "series"),
    ),
    "cxr-synthesis": TaskInfo(
        name="cxr-synthesis",
        title="Chest X-ray: synthetic pathological version (lung mask kept)",
        modality="CXR",
        output_kind="volume",
        model="cxr_synthesis",
        structures=("lung",),
        runner="lungx_core.tasks.synthesis:run_one",
        options=("model", "seed"),
    ),
    "cxr-opacity-removal": TaskInfo(
        name="cxr-opacity-removal",
        title="Chest X-ray: remove lung opacity (changed region as a segment)",
        modality="CXR",
        output_kind="volume",
        model="cxr_opacity_removal",
        structures=("opacity",),
        runner="lungx_core.tasks.opacity_removal:run_one",
        options=("model",),
    ),
    "cxr-rib-suppression": TaskInfo(
        name="cxr-rib-suppression",
        title="Chest X-ray: suppress posterior ribs (diffusion inpainting; rib mask as a segment)",
        modality="CXR",
        output_kind="volume",
        model="cxr_inpainting",
        structures=("ribs",),
        runner="lungx_core.tasks.rib_suppression:run_one",
        options=("model",),
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
