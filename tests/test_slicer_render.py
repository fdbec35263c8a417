"""Results as a radiologist sees them in Slicer: the real worker's ct-lungs and cxr-anatomy outputs imported into real
nodes and drawn offscreen by Slicer's own displayable managers (tests/slicer_views.py), checked by pixel colour.

- Radiological convention: the patient's right lung is drawn on the screen's left in the anterior 3-D view and in
  the axial and coronal slice views, for the CT and for the film.
- What is drawn has each segment's colour, and that colour is the one its terminology entry recommends.
- The film's segmentation lies on the film: every segment pixel inside the film's drawn bounds.
Skipped, with the reason, where no offscreen OpenGL exists (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from slicer_mrml import install, terminology_lookup, volume_node
from slicer_views import SliceView, ThreeDView, colour_mask, gl_unavailable

from lungx_core.io.sample import sample_ct, sample_radiograph


@pytest.fixture(scope="module")
def gl():
    pytest.importorskip("slicer_core", reason="slicer-core (real Slicer MRML) is not installed")
    reason = gl_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def mrml(monkeypatch, gl):
    slicer = install(monkeypatch)
    module = importlib.import_module("LungXSlicer")
    module.loadTerminology()
    return slicer, module


def _segment(seg, segment_id):
    return seg.GetSegmentation().GetSegment(segment_id)


def _recommended_rgb(slicer, module, segment) -> tuple[float, float, float]:
    """The colour the segment's terminology entry recommends in the loaded list. Slicer's General Anatomy list is
    not in the wheel; our own list carries the same codes, so its entry stands in."""
    entry = module.segmentTerminology(segment)
    context = entry.split("~")[0]
    entry = entry.replace(context, "Segmentation category and type - LungX", 1)
    found = terminology_lookup(slicer.modules.terminologies.logic(), entry)
    assert found is not None, entry
    return tuple(c / 255 for c in found.GetRecommendedDisplayRGBValue())


def _assert_colours(slicer, module, seg, ids) -> dict[str, tuple]:
    colours = {}
    for segment_id in ids:
        segment = _segment(seg, segment_id)
        colour = tuple(segment.GetColor())
        np.testing.assert_allclose(colour, _recommended_rgb(slicer, module, segment), atol=1.5 / 255,
                                   err_msg=segment_id)
        colours[segment_id] = colour
    return colours


def _columns(pixels, colour, minimum=50) -> np.ndarray:
    rows, cols = np.nonzero(colour_mask(pixels, colour))
    assert cols.size >= minimum, f"only {cols.size} pixels of colour {colour} on screen"
    return cols


def _assert_right_on_screen_left(pixels, colours, right="lung_right", left="lung_left") -> None:
    r = _columns(pixels, colours[right])
    q = _columns(pixels, colours[left])
    assert np.median(r) < np.median(q), f"right lung at column {np.median(r)}, left at {np.median(q)}"


def test_ct_lungs_right_on_screen_left_in_3d_axial_and_coronal(mrml):
    slicer, module = mrml
    node = volume_node(sample_ct(), "chest CT")
    result = module.LungXSlicerLogic().run("ct-lungs", node, device="cpu", fast=True)
    seg = result.segmentation
    colours = _assert_colours(slicer, module, seg, ["lung_right", "lung_left"])
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")  # shown in 3-D at once

    app = slicer.app.applicationLogic()
    view = ThreeDView(slicer.mrmlScene, app)
    view.look_from("Anterior")
    _assert_right_on_screen_left(view.capture(), colours)
    view.look_from("Posterior")  # and the other way round from behind: the check sees the sides, not a bias
    back = view.capture()
    assert np.median(_columns(back, colours["lung_right"])) > np.median(_columns(back, colours["lung_left"]))

    for orientation in ("Axial", "Coronal"):
        slice_view = SliceView(slicer.mrmlScene, app, name={"Axial": "Red", "Coronal": "Green"}[orientation],
                               orientation=orientation)
        slice_view.show(node)
        _assert_right_on_screen_left(slice_view.capture(), colours)


def test_film_segmentation_on_the_film_right_on_screen_left(mrml):
    slicer, module = mrml
    node = volume_node(sample_radiograph(), "film")
    result = module.LungXSlicerLogic().run("cxr-anatomy", node, device="cpu", fast=True)
    seg = result.segmentation
    ids = [seg.GetSegmentation().GetNthSegmentID(i) for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert {"lung_right", "lung_left", "heart"} <= set(ids)
    colours = _assert_colours(slicer, module, seg, ids)
    view = SliceView(slicer.mrmlScene, slicer.app.applicationLogic(), name="Green", orientation="Coronal")
    view.show(node)
    pixels = view.capture()
    _assert_right_on_screen_left(pixels, colours)

    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    corners = [view.ras_to_pixel((x, bounds[2], z)) for x in bounds[:2] for z in bounds[4:]]
    cols, rows = zip(*corners, strict=True)
    drawn = np.zeros(pixels.shape[:2], bool)
    for segment_id in ids:
        drawn |= colour_mask(pixels, colours[segment_id])
    r, c = np.nonzero(drawn)
    assert r.size > 500
    assert c.min() >= min(cols) - 1 and c.max() <= max(cols) + 1, (c.min(), c.max(), cols)
    assert r.min() >= min(rows) - 1 and r.max() <= max(rows) + 1, (r.min(), r.max(), rows)
