"""Turn command-line inputs (files, folders, DICOM folders) into a list of cases to process."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from lungx_core.io.readers import (
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    PIL_SUFFIXES,
    is_dicom_file,
    is_non_image_object,
    suffix_of,
)

IMAGE_SUFFIXES = PIL_SUFFIXES | ITK_SUFFIXES | DICOM_SUFFIXES
RECORDS_DIR = ".lungx_done"  # the completion records of a run (lungx_core.batch), in its output folder
RADIOGRAPH_DICOM_MODALITIES = {"DX", "CR", "DR", "RG", "PX", "OT", "SC", ""}


@dataclass
class Case:
    """One unit of work. ``problem`` is set when the input is known to be unusable before reading it."""

    case_id: str
    path: Path
    problem: str | None = None
    kind: str | None = None  # "cxr" or "ct" when known from the input; None: decided when read
    mask: Path | None = None  # a mask given with the input (lungs, ribs), on its grid; None: the task finds one


def case_id_of(path: Path) -> str:
    name = path.name
    suffix = suffix_of(path)
    return name[: -len(suffix)] if suffix and name.lower().endswith(suffix) else name


def _files_in(folder: Path, skip: set[Path]) -> list[Path]:
    """The image and DICOM files under ``folder``, never LungX's own outputs: no folder in ``skip`` (the run's
    output folder) or holding a completion-record folder (an earlier run's output folder) is entered below
    ``folder``; in ``folder`` itself and any folder entered, the files an earlier run's records list as its
    outputs are left out, and a ``.seg.nrrd`` (a segmentation) is never an input."""
    found = []
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _is_output_folder(here / d, skip))
        written = recorded_outputs(here)
        found += [
            here / n for n in names
            if not n.startswith(".") and n not in written and not n.lower().endswith(".seg.nrrd")
            and (suffix_of(here / n) in IMAGE_SUFFIXES or is_dicom_file(here / n))
        ]
    return sorted(found)


def _is_output_folder(folder: Path, skip: set[Path]) -> bool:
    return folder.resolve() in skip or (folder / RECORDS_DIR).is_dir()


def recorded_outputs(folder: Path) -> set[str]:
    """The names of the files that LungX runs recorded as their outputs in ``folder`` (their completion
    records, ``.lungx_done``), with the results tables."""
    names: set[str] = set()
    records = folder / RECORDS_DIR
    if not records.is_dir():
        return names
    for path in records.rglob("*.json"):
        try:
            row = json.loads(path.read_text()).get("row", {})
        except (OSError, ValueError, AttributeError):
            continue
        names.update(n for n in str(row.get("outputs", "")).split(";") if n)
    return names | {p.name for p in folder.glob("results*.csv")}


def _dicom_cases(files: list[Path]) -> list[Case]:
    """Radiographs: one case per file. CT: one case per folder holding CT slices (the reader picks the series
    there). Non-image objects (reports, presentation states, SEG, ...): ignored. Any other series (MR, PET,
    ...): one case, flagged."""
    import pydicom

    series: dict[tuple[str, str], list[Path]] = defaultdict(list)
    ct_folders: dict[Path, None] = {}
    cases = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # unreadable files are reported by the reader with the exact problem
            cases.append(Case(case_id_of(f), f))
            continue
        if is_non_image_object(ds):
            continue
        modality = str(ds.get("Modality", "")).upper()
        if modality in RADIOGRAPH_DICOM_MODALITIES:
            cases.append(Case(case_id_of(f), f, kind="cxr"))
        elif modality == "CT":
            ct_folders.setdefault(f.parent)
        else:
            series[(modality, str(ds.get("SeriesInstanceUID", f.parent)))].append(f)
    for (modality, _uid), members in series.items():
        folder = members[0].parent
        cases.append(
            Case(
                case_id_of(folder),
                folder,
                f"DICOM {modality} series of {len(members)} file(s) is neither a chest radiograph nor a CT",
            )
        )
    cases += [Case(case_id_of(folder), folder, kind="ct") for folder in ct_folders]
    return cases


def collect_cases(inputs: list[Path], output: Path | None = None) -> list[Case]:
    """Expand files and folders in the order given; case IDs are made unique with a numeric suffix. A folder's
    search skips ``output`` (this run's output folder) and what earlier LungX runs wrote (see ``_files_in``)."""
    cases: list[Case] = []
    skip = {output.resolve()} if output is not None else set()
    for item in inputs:
        if item.is_dir():
            files = _files_in(item, skip)
            if not files:
                cases.append(Case(case_id_of(item), item, "folder holds no supported image or DICOM file"))
                continue
            dicom = [f for f in files if suffix_of(f) in DICOM_SUFFIXES or suffix_of(f) not in IMAGE_SUFFIXES]
            dicom_set = set(dicom)  # once, not per file: folders hold thousands of files
            found = [Case(case_id_of(f), f) for f in files if f not in dicom_set] + _dicom_cases(dicom)
            cases += found or [Case(case_id_of(item), item, "folder holds only non-image DICOM objects (reports, "
                                                             "presentation states, segmentations, ...)")]
        else:
            cases.append(Case(case_id_of(item), item))
    return _unique_ids(cases)


def _unique_ids(cases: list[Case]) -> list[Case]:
    """Give every case its own ID (its outputs are named after it). Inputs with the same name in different
    folders are named after the nearest folder level whose names tell them apart (case1/ct.nii.gz,
    case2/ct.nii.gz -> case1, case2); what is still repeated gets the first free numeric suffix, never one that
    another input already has (film.png, film.jpg, film_2.png -> film, film_3, film_2)."""
    groups: dict[str, list[Case]] = {}
    for c in cases:
        groups.setdefault(c.case_id, []).append(c)
    taken = {c.case_id for c in cases}
    for case_id, group in groups.items():
        names = _distinguishing_folders([c.path for c in group])
        if names and not (set(names) & (taken - {case_id})):
            for c, name in zip(group, names, strict=True):
                c.case_id = name
            taken |= set(names)
    taken = {c.case_id for c in cases}
    used: set[str] = set()
    for c in cases:
        if c.case_id in used:
            n = 2
            while f"{c.case_id}_{n}" in taken or f"{c.case_id}_{n}" in used:
                n += 1
            c.case_id = f"{c.case_id}_{n}"
        used.add(c.case_id)
    return cases


def _distinguishing_folders(paths: list[Path]) -> list[str] | None:
    """For two or more paths, the names of their nearest ancestor folders at the first level (counting up from
    the file) where all of them differ; None when there is no such level."""
    if len(paths) < 2:
        return None
    chains = [list(Path(os.path.abspath(p)).parents) for p in paths]
    for level in range(min(len(c) for c in chains)):
        names = [c[level].name for c in chains]
        if all(names) and len(set(names)) == len(names):
            return names
    return None


def detect_kind(case: Case) -> str:
    """'ct' or 'cxr' for a case whose kind the input did not already tell (a volume file, a lone DICOM file)."""
    if case.kind:
        return case.kind
    path = case.path
    suffix = suffix_of(path)
    if path.is_dir():
        return "ct"
    if suffix in ITK_SUFFIXES:
        from lungx_core.io.ct import volume_kind

        return volume_kind(path) or "cxr"
    if suffix in DICOM_SUFFIXES or (suffix not in PIL_SUFFIXES and is_dicom_file(path)):
        import pydicom

        try:
            modality = str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", "")).upper()
        except Exception:  # noqa: BLE001 - the reader reports unreadable files with the exact problem
            return "cxr"
        return "ct" if modality == "CT" else "cxr"
    return "cxr"
