"""Strict configs: a model's or a run's JSON section becomes its dataclass, or a ValueError says which key is
unknown or missing (a misspelt key must not fall back to a default silently)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def strict_config(cls: type[T], values: Mapping[str, Any], what: str | None = None) -> T:
    """``cls(**values)`` for a dataclass ``cls``, refusing unknown and missing keys.

    Args:
        cls: a dataclass type.
        values: the section as read from JSON.
        what: how the error names the section (default the class name).

    Raises:
        ValueError: e.g. ``PreprocessConfig: unknown key 'clahe_clip' (known: size, clahe, ...)``.

    Example::

        spec = strict_config(CropSpec, config["crop"], "cxr_synthesis crop")
    """
    name = what or cls.__name__
    if not isinstance(values, Mapping):
        raise ValueError(f"{name}: expected a JSON object, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(fields)})")
    missing = [k for k, f in fields.items() if k not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{name}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    return cls(**values)
