"""Clavicle refinement: a second look at the clavicles on a band of the film at about twice the anatomy
network's resolution.

The anatomy network sees the whole film at 256 px, where a clavicle is a few pixels wide. This stage crops the
band where the clavicles lie, placed by the lung fields (SCR: every clavicle on the 200 shared JSRT films lies
between 2 % of the lungs' height above their top and 31 % below it, and within the lungs' width), resamples it to
``BAND_SHAPE`` and segments both clavicles there. Pure functions on arrays; :class:`ClavicleRefiner` holds the
network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# The band, as fractions of the lung fields' bounding box: rows from its top, columns from its left edge. Beyond
# the SCR extremes: margin for a lung box that is a little off, and room above the apices, where the clavicles
# of AP (often lordotic) films lie.
BAND_ROWS = (-0.22, 0.38)
BAND_COLS = (-0.05, 1.05)
BAND_SHAPE = (240, 448)  # (rows, cols) the network sees: about a 512-px JSRT film's own pixels


def band_box(lungs: np.ndarray, band_rows: tuple[float, float] = BAND_ROWS,
             band_cols: tuple[float, float] = BAND_COLS) -> tuple[int, int, int, int] | None:
    """(rows, cols) bool lung fields -> the clavicle band (r0, r1, c0, c1) in the film's pixels (may reach beyond
    the film); None without lungs. ``band_rows``/``band_cols``: the band as fractions of the lungs' box."""
    rows = np.nonzero(lungs.any(axis=1))[0]
    cols = np.nonzero(lungs.any(axis=0))[0]
    if rows.size < 2 or cols.size < 2:
        return None
    h, w = rows[-1] - rows[0], cols[-1] - cols[0]
    r0, r1 = (int(round(rows[0] + f * h)) for f in band_rows)
    c0, c1 = (int(round(cols[0] + f * w)) for f in band_cols)
    return r0, r1, c0, c1


def resample_box(channels: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """(C, rows, cols) float maps -> their ``box`` (r0, r1, c0, c1; may reach beyond the maps, 0 there) resampled
    to (C, *shape): anti-aliased bilinear, pixel-centre aligned."""
    import torch
    import torch.nn.functional as F

    r0, r1, c0, c1 = box
    rows, cols = channels.shape[1:]
    band = np.zeros((channels.shape[0], r1 - r0, c1 - c0), dtype=np.float32)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, rows), max(c0, 0), min(c1, cols)
    if rr1 > rr0 and cc1 > cc0:
        band[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = channels[:, rr0:rr1, cc0:cc1]
    return F.interpolate(torch.from_numpy(band)[None], size=shape, mode="bilinear", align_corners=False,
                         antialias=True)[0].numpy()


def crop_band(image: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int] = BAND_SHAPE) -> np.ndarray:
    """(rows, cols) film in [0, 1] -> the band resampled to ``shape`` (:func:`resample_box`), stretched to its own
    1-99 percentiles: the network sees the same contrast whatever the film's window."""
    out = resample_box(np.asarray(image, dtype=np.float32)[None], box, shape)[0]
    lo, hi = np.percentile(out, [1, 99])
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def paste_band(logits: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
               fill: float = -20.0, out: np.ndarray | None = None) -> np.ndarray:
    """(C, band rows, band cols) logits -> (C, rows, cols) on the film: resampled onto the band's box (bilinear,
    pixel-centre aligned, as :func:`crop_band`) and ``fill`` (a certain "no") outside it. ``out``: a float32
    array of that shape to write them into (on a 2k film a fresh one costs more than filling it)."""
    import torch
    import torch.nn.functional as F

    r0, r1, c0, c1 = box
    up = F.interpolate(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None],
                       size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False)[0].numpy()
    if out is None:
        out = np.empty((logits.shape[0], *shape), dtype=np.float32)
    elif out.shape != (logits.shape[0], *shape) or out.dtype != np.float32:
        raise ValueError(f"out must be a float32 array of shape {(logits.shape[0], *shape)}")
    out.fill(fill)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, shape[0]), max(c0, 0), min(c1, shape[1])
    if rr1 > rr0 and cc1 > cc0:
        out[:, rr0:rr1, cc0:cc1] = up[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0]
    return out


def band_geometry(config: dict) -> tuple[tuple[tuple[float, float], tuple[float, float]], tuple[int, int]]:
    """((band rows, band cols) as fractions of the lung box, (rows, cols) the network sees) of a band network's
    config (the shipped model's or a training run's): its ``band_rows``, ``band_cols``, ``band_shape`` keys, else the
    module's defaults."""
    return ((tuple(config.get("band_rows", BAND_ROWS)), tuple(config.get("band_cols", BAND_COLS))),
            tuple(config.get("band_shape", BAND_SHAPE)))


def band_logits(net, windowed: np.ndarray, lungs: np.ndarray, band=(BAND_ROWS, BAND_COLS),
                shape: tuple[int, int] = BAND_SHAPE, device="cpu", out: np.ndarray | None = None) -> np.ndarray | None:
    """``net`` (a band network: torch module or ONNX twin) on the band of ``windowed`` (rows, cols, [0, 1]) placed
    by ``lungs`` -> (C, rows, cols) logits on the film (:func:`paste_band`, into ``out`` when given); None
    without lung fields."""
    import torch

    box = band_box(lungs, *band)
    if box is None:
        return None
    x = crop_band(windowed, box, shape)
    with torch.inference_mode():
        logits = net(torch.from_numpy(x)[None, None].to(device))[0].float().cpu().numpy()
    return paste_band(logits, box, windowed.shape, out=out)


class ClavicleRefiner:
    """The clavicle band network; :meth:`logits` gives (clavicle_left, clavicle_right) logits on the film."""

    def __init__(self, model: str | Path = "cxr_clavicles", device: str = "auto", backend: str = "torch"):
        from lungx_core.models.store import load_model, network_device

        self.net, self.config = load_model(model, device, backend)
        self.device = network_device(self.net)
        self.band, self.shape = band_geometry(self.config)
        self.classes: tuple[str, ...] = tuple(self.config["classes"])  # CXR_CLASSES names

    def logits(self, windowed: np.ndarray, lungs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | None:
        """(rows, cols) film windowed to [0, 1] in display orientation and its lung fields -> (2, rows, cols)
        logits, one per name in ``classes`` (written into ``out`` when given); None without lung fields to place
        the band."""
        return band_logits(self.net, windowed, lungs, self.band, self.shape, self.device, out)
