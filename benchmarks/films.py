"""The benchmarks' stand-in for a clinical film: the embedded sample radiograph resized to a long side and
written as a 16-bit PNG (what a 2k detector export looks like to the readers)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def sample_film_png(folder: Path, long_side: int = 2048) -> Path:
    """``folder/sample.png``: the embedded sample film at ``long_side`` px, 16 bits, its 0.5/99.5 percentiles
    spread over the range."""
    from lungx_core.cxr.thoracic import resize
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.io.writers import write_png

    drr = sample_radiograph().array
    scale = long_side / max(drr.shape)
    film = resize(drr, (round(drr.shape[0] * scale), round(drr.shape[1] * scale)))
    low, high = np.percentile(film, [0.5, 99.5])
    path = Path(folder) / "sample.png"
    write_png(path, (np.clip((film - low) / (high - low), 0, 1) * 65535).astype(np.uint16))
    return path


def seconds_per_case(process, cases: list, out: Path, repeat: int) -> float:
    """Mean seconds of ``process(case, folder)`` (a task's ``*_case`` function, which returns a results row) per
    case over ``repeat`` rounds, after one untimed call that pays the lazy imports; every row must be ok."""
    process(cases[0], Path(out) / "warm")
    t0 = time.perf_counter()
    for i in range(repeat):
        for case in cases:
            row = process(case, Path(out) / f"out{i}")
            assert row["status"] == "ok", row["error"]
    return (time.perf_counter() - t0) / (repeat * len(cases))
