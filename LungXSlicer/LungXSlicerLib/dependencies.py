"""Installing lungx_core into Slicer's Python without breaking Slicer.

Slicer bundles its own numpy, SimpleITK, VTK and pydicom, and torch comes from the PyTorch extension (which
picks the CUDA or CPU wheel). A plain ``pip install lungx-core`` could replace any of them, so the module
installs lungx_core with ``--no-deps``, then only the requirements that are missing or too old, with a pip
constraints file that holds the protected packages at the versions Slicer already has. The decisions are pure
functions here; the module supplies ``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path

DISTRIBUTION = "lungx-core"
# never installed or replaced by us: Slicer's own, or the PyTorch extension's
PROTECTED = ("numpy", "SimpleITK", "vtk", "pydicom", "torch")
_IMPORT_NAMES = {"SimpleITK": "SimpleITK", "pydicom": "pydicom", "numpy": "numpy", "vtk": "vtk", "torch": "torch"}
# distributions whose import name differs from the distribution name
_MODULE_OF = {"scikit-image": "skimage", "pillow": "PIL", "pyyaml": "yaml", "lungx-core": "lungx_core"}


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def installed_version(name: str) -> str | None:
    """The installed version of a distribution, also for packages Slicer builds itself (no pip metadata):
    then the module's ``__version__``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    module = _IMPORT_NAMES.get(name)
    if module is None:
        return None
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", None) or "0"


def plan_install(requirements: list[str], installed: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(requirements to pip install, conflicts to report) for lungx_core's requirement strings.

    ``installed`` maps distribution names to versions (None: not installed). A satisfied requirement is
    skipped; a protected package that is missing or too old is a conflict, never an install.
    """
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    protected = {canonical(p) for p in PROTECTED}
    versions = {canonical(k): v for k, v in installed.items()}
    to_install, conflicts = [], []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra
        name = canonical(req.name)
        have = versions.get(name)
        try:
            ok = have is not None and (not req.specifier or Version(have.split("+")[0]) in req.specifier)
        except InvalidVersion:
            ok = have is not None  # a Slicer build with an odd version string: trust it
        if ok:
            continue
        if name in protected:
            found = f"found {have}" if have else "not installed"
            conflicts.append(
                f"{req.name}{req.specifier} is needed ({found}); it must come from Slicer or its PyTorch extension"
            )
        else:
            to_install.append(str(req))
    return to_install, conflicts


def constraints_text(installed: dict[str, str | None]) -> str:
    """pip constraints that keep the protected packages at what Slicer has (transitive dependencies too)."""
    lines = []
    for name in PROTECTED:
        version = installed.get(name)
        if version and version != "0":
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + "\n"


def source_checkout(module_dir: Path) -> Path | None:
    """The lungx_core source tree when the module runs from a checkout (the repository root holds both)."""
    root = Path(module_dir).resolve().parent
    pyproject = root / "pyproject.toml"
    if pyproject.exists() and f'name = "{DISTRIBUTION}"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None


def install_source(module_dir: Path) -> str:
    """What to pip install: $LUNGX_CORE_SOURCE, else the checkout the module lives in, else the package name."""
    env = os.environ.get("LUNGX_CORE_SOURCE")
    if env:
        return env
    checkout = source_checkout(module_dir)
    return str(checkout) if checkout else DISTRIBUTION


def module_name(requirement: str) -> str:
    """The top-level import name of a requirement's distribution."""
    from packaging.requirements import Requirement

    name = canonical(Requirement(requirement).name)
    return _MODULE_OF.get(name, name.replace("-", "_"))


def needs_restart(installed: list[str], loaded_modules) -> list[str]:
    """The installed requirements whose modules this process had already imported (old code still in use)."""
    return [r for r in installed if module_name(r) in loaded_modules]


def install_lungx_core(
    pip_install: Callable[[list[str]], None], source: str, constraints_file: Path, log: Callable[[str], None] = print
) -> tuple[list[str], list[str]]:
    """Install lungx_core from ``source`` and what it lacks; returns (the requirements installed besides lungx_core,
    conflicts that need the user's attention).

    ``pip_install`` takes pip's command-line arguments as a list (``slicer.util.pip_install`` does).
    """
    from packaging.requirements import Requirement

    installed = {name: installed_version(name) for name in PROTECTED}
    constraints_file.write_text(constraints_text(installed), encoding="utf-8")
    log(f"Installing lungx_core from {source} (without its dependencies)")
    pip_install([source, "--no-deps", "--upgrade"])
    importlib.invalidate_caches()
    requirements = importlib.metadata.requires(DISTRIBUTION) or []
    current = {Requirement(r).name: installed_version(Requirement(r).name) for r in requirements} | installed
    to_install, conflicts = plan_install(requirements, current)
    if to_install:
        log(f"Installing {', '.join(to_install)}")
        pip_install([*to_install, "-c", str(constraints_file)])
    return to_install, conflicts
