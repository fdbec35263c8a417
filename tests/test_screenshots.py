"""The README's Slicer pictures are made again from the embedded samples (docs/screenshots.py) and must still look
like the committed ones: same files, same sizes, close pixels, each at most 300 kB. Slow: it runs four tasks in the
real worker."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_screenshots_are_made_again_and_match_the_committed_ones(tmp_path):
    pytest.importorskip("slicer_core", reason="slicer-core (real Slicer MRML) is not installed")
    pytest.importorskip("PySide6.QtUiTools", reason="PySide6-Essentials is not installed")
    sys.path.insert(0, str(REPO / "tests"))
    from slicer_views import gl_unavailable

    reason = gl_unavailable()
    if reason:
        pytest.skip(reason)
    from PIL import Image

    spec = importlib.util.spec_from_file_location("screenshots", REPO / "docs" / "screenshots.py")
    screenshots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshots)
    written = screenshots.main(["--out", str(tmp_path)])
    assert [p.name for p in written] == list(screenshots.NAMES)
    for path in written:
        committed = REPO / "docs" / "images" / path.name
        assert committed.is_file(), f"{committed} is not committed"
        for p in (path, committed):
            assert p.stat().st_size <= 300_000, f"{p}: {p.stat().st_size} bytes"
        new = np.asarray(Image.open(path).convert("RGB"), np.float32)
        old = np.asarray(Image.open(committed).convert("RGB"), np.float32)
        assert new.shape == old.shape, path.name
        # the panel's "Done in 4.3 s" and the 3-D surface's shading may differ a little, not the picture
        assert np.abs(new - old).mean() < 6.0, f"{path.name} changed: rerun python docs/screenshots.py"
