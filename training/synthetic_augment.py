"""Synthesis as segmentation augmentation (issue 6): a share of the healthy training films is replaced, each time
it is drawn, by its synthetic pathological version, with the healthy film's masks unchanged.

The synthetic versions are made once per run (the generator is deterministic) from the full-resolution film and
its reference lung mask, then pass through the segmentation model's own preprocessing, so they sit on exactly
the grid of the cached masks. Enabled by a ``"synthesis"`` block in a train_cxr config::

    "synthesis": {"model": "cxr_synthesis", "share": 0.5, "datasets": ["jsrt_scr"]}

``"method": "insert"`` (with an optional ``"kind"``, or a list of kinds, and ``"versions"``: several drawn
versions of each film, one picked per swap) draws lesions of the lesion model instead of running the CycleGAN:
film i gets seed i (version v: i + v N), so a rerun makes the same films; the lesion lies inside the lung,
whose mask stays the label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungx_core.preprocess import PreprocessConfig, preprocess_radiograph


def synthetic_versions(
    images: list[np.ndarray],
    lungs: list[np.ndarray],
    preprocess: PreprocessConfig,
    model: str | Path = "cxr_synthesis",
    device: str = "cpu",
    method: str = "cyclegan",
    kind: str | list[str] = "mixed",
    versions: int = 1,
) -> np.ndarray:
    """(N, size, size) float16: each film's synthetic pathological version, preprocessed like the originals
    (``method`` and ``kind`` as for ``lungx synthesize``). With ``versions`` > 1 (insertion), (versions, N, size,
    size): film i's version v is drawn with seed i + v N, and a list of kinds is dealt round-robin over i + v."""
    from lungx_core.tasks.synthesis import make_synthesizer

    kinds = [kind] if isinstance(kind, str) else list(kind)
    synthesizers = {k: make_synthesizer(method, model, device, kind=k) for k in kinds}
    out = []
    for v in range(versions):
        batch = []
        for i, (image, lung) in enumerate(zip(images, lungs, strict=True)):
            synthesizer = synthesizers[kinds[(i + v) % len(kinds)]]
            seed = i + v * len(images) if method == "insert" else None
            synthetic, _ = synthesizer.synthesize_display(image, lung, seed)
            batch.append(preprocess_radiograph(synthetic, preprocess)[0].astype(np.float16))
        out.append(np.stack(batch))
    return out[0] if versions == 1 else np.stack(out)


class SyntheticSwap:
    """Per drawn sample: the synthetic image with probability ``share`` where one exists, else the original;
    ``synthetic`` is (n, ...) or (versions, n, ...), one version drawn at random per swap."""

    def __init__(self, synthetic: np.ndarray, has_synthetic: np.ndarray, share: float, seed: int):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"synthesis share must be in [0, 1], not {share}")
        self.synthetic, self.has_synthetic, self.share = synthetic, has_synthetic, share
        self.versions = synthetic.shape[0] if synthetic.ndim == 4 else 0
        self.rng = np.random.default_rng(seed)
        self.slot = np.cumsum(has_synthetic) - 1  # row of sample i in ``synthetic``

    def image(self, i: int, original: np.ndarray) -> np.ndarray:
        if self.has_synthetic[i] and self.rng.random() < self.share:
            if self.versions:
                return self.synthetic[int(self.rng.integers(self.versions)), self.slot[i]]
            return self.synthetic[self.slot[i]]
        return original
