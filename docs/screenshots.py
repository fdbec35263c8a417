"""The README's pictures of the LungXSlicer module, made from the embedded samples with no Slicer application.

The module's real panel (Qt through PySide6, tests/qt_shim.py) runs real tasks in the real worker; results become
real MRML nodes (slicer-core) drawn by Slicer's own displayable managers offscreen (tests/slicer_views.py). Needs the
``slicer-test`` extra and an offscreen OpenGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri).

    python docs/screenshots.py                # writes docs/images/slicer_*.png
    python docs/screenshots.py --out /tmp/x   # elsewhere (the slow test does this, so the pictures never go stale)
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "images"
NAMES = ("slicer_panel.png", "slicer_ct_lungs.png", "slicer_cxr_anatomy.png", "slicer_rib_suppression.png",
         "slicer_nodules.png")


def _save(pixels: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(pixels).quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, optimize=True)
    tmp.replace(path)


def _side_by_side(*images: np.ndarray, gap: int = 6) -> np.ndarray:
    rows = max(i.shape[0] for i in images)
    parts = []
    for i, image in enumerate(images):
        pad = np.full((rows, image.shape[1], 3), 255, np.uint8)
        pad[: image.shape[0]] = image
        parts.append(pad)
        if i < len(images) - 1:
            parts.append(np.full((rows, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def _grab(qt, widget) -> np.ndarray:
    image = widget.grab().toImage().convertToFormat(qt.QImage.Format_RGB888)
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    data = np.frombuffer(image.constBits(), np.uint8, count=stride * height).reshape(height, stride)
    return data[:, : width * 3].reshape(height, width, 3).copy()


def panel(slicer, module, qt, out: Path) -> None:
    """The panel after a cxr-anatomy run on the sample film: task, options, status and results table."""
    from slicer_mrml import volume_node

    from lungx_core.io.sample import sample_radiograph

    widget = module.LungXSlicerWidget()
    widget.setup()
    widget.parent.resize(470, 900)
    widget.parent.show()
    node = volume_node(sample_radiograph(), "sample film")
    widget.ui.inputSelector.setCurrentNode(node)
    widget.ui.forceCpuCheckBox.setChecked(True)
    widget.onApplyButton()
    end = time.monotonic() + 300
    while widget._run is not None and time.monotonic() < end:
        qt.QApplication.processEvents()
        time.sleep(0.02)
    qt.QApplication.processEvents()
    if not widget.ui.statusLabel.text.startswith("Done"):
        raise RuntimeError(f"the panel's run did not end well: {widget.ui.statusLabel.text}")
    _save(_grab(qt, widget.parent), out / "slicer_panel.png")
    widget.cleanup()
    widget.parent.hide()


def ct_lungs(slicer, module, out: Path) -> None:
    """CT lungs: anterior 3-D view and the axial slice (patient's right on the screen's left in both)."""
    from slicer_mrml import volume_node
    from slicer_views import SliceView, ThreeDView

    from lungx_core.io.sample import sample_ct

    node = volume_node(sample_ct(), "sample CT")
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetAutoWindowLevel(0)
    node.GetDisplayNode().SetWindowLevel(1500, -500)  # lung window
    module.LungXSlicerLogic().run("ct-lungs", node, device="cpu", fast=True)
    app = slicer.app.applicationLogic()
    view = ThreeDView(slicer.mrmlScene, app, size=(420, 420))
    view.look_from("Anterior")
    axial = SliceView(slicer.mrmlScene, app, "Red", "Axial", size=(420, 420))
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    axial.show(node, offset=bounds[4] + 0.55 * (bounds[5] - bounds[4]))
    _save(_side_by_side(view.capture(), axial.capture()), out / "slicer_ct_lungs.png")


def cxr_anatomy(slicer, module, out: Path):
    """The film in the coronal view with its lungs, heart and clavicles."""
    from slicer_mrml import volume_node
    from slicer_views import SliceView

    from lungx_core.io.sample import sample_radiograph

    node = volume_node(sample_radiograph(), "sample film")
    module.LungXSlicerLogic().run("cxr-anatomy", node, device="cpu", fast=True)
    view = SliceView(slicer.mrmlScene, slicer.app.applicationLogic(), "Green", "Coronal", size=(440, 440))
    view.show(node)
    _save(view.capture(), out / "slicer_cxr_anatomy.png")
    return node


def rib_suppression(slicer, module, film, out: Path) -> None:
    """The film before and after bone suppression, side by side in two coronal views (no segmentation shown)."""
    from slicer_views import SliceView

    result = module.LungXSlicerLogic().run("cxr-rib-suppression", film, device="cpu", fast=True)
    for seg in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
        seg.GetDisplayNode().SetVisibility(False)
    app = slicer.app.applicationLogic()
    before = SliceView(slicer.mrmlScene, app, "Yellow", "Coronal", size=(400, 400))  # Green shows the anatomy
    before.show(film)
    after = SliceView(slicer.mrmlScene, app, "Red", "Coronal", size=(400, 400))
    suppressed = result.volumes[0]
    suppressed.CreateDefaultDisplayNodes()
    shown = film.GetDisplayNode()
    suppressed.GetDisplayNode().SetAutoWindowLevel(0)
    suppressed.GetDisplayNode().SetWindowLevel(shown.GetWindow(), shown.GetLevel())  # same grey scale as before
    after.show(suppressed)
    _save(_side_by_side(before.capture(), after.capture()), out / "slicer_rib_suppression.png")


def nodules(slicer, module, out: Path) -> None:
    """Nodule candidates as a markups point list over a film with one simulated 14-mm solid nodule of high contrast
    (12 % of the film's range): the embedded film has none, and the detector, below its targets (model card),
    misses the fainter ones on this blurred DRR. The simulation is training/nodule_sim.py's."""
    from dataclasses import replace

    from slicer_mrml import volume_node
    from slicer_views import SliceView

    from lungx_core.io.sample import sample_radiograph
    from training.nodule_sim import Nodule, render_nodules

    film = sample_radiograph()
    rows, cols = film.array.shape
    pixel = film.spacing[0]
    scale = float(np.percentile(film.array, 99) - np.percentile(film.array, 1))  # contrast is of the film's range
    nodule = Nodule(x=0.32 * cols, y=0.42 * rows, diameter=14.0 / pixel, amplitude=0.12 * scale, kind="solid")
    array = film.array + render_nodules(film.array.shape, [nodule], np.random.default_rng(0))
    node = volume_node(replace(film, array=array.astype(film.array.dtype)), "film with a simulated nodule")
    result = module.LungXSlicerLogic().run("cxr-nodules", node, device="cpu", fast=True)
    for markups in result.markups:  # a small dot at the centre, so the nodule stays visible around it
        display = markups.GetDisplayNode()
        display.SetUseGlyphScale(False)
        display.SetGlyphSize(4.0)  # mm
    view = SliceView(slicer.mrmlScene, slicer.app.applicationLogic(), "Green", "Coronal", size=(440, 440))
    view.show(node)
    _save(view.capture(), out / "slicer_nodules.png")


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    for path in (REPO / "tests", REPO):  # the Qt shim, the harness and the views; training's nodule simulation
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import pytest
    from slicer_mrml import install
    from slicer_views import gl_unavailable

    reason = gl_unavailable()
    if reason:
        raise SystemExit(f"cannot render: {reason}")
    with pytest.MonkeyPatch.context() as patch:

        def fresh_scene():
            """A new scene with the module imported against it (each picture shows only its own nodes)."""
            slicer = install(patch, with_qt=True)
            module = importlib.import_module("LungXSlicer")
            module.loadTerminology()
            return slicer, module

        slicer, module = fresh_scene()
        import qt  # PySide6 as PythonQt, which install() puts in place

        panel(slicer, module, qt, args.out)
        ct_lungs(*fresh_scene(), args.out)
        slicer, module = fresh_scene()
        film = cxr_anatomy(slicer, module, args.out)
        rib_suppression(slicer, module, film, args.out)
        nodules(*fresh_scene(), args.out)
    written = [args.out / name for name in NAMES]
    for path in written:
        print(f"{path} {path.stat().st_size // 1024} kB")
    return written


if __name__ == "__main__":
    main()
