"""Is this frontal film mirrored left-right? A check behind every radiograph task's left/right labels.

The anatomy network names the lungs by where they lie in the displayed film, so a film stored mirrored (a
flipped PNG export, a wrong PatientOrientation, a marker-less film scanned back to front) gets the patient's
right lung labelled left, and the heart's position moves too little for the plausibility checks to see it
(measured: on mirrored JSRT films the heart's centroid sits only -0.04 lung widths from the midline, as the
network's prior pulls it back). A compact classifier (``cxr_laterality``, trained by
``training/train_laterality.py`` on every frontal film of ../shared/data and its mirror image) looks at the
gate's 128-px thumbnail and gives the probability that the film is mirrored; at or above its threshold the
tasks flag ``left_right_inconsistent`` (model card: cxr_laterality.md). Situs inversus and dextrocardia look
mirrored too: the flag asks for a look, it never swaps labels.

Example::

    check = MirrorCheck()
    check.probability_mirrored(display_array)   # 0.01 for a film as it should be shown
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_LATERALITY = "cxr_laterality"
LATERALITY_CLASSES = ("as_displayed", "mirrored")


class MirrorCheck:
    """Holds the laterality model (loaded once); ``threshold``: the least probability that flags a film."""

    def __init__(self, model: str | Path = DEFAULT_LATERALITY, device: str = "cpu"):
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.threshold = float(self.config.get("threshold", 0.5))
        self.device = next(self.net.parameters()).device

    def probability_mirrored(self, display: np.ndarray, view: np.ndarray | None = None) -> float:
        """The probability that a 2-D film, in standard display orientation (the patient's left on the image
        right), is in fact mirrored. ``view``: the film's ``gate_input`` when the caller has it already."""
        import torch

        from lungx_core.cxr.gate import gate_input

        # a copy: the shared view is read-only (64 KB)
        x = torch.tensor(gate_input(display) if view is None else view)[None, None].to(self.device)
        with torch.inference_mode():
            # the film compared with its own mirror image: a film and its mirror get opposite answers
            logits = self.net(x).float() - self.net(torch.flip(x, dims=(-1,))).float()
            p = torch.softmax(logits, dim=1)[0].cpu().numpy()
        return float(p[LATERALITY_CLASSES.index("mirrored")])

    def is_mirrored(self, display: np.ndarray, view: np.ndarray | None = None) -> bool:
        return self.probability_mirrored(display, view) >= self.threshold
