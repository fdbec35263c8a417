"""Export a generator of a translation run as a shipped model (safetensors fp16 + JSON).

    python training/export_synthesis.py --run /work/runs/synth_shape [--out lungx_core/weights/cxr_synthesis]
    python training/export_synthesis.py --run /work/runs/synth_lesion --paired --out /work/runs/synth_lesion/paired_only
    python training/export_synthesis.py --run /work/runs/opacity_removal --direction ba \
        --out lungx_core/weights/cxr_opacity_removal

``ab`` is healthy -> pathological (synthesis), ``ba`` pathological -> clear (opacity removal; the run's
``region_aware`` block, i.e. the opacity model and activation-mask settings, goes into the config). A
lesion-guided synthesis run (``region_aware.mask_a`` = ``lesion``) exports ``"region": "lesion"`` instead.

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


def export(run: Path, out: Path, direction: str = "ab", paired: bool = False) -> Path:
    raw = json.loads((run / "config.json").read_text())
    if paired:  # the paired pre-training's generators, before any unpaired step
        state = {"nets": torch.load(run / "paired.pt", weights_only=False), "epoch": 0, "steps": 0}
    else:
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
            "stage": "paired pre-training only" if paired else "unpaired",
            **{k: raw["translation"][k] for k in ("lambda_surround", "lambda_align") if k in raw["translation"]},
        },
    }
    region_aware = raw.get("region_aware")
    if region_aware and direction == "ab" and region_aware.get("mask_a") == "lesion":
        config["region"] = "lesion"  # Synthesizer lets the change in through a drawn lesion only
        config["training"]["warm_start"] = raw.get("warm_start")
    elif region_aware:
        config["region_aware"] = region_aware
    return save_model(state["nets"][f"g_{direction}"], config, out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR / "cxr_synthesis")
    ap.add_argument("--direction", choices=("ab", "ba"), default="ab")
    ap.add_argument("--paired", action="store_true", help="export the paired pre-training's generator (paired.pt)")
    args = ap.parse_args(argv)
    print(export(args.run, args.out.resolve(), args.direction, args.paired))  # a relative path is not a model name


if __name__ == "__main__":
    main()
