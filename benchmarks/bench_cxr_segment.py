"""Benchmark `lungx segment` on radiographs end to end, beside the networks' own time (the limit it approaches).

    python benchmarks/bench_cxr_segment.py [--n 80] [--long-side 512|2048] [--device cpu] [--images DIR]
                                           [--backend auto|torch|onnx] [--workers 1]

Inputs: PNGs from DIR (default: the NIH films of ../shared/data/cxr_nih_nofinding_pneumonia, else JSRT, else DRRs
of the embedded CT). With ``--long-side 2048`` each film is resized to that long side and written as a 16-bit
PNG first (what a 2k detector export looks like to the readers). Printed, never asserted:

- ``lungx segment`` as a user runs it (a new process: start-up, model loading, the gate, .seg.nrrd + QC overlay,
  results.csv): films/s including start-up;
- the same step in this process after one warm-up film (``batch.run_cases`` with ``cxr_segmentation.run_one``,
  the default outputs): films/s in steady state;
- the networks alone (anatomy U-Net, gate, mirrored-film check, clavicle band on one film's inputs): films/s if
  nothing else took time;
- a per-stage breakdown (median ms) and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _inputs(folder: Path | None, n: int, long_side: int, tmp: Path) -> list[Path]:
    from PIL import Image

    from lungx_core.io.writers import write_png
    from lungx_core.preprocess import normalise_intensity

    folder = folder or next((DATA / name / "images" for name in ("cxr_nih_nofinding_pneumonia", "jsrt_scr")
                             if (DATA / name / "images").is_dir()), None)
    files = sorted(folder.glob("*.png"))[:n] if folder is not None else []
    if not files:
        sys.path.insert(0, str(Path(__file__).parent))
        from films import sample_film_png

        sample = sample_film_png(tmp, 512)
        files = [sample] * n
    if long_side == 512 and folder is not None:
        return files
    out = tmp / f"films_{long_side}"
    out.mkdir(exist_ok=True)
    written = []
    for i, path in enumerate(files):
        film = np.asarray(Image.open(path).convert("F"), dtype=np.float32)
        scale = long_side / max(film.shape)
        size = (round(film.shape[1] * scale), round(film.shape[0] * scale))
        big = np.asarray(Image.fromarray(film).resize(size, Image.BICUBIC), dtype=np.float32)
        written.append(out / f"{path.stem}_{i:03d}.png")
        write_png(written[-1], (normalise_intensity(big) * 65535).astype(np.uint16))
    return written


def cli_seconds(files: list[Path], out: Path, device: str, backend: str, workers: int) -> float:
    """Wall seconds of one ``lungx segment`` process over exactly ``files`` (not their folder, which may hold
    more films than were asked for)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lungx_core", "segment", *map(str, files), "-o", str(out), "--device",
                    device, "--backend", backend, "--workers", str(workers), "--quiet"], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def network_ms(seg, image, repeat: int = 20) -> dict[str, float]:
    """Median ms of each network on this film's own inputs (batch of one, as the pipeline runs them)."""
    import torch

    from lungx_core.cxr.gate import gate_input
    from lungx_core.models.store import shared_model
    from lungx_core.preprocess import preprocess_radiograph
    from lungx_core.tasks.cxr_segmentation import FrontalChestGate, mirror_check

    x = torch.from_numpy(preprocess_radiograph(image.array, seg.preprocess)[0])[None, None]
    thumb = torch.from_numpy(gate_input(image.array))[None, None]
    gate, mirror = shared_model(FrontalChestGate, device="cpu"), mirror_check()
    calls = {"anatomy U-Net": lambda: seg.net(x), "gate": lambda: gate.net(thumb),
             "mirror check (film and mirror)": lambda: (mirror.net(thumb), mirror.net(thumb.flip(-1)))}
    if seg.refiner is not None:  # the clavicle band network (cxr_clavicles), on a band of its own shape
        band = torch.zeros(1, 1, *seg.refiner.shape)
        calls["clavicle band U-Net"] = lambda: seg.refiner.net(band)
    out = {}
    with torch.inference_mode():
        for name, call in calls.items():
            call()
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                call()
                times.append(time.perf_counter() - t)
            out[name] = 1000 * statistics.median(times)
    return out


def stage_ms(seg, files: list[Path], tmp: Path) -> dict[str, float]:
    """Median ms per stage of the per-film step, each stage timed on its own."""
    from lungx_core.io.readers import read_radiograph
    from lungx_core.models.store import shared_model
    from lungx_core.postprocess import clean_masks, measure
    from lungx_core.tasks.cxr_segmentation import FrontalChestGate, write_outputs

    gate = shared_model(FrontalChestGate, device="cpu")
    stages: dict[str, list[float]] = {k: [] for k in ("read", "window", "gate", "network input + U-Net + upsample",
                                                       "post-process", "segment (all of it)", "write")}
    for p in files[: min(len(files), 15)]:
        t = time.perf_counter()
        img = read_radiograph(p)
        stages["read"].append(time.perf_counter() - t)
        t = time.perf_counter()
        img.windowed()
        stages["window"].append(time.perf_counter() - t)
        t = time.perf_counter()
        gate.check(img)
        stages["gate"].append(time.perf_counter() - t)
        t = time.perf_counter()
        probs = seg.predict_probabilities(img.array, img.windowed())
        stages["network input + U-Net + upsample"].append(time.perf_counter() - t)
        t = time.perf_counter()
        measure(clean_masks(probs, seg.threshold), probs, None)
        stages["post-process"].append(time.perf_counter() - t)
        t = time.perf_counter()
        result = seg.segment(img)
        stages["segment (all of it)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        write_outputs(tmp / "stage", p.stem, img, result)
        stages["write"].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=80)
    ap.add_argument("--long-side", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", help="auto (lungx segment's default), torch or onnx")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--overlap", type=int, default=2, help="films in flight in this process (as `lungx segment`)")
    ap.add_argument("--images", type=Path)
    ap.add_argument("--no-cli", action="store_true", help="skip the `lungx segment` subprocess run")
    args = ap.parse_args()

    import torch

    from lungx_core.batch import run_cases
    from lungx_core.io.inputs import Case
    from lungx_core.io.readers import read_radiograph
    from lungx_core.models.store import shared_model
    from lungx_core.tasks import cxr_segmentation

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = _inputs(args.images, args.n, args.long_side, tmp)
        shape = read_radiograph(files[0]).array.shape
        print(f"inputs: {len(files)} radiographs of {shape[1]}x{shape[0]} px; device {args.device}; backend "
              f"{args.backend}; torch threads {torch.get_num_threads()}; workers {args.workers}")
        if args.backend in ("onnx", "auto"):  # the ONNX export on first use is a one-off, not part of a run
            shared_model(cxr_segmentation.CXRSegmenter, "cxr_anatomy", args.device, None, args.backend)
        if not args.no_cli:
            seconds = cli_seconds(files, tmp / "cli", args.device, args.backend, args.workers)
            print(f"`lungx segment` (new process, start-up and model loading included): {len(files) / seconds:.2f} "
                  f"films/s ({seconds:.1f} s for {len(files)})")

        step = partial(cxr_segmentation.run_one, out_dir=tmp / "out", device=args.device, backend=args.backend)
        t0 = time.perf_counter()
        step(Case("warmup", files[0]))  # loads the models and pays one-off allocations
        load_s = time.perf_counter() - t0
        cases = [Case(p.stem, p) for p in files]
        t0 = time.perf_counter()
        rows = run_cases(cases, step, tmp / "out", workers=args.workers, overlap=args.overlap)
        total = time.perf_counter() - t0
        assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"][:1]
        print(f"first film (models loaded): {load_s:.2f} s")
        print(f"steady state, in process (read, gate, segment, write .seg.nrrd + overlay, records): "
              f"{len(files) / total:.2f} films/s ({1000 * total / len(files):.1f} ms/film)")

        seg = shared_model(cxr_segmentation.CXRSegmenter, "cxr_anatomy", args.device, None, args.backend)
        nets = network_ms(seg, read_radiograph(files[0]))
        limit = sum(nets.values())
        print(f"networks alone: {limit:.1f} ms/film = {1000 / limit:.1f} films/s ("
              + ", ".join(f"{k} {v:.1f} ms" for k, v in nets.items()) + ")")
        for k, v in stage_ms(seg, files, tmp).items():
            print(f"  {k:34s} {v:7.1f} ms (median)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
