"""Strict configs: an unknown or missing key is a ValueError that names it; every shipped config passes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from lungx_core.config import strict_config
from lungx_core.cxr.thoracic import CropSpec
from lungx_core.generative.inpainting import DiffusionSpec
from lungx_core.generative.opacity import ActivationSpec
from lungx_core.preprocess import PreprocessConfig

WEIGHTS = Path(__file__).resolve().parents[1] / "lungx_core" / "weights"


@dataclass(frozen=True)
class _Spec:
    size: int
    gamma: float = 1.0


def test_known_keys_build_the_dataclass():
    assert strict_config(_Spec, {"size": 3}) == _Spec(3, 1.0)
    assert strict_config(_Spec, {"size": 3, "gamma": 2.0}) == _Spec(3, 2.0)


def test_unknown_missing_and_malformed_sections_are_named():
    with pytest.raises(ValueError, match=r"_Spec: unknown key 'gama' \(known: size, gamma\)"):
        strict_config(_Spec, {"size": 3, "gama": 2.0})
    with pytest.raises(ValueError, match="model crop: missing key 'size'"):
        strict_config(_Spec, {}, "model crop")
    with pytest.raises(ValueError, match="expected a JSON object, got int"):
        strict_config(_Spec, 256)


def test_model_config_sections_are_strict():
    with pytest.raises(ValueError, match="unknown key 'sise'"):
        CropSpec.from_dict({"sise": 256})


@pytest.mark.parametrize("path", sorted(WEIGHTS.glob("*.json")), ids=lambda p: p.stem)
def test_every_shipped_model_config_parses(path):
    config = json.loads(path.read_text())
    for key, cls in (("preprocess", PreprocessConfig), ("crop", CropSpec), ("diffusion", DiffusionSpec)):
        if key in config:
            cls.from_dict(config[key])
    if "activation" in config.get("region_aware", {}):
        ActivationSpec.from_dict(config["region_aware"]["activation"])
