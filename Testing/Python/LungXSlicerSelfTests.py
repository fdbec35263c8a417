"""Slicer self-tests of the LungXSlicer module beyond its own LungXSlicerTest: the geometry round trip through the
worker's input file, reuse of output nodes, subject hierarchy placement, errors, terminology.

Run inside Slicer (lungx_core installed in Slicer's Python), from the repository root::

    "$SLICER_EXECUTABLE" --testing --no-splash --no-main-window --additional-module-paths LungXSlicer \
        --python-code "import slicer.testing; slicer.testing.runUnitTest(['Testing/Python'], 'LungXSlicerSelfTests')"
"""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path

import numpy as np
import slicer
import vtk


def _logic():
    import LungXSlicer

    return LungXSlicer.LungXSlicerLogic()


def _sample_cxr_node(name: str = "test CXR"):
    from LungXSlicerLib.geometry import as_slicer_array, ijk_to_ras

    from lungx_core.io.sample import sample_radiograph

    image = sample_radiograph()
    ras = ijk_to_ras(image.spacing, image.origin, image.direction)
    return slicer.util.addVolumeFromArray(as_slicer_array(image.array), ras, name)


def _ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


class LungXSlicerSelfTests(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def test_worker_input_keeps_geometry(self):
        """The NRRD the logic hands to the worker, read back with SimpleITK (LPS), gives the node's IJKToRAS."""
        import SimpleITK as sitk
        from LungXSlicerLib.geometry import ijk_to_ras

        ras = np.array([[0.0, 0.7, 0.1, 12.0], [-0.8, 0.0, 0.0, -30.0], [0.0, 0.0, 2.5, 40.0], [0, 0, 0, 1]])
        node = slicer.util.addVolumeFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6), ras, "oblique")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "input.nrrd"
            _logic()._writeInput(node, path)
            img = sitk.ReadImage(str(path))
            read_back = ijk_to_ras(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
            np.testing.assert_allclose(read_back, ras, atol=1e-5)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(img), slicer.util.arrayFromVolume(node))
        self.assertIsNone(node.GetStorageNode())  # the node's own storage is untouched

    def test_rerun_reuses_segmentation_and_study(self):
        node = _sample_cxr_node()
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "patient")
        study = sh.CreateStudyItem(patient, "study")
        sh.SetItemParent(sh.GetItemByDataNode(node), study)
        logic = _logic()
        first = logic.run("cxr-anatomy", node, device="cpu", fast=True)
        second = logic.run("cxr-anatomy", node, device="cpu", fast=True, outputSegmentation=first.segmentation)
        self.assertIs(second.segmentation, first.segmentation)
        self.assertEqual(first.segmentation.GetSegmentation().GetNumberOfSegments() + len(first.notFound), 5)
        for out in (first.segmentation, first.table):
            self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(out)), study)

    def test_wrong_modality_is_a_clear_error(self):
        from LungXSlicerLib.geometry import as_slicer_array, ijk_to_ras

        from lungx_core.io.sample import sample_ct

        ct = sample_ct()
        node = slicer.util.addVolumeFromArray(
            as_slicer_array(ct.array), ijk_to_ras(ct.spacing, ct.origin, ct.direction), "CT as CXR"
        )
        segmentations = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        with self.assertRaises(RuntimeError) as ctx:
            _logic().run("cxr-anatomy", node, device="cpu")
        self.assertIn("'CT as CXR'", str(ctx.exception))
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), segmentations)

    def test_unknown_task(self):
        node = _sample_cxr_node()
        with self.assertRaises(ValueError):
            _logic().start("no-such-task", node)

    def test_terminology_loads(self):
        import LungXSlicer

        self.assertEqual(LungXSlicer.loadTerminology(), "Segmentation category and type - LungX")
