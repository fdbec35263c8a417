"""Is this a frontal chest radiograph? An image-content gate in front of every radiograph task.

DICOM tags catch some wrong inputs (a CT modality, ViewPosition LL), but PNG/JPEG files, lateral films without a
ViewPosition, CT slices saved as pictures, photographs and inverted films carry no such tag. A compact classifier
(``cxr_gate``, MONAI ``Classifier``, trained by ``training/train_gate.py`` on the frontal films of ../shared/data
against negatives generated from the CTs there and procedurally; see its model card) looks at a 128-px thumbnail
and names what the image is. :meth:`FrontalChestGate.check` raises a one-line :class:`InputError` that says what the
image looks like instead.

On held-out data it passes every frontal film and refuses 98.7 % of CT slices, lateral/oblique views, inverted
films and non-chest pictures; all 1,041 frontal films in ../shared/data pass (model card: cxr_gate.md).

Example::

    gate = FrontalChestGate()
    gate.check(image)              # InputError: "film.png: not a frontal chest radiograph: looks like a CT slice"
    gate.probabilities(image.array)  # {"frontal_chest": 0.99, "ct_slice": 0.0, ...}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungx_core.errors import InputError
from lungx_core.image import MedicalImage

DEFAULT_GATE = "cxr_gate"
GATE_SIZE = 128
GATE_CLASSES = ("frontal_chest", "ct_slice", "lateral_or_oblique", "inverted_film", "not_a_chest_image")
# what the error message says the image looks like
_LOOKS_LIKE = {
    "ct_slice": "a CT slice",
    "lateral_or_oblique": "a lateral or oblique view",
    "inverted_film": "an inverted (negative) film",
    "not_a_chest_image": "not a chest image",
}


def gate_input(array: np.ndarray, size: int = GATE_SIZE) -> np.ndarray:
    """The gate's view of a 2-D image: windowed to its 0.5-99.5 percentiles (as the segmentation input is),
    letterboxed onto a black square, resized. (H, W) finite values, any dtype -> (size, size) float32 in [0, 1]."""
    from lungx_core.preprocess import normalise_intensity

    if np.ndim(array) != 2:
        raise ValueError(f"the gate takes a 2-D image, got shape {np.shape(array)}")
    return thumbnail(normalise_intensity(array, 0.5, 99.5), size)


def thumbnail(windowed: np.ndarray, size: int = GATE_SIZE) -> np.ndarray:
    """:func:`gate_input` of an image already windowed to its 0.5-99.5 percentiles (``MedicalImage.windowed``):
    letterboxed onto a black square and resized, (size, size) float32."""
    from PIL import Image

    a = np.ascontiguousarray(windowed, dtype=np.float32)
    rows, cols = a.shape
    scale = size / max(rows, cols)
    r, c = max(1, round(rows * scale)), max(1, round(cols * scale))
    small = np.asarray(Image.fromarray(a).resize((c, r), Image.BILINEAR), dtype=np.float32)
    out = np.zeros((size, size), np.float32)
    r0, c0 = (size - r) // 2, (size - c) // 2
    out[r0 : r0 + r, c0 : c0 + c] = small
    return out


def display_thumbnail(image: MedicalImage) -> np.ndarray:
    """:func:`gate_input` of a radiograph turned to standard display, from its shared window
    (``MedicalImage.windowed``; windowing commutes with the display flips): what the gate and the mirrored-film
    check look at. Made once per image (``MedicalImage.derived``): both look at the same film."""
    return image.derived("gate_thumbnail", _display_thumbnail)


def _display_thumbnail(image: MedicalImage) -> np.ndarray:
    from lungx_core.orientation import display_flips, flip_display

    flip_rows, flip_cols, _ = display_flips(image.metadata)
    return thumbnail(flip_display(image.windowed(), flip_rows, flip_cols))


class FrontalChestGate:
    """Holds the gate model (loaded once); ``threshold`` is the least probability of ``frontal_chest`` a film
    needs to pass (the model card's operating point)."""

    def __init__(self, model: str | Path = DEFAULT_GATE, device: str = "cpu"):
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.classes = tuple(self.config["classes"])
        self.threshold = float(self.config.get("threshold", 0.5))
        self.device = next(self.net.parameters()).device

    def probabilities(self, array: np.ndarray) -> dict[str, float]:
        """Class probabilities of one display-oriented 2-D image."""
        return self.thumbnail_probabilities(gate_input(array))

    def thumbnail_probabilities(self, view: np.ndarray) -> dict[str, float]:
        """Class probabilities of one image's :func:`gate_input` view."""
        import torch

        x = torch.tensor(view)[None, None].to(self.device)  # a copy: the shared view is read-only (64 KB)
        with torch.inference_mode():
            p = torch.softmax(self.net(x).float(), dim=1)[0].cpu().numpy()
        return {name: float(v) for name, v in zip(self.classes, p, strict=True)}

    def check(self, image: MedicalImage) -> dict[str, float]:
        """Raise InputError naming the file and what it looks like unless ``image`` (a 2-D radiograph, shown in
        standard display by its DICOM PatientOrientation) is a frontal chest radiograph; returns the
        probabilities otherwise."""
        if image.array.ndim != 2:
            raise InputError(image.source or "input", f"not a radiograph: a {image.array.ndim}-D image")
        probs = self.thumbnail_probabilities(display_thumbnail(image))
        if probs["frontal_chest"] >= self.threshold:
            return probs
        other = max((k for k in probs if k != "frontal_chest"), key=probs.get)
        raise InputError(
            image.source or "input",
            f"not a frontal chest radiograph: looks like {_LOOKS_LIKE[other]} "
            f"(frontal-chest probability {probs['frontal_chest']:.2f})",
        )


def optional_gate(input_check: bool | str, device: str = "cpu") -> FrontalChestGate | None:
    """The gate, or None when ``input_check`` is off (False or "off": phantoms, a film the gate wrongly refuses)."""
    from lungx_core.models.store import shared_model

    return shared_model(FrontalChestGate, device=device) if input_check not in (False, "off") else None
