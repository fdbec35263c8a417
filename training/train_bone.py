"""Train the bone-layer model (``cxr_bone``): a film in, its bone image out; suppressed = film - alpha * bone.

Two stages, one script:

1. ``--stage drr``: CT-derived pairs only (``training/bone_data.py``), a new film look every step; every CT but
   ``BONE_VALIDATION_CT``. The real DES films are never seen, so their scores here are honest for all six.
2. ``--stage des --fold ID``: fine-tune the stage-1 weights on the DES pairs except ``ID`` (mixed with
   CT-derived pairs, ``des_fraction`` of each batch DES, so the film look stays varied); ``--fold all`` uses
   all six (the shipped model). Leave-one-out scores come from ``training/eval_bone_loo.py`` over the folds.

Loss: 1 - BSR over the batch (``bone_loss``).

A config with a ``nodules`` section (issue 39) adds simulated soft-tissue nodules that never belong in the bone
image, in the stages it lists: into both CT line integrals before rendering, into the DES films (their
soft-tissue target keeps them), each disc weighted ``disc_weight`` more; and outside the drr stage a share of
each batch is real normal films (JSRT JPCNN, NIH no-finding) with nodules added, whose target is the network's
own bone image of the film without them. ``bone_cxr_nodules.json`` adds them to the drr and des stages (measured
in cxr_bone.md, not kept); ``bone_cxr_keep_nodules.json`` trains drr and des as ``bone_cxr.json`` does and then
fine-tunes each des model in a third stage, ``--stage nodules --fold ID`` (``nodule_stage``), that carries them.

    python -m training.train_bone --config training/configs/bone_cxr.json --run ../runs/bone --stage drr
    python -m training.train_bone --config training/configs/bone_cxr.json --run ../runs/bone --stage des --fold all
    python -m training.train_bone --config training/configs/bone_cxr_keep_nodules.json --run ../runs/bone \
        --stage nodules --fold all   # after drr and des with that config
    python -m training.train_bone --config training/configs/bone_cxr.json --run ../runs/bone --export
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lungx_core.models.networks import build_network
from training.bone_data import (
    BONE_VALIDATION_CT,
    bone_inference_config,
    des_training_arrays,
    film_nodules,
    psnr_gain,
    read_des_pairs,
    read_normal_films,
    render_batch,
    render_batch_with_nodules,
)
from training.common import append_log, random_affine, resume, save_checkpoint, seed_everything
from training.rib_data import build_rib_cache
from training.schemas import BoneRun, read_config

# stage name -> its config key; each fine-tuning stage starts from the previous stage's model of the same fold
STAGE_KEYS = {"drr": "drr", "des": "des", "nodules": "nodule_stage"}


def final_stage(cfg: dict) -> str:
    """The stage whose models ship and are scored leave-one-out: ``nodules`` when the config has one."""
    return "nodules" if cfg.get("nodule_stage") else "des"


def stage_folder(run: Path, stage: str, fold: str = "all") -> Path:
    return run / ("drr" if stage == "drr" else f"{stage}_{fold}")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--run", type=Path, required=True, help="run folder (cache, checkpoints, logs; outside git)")
    ap.add_argument("--stage", choices=list(STAGE_KEYS), default="drr")
    ap.add_argument("--fold", default="all", help="des and nodules stages: the DES pair left out, or 'all'")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--export", action="store_true", help="ship the last stage's all-pair model "
                    "(<run>/des_all or nodules_all) as cxr_bone with the inference settings eval_bone_loo chose")
    return ap.parse_args(argv)


def bone_loss(bone_hat: torch.Tensor, bone: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """1 - BSR over the batch: the weighted squared error of the bone image over the bone images' energy. What
    the scores measure (squared error after suppression), on a scale where predicting no bone scores 1.
    (Gusarev's 0.84 * (1 - SSIM) + 0.16 * L1 on the suppressed film learned to predict almost nothing here:
    bone is a few per cent of the film's range.)"""
    return (weight * (bone_hat - bone) ** 2).sum() / ((weight * bone**2).sum() + 1e-6)


def predict(net, films: torch.Tensor, batch: int = 8) -> np.ndarray:
    net.eval()
    with torch.inference_mode():
        return torch.cat([net(films[i:i + batch]) for i in range(0, len(films), batch)]).numpy()


def des_scores(net, des: dict, ids: list[str], alpha: float = 1.0) -> dict[str, float]:
    """PSNR gain per DES film at 256 px (film - alpha * bone_hat against film - bone, the lung field)."""
    bone_hat = predict(net, torch.from_numpy(des["film"]))
    out = {}
    for i, case in enumerate(ids):
        film = des["film"][i, 0].astype(np.float64)
        soft = film - des["bone"][i, 0]
        out[case] = round(psnr_gain(film, bone_hat[i, 0], soft, des["lung"][i, 0] > 0.5, alpha), 3)
    return out


def drr_score(net, val_films: torch.Tensor, val_bones: torch.Tensor) -> float:
    """Mean PSNR gain (alpha 1) over the held-out CT's projections, the body region."""
    bone_hat = predict(net, val_films)
    gains = []
    for i in range(len(val_films)):
        film = val_films[i, 0].numpy().astype(np.float64)
        soft = film - val_bones[i, 0].numpy()
        body = film > 0.1  # the fixed validation look is never inverted
        gains.append(psnr_gain(film, bone_hat[i, 0], soft, body, 1.0))
    return float(np.mean(gains))


def load_des(args, cfg) -> tuple[dict, list[str]]:
    cache = args.run / "des_cache.npz"
    if not cache.exists():
        pairs = read_des_pairs(args.data)
        arrays = des_training_arrays(pairs, cfg["size"])
        np.savez_compressed(cache, ids=np.array([p["id"] for p in pairs]), **arrays)
    z = np.load(cache)
    return {k: z[k] for k in ("film", "bone", "lung")}, [str(i) for i in z["ids"]]


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = read_config(args.config, BoneRun)
    torch.set_num_threads(args.threads)
    seed_everything(cfg["seed"])
    args.run.mkdir(parents=True, exist_ok=True)
    cache = np.load(build_rib_cache(args.data, args.run / "rib_cache.npz", cfg["size"]))
    held = cache["case"] == BONE_VALIDATION_CT
    train_idx, val_idx = np.where(~held)[0], np.where(held)[0]
    val_films, val_bones = render_batch(cache["drr"][val_idx], cache["soft"][val_idx], None)
    des, ids = load_des(args, cfg)
    net = build_network(cfg["arch"], 1, 1, **cfg["arch_options"])
    if args.export:
        return export_model(args, cfg, net, des, ids)

    stage = cfg.get(STAGE_KEYS[args.stage])
    if stage is None:
        raise SystemExit(f"{args.config}: no {STAGE_KEYS[args.stage]} section for --stage {args.stage}")
    folder = stage_folder(args.run, args.stage, args.fold)
    folder.mkdir(exist_ok=True)
    train_des = [i for i, case in enumerate(ids) if case != args.fold]
    if args.stage != "drr":
        if args.fold != "all" and args.fold not in ids:
            raise SystemExit(f"--fold {args.fold}: not a DES pair ({', '.join(ids)})")
        if not (folder / "last.pt").exists():
            previous = stage_folder(args.run, "drr" if args.stage == "des" else "des", args.fold)
            net.load_state_dict(torch.load(previous / "best.pt", weights_only=True))
    opt = torch.optim.AdamW(net.parameters(), lr=stage["lr"], weight_decay=cfg["weight_decay"])
    total = stage["epochs"] * stage["steps_per_epoch"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, stage["lr"], total_steps=total, pct_start=stage["warmup"])
    start, best = resume(folder, net, opt, sched)
    rng = np.random.default_rng(cfg["seed"] + start + (0 if args.fold == "all" else 1000 * ids.index(args.fold)))
    batch = cfg["batch_size"]
    ncfg = cfg.get("nodules")
    if ncfg and args.stage not in ncfg.get("stages", ["drr", "des"]):
        ncfg = None
    use_normals = ncfg and args.stage != "drr"  # the invariance term needs real films: not in the drr stage
    normals = read_normal_films(args.data, args.run / "normal_films.npz", cfg["size"]) if use_normals else None
    # a DES film's polarity: its bone image is positive over the lungs unless the film is inverted
    polarity = np.sign((des["bone"] * des["lung"]).sum(axis=(1, 2, 3)))
    for epoch in range(start, stage["epochs"]):
        net.train()
        t0, losses = time.perf_counter(), []
        for _ in range(stage["steps_per_epoch"]):
            n_des = round(batch * stage.get("des_fraction", 0.5)) if args.stage != "drr" else 0
            n_inv = round(batch * ncfg["invariance_fraction"]) if use_normals else 0
            idx = rng.choice(train_idx, batch - n_des - n_inv)
            if ncfg:
                films, bones, discs = render_batch_with_nodules(cache["drr"][idx], cache["soft"][idx], rng, ncfg)
                weight = 1 + ncfg["disc_weight"] * discs
            else:
                films, bones = render_batch(cache["drr"][idx], cache["soft"][idx], rng)
                weight = torch.ones_like(films)
            if n_des:
                j = rng.choice(train_des, n_des)
                f, disc = des["film"][j], np.zeros_like(des["film"][j])
                if ncfg:  # the nodule goes into the film and its soft-tissue image alike: never into the bone
                    f, disc = film_nodules(f, des["lung"][j], polarity[j], rng, ncfg)
                f, b = torch.from_numpy(f), torch.from_numpy(des["bone"][j])
                w = 0.2 + torch.from_numpy(des["lung"][j])  # the lung field is what is scored and read
                w = w + (ncfg["disc_weight"] if ncfg else 0) * torch.from_numpy(disc)
                gamma = torch.from_numpy(np.exp(rng.uniform(-0.3, 0.3, (n_des, 1, 1, 1))).astype(np.float32))
                soft = (f - b).clamp(0, 1.5) ** gamma
                f = f.clamp(0, 1.5) ** gamma  # the same grey-level curve for both keeps them a pair
                films, bones = torch.cat([films, f]), torch.cat([bones, f - soft])
                weight = torch.cat([weight, w])
            if n_inv:  # a real normal film with nodules added must give the bone image of the film without them
                j = rng.choice(len(normals["film"]), n_inv)
                clean = normals["film"][j]
                noisy, disc = film_nodules(clean, normals["lung"][j], np.ones(n_inv), rng, ncfg)
                net.eval()
                with torch.no_grad():
                    target = net(torch.from_numpy(clean))
                net.train()
                films, bones = torch.cat([films, torch.from_numpy(noisy)]), torch.cat([bones, target])
                w = 0.2 + torch.from_numpy(normals["lung"][j]) + ncfg["disc_weight"] * torch.from_numpy(disc)
                weight = torch.cat([weight, w])
            films, bones, weight = random_affine([films, bones, weight], rng)
            loss = bone_loss(net(films), bones, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        drr_gain = drr_score(net, val_films, val_bones)
        gains = des_scores(net, des, ids)
        # stage 1 keeps its best epoch (neither the held-out CT nor the DES films are trained on); the others keep
        # the last: their only unseen film is the one they are scored on, never to be selected on
        score = drr_gain + float(np.mean(list(gains.values())))
        if args.stage != "drr" or score > best:
            best = max(best, score)
            torch.save(net.state_dict(), folder / "best.pt")
        save_checkpoint(folder, net, opt, sched, epoch, best)
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 5), "drr_gain_db": round(drr_gain, 3),
               **{f"des_{c}": g for c, g in gains.items()}, "seconds": round(time.perf_counter() - t0, 1)}
        append_log(folder / "log.csv", row)
        print(row, flush=True)


def export_model(args, cfg, net, des, ids) -> None:
    """Ship the final stage's all-pair model (``des_all`` or ``nodules_all``) as ``lungx_core/weights/cxr_bone``
    (fp16 safetensors + JSON) with the settings fitted on all six DES films (``training/eval_bone_loo.py``
    reports the leave-one-out numbers)."""
    from lungx_core.models.store import WEIGHTS_DIR, save_model

    state = torch.load(stage_folder(args.run, final_stage(cfg)) / "best.pt", weights_only=True)
    loo = json.loads((args.run / "loo.json").read_text())
    chosen = loo["chosen_all"]
    config = {
        "arch": cfg["arch"], "arch_options": cfg["arch_options"], "in_channels": 1, "classes": ["bone"],
        **bone_inference_config(cfg), "alpha": chosen["alpha"],
        "guided_radius": chosen["guided"][0] if chosen["guided"] else 0.0,
        "guided_eps": chosen["guided"][1] if chosen["guided"] else 0.0,
        "metrics": loo["summary"],
    }
    save_model(state, config, WEIGHTS_DIR / cfg["name"])
    print(f"exported {cfg['name']} ({chosen})")


if __name__ == "__main__":
    main()
