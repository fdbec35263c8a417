"""A batch of 1,000 radiographs through `lungx segment`: one process vs a 2-worker Dask LocalCluster, and a
2-worker run killed midway (SIGKILL to the whole process group) then resumed with --resume.

    python benchmarks/bench_batch.py [--n 1000] [--broken 0.05] [--workers 2] [--keep DIR]

Inputs: real films from ../shared/data (JSRT/SCR, NIH, COVID sets), repeated as needed under new names
(symbolic links), with a fraction of broken files mixed in (random bytes, truncated PNGs, empty files, text).
Prints images/s per run, checks that every good film has all its outputs and every broken file is listed as
an error, compares the Dask run with the one-process run, and checks that the killed-and-resumed run ends with
the same results table and output bytes as the uninterrupted Dask run (exit code 1 otherwise).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = ("jsrt_scr", "cxr_nih_nofinding_pneumonia", "covid_cxr_gb_seg", "covid_cxr_v7labs")


def make_inputs(folder: Path, n: int, broken_fraction: float, seed: int = 0) -> set[str]:
    """``n`` inputs in ``folder``; returns the case IDs of the broken ones."""
    rng = random.Random(seed)
    films = [p for s in SOURCES for p in sorted((DATA / s / "images").glob("*.png"))]
    if not films:
        raise SystemExit(f"no films under {DATA}: this benchmark needs ../shared/data")
    folder.mkdir(parents=True)
    broken_ids = set(rng.sample(range(n), round(n * broken_fraction)))
    broken = set()
    for i in range(n):
        source = films[i % len(films)]
        case_id = f"{i:04d}_{source.stem}"
        path = folder / f"{case_id}.png"
        if i in broken_ids:
            kind = i % 4
            if kind == 0:
                path.write_bytes(rng.randbytes(5000))
            elif kind == 1:
                path.write_bytes(source.read_bytes()[:4000])  # truncated mid-stream
            elif kind == 2:
                path.write_bytes(b"")
            else:
                path.write_text("this is not an image\n")
            broken.add(case_id)
        else:
            path.symlink_to(source)
    return broken


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def table(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def outputs(out: Path) -> dict[str, bytes]:
    stamp = re.compile(rb"\n# on [^\n]*\(GMT\)\.\n")  # pynrrd's time stamp
    return {p.name: stamp.sub(b"\n", p.read_bytes()) for p in sorted(out.iterdir())
            if p.is_file() and p.name != "results.csv"}


def compare(a: Path, b: Path) -> str:
    """How two runs' results differ: rows (timings aside) and output files (bytes, time stamps aside)."""
    rows_a, rows_b = table(a), table(b)
    rows = [x["case_id"] for x, y in zip(rows_a, rows_b, strict=False) if x != y]
    if len(rows_a) != len(rows_b):
        rows.append(f"{len(rows_a)} vs {len(rows_b)} rows")
    files_a, files_b = outputs(a), outputs(b)
    files = sorted(set(files_a) ^ set(files_b)) + [n for n in files_a if n in files_b and files_a[n] != files_b[n]]
    if not rows and not files:
        return "identical results and output bytes"
    return f"{len(rows)} rows differ {rows[:3]}, {len(files)} files differ {files[:3]}"


def check(out: Path, n: int, broken: set[str]) -> str:
    rows = table(out)
    ok = [r for r in rows if r["status"] == "ok"]
    errors = {r["case_id"] for r in rows if r["status"] != "ok"}
    missing = [r["case_id"] for r in ok for name in r["outputs"].split(";") if not (out / name).is_file()]
    problems = []
    if len(rows) != n:
        problems.append(f"{len(rows)} rows for {n} inputs")
    if not broken <= errors:
        problems.append(f"broken files not listed: {sorted(broken - errors)[:5]}")
    if missing:
        problems.append(f"outputs missing for {missing[:5]}")
    good_refused = sorted(errors - broken)
    note = f"{len(ok)} ok, {len(errors)} errors ({len(broken & errors)} broken files"
    note += f", {len(good_refused)} real films refused: {good_refused[:3]})" if good_refused else ")"
    return note + ("; PROBLEMS: " + "; ".join(problems) if problems else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--broken", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kill-at", type=float, default=0.4, help="kill when this fraction of cases is done")
    ap.add_argument("--keep", type=Path, help="keep the inputs and outputs here")
    args = ap.parse_args()
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="lungx_batch_"))
    broken = make_inputs(tmp / "in", args.n, args.broken)
    lungx = [sys.executable, "-m", "lungx_core", "segment", str(tmp / "in"), "-q"]
    failed = False

    single = tmp / "single"
    seconds = run([*lungx, "-o", str(single)])
    print(f"1 process: {args.n / seconds:.2f} images/s ({seconds:.0f} s); {check(single, args.n, broken)}",
          flush=True)

    dask = tmp / "dask"
    seconds = run([*lungx, "-o", str(dask), "--workers", str(args.workers)])
    # not required to be identical: a worker runs torch on 1 thread, the single process on all cores, and
    # float sums in another order can move a border pixel
    print(f"{args.workers}-worker LocalCluster: {args.n / seconds:.2f} images/s ({seconds:.0f} s); "
          f"{check(dask, args.n, broken)}; against 1 process: {compare(dask, single)}", flush=True)

    resumed = tmp / "resumed"
    t0 = time.perf_counter()
    proc = subprocess.Popen([*lungx, "-o", str(resumed), "--workers", str(args.workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = int(args.kill_at * (args.n - len(broken)))
    records = resumed / ".lungx_done"
    while proc.poll() is None and (not records.is_dir() or len(os.listdir(records)) < target):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, the Dask scheduler and its workers: no clean-up at all
    proc.wait()
    done_before = len(os.listdir(records))
    seconds = time.perf_counter() - t0 + run([*lungx, "-o", str(resumed), "--workers", str(args.workers),
                                              "--resume"])
    difference = compare(resumed, dask)
    failed |= difference != "identical results and output bytes"
    print(f"{args.workers} workers killed after {done_before} completed cases, resumed: {args.n / seconds:.2f} "
          f"images/s overall; {check(resumed, args.n, broken)}; against the uninterrupted {args.workers}-worker "
          f"run: {difference}", flush=True)
    if not args.keep:
        shutil.rmtree(tmp)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
