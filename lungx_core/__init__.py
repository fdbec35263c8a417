"""LungX core: chest-imaging segmentation, bone and opacity removal and synthesis, with exact geometry.

Importing this package is cheap: the names below load on first use, and torch and MONAI only when a model runs.

Example::

    import lungx_core as lx

    seg = lx.segment("film.dcm")         # or a CT file / DICOM series folder
    seg.masks["lung_left"], seg.measurements["ctr"], seg.qc_flags
    seg.save("out/")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "read_image": "lungx_core.api",
    "segment": "lungx_core.api",
    "lung_fields": "lungx_core.api",
    "synthesize": "lungx_core.api",
    "remove_opacity": "lungx_core.api",
    "suppress_ribs": "lungx_core.api",
    "classify": "lungx_core.api",
    "detect_nodules": "lungx_core.api",
    "Result": "lungx_core.api",
    "MedicalImage": "lungx_core.image",
    "InputError": "lungx_core.errors",
    "LungXError": "lungx_core.errors",
    "CXRSegmenter": "lungx_core.tasks.cxr_segmentation",
    "CTLungSegmenter": "lungx_core.tasks.ct_lungs",
    "FrontalChestGate": "lungx_core.cxr.gate",
    "TASKS": "lungx_core.tasks.registry",
}
__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # for editors and type checkers; at run time the names load lazily
    from lungx_core.api import (  # noqa: F401
        Result,
        classify,
        detect_nodules,
        lung_fields,
        read_image,
        remove_opacity,
        segment,
        suppress_ribs,
        synthesize,
    )
    from lungx_core.cxr.gate import FrontalChestGate  # noqa: F401
    from lungx_core.errors import InputError, LungXError  # noqa: F401
    from lungx_core.image import MedicalImage  # noqa: F401
    from lungx_core.tasks.ct_lungs import CTLungSegmenter  # noqa: F401
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter  # noqa: F401
    from lungx_core.tasks.registry import TASKS  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next access skips this function
        return value
    raise AttributeError(f"module 'lungx_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
