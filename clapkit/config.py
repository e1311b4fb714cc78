"""Parameters flow one way: ``params.yaml`` -> stage command -> a typed config -> the function.

``load_params`` reads the file; each stage module turns its block into its own dataclass with ``from_params``, so
every knob of a stage is in one block of ``params.yaml`` and every use of it in one module.  ``preset`` is the one
switch between the embedded CPU pipeline and the paper's configuration: blocks keyed by preset (``frontend``)
are resolved here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from .audio import FrontendConfig
from .strict import strict_from_dict

PRESETS = ("embedded", "paper")
T = TypeVar("T")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    preset = params.get("preset", "embedded")
    if preset not in PRESETS:
        raise ValueError(f"{path}: preset must be one of {PRESETS}, got {preset!r}")
    return params


def frontend_config(params: dict[str, Any]) -> FrontendConfig:
    """The FrontendConfig of the active preset (``frontend.<preset>`` in params.yaml)."""
    preset = params.get("preset", "embedded")
    try:
        block = params["frontend"][preset]
    except KeyError as err:
        raise KeyError(f"params.yaml has no frontend.{preset} block") from err
    return FrontendConfig.from_dict(block)


def dataclass_from_dict(cls: type[T], block: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from a params block, rejecting unknown keys (a typo must not be ignored)."""
    return strict_from_dict(cls, block, f"params.yaml {where}")
