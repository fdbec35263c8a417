"""Runs the Slicer self-tests where a Slicer executable exists (SLICER_EXECUTABLE); skips elsewhere (CI, here).

The tests themselves are the module's LungXSlicerTest and Testing/Python/LungXSlicerSelfTests.py; they need
lungx_core installed in that Slicer's Python (press Apply once in the module, or call
LungXSlicerLogic().ensureDependencies() in its console).
"""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import REPO

SLICER = os.environ.get("SLICER_EXECUTABLE")
pytestmark = pytest.mark.skipif(not SLICER, reason="SLICER_EXECUTABLE is not set: no 3D Slicer here")


@pytest.mark.parametrize("test_module", ["LungXSlicer", "LungXSlicerSelfTests"])
def test_slicer_self_tests(test_module: str):
    code = (
        "import slicer.testing; "
        f"slicer.testing.runUnitTest(['Testing/Python', 'LungXSlicer'], {test_module!r})"
    )
    cmd = [SLICER, "--testing", "--no-splash", "--no-main-window", "--additional-module-paths",
           str(REPO / "LungXSlicer"), "--python-code", code]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, errors="replace", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
