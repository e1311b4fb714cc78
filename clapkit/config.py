"""Parameters flow one way: ``params.yaml`` -> stage command -> a typed config -> the function.

``load_params`` reads the file; each stage module turns its block into its own dataclass with ``from_params``, so
every knob of a stage is in one block of ``params.yaml`` and every use of it in one module.  ``preset`` is the one
switch between the embedded CPU pipeline and the paper's configuration: blocks keyed by preset (``frontend``)
are resolved here.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .audio import FrontendConfig
from .strict import strict_from_dict

PRESETS = ("embedded", "paper")
TOWERS_FILE = Path(__file__).parent / "model_configs" / "towers.json"
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


def model_config_from_params(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, model config) of the active preset: ``model.<preset>`` with its towers swapped as
    ``model.audio_encoder`` / ``model.text_encoder`` say (``model_configs/towers.json``, the Table 1 grid) and its
    frontend replaced by ``frontend.<preset>``.  The name says what was swapped: ``clap-small-htsat-gpt2+cnn14``."""
    from .models.clap import load_model_config

    preset = params.get("preset", "embedded")
    block = params.get("model") or {}
    if preset not in block:
        raise KeyError(f"params.yaml has no model.{preset} entry (the model config to build)")
    name = block[preset]
    cfg = load_model_config(name)
    towers = json.loads(TOWERS_FILE.read_text(encoding="utf-8"))[preset]
    swapped = []
    for key, kind in (("audio_encoder", "audio"), ("text_encoder", "text")):
        choice = block.get(key)
        if choice is None:
            continue
        if choice not in towers[kind]:
            raise ValueError(f"params.yaml model.{key}: {choice!r} is not one of {sorted(towers[kind])} "
                             f"({TOWERS_FILE.name}, preset {preset})")
        tower = towers[kind][choice]
        source = load_model_config(tower["from"]) if "from" in tower else None
        if kind == "audio":
            cfg["audio_encoder"] = source["audio_encoder"] if source else dict(tower)
        else:
            cfg["text_encoder"] = source["text_encoder"] if source else dict(tower["encoder"])
            cfg["tokenizer"] = source["tokenizer"] if source else dict(tower["tokenizer"])
        swapped.append(choice)
    cfg["frontend"] = asdict(frontend_config(params))
    return (f"{name}+{'+'.join(swapped)}" if swapped else name), cfg
