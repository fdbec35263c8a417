"""End-to-end CT lung segmentation benchmark: a real chest CT resampled to 512x512xN, run through
``lungx segment`` in a child process; prints wall seconds and the child's peak RSS.

    python benchmarks/bench_ct_segment.py [--ct PATH] [--slices 300] [--method net|classical] [--device cpu]

Default CT: ../shared/data/ct_tcia_dicom_samples/lidc-idri-0001/ct.nii.gz when present, else the CT that the
slicerio package ships (both upsampled; timing depends on the grid, not on the anatomy's fine detail).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

DEFAULT_CT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ct_tcia_dicom_samples"


def upsampled(ct: Path, size: tuple[int, int, int], out: Path) -> None:
    img = sitk.ReadImage(str(ct))
    extent = [n * s for n, s in zip(img.GetSize(), img.GetSpacing(), strict=True)]
    spacing = [e / n for e, n in zip(extent, size, strict=True)]
    big = sitk.Resample(
        img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), spacing, img.GetDirection(), -1024.0
    )
    sitk.WriteImage(sitk.Cast(big, sitk.sitkInt16), str(out), useCompression=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", type=Path)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--method", default="net")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ct = args.ct or DEFAULT_CT / "lidc-idri-0001" / "ct.nii.gz"
    if not ct.exists():
        from lungx_core.io.sample import sample_ct_path

        ct = sample_ct_path()
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "ct_512.nii.gz"
        upsampled(ct, (512, 512, args.slices), volume)
        cmd = [sys.executable, "-m", "lungx_core", "segment", str(volume), "-o", str(Path(tmp) / "out"), "-q"]
        cmd += ["--task", "ct-lungs", "--method", args.method, "--device", args.device]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        row = (Path(tmp) / "out" / "results.csv").read_text().splitlines()
    print(f"input: {ct} resampled to 512x512x{args.slices}")
    print(f"method {args.method} on {args.device}: {seconds:.1f} s end to end (read, segment, write seg + overlay)")
    print(f"peak RSS of the lungx process: {peak_mb:.0f} MB")
    print(row[0])
    print(row[1])


if __name__ == "__main__":
    main()
