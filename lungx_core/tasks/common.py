"""What every file-level task step shares: one results row per case, and the rule that a bad input becomes an
error row (one line naming the file and the problem) instead of ending a batch of thousands."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungx_core.errors import LungXError
from lungx_core.io.inputs import Case

if TYPE_CHECKING:
    from lungx_core.cxr.gate import FrontalChestGate
    from lungx_core.image import MedicalImage

# progress(fraction in [0, 1], message): how far a long step is, for progress bars and the Slicer worker
Progress = Callable[[float, str], None]

COMMON_COLUMNS = ["case_id", "input", "task", "status", "error", "qc_flags"]
TRAILING_COLUMNS = ["spacing_mm", "outputs"]


def read_checked_radiograph(path: Path, gate: FrontalChestGate | None) -> MedicalImage:
    """The radiograph at ``path``, refused (InputError) unless ``gate`` is None or takes it for a frontal chest
    film."""
    from lungx_core.io.readers import read_radiograph

    image = read_radiograph(path)
    if gate is not None:
        gate.check(image)
    return image


def error_row(case: Case, message: str, task: str = "") -> dict[str, Any]:
    return {"case_id": case.case_id, "input": str(case.path), "task": task, "status": "error", "error": message}


def ok_row(case: Case, task: str, **fields: Any) -> dict[str, Any]:
    """A finished case's results row: the columns every task shares (as :func:`error_row`), then ``fields``."""
    return {"case_id": case.case_id, "input": str(case.path), "task": task, "status": "ok", "error": "", **fields}


def run_guarded(case: Case, task: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()``'s row, or an error row for a known-bad case or any failure while reading, computing, writing."""
    if case.problem:
        return error_row(case, f"{case.path}: {case.problem}", task)
    try:
        return work()
    except LungXError as exc:
        return error_row(case, str(exc), task)
    except MemoryError:
        return error_row(case, f"{case.path}: out of memory while processing", task)
    except OSError as exc:  # e.g. a full disk or an unwritable output folder
        return error_row(case, f"{case.path}: {exc.strerror or exc}", task)
    except Exception as exc:  # noqa: BLE001 - one unexpected failure must not end a batch
        return error_row(case, f"{case.path}: internal error ({type(exc).__name__}: {str(exc)[:160]})", task)
