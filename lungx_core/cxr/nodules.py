"""Lung nodule candidates on a frontal chest film: a centre-heatmap network and the peaks it gives.

The network (``cxr_nodules``, trained by ``training/train_nodules.py``) sees the whole film fitted into a 512-px
square (aspect kept, percentile-windowed as the other film models see it) and gives two maps: the logit of "a
nodule is centred here" (a Gaussian blob of a quarter of the nodule's diameter around each centre in training)
and the log of the nodule's diameter, which did not learn and is unused (diameters come from the blob's width).
Candidates are the heatmap's local maxima (at least ``min_distance`` model pixels apart) above ``floor``, ranked
by probability; nothing is masked to the lung field (nodules project behind the heart and the diaphragm too),
only blank regions (burned-in label boxes, shutters, padding) are left out. The film and its mirror image are
averaged.

Example::

    detector = NoduleDetector()
    for c in detector.detect(display_array):      # standard display orientation
        print(c.rank, c.col, c.row, c.diameter_px, c.probability)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_NODULE_MODEL = "cxr_nodules"
MODEL_SIZE = 512


@dataclass(frozen=True)
class NoduleCandidate:
    """One candidate: ``rank`` (1 = most probable), centre ``col``/``row`` and ``diameter_px`` in pixels of the
    array it was found in, ``probability`` in [0, 1]."""

    rank: int
    col: float
    row: float
    diameter_px: float
    probability: float

    def as_dict(self) -> dict:
        return asdict(self)


def detector_input(display: np.ndarray, size: int = MODEL_SIZE):
    """(the (size, size) float32 network input, its Letterbox): the film windowed by its 0.5/99.5 percentiles
    and fitted into the square, no contrast equalisation (nodule contrast stays the film's own)."""
    from lungx_core.preprocess import PreprocessConfig, preprocess_radiograph

    return preprocess_radiograph(display, PreprocessConfig(size=size, clahe=False))


def with_bone_channel(x: np.ndarray, box, bone_model) -> np.ndarray:
    """(2, size, size): the detector input ``x`` and the same film with :func:`detector_bone` taken out."""
    x = np.asarray(x, np.float32)
    return np.stack([x, x - detector_bone(x, box, bone_model)])


def detector_bone(x: np.ndarray, box, bone_model) -> np.ndarray:
    """What the bone-channel detector takes out of its input ``x``: ``bone_model``'s bone image (``alpha`` times
    it, a :class:`lungx_core.cxr.bone.BoneLayerModel`) in ``x``'s window, made from the film's part of ``x``
    (``box``: its Letterbox) so the padding never enters it; ``x`` is already windowed to [0, 1], so the bone
    image comes out in those units."""
    r0, c0 = box.offset
    rows, cols = box.resized_shape
    bone = np.zeros(np.shape(x), dtype=np.float32)
    film = np.ascontiguousarray(x[r0:r0 + rows, c0:c0 + cols], dtype=np.float32)
    bone[r0:r0 + rows, c0:c0 + cols] = bone_model.alpha * bone_model.bone_image(film)
    return bone


def find_peaks(heat: np.ndarray, floor: float, min_distance: int, max_candidates: int) -> np.ndarray:
    """(row, col) integer indices of the local maxima of ``heat`` (2-D) at or above ``floor``, at least
    ``min_distance`` apart (a maximum filter of that radius), strongest first, at most ``max_candidates``."""
    from scipy import ndimage as ndi

    size = 2 * min_distance + 1
    peaks = (heat >= ndi.maximum_filter(heat, size=size, mode="constant")) & (heat >= floor)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-heat[rows, cols], kind="stable")[:max_candidates]
    return np.stack([rows[order], cols[order]], axis=1)


def refine_centre(heat: np.ndarray, row: int, col: int) -> tuple[float, float]:
    """Sub-pixel centre: the heat-weighted mean over the 3 x 3 neighbourhood of a peak."""
    r0, r1 = max(row - 1, 0), min(row + 2, heat.shape[0])
    c0, c1 = max(col - 1, 0), min(col + 2, heat.shape[1])
    w = heat[r0:r1, c0:c1]
    rr, cc = np.mgrid[r0:r1, c0:c1]
    total = float(w.sum()) or 1.0
    return float((rr * w).sum() / total), float((cc * w).sum() / total)


def blank_regions(x: np.ndarray, min_area: int = 50, margin: int = 6) -> np.ndarray:
    """Where no nodule can be seen (bool, the input's grid): flat regions at the window's floor (burned-in label
    boxes, shutters, the letterbox padding) of at least ``min_area`` pixels, grown by ``margin`` pixels. Their
    corners and edges are blob-like to the network and were the commonest confident false positives on JSRT."""
    from scipy import ndimage as ndi

    dark = np.asarray(x) <= 1e-3
    labels, n = ndi.label(dark)
    if n == 0:
        return dark
    areas = ndi.sum(dark, labels, index=np.arange(1, n + 1))
    big = np.isin(labels, np.nonzero(areas >= min_area)[0] + 1)
    return ndi.binary_dilation(big, iterations=margin)


def blob_diameter(heat: np.ndarray, row: int, col: int, limit: int = 48) -> float:
    """A nodule's diameter (model pixels) from the width of its heat blob: the area at or above half the peak,
    connected to the peak within ``limit`` pixels, as a disc's radius r; training drew a Gaussian of sigma a
    quarter of the diameter, whose half-maximum radius is 1.18 sigma, so the diameter is 4 r / 1.18."""
    from scipy import ndimage as ndi

    r0, r1 = max(row - limit, 0), min(row + limit + 1, heat.shape[0])
    c0, c1 = max(col - limit, 0), min(col + limit + 1, heat.shape[1])
    above = heat[r0:r1, c0:c1] >= heat[row, col] / 2
    labels, _ = ndi.label(above)
    area = float((labels == labels[row - r0, col - c0]).sum())
    return float(4 * np.sqrt(area / np.pi) / 1.177)


def decode(
    heat: np.ndarray, box, floor: float, min_distance: int, max_candidates: int,
    blank: np.ndarray | None = None, diameter_scale: float = 1.0,
) -> list[NoduleCandidate]:
    """Candidates from the network's probability map (model grid) on the original film's grid (``box``: the
    Letterbox the input was made with); peaks inside ``blank`` (bool, model grid) are dropped. Diameters come
    from the heat blob's width (:func:`blob_diameter`) times ``diameter_scale`` (the model card's calibration):
    the shipped network's diameter map did not learn (log correlation 0.04 with the JSRT diameters under
    cross-validation, against 0.35 for the blob width)."""
    if blank is not None:
        heat = np.where(blank, 0.0, heat)
    r0, c0 = box.offset
    sr = box.original_shape[0] / box.resized_shape[0]
    sc = box.original_shape[1] / box.resized_shape[1]
    out = []
    for row, col in find_peaks(heat, floor, min_distance, max_candidates):
        r, c = refine_centre(heat, int(row), int(col))
        # pixel centres: model pixel m covers original [(m - off) * s, (m - off + 1) * s)
        out.append(NoduleCandidate(
            rank=len(out) + 1, col=(c - c0 + 0.5) * sc - 0.5, row=(r - r0 + 0.5) * sr - 0.5,
            diameter_px=blob_diameter(heat, int(row), int(col)) * diameter_scale * (sr + sc) / 2,
            probability=float(heat[row, col]),
        ))
    return out


class NoduleDetector:
    """Holds the nodule network (loaded once). ``threshold``: the model card's operating point (candidates at or
    above it are reported as findings); ``floor``: the least probability kept at all (for FROC)."""

    def __init__(self, model: str | Path = DEFAULT_NODULE_MODEL, device: str = "cpu"):
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        # what DICOM outputs name as the algorithm, like the segmenters' name
        self.name = str(self.config.get("name", Path(str(model)).name.removesuffix(".safetensors")))
        self.threshold = float(self.config.get("threshold", 0.5))
        self.floor = float(self.config.get("floor", 0.02))
        self.min_distance = int(self.config.get("min_distance", 6))
        self.max_candidates = int(self.config.get("max_candidates", 20))
        self.size = int(self.config.get("size", MODEL_SIZE))
        self.diameter_scale = float(self.config.get("diameter_scale", 1.0))
        self.scales = tuple(float(v) for v in self.config.get("scales", [1.0]))
        self.device = next(self.net.parameters()).device
        self.bone = None  # a detector trained with the suppressed film as a second channel needs its bone model
        if self.config.get("bone_channel"):
            from lungx_core.cxr.bone import BoneLayerModel
            from lungx_core.models.store import shared_model

            self.bone = shared_model(BoneLayerModel, self.config["bone_channel"], device,
                                     bool(self.config.get("bone_single_view", False)))

    def detect(self, display: np.ndarray) -> list[NoduleCandidate]:
        """Candidates on a 2-D film in standard display orientation (pixel coordinates of ``display``)."""
        x, box = detector_input(display, self.size)
        net_input = x if self.bone is None else with_bone_channel(x, box, self.bone)
        heat = predict_heat(self.net, net_input, self.device, self.scales)
        return decode(heat, box, self.floor, self.min_distance, self.max_candidates, blank_regions(x),
                      self.diameter_scale)


def predict_heat(net, x: np.ndarray, device=None, scales=(1.0,)) -> np.ndarray:
    """The nodule-centre probability of a (size, size) or (channels, size, size) input through ``net``: its
    logit averaged over the film and its mirror image (mirrored back) at each of ``scales`` (the input resized by
    that factor, rounded to a multiple of 16 px, and the logit resized back; scale 1 is the input as it is).
    Training scores its folds with it too, so the validation is what ships; the model card says which scales were
    measured. The network's second output, the log diameter, is not used (see :func:`decode`)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(x, np.float32))
    t = t[None, None] if t.ndim == 2 else t[None]  # (size, size), or (channels, size, size)
    if device is not None:
        t = t.to(device)
    size = tuple(t.shape[-2:])
    total = None
    with torch.inference_mode():
        for s in scales:
            shape = size if s == 1 else tuple(max(16, int(round(n * s / 16)) * 16) for n in size)
            ts = t if shape == size else F.interpolate(t, size=shape, mode="bilinear", align_corners=False)
            out = net(torch.cat([ts, torch.flip(ts, dims=(-1,))]))[:, :1].float()
            logit = (out[0:1] + torch.flip(out[1:2], dims=(-1,))) / 2
            if shape != size:
                logit = F.interpolate(logit, size=size, mode="bilinear", align_corners=False)
            total = logit if total is None else total + logit
        logit = total[0, 0] / len(scales)
    return torch.sigmoid(logit).cpu().numpy()
