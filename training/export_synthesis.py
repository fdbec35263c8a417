"""Export a generator of a translation run as a shipped model (safetensors fp16 + JSON).

    python training/export_synthesis.py --run /work/runs/synth_shape [--out lungx_core/weights/cxr_synthesis]
    python training/export_synthesis.py --run /work/runs/opacity_removal --direction ba \
        --out lungx_core/weights/cxr_opacity_removal

``ab`` is healthy -> pathological (synthesis), ``ba`` pathological -> clear (opacity removal; the run's
``region_aware`` block, i.e. the opacity model and activation-mask settings, goes into the config).

The model card (``<out>.md``) is written by hand from the numbers that ``lungx evaluate synthesis`` prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.models.store import WEIGHTS_DIR, save_model  # noqa: E402


def export(run: Path, out: Path, direction: str = "ab") -> Path:
    raw = json.loads((run / "config.json").read_text())
    state = torch.load(run / "last.pt", weights_only=False)["trainer"]
    generator = dict(raw["translation"]["generator"])
    channels = generator.pop("channels")
    config = {
        "arch": "resnet_generator",
        "in_channels": channels,
        "classes": ["image"],
        "arch_options": generator,
        "crop": raw["crop"],
        "training": {
            "run_config": raw["name"],
            "epochs_done": state["epoch"],
            "steps": state["steps"],
            "direction": direction,
            **{k: raw["translation"][k] for k in ("lambda_surround", "lambda_align") if k in raw["translation"]},
        },
    }
    if "region_aware" in raw:
        config["region_aware"] = raw["region_aware"]
    return save_model(state["nets"][f"g_{direction}"], config, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR / "cxr_synthesis")
    ap.add_argument("--direction", choices=("ab", "ba"), default="ab")
    args = ap.parse_args(argv)
    print(export(args.run, args.out.resolve(), args.direction))  # a relative path is not a model name


if __name__ == "__main__":
    main()
