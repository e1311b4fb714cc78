"""Model building blocks.  Configs are plain dicts (JSON in ``clapkit/model_configs/``).

``build_audio_encoder({"name": "htsat" | "cnn14" | "aisfx", **fields})``: the fields are those of ``HTSATConfig`` /
``CNN14Config`` / ``AisfxEncoderConfig``; omitted ones take the msclap defaults (2023 HTSAT, 2022 CNN14), the
527-class AudioSet head included.  Inside a CLAP model the audio encoder never has that head
(``clapkit.models.clap``).  aisfx reads the waveform itself (``takes_waveform``: its own front-end).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .aisfx_encoder import AisfxAudioEncoder, AisfxEncoderConfig
from .cnn14 import CNN14, CNN14Config
from .htsat import HTSAT, HTSATConfig

AUDIO_ENCODERS = {"htsat": (HTSAT, HTSATConfig), "cnn14": (CNN14, CNN14Config),
                  "aisfx": (AisfxAudioEncoder, AisfxEncoderConfig)}


def build_audio_encoder(cfg: Mapping[str, Any]) -> nn.Module:
    """An audio encoder from its config dict; forward(logmel (B, frames, n_mels)) -> (B, encoder.out_dim), or
    forward(waveform (B, samples)) for one with ``takes_waveform`` (aisfx)."""
    fields = dict(cfg)
    name = fields.pop("name", None)
    if name not in AUDIO_ENCODERS:
        raise ValueError(f"unknown audio encoder {name!r}; known: {sorted(AUDIO_ENCODERS)}")
    model_cls, config_cls = AUDIO_ENCODERS[name]
    return model_cls(config_cls.from_dict(fields))


__all__ = ["AUDIO_ENCODERS", "AisfxAudioEncoder", "AisfxEncoderConfig", "CLAPModel", "CNN14", "CNN14Config", "HTSAT", "HTSATConfig", "build_audio_encoder",
           "build_text_encoder", "load_model_config"]

_LAZY = {"build_text_encoder": ".text_encoders", "TEXT_ENCODERS": ".text_encoders",
         "CLAPModel": ".clap", "load_model_config": ".clap"}


def __getattr__(name: str):
    # The text side imports transformers (seconds): load it on first use, not with the audio encoders.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
