"""Static checks of the Slicer extension (Slicer cannot run here): the module parses for Slicer's Python 3.12, has
the four classes, its CMake lists equal the files on disk both ways, its .ui matches the code and the parameter
node, and its imports stay light. Plus the dependency policy against the versions Slicer 5.10 and 5.12 bundle."""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import tomllib
from conftest import REPO, SLICER_MODULE_DIR

MODULE = SLICER_MODULE_DIR / "LungXSlicer.py"
UI = SLICER_MODULE_DIR / "Resources" / "UI" / "LungXSlicer.ui"
PY_FILES = sorted([*SLICER_MODULE_DIR.rglob("*.py"), *(REPO / "Testing").rglob("*.py")])

# Slicer's bundled versions (../shared/docs/SLICER.md)
SLICER_BUNDLED = {
    "5.10": {"numpy": "2.0.2", "SimpleITK": "2.5.2", "pydicom": "2.4.4", "vtk": "9.5.0"},
    "5.12": {"numpy": "2.4.6", "SimpleITK": "2.5.5", "pydicom": "3.0.2", "vtk": "9.6.0"},
}


def _tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


def _classes() -> dict[str, ast.ClassDef]:
    return {n.name: n for n in _tree().body if isinstance(n, ast.ClassDef)}


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_parses_for_slicer_python_312(path: Path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 12))


def test_four_classes_and_parameter_node():
    classes = _classes()
    bases = {name: [ast.unparse(b) for b in c.bases] for name, c in classes.items()}
    assert bases["LungXSlicer"] == ["ScriptedLoadableModule"]
    assert bases["LungXSlicerWidget"][0] == "ScriptedLoadableModuleWidget" and "VTKObservationMixin" in bases[
        "LungXSlicerWidget"]
    assert bases["LungXSlicerLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["LungXSlicerTest"] == ["ScriptedLoadableModuleTest"]
    decorators = [ast.unparse(d) for d in classes["LungXSlicerParameterNode"].decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    test_methods = {f.name for f in classes["LungXSlicerTest"].body if isinstance(f, ast.FunctionDef)}
    assert {"setUp", "runTest", "test_cxr_anatomy", "test_oblique_ct_lungs", "test_widget"} <= test_methods


def _parameter_fields() -> dict[str, str]:
    node = _classes()["LungXSlicerParameterNode"]
    return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}


def _cmake_list(text: str, variable: str) -> list[str]:
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert block, variable
    return [item.replace("${MODULE_NAME}", "LungXSlicer") for item in block.group(1).split()]


def test_cmake_lists_equal_the_files_on_disk():
    text = (SLICER_MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    listed = set(scripts) | set(resources)
    for item in listed:
        assert (SLICER_MODULE_DIR / item).is_file(), f"listed but missing: {item}"
    on_disk = {
        str(p.relative_to(SLICER_MODULE_DIR))
        for p in SLICER_MODULE_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"
    }
    assert on_disk == listed, f"on disk, not listed: {on_disk - listed}"
    assert all(s.endswith(".py") for s in scripts) and not any(r.endswith(".py") for r in resources)
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # every .py directly in the module folder is loaded as a module by Slicer: only the module itself is there
    assert [p.name for p in SLICER_MODULE_DIR.glob("*.py")] == ["LungXSlicer.py"]


def test_extension_cmake_and_testing_lists():
    top = (REPO / "CMakeLists.txt").read_text()
    for needed in ("project(LungXSlicer)", 'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)",
                   "include(${Slicer_USE_FILE})", "add_subdirectory(LungXSlicer)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in top, needed
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert f"set(EXTENSION_{key} " in top
    assert (REPO / "Resources" / "LungXSlicer.png").is_file()  # the extension icon ICONURL points at
    testing = (REPO / "Testing" / "Python" / "CMakeLists.txt").read_text()
    listed = set(re.findall(r"SCRIPT\s+(\S+\.py)", testing))
    on_disk = {p.name for p in (REPO / "Testing" / "Python").glob("*.py")}
    assert listed == on_disk and listed


# The Slicer Extensions Index's catalog entry schema (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.2):
# required keys, and the type of every key it allows (no others).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                 "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str, "enabled": bool,
                 "tier": int}
RAW = "https://raw.githubusercontent.com/lungx/lungx/main/"


def _cmake_value(key: str) -> str:
    match = re.search(rf'set\(EXTENSION_{key} "([^"]*)"\)', (REPO / "CMakeLists.txt").read_text())
    assert match, f"EXTENSION_{key} is not set"
    return match.group(1)


def test_extension_catalog_entry_matches_the_index_schema_and_cmake():
    entry = json.loads((REPO / "LungXSlicer.json").read_text())  # the index names it after the CMake project
    assert set(entry) >= CATALOG_REQUIRED, CATALOG_REQUIRED - set(entry)
    assert set(entry) <= set(CATALOG_TYPES), set(entry) - set(CATALOG_TYPES)
    for key, value in entry.items():
        assert isinstance(value, CATALOG_TYPES[key]), key
    assert "slicer-extension-catalog-entry-schema-v1.0" in entry["$schema"]
    assert 1 <= entry.get("tier", 1) <= 5 and entry.get("scm_type", "git") in ("git", "local")
    assert entry["scm_url"].startswith("https://github.com/") and entry["scm_url"].endswith(".git")
    assert entry["category"] == _cmake_value("CATEGORY")
    assert entry["build_dependencies"] == _cmake_value("DEPENDS").split()
    assert (REPO / "LICENSE.txt").is_file()  # the index asks for a license at the top


def test_extension_icon_and_screenshots_are_committed_and_small():
    icon = _cmake_value("ICONURL")
    assert icon.startswith(RAW) and (REPO / icon.removeprefix(RAW)).is_file()
    shots = _cmake_value("SCREENSHOTURLS").split()
    assert len(shots) >= 4
    readme = (REPO / "README.md").read_text()
    for url in shots:
        path = REPO / url.removeprefix(RAW)
        assert url.startswith(RAW) and path.is_file(), url
        assert path.stat().st_size <= 300_000, f"{path.name}: {path.stat().st_size} bytes"
        assert str(path.relative_to(REPO)) in readme, f"README does not show {path.name}"
    for key in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION"):
        assert _cmake_value(key).strip()


def test_help_names_every_task_and_links_existing_model_cards():
    source = MODULE.read_text()
    help_text = source[source.index("HELP_TEXT"):source.index("class LungXSlicer(")]
    registry = (REPO / "lungx_core" / "tasks" / "registry.py").read_text()
    titles = re.findall(r'title="([^"]+)"', registry)
    assert titles, "no task titles found in the registry"
    for title in titles:
        short = title.split(" (")[0]
        assert short in help_text, f"the help does not describe {title!r}"
    cards = re.findall(r"\{CARDS\}/(\w+\.md)", help_text)
    assert cards
    for card in cards:
        assert (REPO / "lungx_core" / "weights" / card).is_file(), card


def test_every_ui_name_used_in_code_exists():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    used |= set(re.findall(r"widget\.ui\.(\w+)", MODULE.read_text()))
    widgets = _ui_widgets()
    assert used, "the widget uses no .ui names?"
    assert used <= set(widgets), f"not in the .ui: {used - set(widgets)}"


# which parameter types each widget class can be bound to (Slicer's parameterNodeWrapper GUI connectors)
FITTING = {
    "QCheckBox": lambda t: t == "bool",
    "QSpinBox": lambda t: t == "int",
    "QSlider": lambda t: t == "int",
    "QDoubleSpinBox": lambda t: t == "float",
    "ctkSliderWidget": lambda t: t == "float",
    "QLineEdit": lambda t: t == "str",
    "QLabel": lambda t: t == "str",
    "ctkPathLineEdit": lambda t: t in ("Path", "pathlib.Path"),
    "QComboBox": lambda t: "Choice" in t or t.endswith("Enum"),
}


def test_every_slicer_parameter_name_is_a_field_of_a_fitting_type():
    fields = _parameter_fields()
    bound = {}
    for name, w in _ui_widgets().items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = (w.get("class"), prop.find("string").text, w)
    assert bound
    for widget_name, (cls, param, element) in bound.items():
        assert param in fields, f"{widget_name}: {param} is not a parameter-node field"
        annotation = fields[param]
        if cls == "qMRMLNodeComboBox":
            node_types = [s.text for p in element.findall("property") if p.get("name") == "nodeTypes"
                          for s in p.iter("string")]
            assert annotation in node_types, f"{widget_name}: {annotation} not among {node_types}"
        else:
            assert FITTING[cls](annotation), f"{widget_name} ({cls}) cannot hold {param}: {annotation}"
    # the task list is filled from lungx_core at run time, so its combo box is not bound (str without Choice)
    assert "taskComboBox" not in bound and fields["task"] == "str"


def test_each_qmrml_widget_gets_the_scene():
    root = ET.parse(UI).getroot()
    root_name = root.find("widget").get("name")
    assert root.find("widget").get("class") == "qMRMLWidget"
    connected = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("sender") == root_name
        and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    qmrml = {n for n, w in _ui_widgets().items() if w.get("class").startswith("qMRML") and n != root_name}
    assert qmrml and qmrml <= connected, f"no scene connection: {qmrml - connected}"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in _ui_widgets().values() if not w.get("class").startswith("Q")}
    assert used <= declared


LIGHT_IMPORTS = {"__future__", "importlib", "logging", "shutil", "sys", "tempfile", "time", "dataclasses", "pathlib",
                 "qt", "slicer", "vtk", "LungXSlicerLib", "json", "os", "queue", "signal", "subprocess", "threading",
                 "contextlib", "collections", "numpy", "typing"}


@pytest.mark.parametrize("path", sorted(SLICER_MODULE_DIR.rglob("*.py")), ids=lambda p: p.name)
def test_module_level_imports_stay_light(path: Path):
    """Opening the module (WITH_GENERIC_TESTS opens it with no main window) must not import torch, MONAI or
    lungx_core's models, nor touch the network: heavy imports live inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] in LIGHT_IMPORTS, f"{path.name} imports {name} at module level"


def test_widget_setup_does_not_install_or_run():
    setup = next(f for f in _classes()["LungXSlicerWidget"].body if isinstance(f, ast.FunctionDef)
                 and f.name == "setup")
    calls = {ast.unparse(n.func) for n in ast.walk(setup) if isinstance(n, ast.Call)}
    assert not any("ensureDependencies" in c or "pip_install" in c or ".start" in c for c in calls)


def test_terminology_file_covers_our_codes():
    from lungx_core.anatomy import CT_STRUCTURES, CXR_STRUCTURES

    term = SLICER_MODULE_DIR / "Resources" / "Terminology" / "SegmentationCategoryTypeModifier-LungX.term.json"
    data = json.loads(term.read_text())
    assert data["SegmentationCategoryTypeContextName"] == "Segmentation category and type - LungX"
    codes = {t["CodeValue"] for c in data["SegmentationCodes"]["Category"] for t in c["Type"]}
    codes |= {m["CodeValue"] for c in data["SegmentationCodes"]["Category"] for t in c["Type"]
              for m in t.get("Modifier", [])}
    for s in (*CXR_STRUCTURES, *CT_STRUCTURES):
        assert s.property_code in codes and (not s.modifier_code or s.modifier_code in codes)
    assert {"27925004", "113197003", "opacity"} <= codes  # nodule, rib, and our own lung-opacity concept


def test_console_api_is_documented():
    text = MODULE.read_text()
    readme = (REPO / "README.md").read_text()
    for doc in (text, readme):
        assert 'run("cxr-anatomy", volumeNode)' in doc


# -- dependency policy --------------------------------------------------------------------------------------


def _requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


@pytest.mark.parametrize("slicer_version", sorted(SLICER_BUNDLED))
def test_requirements_accept_what_slicer_bundles(slicer_version: str):
    from LungXSlicerLib.dependencies import plan_install

    bundled = dict(SLICER_BUNDLED[slicer_version], torch="2.5.1+cu121")
    to_install, conflicts = plan_install(_requirements(), bundled)
    assert conflicts == []
    installed_names = {r.split(">")[0].split("=")[0].split("<")[0].lower() for r in to_install}
    assert not installed_names & {"numpy", "simpleitk", "pydicom", "vtk", "torch"}


def test_no_vtk_requirement_and_no_torch_pin():
    from packaging.requirements import Requirement

    reqs = {Requirement(r).name.lower(): Requirement(r) for r in _requirements()}
    assert "vtk" not in reqs  # Slicer registers its own VTK; a pip wheel breaks it
    torch = reqs["torch"]
    assert all(s.operator == ">=" for s in torch.specifier)  # a floor, never a pin: the PyTorch extension picks
    for name in ("numpy", "simpleitk", "pydicom"):
        assert all(s.operator == ">=" for s in reqs[name].specifier), name


def test_plan_install_skips_satisfied_and_refuses_to_replace_protected():
    from LungXSlicerLib.dependencies import constraints_text, needs_restart, plan_install

    reqs = ["numpy>=1.26", "monai>=1.4", "scipy>=1.11", "SimpleITK>=2.3", "dask[distributed]>=2024.1; extra == 'batch'"]
    to_install, conflicts = plan_install(reqs, {"numpy": "1.24.0", "monai": None, "scipy": "1.13.0",
                                                "SimpleITK": "2.5.2"})
    assert to_install == ["monai>=1.4"]  # scipy satisfied, the extra skipped
    assert len(conflicts) == 1 and conflicts[0].startswith("numpy>=1.26") and "1.24.0" in conflicts[0]
    text = constraints_text({"numpy": "2.0.2", "SimpleITK": "2.5.2", "torch": None, "vtk": "0"})
    assert text.split() == ["numpy==2.0.2", "SimpleITK==2.5.2"]
    assert needs_restart(["scikit-image>=0.22", "monai>=1.4"], {"skimage": object()}) == ["scikit-image>=0.22"]


def test_install_runs_pip_without_deps_then_only_what_is_missing(tmp_path: Path, monkeypatch):
    from LungXSlicerLib import dependencies

    calls: list[list[str]] = []
    monkeypatch.setattr(dependencies.importlib.metadata, "requires",
                        lambda name: ["numpy>=1.26", "monai>=1.4", "torch>=2.2"])
    versions = {"numpy": "2.0.2", "torch": "2.5.1", "monai": None, "SimpleITK": "2.5.2"}
    monkeypatch.setattr(dependencies, "installed_version", lambda name: versions.get(name))
    installed, conflicts = dependencies.install_lungx_core(calls.append, "/src/lungx", tmp_path / "c.txt",
                                                           log=lambda m: None)
    assert calls[0] == ["/src/lungx", "--no-deps", "--upgrade"]
    assert calls[1] == ["monai>=1.4", "-c", str(tmp_path / "c.txt")]
    assert installed == ["monai>=1.4"] and conflicts == []
    assert "torch==2.5.1" in (tmp_path / "c.txt").read_text()  # monai's torch requirement cannot swap torch


def test_install_source_is_this_checkout(monkeypatch):
    from LungXSlicerLib.dependencies import install_source, source_checkout

    monkeypatch.delenv("LUNGX_CORE_SOURCE", raising=False)
    assert source_checkout(SLICER_MODULE_DIR) == REPO
    assert install_source(SLICER_MODULE_DIR) == str(REPO)
    monkeypatch.setenv("LUNGX_CORE_SOURCE", "lungx-core==0.1.0")
    assert install_source(SLICER_MODULE_DIR) == "lungx-core==0.1.0"
