"""End-to-end CT lung segmentation benchmark: a real chest CT resampled to 512x512xN, run through
``lungx segment`` in a child process; prints wall seconds and the child's peak RSS.

    python benchmarks/bench_ct_segment.py [--ct PATH] [--slices 300] [--method net|classical] [--device cpu]
                                          [--backend auto|torch|onnx|bf16] [--steady] [--network] [--batch-sweep]

``--steady`` also runs three copies in one ``lungx segment`` call: (that time - one CT's) / 2 is a CT's share in
a batch, start-up (Python, torch, MONAI, weights) paid once. ``--network`` times the network alone on the same
slices (the limit; net method only). ``--batch-sweep`` times the network alone per slice at 1-16 slices per call
(the CPU budget ``lungx_core.models.inference.CPU_PIXELS_PER_CALL`` was chosen from it) and checks that the logits
do not depend on it.

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


def run_cli(inputs: list[Path], out: Path, method: str, device: str, backend: str = "auto") -> float:
    """Wall seconds of one ``lungx segment`` child process over ``inputs``."""
    cmd = [sys.executable, "-m", "lungx_core", "segment", *map(str, inputs), "-o", str(out), "-q"]
    cmd += ["--task", "ct-lungs", "--method", method, "--device", device, "--backend", backend]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def network_seconds(volume: Path, device: str, backend: str = "auto", per_call: int | None = None,
                    logits: list | None = None) -> float:
    """The CT network alone over every slice of ``volume``, after one warm call: as the task calls it, or
    ``per_call`` slices at a time; the logits are appended to ``logits`` when it is given."""
    import numpy as np
    import torch

    from lungx_core.io.ct import read_ct
    from lungx_core.models.inference import forward_in_chunks
    from lungx_core.orientation import reorientation
    from lungx_core.preprocess import ct_slices_to_input
    from lungx_core.tasks.ct_lungs import CTLungSegmenter

    seg = CTLungSegmenter(device=device, backend=backend, batch_slices=per_call or 16)
    image = read_ct(volume)
    orient = reorientation(image.direction, image.spacing)
    hu = orient.to_canonical(image.array)
    inputs = [ct_slices_to_input(hu[z : z + seg.batch_slices], seg.size, orient.spacing[1:])[0]
              for z in range(0, hu.shape[0], seg.batch_slices)]

    def call(x):
        x = torch.from_numpy(x).to(seg.device)
        return seg.net(x) if per_call else forward_in_chunks(seg.net, x)

    total, out = 0.0, []
    with torch.inference_mode():
        call(inputs[0])
        for x in inputs:
            t0 = time.perf_counter()
            y = call(x)
            total += time.perf_counter() - t0
            if logits is not None:
                out.append(y.float().cpu().numpy())
    if logits is not None:
        logits.append(np.concatenate(out))
    return total


def batch_sweep(volume: Path, device: str, backend: str, sizes=(1, 2, 4, 8, 16)) -> None:
    """ms per slice of the network alone at each number of slices per call, least of two passes each, and
    whether the logits differ from those at ``sizes[0]``."""
    import numpy as np

    logits: list = []
    for n in sizes:
        ms = min(network_seconds(volume, device, backend, n, logits if k == 0 else None) for k in range(2))
        gap = float(np.abs(logits[-1] - logits[0]).max())
        same = f", logits differ from {sizes[0]} per call (max {gap:.2g})" if gap else ""
        print(f"{n:>2} slices per call: {1000 * ms / len(logits[-1]):.1f} ms per slice{same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", type=Path)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--method", default="net")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", help="auto (lungx segment's default), torch, onnx (exported once, "
                    "before the timed runs) or bf16")
    ap.add_argument("--steady", action="store_true", help="also time three CTs in one run")
    ap.add_argument("--network", action="store_true", help="also time the network alone")
    ap.add_argument("--batch-sweep", action="store_true", help="time the network alone at 1-16 slices per call")
    args = ap.parse_args()
    ct = args.ct or DEFAULT_CT / "lidc-idri-0001" / "ct.nii.gz"
    if not ct.exists():
        from lungx_core.io.sample import sample_ct_path

        ct = sample_ct_path()
    with tempfile.TemporaryDirectory() as tmp:
        volume = Path(tmp) / "ct_512.nii.gz"
        upsampled(ct, (512, 512, args.slices), volume)
        if args.batch_sweep:
            print(f"the network alone on {ct} resampled to 512x512x{args.slices}, {args.device}, {args.backend}:")
            batch_sweep(volume, args.device, args.backend)
            return
        if args.backend in ("onnx", "auto"):  # the export on first use is a one-off, not part of a run
            from lungx_core.models.store import load_model

            load_model("ct_lungs", args.device, args.backend)
        seconds = run_cli([volume], Path(tmp) / "out", args.method, args.device, args.backend)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        row = (Path(tmp) / "out" / "results.csv").read_text().splitlines()
        if args.steady:  # three CTs, one start-up (folders name the cases)
            copies = []
            for k in range(3):
                (Path(tmp) / f"copy{k}").mkdir()
                copies.append(Path(tmp) / f"copy{k}" / volume.name)
                copies[-1].hardlink_to(volume)
            three = run_cli(copies, Path(tmp) / "out3", args.method, args.device, args.backend)
        network = network_seconds(volume, args.device, args.backend) if args.network and args.method == "net" else None
    print(f"input: {ct} resampled to 512x512x{args.slices}")
    print(f"method {args.method} on {args.device}, backend {args.backend}: {seconds:.1f} s end to end (read, "
          "segment, write seg + overlay)")
    print(f"peak RSS of the lungx process: {peak_mb:.0f} MB")
    if args.steady:
        print(f"three CTs in one run: {three:.1f} s; each CT after the first: {(three - seconds) / 2:.1f} s")
    if network is not None:
        print(f"the network alone over the {args.slices} slices: {network:.1f} s")
    print(row[0])
    print(row[1])


if __name__ == "__main__":
    main()
