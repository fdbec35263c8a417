"""Train the de-opacifier (``cxr_opacity_removal`` v2): an opaque thoracic crop and its activation mask in, the
clear crop out, supervised on exact triples from the lesion model (``training/opacity_pairs.py``).

    python -m training.train_deopacifier --config training/configs/deopacifier_cxr.json --run /work/runs/deopac \
        [--cache /work/runs/synth_data/domains_144.npz]
    python -m training.train_deopacifier --config ... --run /work/runs/deopac --export
    python -m training.train_deopacifier --config training/configs/deopacifier_cxr_probe.json \
        --run /work/runs/deopac_probe --init /work/runs/deopac/best.pt     # the probe-guided fine-tuning
    python -m training.train_deopacifier --config training/configs/deopacifier_cxr_adversarial.json \
        --run /work/runs/deopac_adv --init cxr_opacity_removal            # the region-aware adversarial stage

The network predicts a change that is applied only inside the mask, ``clear = x + mask * net([x, mask])``, as
at inference. Loss: L1 (inside the lesion weighted up) + (1 - SSIM) of the composited crop against the clear
crop. Resumable (``last.pt``); the epoch with the best validation PSNR inside the lesions is kept (``best.pt``).

A config with a ``probe`` section is a fine-tuning stage (start it with ``--init``): each step adds, on real opaque
training films, a loss through the frozen lung probe (``training/probe_guidance.py``); its ``best.pt`` is simply the
latest epoch, since the synthetic PSNR is no longer what it optimises and the films that score the probe's Dice
(the GB validation split) must stay unseen. A config with an ``adversarial`` section is the seed's unpaired,
region-aware refinement (``training/region_adversary.py``): real opaque training films, no masks, a discriminator
that sees only the region the remover changes; likewise the latest epoch is kept.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lungx_core.models.networks import build_network
from lungx_core.models.store import save_model
from training.common import append_log, centre_window, resume, save_checkpoint, seed_everything, warm_start
from training.opacity_pairs import REAL_GAIN, batch, real_residuals
from training.schemas import DeopacifierRun, read_config
from training.synthesis_data import domain_data

MODEL_NAME = "cxr_opacity_removal"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="domain cache of training/synthesis_data.py (built when missing)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--export", action="store_true", help="ship <run>/best.pt as cxr_opacity_removal")
    ap.add_argument("--out", type=Path, help="with --export: write <out>.safetensors/.json instead of shipping")
    ap.add_argument("--init", help="start from this checkpoint's weights (e.g. <run>/best.pt) or shipped model")
    return ap.parse_args(argv)


def make_net(cfg: dict):
    return build_network("unet", 2, 1, **cfg["arch_options"])


def restore(net, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) crops in [0, 1] and masks -> composited clear crops: changed only where the mask is > 0."""
    return x + mask * net(torch.cat([x, mask], dim=1))


def inference_change(net, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The change inference applies to (B, 1, S, S) crops: the composited crop clipped to [0, 1], minus the crop."""
    return torch.where(mask > 0, restore(net, x, mask).clamp(0, 1), x) - x


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    mse = float(((a - b) ** 2)[where].mean()) if where.any() else 0.0
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def gb_clear_lungs(data: dict, margin: int = 4, least: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The cache's lung masks with each GB training film's lung cut back to its clear part (``margin`` px away
    from the reference opacity), and the indices of the GB training films with at least ``least`` of it clear."""
    from scipy import ndimage as ndi

    lungs = data["lungs"].copy()
    pick = (data["dataset"] == "covid_cxr_gb_seg") & (data["split"] == "train") & data["opacity_known"]
    keep = []
    for i in np.nonzero(pick)[0]:
        clear = lungs[i] & ~ndi.binary_dilation(data["opacity"][i], iterations=margin)
        if clear.sum() >= least * max(lungs[i].sum(), 1):
            lungs[i] = clear
            keep.append(i)
    return lungs, np.array(keep, dtype=int)


def validation_set(data: dict, val: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """Fixed triples (seed 1234) on the healthy validation crops, centre ``size`` windows."""
    rng = np.random.default_rng(1234)
    images, lungs = centre_window(data["images"], size), centre_window(data["lungs"], size)
    return batch(images, lungs, val, size, rng, [])


def evaluate(net, triples: tuple[np.ndarray, ...]) -> dict[str, float]:
    opaque, clear, mask, lesion = triples
    net.eval()
    with torch.inference_mode():
        out = restore(net, torch.from_numpy(opaque)[:, None], torch.from_numpy(mask)[:, None])[:, 0].numpy()
    net.train()
    out = np.clip(out, 0, 1)
    where = lesion.astype(bool)
    return {"psnr_lesion_before": psnr(opaque, clear, where), "psnr_lesion_after": psnr(out, clear, where),
            "mae_lesion_before": float(np.abs(opaque - clear)[where].mean()),
            "mae_lesion_after": float(np.abs(out - clear)[where].mean())}


def export(args, cfg: dict) -> None:
    ck = torch.load(args.run / "best.pt", weights_only=False)  # our own run folder
    config = {
        "arch": "unet",
        "in_channels": 2,
        "classes": ["image"],
        "arch_options": cfg["arch_options"],
        "crop": cfg["crop"],
        "conditioning": "mask",
        "region_aware": {"opacity_model": "cxr_opacity", "activation": cfg.get("activation", {})},
        "training": {"run_config": cfg["name"], "epochs_done": ck["epoch"] + 1, "steps_per_epoch": cfg["steps"],
                     "batch_size": cfg["batch_size"], "lr": cfg["lr"], "probe": cfg.get("probe"),
                     "adversarial": cfg.get("adversarial")},
        "validation_synthetic": {k: round(v, 4) for k, v in ck["metrics"].items()},
    }
    save_model(ck["model"], config, args.out or MODEL_NAME)
    print(json.dumps(config["validation_synthetic"]))


def main(argv=None) -> None:
    from monai.losses import SSIMLoss

    args = parse_args(argv)
    cfg = read_config(args.config, DeopacifierRun)
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    if args.export:
        export(args, cfg)
        return
    seed_everything(cfg["seed"])
    data = domain_data(args.data, args.cache, args.run, cfg["crop"], cfg["load_size"])
    healthy = data["domain"] == "healthy"
    train = np.nonzero(healthy & (data["split"] == "train"))[0]
    val = np.nonzero(healthy & (data["split"] == "val"))[0]
    bank = real_residuals(data)
    lungs = data["lungs"]
    if cfg.get("gb_backgrounds"):  # the films the remover meets: lesions go into their lung away from the opacity
        lungs, gb = gb_clear_lungs(data)
        train = np.concatenate([train, gb])
    size = cfg["crop"]["size"]
    triples = validation_set(data, val, size)
    print(f"{len(train)} clear training crops, {len(val)} validation, {len(bank)} real residuals", flush=True)
    guide = cfg.get("probe")
    if guide:
        from training.probe_guidance import ProbeLoss, RealFilms, prepare_films

        probe = ProbeLoss(guide["model"])
        cache = args.run / "probe_films.npz"
        if not cache.exists():
            prepare_films(args.data, guide["datasets"], probe.preprocess).save(cache)
        films = RealFilms.load(cache)
        print(f"{len(films.ids)} real films for the probe loss", flush=True)

    adversary = cfg.get("adversarial")
    if adversary:
        from training import region_adversary as ra

        cache = args.run / "region_films.npz"
        if not cache.exists():
            ra.prepare_region_films(args.data, adversary["datasets"], data).save(cache)
        regions = ra.RegionFilms.load(cache)
        fakes = np.nonzero(regions.opaque)[0]
        pairs = ra.partners(regions, adversary["min_cover"])
        print(f"{len(fakes)} opaque films for the adversarial stage, partners per film: median "
              f"{int(np.median([len(p) for p in pairs]))}, none for {sum(len(p) == 0 for p in pairs)}", flush=True)
        disc = ra.RegionDiscriminator(adversary["width"])
        d_opt = torch.optim.Adam(disc.parameters(), lr=adversary["d_lr"], betas=(0.5, 0.999))
        if (args.run / "disc.pt").exists():
            d_state = torch.load(args.run / "disc.pt", weights_only=False)  # our own run folder
            disc.load_state_dict(d_state["model"])
            d_opt.load_state_dict(d_state["optimizer"])

    net = make_net(cfg)
    if args.init and Path(args.init).exists():
        net.load_state_dict(torch.load(args.init, weights_only=False)["model"])  # our own run folder
    elif args.init:
        warm_start(net, args.init, strict=True)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * cfg["steps"])
    start, best = resume(args.run, net, opt, sched)
    ssim = SSIMLoss(spatial_dims=2, data_range=1.0)
    rng = np.random.default_rng(cfg["seed"] + start)  # a resumed run draws new triples, not the first epoch's
    for epoch in range(start, cfg["epochs"]):
        t0, losses, probe_dice, adv_log = time.time(), [], [], []
        for _ in range(cfg["steps"]):
            idx = rng.choice(train, cfg["batch_size"])
            opaque, clear, mask, lesion = (torch.from_numpy(a)[:, None] for a in batch(
                data["images"], lungs, idx, size, rng, bank, tuple(cfg.get("real_gain", REAL_GAIN))))
            out = restore(net, opaque, mask)
            weight = 1 + cfg["lesion_weight"] * lesion
            loss = (weight * (out - clear).abs()).mean() + cfg["ssim_weight"] * ssim(out.clamp(0, 1), clear)
            if guide:
                real = rng.choice(len(films.ids), guide["batch_size"])
                x, m = (torch.from_numpy(a[real])[:, None] for a in (films.crops, films.masks))
                probe_loss, dice = probe(inference_change(net, x, m), films, real, rng)
                loss = loss + guide["weight"] * probe_loss
                probe_dice.append(dice)
            if adversary:
                k = rng.choice(len(fakes), adversary["batch_size"])
                x = torch.from_numpy(regions.crops[fakes[k]])[:, None]
                m = torch.from_numpy(regions.masks[fakes[k]])[:, None]
                fake = restore(net, x, m).clamp(0, 1)
                logits = disc(fake, m)
                w = ra.region_weights(m, logits)
                g_adv = ra.lsgan(logits, 1.0, w)
                bright = ra.brightening(fake, x, m)
                loss = loss + adversary["weight"] * g_adv + adversary["brighten_weight"] * bright
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if adversary:  # the discriminator's step, after the generator's (it reads the same weights)
                partner = ra.real_regions(regions, k, pairs, rng)
                d_loss = 0.5 * (ra.lsgan(disc(partner, m), 1.0, w) + ra.lsgan(disc(fake.detach(), m), 0.0, w))
                d_opt.zero_grad()
                d_loss.backward()
                d_opt.step()
                adv_log.append((g_adv.item(), d_loss.item(), bright.item()))
        metrics = evaluate(net, triples)
        if guide:
            metrics["probe_dice_train"] = float(np.mean(probe_dice))
        if adversary:
            metrics.update(zip(("g_adversarial", "d_loss", "brightening"), np.mean(adv_log, axis=0).tolist(),
                               strict=True))
            tmp = args.run / "disc.tmp"
            torch.save({"model": disc.state_dict(), "optimizer": d_opt.state_dict()}, tmp)
            tmp.replace(args.run / "disc.pt")
        score = metrics["psnr_lesion_after"]
        if score > best or guide or adversary:
            best = score
            torch.save({"model": net.state_dict(), "epoch": epoch, "metrics": metrics}, args.run / "best.pt")
        save_checkpoint(args.run, net, opt, sched, epoch, best)
        append_log(args.run / "log.csv", {"epoch": epoch, "loss": float(np.mean(losses)),
                                          "seconds": round(time.time() - t0, 1), **metrics})
        print(f"epoch {epoch} loss {np.mean(losses):.4f} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()),
              flush=True)


if __name__ == "__main__":
    main()
