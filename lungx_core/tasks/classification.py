"""CXR triage score: the healthy-vs-pathological judge (``cxr_pathology``) on each radiograph, as one results row.

The score is the judge's probability of lung pathology inside the thoracic crop; ``pathological`` is 1 at or above
the model card's operating threshold. It is a research triage score, not a diagnosis. The shipped judge (v2) was
trained against style changes (gamma, CLAHE, histogram matching move few healthy films over the threshold) but
misses some real disease and is weak within a single source; see cxr_pathology.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.cxr.gate import FrontalChestGate
from lungx_core.cxr.pathology import DEFAULT_MODEL, PathologyClassifier
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import Case
from lungx_core.orientation import display_view
from lungx_core.tasks.common import ok_row, read_checked_radiograph, run_guarded
from lungx_core.tasks.synthesis import find_lungs

TASK = "cxr-classify"
RESULT_COLUMNS = ["pathology_probability", "pathological", "lung_source", "seconds"]


def triage(classifier: PathologyClassifier, image: MedicalImage, lung: np.ndarray) -> tuple[float, int]:
    """(probability of lung pathology, 1 at or above the classifier's operating threshold else 0) of a radiograph
    with its lung fields (bool, the image's shape and orientation)."""
    display, lung_display, _ = display_view(image, lung)
    p = classifier.probability(display, lung_display)
    return p, int(p >= classifier.threshold)


def classify_case(
    case: Case,
    classifier: PathologyClassifier,
    lung_mask: Path | None = None,
    segmenter: Any = None,
    gate: FrontalChestGate | None = None,
) -> dict[str, Any]:
    """Read, check with ``gate`` (when given), find the lungs and score one radiograph. Bad input becomes an
    error row."""
    def work() -> dict[str, Any]:
        t0 = time.perf_counter()
        image = read_checked_radiograph(case.path, gate)
        lung, source = find_lungs(case.path, image, lung_mask, segmenter)
        p, pathological = triage(classifier, image, lung)
        return ok_row(
            case, TASK,
            qc_flags="", pathology_probability=round(p, 4), pathological=pathological,
            lung_source=source, seconds=round(time.perf_counter() - t0, 3),
        )

    return run_guarded(case, TASK, work)


def run_one(
    case: Case,
    out_dir: Path | None = None,
    device: str = "auto",
    fast: bool = False,
    progress: Any = None,
    model: str = DEFAULT_MODEL,
    input_check: str = "on",
) -> dict[str, Any]:
    """One radiograph, as batch runs (lungx_core.batch) run it: lungs from ``case.mask`` or else the anatomy
    model; nothing is written (``out_dir`` is unused: the score is the row). Models are loaded once per
    process."""
    from lungx_core.cxr.gate import optional_gate
    from lungx_core.models.store import shared_model
    from lungx_core.tasks.cxr_segmentation import lung_segmenter

    classifier = shared_model(PathologyClassifier, model or DEFAULT_MODEL, device=device)
    segmenter = None if case.mask else lung_segmenter(device)
    return classify_case(case, classifier, case.mask, segmenter, optional_gate(input_check, device))
