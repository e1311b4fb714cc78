"""``train.init``: start the whole CLAP (both towers, both projections, the temperature) from an official msclap
checkpoint, to fine-tune Microsoft's released weights on one's own data.

Syntax (params.yaml ``train.init``, parsed here and nowhere else)::

    none                      the towers start as train.audio_init / train.text_init say (the default)
    msclap:2023:<path>        CLAP_weights_2023.pth (HTSAT + GPT-2): every weight from the file
    msclap:2022:<path>        CLAP_weights_2022.pth (CNN14 + BERT); the model config's tokenizer must name
                              bert-base-uncased's vocab.txt (no installable package ships it)

The file is read once, with ``torch.load(weights_only=True)``, and loaded strictly by
``clapkit.msclap_weights.load_msclap`` into the model the train stage built from its model config: every tensor of the
file is loaded, verified or dropped for a stated reason (the AudioSet head, the STFT kernels, derived buffers), and
every model tensor is filled.  The model config must have the checkpoint's architecture: preset ``paper`` builds
``msclap-2023``; any other config is refused, naming the differing config keys (tower kinds) or the tensors whose
shapes differ, never reshaped.  The load report is printed and becomes the ``init`` entry of metrics/train.json.

The run identity's initial-weights fingerprint hashes every tensor of the model after loading
(``clapkit.training_state.model_fingerprint``), so another file, or the same path rewritten, trains afresh.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from .errors import WeightsError
from .msclap_weights import VERSIONS, _check_flavour, load_msclap, read_msclap_state_dict

__all__ = ["InitSpec", "SYNTAX", "check_model_config", "load_init", "parse_init", "read_init"]

SYNTAX = "none | msclap:2023:<path> | msclap:2022:<path>"
# What a model config must say to hold an msclap checkpoint of each version (the rest is checked tensor by tensor).
ARCHITECTURE = {
    "2023": {"audio_encoder.name": "htsat", "text_encoder.name": "gpt2", "tokenizer.kind": "gpt2"},
    "2022": {"audio_encoder.name": "cnn14", "text_encoder.name": "bert", "tokenizer.kind": "wordpiece"},
}
MAX_DIFFS = 20  # config keys listed in the report's comparison with the shipped msclap config


@dataclass(frozen=True)
class InitSpec:
    """A parsed ``train.init``: ``kind`` is ``none`` or ``msclap``."""

    kind: str = "none"
    version: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind}:{self.version}:{self.path}"


def parse_init(spec: Any) -> InitSpec:
    """``train.init`` -> InitSpec; a ValueError naming the value (and the file, when one is named) otherwise."""
    if spec is None or spec == "none":
        return InitSpec()
    if not isinstance(spec, str):
        raise ValueError(f"train.init: {spec!r} is not a string ({SYNTAX})")
    kind, sep, rest = spec.partition(":")
    if kind != "msclap" or not sep or not rest:
        raise ValueError(f"train.init: {spec!r} is not one of {SYNTAX}")
    version, sep, path = rest.partition(":")
    if not sep:  # msclap:<path>: which architecture to build cannot be guessed before reading 700 MB
        raise ValueError(f"train.init: {spec!r}: name the msclap version before the file {rest}: "
                         f"msclap:2023:{rest} or msclap:2022:{rest}")
    if version not in VERSIONS:
        raise ValueError(f"train.init: {spec!r}: msclap version {version!r} of {path} is not one of {VERSIONS}")
    if not path:
        raise ValueError(f"train.init: {spec!r}: no checkpoint file after msclap:{version}:")
    return InitSpec("msclap", version, str(Path(path).expanduser()))


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def check_model_config(init: InitSpec, model_config: Mapping[str, Any]) -> None:
    """Refuse a model config that cannot hold the checkpoint's towers (WeightsError naming the file and keys)."""
    wrong = [f"{key}: {_get(model_config, key)!r}, msclap {init.version} has {want!r}"
             for key, want in ARCHITECTURE[init.version].items() if _get(model_config, key) != want]
    if wrong:
        raise WeightsError(init.path, f"train.init {init}: the model config does not have the msclap "
                              f"{init.version} architecture (preset paper builds msclap-2023; for 2022 use a "
                              f"msclap-2022 model config)", wrong)
    tok = model_config.get("tokenizer") or {}
    if init.version == "2022" and not (tok.get("vocab") or tok.get("file") or tok.get("packaged")):
        raise WeightsError(init.path, f"train.init {init}: msclap 2022's BERT needs bert-base-uncased's WordPiece "
                              "vocabulary: set the model config's tokenizer.vocab to its vocab.txt (a vocabulary "
                              "trained on the corpus would give the pretrained embeddings other tokens)")


def read_init(init: InitSpec, model_config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, after the checks that need no model: the file is readable and safe, it is
    the version named, and the model config has that version's architecture."""
    state = read_msclap_state_dict(init.path)  # WeightsError naming the file: missing, unreadable, code
    _check_flavour(state, init.version, init.path)  # 2022 named for a 2023 file, a clapcap file, ...
    check_model_config(init, model_config)
    return state


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def differences_from_shipped(model_config: Mapping[str, Any], version: str) -> list[str]:
    """Config keys (dotted) in which ``model_config`` differs from the shipped ``msclap-<version>`` config:
    informational (dropout rates, clip length, a test's tiny geometry); shapes were checked by the strict load."""
    from .models.clap import load_model_config

    ours, shipped = _flatten(dict(model_config)), _flatten(load_model_config(f"msclap-{version}"))
    keys = sorted(k for k in set(ours) | set(shipped) if k != "description" and ours.get(k) != shipped.get(k))
    return [f"{k}: {ours.get(k)!r} (msclap-{version}: {shipped.get(k)!r})" for k in keys]


def load_init(model: torch.nn.Module, init: InitSpec, state: dict[str, torch.Tensor],
              model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Load ``state`` (``read_init``'s) into ``model`` strictly; print the report; return metrics' ``init`` entry."""
    try:
        _, report = load_msclap(init.path, init.version, model=model, state_dict=state)
    except WeightsError as err:
        raise WeightsError(err.path, f"{err.reason}: the model config does not fit this checkpoint (train.init "
                              f"{init}; preset paper builds msclap-{init.version})", err.details) from err
    if os.environ.get("RANK", "0") == "0":
        print(f"train.init {init}:\n{report.summary()}", flush=True)
    differs = differences_from_shipped(model_config, init.version)
    return {"init": "msclap", "version": init.version, "path": init.path, "tensors": report.loaded,
            "dropped": {reason: keys for reason, keys in report.dropped.items()},
            "audioset_head_dropped": report.dropped_audioset_head, "cast": report.cast, "verified": report.verified,
            "mel_fb_design": report.mel_fb_design, "mel_fb_matches_config": report.mel_fb_matches_config,
            "logit_scale": report.logit_scale,
            "config_differs_from_msclap": differs[:MAX_DIFFS] + ([f"... and {len(differs) - MAX_DIFFS} more"]
                                                                 if len(differs) > MAX_DIFFS else [])}
