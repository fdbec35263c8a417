"""The LungXSlicer module's logic against real Slicer MRML (slicer-core; see tests/slicer_mrml.py).

Worker outputs of every registered task are imported into real segmentation, volume and table nodes: segment IDs,
names, colours, terminology found in the loaded lists, labelmap geometry equal to the input's IJKToRAS, sides,
table contents, study and transform placement, output reuse. Then the module's own self-tests (all but the widget)
and Testing/Python/LungXSlicerSelfTests.py run here on the same real MRML.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import phantom_radiograph
from slicer_mrml import install, terminology_entry_in_list, volume_node

from lungx_core.anatomy import CXR_STRUCTURES, LUNGS, OPACITY, RIBS, TERMINOLOGY_CONTEXT
from lungx_core.image import MedicalImage
from lungx_core.io.writers import write_image, write_seg_nrrd
from lungx_core.tasks.registry import TASKS

LUNGX_CONTEXT = "Segmentation category and type - LungX"


@pytest.fixture
def mrml(monkeypatch):
    """(slicer with a fresh real scene, the LungXSlicer module imported against it)."""
    slicer = install(monkeypatch)
    module = importlib.import_module("LungXSlicer")
    assert module.loadTerminology() == LUNGX_CONTEXT
    return slicer, module


def _ijk_to_ras(slicer, node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def _in_study(slicer, node):
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    sh.SetItemParent(sh.GetItemByDataNode(node), study)
    return sh, study


def _segment_ids(seg) -> list[str]:
    s = seg.GetSegmentation()
    return [s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())]


def _table(table) -> dict[str, str]:
    return {table.GetCellText(r, 0): table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())}


def _assert_terminology_in_loaded_lists(slicer, module, seg) -> None:
    """Every segment's entry names a list we load and that list holds it. Slicer's General Anatomy list is not in
    the slicer-core wheel, so an entry of that list must be held by our own list (which mirrors those codes)."""
    terminologies = slicer.modules.terminologies.logic()
    for segment_id in _segment_ids(seg):
        entry = module.segmentTerminology(seg.GetSegmentation().GetSegment(segment_id))
        assert entry, f"{segment_id} has no terminology"
        context = entry.split("~")[0]
        assert context in (TERMINOLOGY_CONTEXT, LUNGX_CONTEXT), entry
        if context == TERMINOLOGY_CONTEXT:
            entry = entry.replace(TERMINOLOGY_CONTEXT, LUNGX_CONTEXT, 1)
        assert terminology_entry_in_list(terminologies, entry), f"{segment_id}: {entry} is in no loaded list"


# -- fast: outputs written by lungx_core's writers, no worker


def _cxr_outputs(tmp_path: Path, image: MedicalImage, structures=CXR_STRUCTURES, name="input.seg.nrrd"):
    """A .seg.nrrd as the worker writes it (left lung on the image right, heart in the middle) and its outputs."""
    from LungXSlicerLib import results

    rows, cols = image.array.shape
    masks = {s.name: np.zeros((rows, cols), bool) for s in structures}
    if "lung_left" in masks:
        masks["lung_left"][rows // 4 : 3 * rows // 4, cols // 2 + 10 : cols - 20] = True
        masks["lung_right"][rows // 4 : 3 * rows // 4, 20 : cols // 2 - 10] = True
        masks["heart"][rows // 2 : 3 * rows // 4, cols // 2 - 30 : cols // 2 + 40] = True
        masks["clavicle_left"][rows // 6 : rows // 5, cols // 2 + 10 : cols - 30] = True
        masks["clavicle_right"][rows // 6 : rows // 5, 30 : cols // 2 - 10] = True
    else:
        for m in masks.values():
            m[rows // 3 : rows // 2, cols // 3 : cols // 2] = True
    path = tmp_path / name
    write_seg_nrrd(path, image, masks, structures)
    return results.TaskOutputs("cxr-anatomy", "cpu", 1.0, segmentations=[path],
                               qc_flags=["spacing_unknown"], measurements={"ctr": 0.45})


def _film(rows=200, cols=180) -> MedicalImage:
    return MedicalImage(phantom_radiograph(rows, cols), spacing=(0.3, 0.3, 1.0), origin=(10.0, -5.0, 3.0))


def test_results_go_to_the_inputs_study_and_transform_table_untransformed(mrml, tmp_path):
    """On main before this fix, the table got SetAndObserveTransformNodeID, which real MRML rejects."""
    slicer, module = mrml
    node = volume_node(_film(), "film")
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    node.SetAndObserveTransformNodeID(transform.GetID())
    sh, study = _in_study(slicer, node)
    result = module.LungXSlicerLogic().importResults(_cxr_outputs(tmp_path, _film()), node)
    assert result.segmentation.GetTransformNodeID() == transform.GetID()
    for out in (result.segmentation, result.table):
        assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study
    assert result.segmentation.GetName() == "film cxr-anatomy"
    assert result.table.GetName() == "film cxr-anatomy results"
    assert _table(result.table) == {"ctr": "0.45", "qc_flags": "spacing_unknown", "device": "cpu", "seconds": "1.0"}


def test_segments_names_colours_terminology_geometry_and_sides(mrml, tmp_path):
    slicer, module = mrml
    film = _film()
    node = volume_node(film, "film")
    seg = module.LungXSlicerLogic().importResults(_cxr_outputs(tmp_path, film), node).segmentation
    assert _segment_ids(seg) == [s.name for s in CXR_STRUCTURES]
    for s in CXR_STRUCTURES:
        segment = seg.GetSegmentation().GetSegment(s.name)
        assert segment.GetName() == s.name
        np.testing.assert_allclose(segment.GetColor(), s.color, atol=1e-6)
    _assert_terminology_in_loaded_lists(slicer, module, seg)
    _assert_on_input_grid(slicer, seg, node)
    _assert_sides(slicer, seg, node, "lung_left", "lung_right")


def _assert_on_input_grid(slicer, seg, node) -> None:
    """Each segment's labelmap has the input's IJKToRAS (spacing, origin, axes) and its voxels fit its grid."""
    import vtk

    expected = _ijk_to_ras(slicer, node)
    shape = slicer.util.arrayFromVolume(node).shape
    for segment_id in _segment_ids(seg):
        labelmap = slicer.vtkOrientedImageData()
        seg.GetBinaryLabelmapRepresentation(segment_id, labelmap)
        m = vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(m)
        np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(m), expected, atol=1e-5)
        extent = labelmap.GetExtent()
        assert extent[0] >= 0 and extent[2] >= 0 and extent[4] >= 0, extent
        assert (extent[1], extent[3], extent[5]) < (shape[2], shape[1], shape[0]), extent
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, node)
        assert mask.shape == shape


def _centroid_ras(slicer, seg, segment_id, node) -> np.ndarray:
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segment_id, node)
    k, j, i = np.nonzero(mask)
    return (_ijk_to_ras(slicer, node) @ np.array([i.mean(), j.mean(), k.mean(), 1.0]))[:3]


def _assert_sides(slicer, seg, node, left_id, right_id) -> None:
    left = _centroid_ras(slicer, seg, left_id, node)
    right = _centroid_ras(slicer, seg, right_id, node)
    assert left[0] < right[0], "the patient's left must be at lower RAS x than the right"


def test_reused_segmentation_holds_only_the_last_runs_segments(mrml, tmp_path):
    slicer, module = mrml
    film = _film()
    node = volume_node(film, "film")
    logic = module.LungXSlicerLogic()
    first = logic.importResults(_cxr_outputs(tmp_path, film), node).segmentation
    other = _cxr_outputs(tmp_path, film, (OPACITY,), "input_opacity_mask.seg.nrrd")
    second = logic.importResults(other, node, outputSegmentation=first).segmentation
    assert second is first
    assert _segment_ids(second) == ["opacity"]
    _assert_terminology_in_loaded_lists(slicer, module, second)


def test_results_table_has_one_row_per_name(mrml, tmp_path):
    """Issue 32: the ct-lungs table had two rows named seconds (the task's measurement and the run's)."""
    slicer, module = mrml
    film = _film()
    outputs = _cxr_outputs(tmp_path, film)
    outputs.measurements["seconds"] = 0.7
    table = module.LungXSlicerLogic().importResults(outputs, volume_node(film, "film")).table
    names = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())]
    assert len(names) == len(set(names)) and _table(table)["seconds"] == "1.0"


def test_a_structure_not_found_is_reported_not_added_empty(mrml, tmp_path):
    """Issue 32: an empty segment made Show 3D log a vtkDiscreteFlyingEdges3D error."""
    from LungXSlicerLib import results

    slicer, module = mrml
    film = _film()
    rows, cols = film.array.shape
    masks = {s.name: np.zeros((rows, cols), bool) for s in CXR_STRUCTURES}
    masks["lung_left"][50:150, 100:160] = masks["lung_right"][50:150, 20:80] = True
    write_seg_nrrd(tmp_path / "input.seg.nrrd", film, masks, CXR_STRUCTURES)
    outputs = results.TaskOutputs("cxr-anatomy", "cpu", 1.0, segmentations=[tmp_path / "input.seg.nrrd"])
    result = module.LungXSlicerLogic().importResults(outputs, volume_node(film, "film"))
    assert _segment_ids(result.segmentation) == ["lung_left", "lung_right"]
    assert result.notFound == ["heart", "clavicle_left", "clavicle_right"]
    assert _table(result.table)["not_found"] == "heart, clavicle_left, clavicle_right"
    assert result.segmentation.CreateClosedSurfaceRepresentation()


def test_a_result_never_goes_into_another_inputs_node(mrml, tmp_path):
    """Issue 32: after a CT run, Apply on a film with the Outputs selector untouched overwrote the CT's
    segmentation with the film's segments."""
    slicer, module = mrml
    film = _film()
    first_input, second_input = volume_node(film, "first"), volume_node(film, "second")
    logic = module.LungXSlicerLogic()
    first = logic.importResults(_cxr_outputs(tmp_path, film), first_input)
    again = logic.importResults(_cxr_outputs(tmp_path, film), first_input, outputSegmentation=first.segmentation)
    assert again.segmentation is first.segmentation  # the same input: reused
    second = logic.importResults(_cxr_outputs(tmp_path, film), second_input, outputSegmentation=first.segmentation)
    assert second.segmentation is not first.segmentation
    assert first.segmentation.GetAttribute("LungX.InputNodeID") == first_input.GetID()
    assert second.segmentation.GetAttribute("LungX.InputNodeID") == second_input.GetID()
    assert _segment_ids(first.segmentation) == [s.name for s in CXR_STRUCTURES]


def test_volumes_are_named_by_what_they_are(mrml, tmp_path):
    from LungXSlicerLib import results

    slicer, module = mrml
    film = _film()
    node = volume_node(film, "film")
    paths = []
    for name in ("input_synthetic.nrrd", "input_ribs_suppressed.nrrd"):
        write_image(tmp_path / name, film, film.array[::-1].copy())
        paths.append(tmp_path / name)
    outputs = results.TaskOutputs("cxr-synthesis", "cpu", 1.0, volumes=paths)
    logic = module.LungXSlicerLogic()
    volumes = logic.importResults(outputs, node).volumes
    assert [v.GetName() for v in volumes] == ["film synthetic", "film ribs suppressed"]
    np.testing.assert_allclose(_ijk_to_ras(slicer, volumes[0]), _ijk_to_ras(slicer, node), atol=1e-6)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volumes[0])[0], film.array[::-1])
    again = logic.importResults(outputs, node).volumes  # a second run gets Slicer's numbered names
    assert again[0].GetName() != "film synthetic" and again[0].GetName().startswith("film synthetic")


@pytest.mark.parametrize("structure", [*CXR_STRUCTURES, LUNGS, RIBS, OPACITY], ids=lambda s: s.name)
def test_every_structure_terminology_is_in_a_list_we_load(mrml, structure):
    slicer, _ = mrml
    entry = structure.terminology().replace(TERMINOLOGY_CONTEXT, LUNGX_CONTEXT, 1)
    assert terminology_entry_in_list(slicer.modules.terminologies.logic(), entry), structure.terminology()


def test_terminology_check_rejects_entries_the_list_lacks(mrml):
    slicer, _ = mrml
    terminologies = slicer.modules.terminologies.logic()
    lung = CXR_STRUCTURES[0].terminology().replace(TERMINOLOGY_CONTEXT, LUNGX_CONTEXT, 1)
    assert terminology_entry_in_list(terminologies, lung)
    assert not terminology_entry_in_list(terminologies, lung.replace("39607008", "12345678"))
    assert not terminology_entry_in_list(terminologies, lung.replace("7771000", "99999"))
    assert not terminology_entry_in_list(terminologies, CXR_STRUCTURES[0].terminology())  # list not loaded


def test_parameter_node_and_modality(mrml):
    slicer, module = mrml
    parameters = module.LungXSlicerLogic().getParameterNode()
    assert parameters.task == "" and parameters.forceCpu is False
    assert module.LungXSlicerLogic.modalityOf(volume_node(_film(), "film")) == "CXR"
    ct = MedicalImage(np.zeros((6, 32, 32), np.int16), modality="CT")
    assert module.LungXSlicerLogic.modalityOf(volume_node(ct, "ct")) == "CT"


def test_logic_lists_tasks_from_lungx_core(mrml):
    _, module = mrml
    logic = module.LungXSlicerLogic()
    assert [t["name"] for t in logic.availableTasks()] == list(TASKS)
    assert logic.taskInfo("ct-lungs")["modality"] == "CT" and logic.dependenciesReady()


@pytest.mark.slow
def test_logic_run_reports_progress_and_removes_its_temporary_folder(mrml):
    slicer, module = mrml
    node = volume_node(_film(256, 240), "chest film")
    seen = []
    logic = module.LungXSlicerLogic()
    run = logic.start("cxr-anatomy", node, device="cpu", fast=True, threshold=0.5, input_check="off")  # a phantom
    while not logic.poll(run):
        if run.fraction is not None:
            seen.append(run.fraction)
    result = logic.finish(run)
    assert seen and seen == sorted(seen) and not run.tempDir.exists()
    assert result.segmentation.GetName() == "chest film cxr-anatomy"


def test_unknown_task_and_non_volumes_are_refused(mrml):
    slicer, module = mrml
    logic = module.LungXSlicerLogic()
    with pytest.raises(ValueError, match="unknown task"):
        logic.start("no-such-task", volume_node(_film(), "film"))
    labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(ValueError, match="scalar volume"):
        logic.start("cxr-anatomy", labelmap)


# -- the panel's task options


def test_panel_options_come_from_the_registry():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "LungXSlicer"))
    from LungXSlicerLib.options import option_field, values_to_send

    from lungx_core.tasks.registry import as_json

    specs = {t["name"]: t["options"] for t in as_json()}
    ribs = [option_field(s) for s in specs["cxr-rib-suppression"]]
    by_name = {f.name: f for f in ribs}
    assert {"mode", "strength", "steps", "seed", "model"} <= set(by_name)
    assert by_name["strength"].widget == "QDoubleSpinBox" and by_name["strength"].default == 1.0
    assert by_name["mode"].widget == "QComboBox" and by_name["mode"].choices == ("bone", "inpaint", "inpaint-subtract")
    assert by_name["steps"].widget == "QSpinBox" and (by_name["steps"].low, by_name["steps"].high) == (1, 1000)
    assert by_name["model"].widget == "QLineEdit" and by_name["model"].default == ""
    assert all(f.tooltip for f in ribs)
    sent = values_to_send(ribs, {"steps": "10", "mode": "inpaint", "model": "  "})
    assert sent["steps"] == 10 and sent["mode"] == "inpaint" and "model" not in sent
    ct = {f.name: f for f in (option_field(s) for s in specs["ct-lungs"])}
    assert ct["method"].choices == ("net", "classical") and ct["method"].default == "net"


# -- slow: every registered task through the real worker, imported into real nodes


@pytest.fixture(scope="module")
def worker_outputs(tmp_path_factory):
    """{task: (manifest path, input image)} from the real worker on the embedded samples (one run per task)."""
    from lungx_core.io.sample import sample_ct, sample_radiograph

    root = tmp_path_factory.mktemp("worker")
    film, ct = sample_radiograph(), _oblique(sample_ct())
    out = {}
    for name, info in TASKS.items():
        image = ct if info.modality == "CT" else film
        folder = root / name
        folder.mkdir()
        write_image(folder / "input.nrrd", image)
        cmd = [sys.executable, "-m", "lungx_core.worker", "--task", name, "--input", str(folder / "input.nrrd"),
               "--output-dir", str(folder / "out"), "--device", "cpu", "--fast"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        out[name] = (folder / "out" / "manifest.json", image)
    return out


def _oblique(ct: MedicalImage, degrees: float = 20.0) -> MedicalImage:
    a = np.deg2rad(degrees)  # about the superior axis
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    direction = (rotation @ np.asarray(ct.direction).reshape(3, 3)).ravel()
    return MedicalImage(ct.array, spacing=ct.spacing, origin=ct.origin, direction=tuple(direction), modality="CT",
                        spacing_known=True)


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_imports_into_real_nodes(mrml, worker_outputs, task):
    from LungXSlicerLib import results

    slicer, module = mrml
    manifest, image = worker_outputs[task]
    info = TASKS[task]
    node = volume_node(image, "study input")
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    sh, study = _in_study(slicer, node)
    outputs = results.read_manifest(manifest)
    result = module.LungXSlicerLogic().importResults(outputs, node)

    seg = result.segmentation
    if info.output_kind == "markups":  # a point list (one, possibly empty) instead of a segmentation
        assert seg is None and len(result.markups) == 1
        assert result.markups[0].IsA("vtkMRMLMarkupsFiducialNode")
        assert result.markups[0].GetNumberOfControlPoints() == int(outputs.measurements["n_findings"])
        seg = result.markups[0]  # placed like a segmentation: checked below
    else:
        assert _segment_ids(seg) == [s for s in info.structures if s not in result.notFound]
        assert len(result.notFound) < len(info.structures) and ("lung_left" not in result.notFound)
        _assert_terminology_in_loaded_lists(slicer, module, seg)
        _assert_on_input_grid(slicer, seg, node)
        if "lung_left" in info.structures:
            _assert_sides(slicer, seg, node, "lung_left", "lung_right")
    # rib suppression's bone mode also returns the bone image as its own volume
    expected_volumes = {"segmentation": 0, "markups": 0}.get(info.output_kind,
                                                            2 if task == "cxr-rib-suppression" else 1)
    assert len(result.volumes) == expected_volumes
    for volume in result.volumes:
        np.testing.assert_allclose(_ijk_to_ras(slicer, volume), _ijk_to_ras(slicer, node), atol=1e-5)
        assert not volume.GetName().endswith("_1") and task not in volume.GetName()
    for out in (seg, *result.volumes):
        assert out.GetTransformNodeID() == transform.GetID()
    for out in (seg, *result.volumes, result.table):
        assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study
    rows = _table(result.table)
    assert rows["qc_flags"] == ("; ".join(outputs.qc_flags) or "none") and rows["device"] == "cpu"
    assert {k for k in outputs.measurements} <= set(rows)


# -- the module's own self-tests and Testing/Python on real MRML


MODULE_SELF_TESTS = ["test_cxr_anatomy", "test_oblique_ct_lungs", "test_cancel"]  # test_widget needs Qt


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULE_SELF_TESTS)
def test_module_self_test(mrml, name):
    _, module = mrml
    case = module.LungXSlicerTest(name)
    case.setUp()
    getattr(case, name)()


def _testing_cases() -> list[str]:
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "Testing/Python/LungXSlicerSelfTests.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "LungXSlicerSelfTests")
    return [f.name for f in cls.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")]


@pytest.mark.slow
@pytest.mark.parametrize("name", _testing_cases())
def test_testing_self_test(mrml, name):
    cases = importlib.import_module("LungXSlicerSelfTests")
    case = cases.LungXSlicerSelfTests(name)
    case.setUp()
    getattr(case, name)()
