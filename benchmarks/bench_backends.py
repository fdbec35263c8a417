"""torch vs ONNX Runtime vs bfloat16, side by side in one run: agreement (Dice between each backend's masks and
torch's) and speed, for CXR anatomy segmentation on the validation films and for CT lung segmentation.

    python benchmarks/bench_backends.py [--n 60] [--ct-slices 300] [--device cpu] [--backends torch onnx bf16]

A backend that cannot run here (bf16 on a CPU without native bfloat16) is left out with the reason. The CXR bf16
row is there to show why radiographs are not run in bf16 (``lungx_core.models.bf16``).

CXR: the films of training/splits/*_val.txt (JSRT/SCR, COVID GB, COVID V7) from ../shared/data, end to end per
film (read, segment, write .seg.nrrd and the QC overlay), images/s per backend. CT: every CT under
../shared/data (ct.nii.gz), Dice per lung between backends, then the LIDC CT resampled to 512x512xN timed
end to end with each backend. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def validation_films(n: int) -> list[Path]:
    films = []
    for name in ("jsrt_scr", "covid_cxr_gb_seg", "covid_cxr_v7labs"):
        ids = ROOT / "training" / "splits" / f"{name}_val.txt"
        if not ids.exists() or not (DATA / name).is_dir():
            continue
        for case_id in ids.read_text().split():
            found = sorted((DATA / name / "images").glob(f"{case_id}.*"))
            films += found[:1]
    return films[:n]


def _segmenters(make, backends: list[str]) -> dict:
    """{backend: make(backend)} for torch and every other backend that can run here (the rest reported)."""
    out = {"torch": make("torch")}
    for backend in backends:
        if backend != "torch":
            try:
                out[backend] = make(backend)
            except (ValueError, ImportError) as e:
                print(f"backend {backend} left out: {e}")
    return out


def bench_cxr(films: list[Path], device: str, backends: list[str]) -> None:
    from lungx_core.io.inputs import Case
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter, process_case

    segmenters = _segmenters(lambda b: CXRSegmenter("cxr_anatomy", device, None, b), backends)
    worst: dict[str, dict[str, float]] = {b: {} for b in segmenters if b != "torch"}
    means: dict[str, list[float]] = {b: [] for b in worst}
    for path in films:
        image = read_radiograph(path)
        masks = {k: seg.segment(image).masks for k, seg in segmenters.items()}
        for backend in worst:
            for name, reference in masks["torch"].items():
                d = _dice(reference, masks[backend][name])
                worst[backend][name] = min(worst[backend].get(name, 1.0), d)
                means[backend].append(d)
    for backend in worst:
        print(f"CXR agreement {backend} vs torch on {len(films)} validation films: mean Dice "
              f"{np.mean(means[backend]):.5f}; worst per structure "
              + ", ".join(f"{k} {v:.5f}" for k, v in worst[backend].items()))
    with tempfile.TemporaryDirectory() as tmp:
        speeds = {}
        for backend, seg in segmenters.items():
            process_case(Case("warm", films[0]), seg, Path(tmp) / "warm")
            runs = []
            for repeat in range(2):
                t0 = time.perf_counter()
                for path in films:
                    row = process_case(Case(path.stem, path), seg, Path(tmp) / f"{backend}{repeat}")
                    assert row["status"] == "ok", row["error"]
                runs.append(len(films) / (time.perf_counter() - t0))
            speeds[backend] = max(runs)
            print(f"CXR end to end with {backend}: {speeds[backend]:.2f} images/s (best of 2 passes over "
                  f"{len(films)} films; read, segment, write .seg.nrrd + overlay)")
        for backend in worst:
            print(f"CXR speed ratio {backend}/torch: {speeds[backend] / speeds['torch']:.2f}")


def bench_ct(device: str, slices: int, backends: list[str]) -> None:
    import SimpleITK as sitk
    from bench_ct_segment import upsampled

    from lungx_core.io.ct import read_ct
    from lungx_core.io.inputs import Case
    from lungx_core.tasks.ct_lungs import CTLungSegmenter, process_case

    segmenters = _segmenters(lambda b: CTLungSegmenter("net", "ct_lungs", device, backend=b), backends)
    cts = sorted(DATA.glob("**/ct.nii.gz"))
    for ct in cts:
        image = read_ct(ct)
        labels = {k: seg.segment(image).labels for k, seg in segmenters.items()}
        for backend in segmenters:
            if backend != "torch":
                a, b = labels["torch"], labels[backend]
                dices = [_dice(a == v, b == v) for v in (1, 2)]
                print(f"CT agreement {backend} vs torch, {ct.parent.name} {tuple(image.array.shape)}: Dice right "
                      f"{dices[0]:.5f}, left {dices[1]:.5f}")
    lidc = DATA / "ct_tcia_dicom_samples" / "lidc-idri-0001" / "ct.nii.gz"
    if not lidc.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "ct_512.nii.gz"
        upsampled(lidc, (512, 512, slices), volume)
        size = sitk.ReadImage(str(volume)).GetSize()
        for backend, seg in segmenters.items():
            t0 = time.perf_counter()
            row = process_case(Case("ct512", volume), seg, Path(tmp) / backend)
            assert row["status"] == "ok", row["error"]
            print(f"CT {size[0]}x{size[1]}x{size[2]} end to end with {backend}: {time.perf_counter() - t0:.1f} s "
                  "(read, segment, write .seg.nrrd + overlay)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="validation films for the CXR part")
    ap.add_argument("--ct-slices", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-ct", action="store_true")
    ap.add_argument("--skip-cxr", action="store_true")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnx", "bf16"])
    args = ap.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}; device {args.device}")
    films = [] if args.skip_cxr else validation_films(args.n)
    if films:
        bench_cxr(films, args.device, args.backends)
    elif not args.skip_cxr:
        print("no validation films under ../shared/data: CXR part skipped")
    if not args.skip_ct:
        bench_ct(args.device, args.ct_slices, args.backends)


if __name__ == "__main__":
    main()
