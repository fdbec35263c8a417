"""Train the rib-inpainting diffusion model (a diffusers UNet2DModel, from scratch) on real radiographs.

Each step: random ``crop`` x ``crop`` windows of films at the working scale (``training/inpainting_data.py``),
random flips and gamma, a procedural rib-shaped hole, a random timestep of the training noise process; the
network sees (noisy image, image with a smooth fill in the hole, hole) and is trained on the clean image, weighted to
the hole (grown by 2 px) with a small weight elsewhere. Validation after each epoch: fixed crops and holes,
DDIM at 10 steps, PSNR inside the hole against the real pixels, beside a smooth-fill baseline (normalised
convolution), so the log says whether the model has learnt more than blurring.

    python -m training.train_inpainting --config training/configs/inpainting_cxr.json \
        --run ../runs/inpainting --threads 1
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage as ndi

from lungx_core.generative.inpainting import DiffusionSpec, inpaint, network_input, training_scheduler
from lungx_core.models.networks import build_network
from training.common import append_log, resume, save_checkpoint, start_run
from training.inpainting_data import build_film_cache, rib_holes
from training.schemas import InpaintingRun  # noqa: E402


def batch(films: np.ndarray, n: int, crop: int, rng: np.random.Generator, augment: bool = True):
    """(images in [-1, 1], holes) as (n, 1, crop, crop) float tensors."""
    size = films.shape[1]
    images, holes = [], []
    for _ in range(n):
        f = films[rng.integers(len(films))]
        r, c = rng.integers(0, size - crop + 1, 2)
        x = f[r : r + crop, c : c + crop].astype(np.float32) / 255
        if augment:
            if rng.random() < 0.5:
                x = x[:, ::-1]
            x = x ** rng.uniform(0.7, 1.4)
        images.append(x * 2 - 1)
        holes.append(rib_holes((crop, crop), rng))
    to = lambda a: torch.from_numpy(np.stack(a)[:, None].astype(np.float32))  # noqa: E731
    return to(images), to(holes)


def smooth_fill(image: np.ndarray, hole: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Normalised-convolution fill: a Gaussian-weighted mean of the known pixels (the blur baseline)."""
    known = ~hole
    num = ndi.gaussian_filter(np.where(known, image, 0.0), sigma)
    den = ndi.gaussian_filter(known.astype(np.float64), sigma)
    return np.where(hole, num / np.maximum(den, 1e-6), image)


def hole_psnr(truth: np.ndarray, test: np.ndarray, hole: np.ndarray) -> float:
    mse = float(np.mean((truth[hole] - test[hole]) ** 2))
    return 10 * np.log10(4.0 / max(mse, 1e-12))  # images span [-1, 1]


def main(argv=None) -> None:
    args, cfg = start_run(__doc__, InpaintingRun, argv)
    spec = DiffusionSpec.from_dict(cfg["diffusion"])
    cache = np.load(build_film_cache(args.data, args.run / f"films_{spec.size}.npz", spec.size))
    films, ids = cache["films"], cache["ids"]
    rng = np.random.default_rng(cfg["seed"])
    order = rng.permutation(len(films))
    n_val = max(8, int(len(films) * cfg["val_fraction"]))
    val_films, train_films = films[order[:n_val]], films[order[n_val:]]
    (args.run / "val_ids.txt").write_text("\n".join(sorted(str(i) for i in ids[order[:n_val]])) + "\n")
    val_x, val_h = batch(val_films, cfg["val_crops"], cfg["crop"], np.random.default_rng(1), augment=False)
    pairs = zip(val_x[:, 0].numpy(), val_h[:, 0].numpy(), strict=True)
    baseline = np.mean([hole_psnr(x, smooth_fill(x, h > 0), h > 0) for x, h in pairs])

    net = build_network("diffusion_unet", 3, 1, **cfg["arch_options"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    total = cfg["epochs"] * cfg["steps_per_epoch"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=total, pct_start=0.05)
    start, best = resume(args.run, net, opt, sched)
    noise_sched = training_scheduler(spec)
    print(f"{len(train_films)} train / {len(val_films)} val films; "
          f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params; smooth-fill baseline {baseline:.2f} dB",
          flush=True)
    for epoch in range(start, cfg["epochs"]):
        net.train()
        t0, losses = time.perf_counter(), []
        for _ in range(cfg["steps_per_epoch"]):
            x, hole = batch(train_films, cfg["batch_size"], cfg["crop"], rng)
            noise = torch.randn_like(x)
            t = torch.randint(0, spec.num_train_timesteps, (len(x),))
            noisy = noise_sched.add_noise(x, noise, t)
            target = x if spec.prediction_type == "sample" else noise_sched.get_velocity(x, noise, t)
            pred = net(network_input(noisy, x, hole), t).sample
            weight = torch.nn.functional.max_pool2d(hole, 5, 1, 2) + cfg["outside_weight"]
            loss = (weight * (pred - target) ** 2).sum() / weight.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
        net.eval()
        filled = inpaint(net, val_x, val_h, spec, steps=10, seed=0)[:, 0].numpy()
        score = float(np.mean([hole_psnr(x, f, h > 0) for x, f, h in zip(val_x[:, 0].numpy(), filled,
                                                                         val_h[:, 0].numpy(), strict=True)]))
        if score > best:
            best = score
            torch.save(net.state_dict(), args.run / "best.pt")
        save_checkpoint(args.run, net, opt, sched, epoch, best)
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 5), "val_hole_psnr_ddim10": round(score, 3),
               "smooth_fill_psnr": round(float(baseline), 3), "seconds": round(time.perf_counter() - t0, 1)}
        append_log(args.run / "log.csv", row)
        print(row, flush=True)


if __name__ == "__main__":
    main()
