"""Slicer's 3-D and slice views rendered offscreen, for checking results by their pixels and for screenshots.

A view here is what qMRMLThreeDView / qMRMLSliceWidget are in the application, minus Qt: a VTK render window
(offscreen; Mesa EGL without a display), Slicer's own displayable managers from the slicer-core wheel (segmentations,
models, markups, volume slices), a view node and, for slice views, a vtkMRMLSliceLogic whose blended layers are drawn
as the background image. So what is seen is what Slicer draws for the same nodes: the same colours, opacities,
outlines and camera conventions.

``gl_unavailable()`` says why rendering cannot run here (no EGL/GL library), for a clean skip.
"""

from __future__ import annotations

import ctypes.util

import numpy as np

_3D_MANAGERS = (
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLViewDisplayableManager",
    "vtkMRMLModelDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLMarkupsDisplayableManager",
)
_2D_MANAGERS = (
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLMarkupsDisplayableManager",
)


def gl_unavailable() -> str:
    """'' when an offscreen OpenGL context can be made, else the reason."""
    if not (ctypes.util.find_library("EGL") or ctypes.util.find_library("OSMesa") or ctypes.util.find_library("GL")):
        return "no EGL/OSMesa/GL library (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri)"
    try:
        import vtk

        window = vtk.vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetSize(8, 8)
        window.Render()
        if not window.SupportsOpenGL():
            return "VTK found no OpenGL context offscreen"
        window.Finalize()
    except Exception as exc:  # noqa: BLE001 - any failure here is the reason to skip
        return f"VTK cannot render offscreen: {exc}"
    return ""


class _View:
    def __init__(self, app_logic, factory_class: str, managers: tuple[str, ...], size: tuple[int, int]):
        import slicer
        import vtk

        self.renderer = vtk.vtkRenderer()
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetMultiSamples(0)
        self.window.SetSize(*size)
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # some managers need one to exist
        self.interactor.SetRenderWindow(self.window)
        factory = getattr(slicer, factory_class).GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for name in managers:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)

    def capture(self) -> np.ndarray:
        """The view as an RGB array (rows from the top of the screen)."""
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        cols, rows, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, cols, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])


class ThreeDView(_View):
    """Slicer's 3-D view: box and axis labels off, camera looking from ``direction`` (Slicer's view-from buttons)."""

    def __init__(self, scene, app_logic, size=(480, 480), name="1"):
        import slicer

        super().__init__(app_logic, "vtkMRMLThreeDViewDisplayableManagerFactory", _3D_MANAGERS, size)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        self.logic.SetMRMLScene(scene)
        self.node = self.logic.AddViewNode(name)
        self.node.SetBoxVisible(0)
        self.node.SetAxisLabelsVisible(0)
        self.managers.SetMRMLDisplayableNode(self.node)

    def look_from(self, direction: str = "Anterior") -> None:
        """Centre on what is shown and look from Anterior, Posterior, Left, Right, Superior or Inferior."""
        import slicer

        camera = self.managers.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager").GetCameraNode()
        self.renderer.ResetCamera()
        bounds = [0.0] * 6
        self.renderer.ComputeVisiblePropBounds(bounds)
        camera.SetFocalPoint([(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)])
        camera.RotateTo(getattr(slicer.vtkMRMLCameraNode, direction))
        self.renderer.ResetCamera()
        self.renderer.ResetCameraClippingRange()


class SliceView(_View):
    """A Slicer slice view (Red/Yellow/Green) showing ``background`` with the scene's segmentations over it."""

    def __init__(self, scene, app_logic, name="Red", orientation="Axial", size=(480, 480)):
        import slicer
        import vtk

        super().__init__(app_logic, "vtkMRMLSliceViewDisplayableManagerFactory", _2D_MANAGERS, size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app_logic)
        logics = app_logic.GetSliceLogics()
        if logics is None:
            logics = vtk.vtkCollection()
            app_logic.SetSliceLogics(logics)
        logics.AddItem(self.logic)
        self.logic.SetMRMLScene(scene)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(orientation)
        self.managers.SetMRMLDisplayableNode(self.node)
        # the blended volume layers, drawn behind the managers' actors as Slicer's light-box manager does
        self._mapper = vtk.vtkImageMapper()
        self._mapper.SetColorWindow(255)
        self._mapper.SetColorLevel(127.5)
        self._image = vtk.vtkActor2D()
        self._image.SetMapper(self._mapper)
        self._image.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self._image)
        self.logic.ResizeSliceNode(*size)

    def show(self, background, offset: float | None = None) -> None:
        """``background`` (a volume node) fitted to the view, at slice ``offset`` mm (default: its middle)."""
        self.logic.GetSliceCompositeNode().SetBackgroundVolumeID(background.GetID())
        self.logic.RotateSliceToLowestVolumeAxes(False)
        self.logic.FitSliceToBackground()
        if offset is not None:
            self.logic.SetSliceOffset(offset)
        self._mapper.SetInputConnection(self.logic.GetImageDataConnection())

    def ras_to_pixel(self, ras) -> tuple[float, float]:
        """Where RAS point ``ras`` is drawn: (column, row from the top)."""
        import vtk

        xy_to_ras = vtk.vtkMatrix4x4()
        xy_to_ras.DeepCopy(self.node.GetXYToRAS())
        xy_to_ras.Invert()
        x, y, _, _ = xy_to_ras.MultiplyPoint([*ras, 1.0])
        return x, self.window.GetSize()[1] - 1 - y


def colour_mask(pixels: np.ndarray, rgb, tolerance: float = 0.06) -> np.ndarray:
    """Pixels whose chromaticity (colour with brightness divided out) is that of ``rgb`` (0-1 floats) and that are
    not grey: shading in 3-D and blending over the image in 2-D change brightness, not hue."""
    p = pixels.astype(np.float64)
    total = p.sum(-1, keepdims=True)
    chroma = np.divide(p, total, out=np.zeros_like(p), where=total > 30)
    target = np.asarray(rgb, np.float64)
    target = target / target.sum()
    saturated = (p.max(-1) - p.min(-1)) > 25
    return saturated & (np.abs(chroma - target).max(-1) < tolerance)
