"""The CT lung model on fields of view and grids as scanners send them (issue 34), generated from the CTs in
../shared/data: each CT is segmented whole, then cut or resampled and segmented again, and the result compared
with the whole CT's labels cut or resampled the same way.

    python training/eval_ct_fields.py --data ../shared/data [--model ct_lungs] [--out table.csv] [--mass 150]

Variants, in canonical (S, P, L) order (columns run from the patient's right to left):
- ``hemi_right`` / ``hemi_left``: 55 % of the columns from that side (one hemithorax, the cut past the midline);
- ``lung_right`` / ``lung_left``: that lung's box with a 15 mm margin (one lung, the other cut away);
- ``tight``: 10 % cut off every edge (both chest walls cut); ``off_centre``: rows 10-80 %, columns 25-100 %;
- ``thick5`` / ``thick8``: slabs averaged to 5 and 8 mm slices; ``aspect2`` / ``aspect4``: columns averaged
  in pairs / fours (pixels 1:2 and 1:4).
Per variant: Dice of each lung with at least 50 mL in the reference cut (the lowest is ``dice_min``); the
lowest over the lungs of which at least a quarter lies in the cut (``dice_min_major``: a sliver of the other
lung that the cut leaves, 50-400 mL bounded mostly by the image edge, is left out); Dice of both lungs together
(``dice_lungs``); total volume against the reference's, and the flags raised. Dice falls with the voxel size
(on a CT of 2.7 mm pixels one pixel more or less all round a lung is Dice 0.92), so each lung mostly in the cut
also gets the normalised surface Dice within one voxel (``nsd_min_major``: the share of both surfaces within the
variant voxel's diagonal of the other, ``lungx_core.eval.metrics.surface_dice``). Prints a markdown table
(``--out x.csv`` also writes ``x.md``, which training/export_ct.py puts in the model card when it lies in the
run folder as fields.md).

``--mass ML`` first paints a lobulated soft-tissue mass of about ML mL against the chest wall of each lung (inside
the whole CT's labels, so the reference stays valid: ``training.synthetic_pathology.insert_mass``), adds the
``whole`` variant, and reports for each mass with at least half of it in the cut the share of it labelled lung
(``mass_inside``; the lowest is ``mass_inside_min``): a peripheral tumour must stay inside the lung whatever the
field of view.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = (  # (case folder, split of the shipped model's training: see training/ct_data.py)
    ("ct_slicerio_chest4", "test"),
    ("ct_tcia_dicom_samples/acrinfltbreast_013", "val"),
    ("ct_tcia_dicom_samples/ricord1a_419639-001012", "not trained"),
    ("ct_tcia_dicom_samples/lungpetctdx_A0002", "not trained"),
    ("ct_tcia_dicom_samples/lidc-idri-0001", "train"),
    ("ct_tcia_dicom_samples/lungfcp_01-0001", "train"),
    ("ct_tcia_dicom_samples/lungpetctdx_A0001", "train"),
)
VARIANTS = ("hemi_right", "hemi_left", "lung_right", "lung_left", "tight", "off_centre", "thick5", "thick8",
            "aspect2", "aspect4")


def block_mean(array: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Average ``factor`` neighbours along ``axis`` (a thick slab, a wide pixel); the remainder is dropped."""
    n = array.shape[axis] // factor * factor
    a = np.take(array, np.arange(n), axis=axis).astype(np.float32)
    shape = list(a.shape)
    shape[axis : axis + 1] = [n // factor, factor]
    return a.reshape(shape).mean(axis=axis + 1)


def block_labels(labels: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """The label covering most of each block (background when neither lung reaches half)."""
    right = block_mean(labels == 1, axis, factor)
    left = block_mean(labels == 2, axis, factor)
    out = np.zeros(right.shape, np.uint8)
    out[(right >= 0.5) & (right >= left)] = 1
    out[(left >= 0.5) & (left > right)] = 2
    return out


def variant(hu: np.ndarray, labels: np.ndarray, spacing, name: str, masses: np.ndarray | None = None):
    """(HU, reference labels, spacing, masses) of one variant, all canonical; ``masses`` (a label volume or None)
    is cut or resampled as the labels are."""
    n_s, n_r, n_c = hu.shape
    sz, sr, sc = spacing
    box = (slice(None),) * 3
    if name.startswith("hemi_"):
        cols = slice(0, int(0.55 * n_c)) if name == "hemi_right" else slice(int(0.45 * n_c), n_c)
        box = (slice(None), slice(None), cols)
    elif name.startswith("lung_"):
        _, rr, cc = np.nonzero(labels == (1 if name == "lung_right" else 2))
        mr, mc = int(15 / sr), int(15 / sc)
        rows, cols = slice(max(rr.min() - mr, 0), rr.max() + mr + 1), slice(max(cc.min() - mc, 0), cc.max() + mc + 1)
        box = (slice(None), rows, cols)
    elif name == "tight":
        box = (slice(None), slice(int(0.1 * n_r), int(0.9 * n_r)), slice(int(0.1 * n_c), int(0.9 * n_c)))
    elif name == "off_centre":
        box = (slice(None), slice(int(0.1 * n_r), int(0.8 * n_r)), slice(int(0.25 * n_c), n_c))
    elif name.startswith(("thick", "aspect")):
        axis, factor = (0, max(1, round(float(name[5:]) / sz))) if name.startswith("thick") else (2, int(name[6:]))
        grid = (sz * factor, sr, sc) if axis == 0 else (sz, sr, sc * factor)
        return (block_mean(hu, axis, factor), block_labels(labels, axis, factor), grid,
                None if masses is None else block_labels(masses, axis, factor))
    elif name != "whole":
        raise ValueError(f"unknown variant {name!r}")
    return hu[box], labels[box], spacing, None if masses is None else masses[box]


def canonical_image(hu: np.ndarray, spacing):
    """A MedicalImage whose array is already canonical: direction maps columns to L, rows to P, slices to S."""
    from lungx_core.image import MedicalImage

    return MedicalImage(
        array=hu.astype(np.float32), spacing=(spacing[2], spacing[1], spacing[0]), origin=(0.0, 0.0, 0.0),
        direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), modality="CT", spacing_known=True, source="variant",
    )


def main(argv=None) -> None:
    import SimpleITK as sitk

    from lungx_core.errors import InputError
    from lungx_core.eval.metrics import surface_dice
    from lungx_core.image import MedicalImage
    from lungx_core.orientation import reorientation
    from lungx_core.tasks.ct_lungs import CTLungSegmenter
    from training.synthetic_pathology import insert_mass

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", default="ct_lungs")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, help="per-case CSV (and the table beside it as .md)")
    ap.add_argument("--mass", type=float, default=0.0, help="paint a mass of about this many mL into each lung")
    ap.add_argument("--seed", type=int, default=0, help="the masses' random seed")
    args = ap.parse_args(argv)
    if args.mass and "whole" not in args.variants:
        args.variants = ["whole", *args.variants]
    segmenter = CTLungSegmenter(model=args.model, device="cpu")
    rows = []
    for case, split in CASES:
        path = args.data / case / "ct.nii.gz"
        if not path.is_file():
            continue
        image = MedicalImage.from_sitk(sitk.ReadImage(str(path)), modality="CT", spacing_known=True)
        orient = reorientation(image.direction, image.spacing)
        hu = orient.to_canonical(image.array)
        whole = segmenter.segment(canonical_image(hu, orient.spacing))
        whole_voxels = {value: int((whole.labels == value).sum()) for value in (1, 2)}
        masses = np.zeros(hu.shape, np.uint8)  # 1 the right lung's mass, 2 the left's
        if args.mass:
            rng = np.random.default_rng(args.seed)
            for value, side, level in ((1, "right", 0.45), (2, "left", 0.55)):
                hu, mass = insert_mass(hu, whole.labels == value, orient.spacing, args.mass, rng, side, level)
                masses[mass] = value
        for name in args.variants:
            v_hu, v_ref, v_spacing, v_mass = variant(hu, whole.labels, orient.spacing, name, masses)
            row = {"case": Path(case).name, "split": split, "variant": name}
            try:
                result = segmenter.segment(canonical_image(v_hu, v_spacing))
            except InputError as err:
                rows.append(row | {"dice_min": 0.0, "dice_min_major": 0.0, "dice_lungs": 0.0, "nsd_min_major": 0.0,
                                   "volume_ratio": 0.0,
                                   "flags": f"refused: {err}"})
                continue
            voxel_ml = float(np.prod(v_spacing)) / 1000
            dice, major, nsd, inside = {}, {}, {}, {}
            one_voxel = float(np.linalg.norm(v_spacing))  # the variant voxel's diagonal, mm
            scale = np.prod(orient.spacing) / np.prod(v_spacing)  # whole-CT voxels -> the variant's
            for value, lung in ((1, "right"), (2, "left")):
                ref, got = v_ref == value, result.labels == value
                if ref.sum() * voxel_ml >= 50:
                    dice[lung] = 2 * (ref & got).sum() / (ref.sum() + got.sum())
                    if ref.sum() >= 0.25 * whole_voxels[value] * scale:
                        major[lung] = dice[lung]
                        nsd[lung] = surface_dice(got, ref, one_voxel, v_spacing)
                mass = v_mass == value
                if args.mass and mass.sum() >= 0.5 * (masses == value).sum() * scale:
                    inside[lung] = float((result.labels[mass] > 0).mean())
            ref_all, got_all = v_ref > 0, result.labels > 0
            union = 2 * (ref_all & got_all).sum() / max(1, ref_all.sum() + got_all.sum())
            ref_ml = float(ref_all.sum() * voxel_ml)
            rows.append(row | {
                "dice_right": round(dice.get("right", float("nan")), 4),
                "dice_left": round(dice.get("left", float("nan")), 4),
                "dice_min": round(min(dice.values()), 4) if dice else float("nan"),
                "dice_min_major": round(min(major.values()), 4) if major else float("nan"),
                "dice_lungs": round(float(union), 4),
                "nsd_min_major": round(min(nsd.values()), 4) if nsd else float("nan"),
                "volume_ratio": round(sum(result.volumes_ml.values()) / max(ref_ml, 1e-6), 4),
                "flags": " ".join(result.flags),
            } | ({"mass_ml": round(float((v_mass > 0).sum() * voxel_ml), 1),
                  "mass_inside_min": round(min(inside.values()), 4) if inside else float("nan")} if args.mass else {}))
            print(rows[-1], flush=True)
    columns = ["case", "split", "variant", "dice_right", "dice_left", "dice_min", "dice_min_major", "dice_lungs",
               "nsd_min_major", "volume_ratio", "flags"] + (["mass_ml", "mass_inside_min"] if args.mass else [])
    if args.out:
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    table = ["Each cell: the lowest Dice of the lungs mostly in the cut / of both lungs together (and the other "
             "lung's sliver where the cut leaves 50 mL or more of it), then [the lowest surface Dice within one "
             "voxel of the lungs mostly in the cut].", "",
             "| CT | split | " + " | ".join(args.variants) + " |", "|---|---|" + "---|" * len(args.variants)]

    def cell(row: dict) -> str:
        if row["flags"].startswith("refused"):
            return "refused"
        text = f"{row['dice_min_major']:.3f} / {row['dice_lungs']:.3f}"
        text += f" ({row['dice_min']:.2f})" if row["dice_min"] < row["dice_min_major"] else ""
        text += f" [{row['nsd_min_major']:.3f}]" if row["nsd_min_major"] == row["nsd_min_major"] else ""
        mass = row.get("mass_inside_min", float("nan"))
        return text + (f", mass {mass:.2f}" if mass == mass else "")

    for case, split in CASES:
        mine = {r["variant"]: r for r in rows if r["case"] == Path(case).name}
        if mine:
            table.append(f"| {Path(case).name} | {split} | " + " | ".join(cell(mine[v]) for v in args.variants) + " |")
    table.append("")
    for key, what in (("dice_min_major", "lungs mostly in the cut, each"), ("dice_lungs", "both lungs together"),
                      ("dice_min", "every lung with 50 mL or more in the cut, slivers included"),
                      ("nsd_min_major", "lungs mostly in the cut, each, surface Dice within one voxel"),
                      *((("mass_inside_min", "share of each mass labelled lung"),) if args.mass else ())):
        values = [r.get(key, 0.0) for r in rows if r.get(key, 0.0) == r.get(key, 0.0)]  # nan: none in the cut
        measure = "" if key.startswith(("mass", "nsd")) else "Dice "
        table.append(f"{what}: {measure}>= 0.95 on {sum(d >= 0.95 for d in values)} "
                     f"of {len(values)}, >= 0.90 on "
                     f"{sum(d >= 0.90 for d in values)}; median {np.median(values):.3f}, lowest {min(values):.3f}.")
    print("\n" + "\n".join(table))
    if args.out:
        args.out.with_suffix(".md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
