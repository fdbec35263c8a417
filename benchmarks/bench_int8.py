"""INT8 or not: ONNX Runtime static quantisation of the CXR anatomy and gate networks, measured against fp32.

    python benchmarks/bench_int8.py [--calibration 40] [--validation 60] [--repeat 30]

Each network is exported to ONNX (the ``onnx`` backend's file), then quantised statically (QDQ, per-channel
int8 weights, uint8 activations, MinMax calibration) on the network inputs of training films (JSRT/SCR and COVID
training splits, ``training/splits/*_train.txt``). Printed, never asserted:

- anatomy: Dice between the fp32 and int8 masks per structure (mean and worst) on validation films
  (``*_val.txt``); the issue's bar is 0.995 per structure;
- gate: decisions (frontal chest or not) that differ between fp32 and int8 over every film in ../shared/data;
- speed of each network per film (batch of one, as the pipeline runs it): torch fp32, ONNX Runtime fp32, int8.

The int8 models are not shipped; this script is how the decision was measured (README, Benchmark).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = ("jsrt_scr", "covid_cxr_gb_seg", "covid_cxr_v7labs")


def split_films(split: str, n: int) -> list[Path]:
    films = []
    for name in SETS:
        ids = ROOT / "training" / "splits" / f"{name}_{split}.txt"
        if ids.exists():
            for case_id in ids.read_text().split():
                films += sorted((DATA / name / "images").glob(f"{case_id}.*"))[:1]
    step = max(1, len(films) // n)  # spread over the three sets
    return films[::step][:n]


def quantise(fp32: Path, inputs: list[np.ndarray], out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {"image": x}

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def ms_per_call(call, x, repeat: int) -> float:
    call(x)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", type=int, default=40)
    ap.add_argument("--validation", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()

    import torch

    from lungx_core.cxr.gate import gate_input
    from lungx_core.io.readers import read_radiograph
    from lungx_core.models.onnx import OnnxNetwork, export
    from lungx_core.models.store import load_model
    from lungx_core.postprocess import clean_masks
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    print(f"torch threads {torch.get_num_threads()}")
    calibration, validation = split_films("train", args.calibration), split_films("val", args.validation)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        # anatomy
        seg = CXRSegmenter("cxr_anatomy", "cpu")
        onnx_seg = CXRSegmenter("cxr_anatomy", "cpu", backend="onnx")
        from lungx_core.preprocess import preprocess_radiograph

        def net_input(path: Path) -> np.ndarray:
            return preprocess_radiograph(read_radiograph(path).array, seg.preprocess)[0][None, None]

        int8 = OnnxNetwork(quantise(onnx_seg.net.path, [net_input(p) for p in calibration], tmp / "anatomy.onnx"),
                           "cpu")
        int8_seg = copy.copy(onnx_seg)
        int8_seg.net = int8
        scores: dict[str, list[float]] = {}
        for path in validation:
            image = read_radiograph(path).array
            a = clean_masks(onnx_seg.predict_probabilities(image), seg.threshold)
            b = clean_masks(int8_seg.predict_probabilities(image), seg.threshold)
            for name in a:
                scores.setdefault(name, []).append(dice(a[name], b[name]))
        print(f"anatomy, fp32 vs int8 masks on {len(validation)} validation films (Dice mean / worst): "
              + "; ".join(f"{k} {np.mean(v):.4f} / {np.min(v):.4f}" for k, v in scores.items()))
        x = torch.from_numpy(net_input(validation[0]))
        speeds = {"torch fp32": ms_per_call(seg.net, x, args.repeat),
                  "onnxruntime fp32": ms_per_call(onnx_seg.net, x, args.repeat),
                  "onnxruntime int8": ms_per_call(int8, x, args.repeat)}
        print("anatomy network per film: " + ", ".join(f"{k} {v:.1f} ms" for k, v in speeds.items()))

        # gate
        gate_net, config = load_model("cxr_gate", "cpu")
        size = int(config["arch_options"]["size"])  # the gate's thumbnail side
        onnx_gate = OnnxNetwork(export(gate_net, 1, size, tmp / "gate_fp32.onnx"), "cpu")
        thumbs = [gate_input(read_radiograph(p).array)[None, None] for p in calibration]
        int8_gate = OnnxNetwork(quantise(onnx_gate.path, thumbs, tmp / "gate.onnx"), "cpu")
        frontal = config["classes"].index("frontal_chest")
        threshold = float(config.get("threshold", 0.5))
        films = [p for name in sorted(d.name for d in DATA.iterdir() if (d / "images").is_dir())
                 for p in sorted((DATA / name / "images").iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
        differ = 0
        for path in films:
            t = torch.from_numpy(gate_input(read_radiograph(path).array))[None, None]
            p32, p8 = (torch.softmax(net(t).float(), 1)[0, frontal].item() for net in (onnx_gate, int8_gate))
            differ += (p32 >= threshold) != (p8 >= threshold)
        print(f"gate decisions that differ, fp32 vs int8, over {len(films)} shared films: {differ}")
        t = torch.from_numpy(thumbs[0])
        speeds = {"torch fp32": ms_per_call(gate_net, t, args.repeat),
                  "onnxruntime fp32": ms_per_call(onnx_gate, t, args.repeat),
                  "onnxruntime int8": ms_per_call(int8_gate, t, args.repeat)}
        print("gate network per film: " + ", ".join(f"{k} {v:.2f} ms" for k, v in speeds.items()))


if __name__ == "__main__":
    main()
