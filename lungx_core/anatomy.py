"""Structures we segment: names, display colours and DICOM/SNOMED-CT terminology (Slicer's conventions).

``left``/``right`` are always the patient's sides. On a standard PA display the patient's left is on the
image's right.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
# Our own list (LungXSlicer/Resources/Terminology/*.term.json, loaded by the Slicer module): concepts that Slicer's
# General Anatomy list does not hold, such as a lung opacity on a radiograph.
LUNGX_TERMINOLOGY_CONTEXT = "Segmentation category and type - LungX"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Structure:
    name: str
    label: int
    color: tuple[float, float, float]
    property_code: str
    property_meaning: str
    modifier_code: str = ""
    modifier_meaning: str = ""
    category_code: str = "123037004"
    category_meaning: str = "Anatomical Structure"
    context: str = TERMINOLOGY_CONTEXT  # the terminology list that holds this category/type/modifier

    def terminology(self) -> str:
        """Slicer's terminology-entry string: context~category~type~type modifier~anatomic context~anatomic
        region~anatomic region modifier (no anatomic region: the type itself is anatomy)."""
        cat = f"SCT^{self.category_code}^{self.category_meaning}"
        typ = f"SCT^{self.property_code}^{self.property_meaning}"
        mod = f"SCT^{self.modifier_code}^{self.modifier_meaning}" if self.modifier_code else "^^"
        return f"{self.context}~{cat}~{typ}~{mod}~{ANATOMIC_CONTEXT}~^^~^^"


LUNG_LEFT = Structure("lung_left", 1, (0.50, 0.68, 0.60), "39607008", "Lung", "7771000", "Left")
LUNG_RIGHT = Structure("lung_right", 2, (0.75, 0.50, 0.45), "39607008", "Lung", "24028007", "Right")
HEART = Structure("heart", 3, (0.81, 0.24, 0.24), "80891009", "Heart")
CLAVICLE_LEFT = Structure("clavicle_left", 4, (0.94, 0.87, 0.67), "51299004", "Clavicle", "7771000", "Left")
CLAVICLE_RIGHT = Structure("clavicle_right", 5, (0.86, 0.78, 0.55), "51299004", "Clavicle", "24028007", "Right")

CXR_STRUCTURES: tuple[Structure, ...] = (LUNG_LEFT, LUNG_RIGHT, HEART, CLAVICLE_LEFT, CLAVICLE_RIGHT)
CXR_CLASSES: tuple[str, ...] = tuple(s.name for s in CXR_STRUCTURES)

# Both lung fields as one structure: the known label of a synthetic image, a user-given lung mask.
LUNGS = Structure("lung", 1, (0.50, 0.68, 0.60), "39607008", "Lung")

# Where opacity removal was allowed to change the film (its activation mask): a morphologically altered
# structure ("Lesion" in Slicer's terminology), not anatomy.
# posterior ribs, the mask rib suppression regenerates (SCT 113197003 "Bone structure of rib")
RIBS = Structure("ribs", 1, (0.99, 0.98, 0.86), "113197003", "Rib")
# where the bone-layer model took bone out of the film (strong bone image; SCT 272673000 "Bone structure")
BONE = Structure("bone", 1, (0.95, 0.93, 0.80), "272673000", "Bone")
OPACITY = Structure("opacity", 1, (0.95, 0.55, 0.15), "52988006", "Lesion", category_code="49755003",
                    category_meaning="Morphologically Altered Structure", context=LUNGX_TERMINOLOGY_CONTEXT)

# Channel pairs exchanged when an image is mirrored left-right.
CXR_MIRROR_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (3, 4))


# CT label maps follow the common convention (TotalSegmentator-style exports, our evaluation layout):
# 1 right lung, 2 left lung.
CT_LUNG_RIGHT = replace(LUNG_RIGHT, label=1)
CT_LUNG_LEFT = replace(LUNG_LEFT, label=2)
CT_STRUCTURES: tuple[Structure, ...] = (CT_LUNG_RIGHT, CT_LUNG_LEFT)


def structure_by_name(name: str) -> Structure:
    for s in CXR_STRUCTURES:
        if s.name == name:
            return s
    raise KeyError(name)


def class_mask(masks: Mapping[str, np.ndarray], cls: str) -> np.ndarray:
    """One reference class from per-side masks: ``"lung"`` is both lungs, ``"clavicles"`` both clavicles; any
    other name is looked up as is.

    Args:
        masks: structure name -> (H, W) bool mask, as ``lx.segment(...).masks``.
        cls: ``"lung"``, ``"clavicles"`` or a structure name such as ``"heart"``.

    Example::

        lung = class_mask(lx.segment("film.png").masks, "lung")
    """
    if cls == "lung":
        return masks["lung_left"] | masks["lung_right"]
    if cls == "clavicles":
        return masks["clavicle_left"] | masks["clavicle_right"]
    return masks[cls]
