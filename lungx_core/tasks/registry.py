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


TASKS: dict[str, TaskInfo] = {
    "cxr-anatomy": TaskInfo(
        name="cxr-anatomy",
        title="Chest X-ray: lungs, heart, clavicles",
        modality="CXR",
        output_kind="segmentation",
        model="cxr_anatomy",
        structures=("lung_left", "lung_right", "heart", "clavicle_left", "clavicle_right"),
    ),
    "ct-lungs": TaskInfo(
        name="ct-lungs",
        title="Chest CT: right and left lungs, volumes",
        modality="CT",
        output_kind="segmentation",
        model="ct_lungs",
        structures=("lung_right", "lung_left"),
    ),
}
