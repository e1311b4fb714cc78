"""Load Microsoft's ``clapcap_weights_2023.pth`` into a clapkit ``ClapCapModel``, strictly.

Every tensor of the file is loaded, or verified and dropped for a stated reason, and every model tensor is
filled; anything else is a ``WeightsError`` naming the file and the keys.  Read with
``torch.load(weights_only=True)`` (``{"model": state_dict}`` or a bare state dict).  Key groups:

=====================================================  ====================================================
``clap.base.htsat.*``, ``clap.projection.*``           the 2023 CLAP audio tower: mapped, verified and
                                                       dropped exactly as ``load_msclap`` does for
                                                       ``audio_encoder.*`` of the 2023 file (STFT kernels,
                                                       derived HTSAT buffers, AudioSet head: verified,
                                                       dropped; melW -> ``audio.frontend.mel_fb``)
``clap_project.*``                                     -> ``mapper.*`` (msclap's TransformerMapper)
``gpt.transformer.h.N.attn.{bias,masked_bias}``        dropped: causal-mask constants an older transformers
                                                       saved with GPT-2 (verified to be those constants)
``gpt.lm_head.weight``                                 -> ``gpt.lm_head.weight``; GPT-2 ties it to
                                                       ``gpt.transformer.wte.weight``, so the two must be equal
``gpt.*`` (the rest)                                   -> ``gpt.*`` (transformers' GPT2LMHeadModel)
=====================================================  ====================================================
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import WeightsError
from .msclap_weights import (LoadReport, _is_gpt2_mask_constant, _uninitialised_model, key_problems,
                          describe_filterbank, map_msclap_state_dict, read_msclap_state_dict)

__all__ = ["load_clapcap", "map_clapcap_state_dict"]

AUDIO_ROOT = "clap."  # the file's audio tower (msclap's ClapCaptionModel.clap = CLAP.audio_encoder)
MAPPER_ROOT, MAPPER_ATTR = "clap_project.", "mapper."
GPT_ROOT = "gpt."
LEGACY_GPT2_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
TIED_HEAD, TIED_EMBEDDING = "gpt.lm_head.weight", "gpt.transformer.wte.weight"


class _AudioOnly(nn.Module):
    """A view of the captioner's audio tower as ``.audio``, the shape ``map_msclap_state_dict`` expects."""

    def __init__(self, audio: nn.Module):
        super().__init__()
        self.audio = audio


def map_clapcap_state_dict(sd: dict[str, torch.Tensor], model, path: str | Path = "<state dict>"
                           ) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename, verify and drop clapcap keys for ``model`` (a ClapCapModel); raise on any mismatch."""
    if any(k.startswith("audio_encoder.") or k.startswith("caption_encoder.") for k in sd):
        raise WeightsError(path, "this is a CLAP checkpoint (2022/2023), not clapcap: load it with "
                                    "load_msclap(path, '2023') / CLAP.from_msclap")
    problems: list[str] = []
    audio_sd = {k: v for k, v in sd.items() if k.startswith(AUDIO_ROOT)}
    try:
        mapped, report = map_msclap_state_dict(audio_sd, "clapcap", _AudioOnly(model.audio), path)
    except WeightsError as err:  # collect, so that one message lists the audio and the decoder problems
        problems += err.details
        mapped, report = {}, LoadReport(path=str(path), version="clapcap")
    origin = {new: new for new in mapped}  # only used for non-audio keys below

    target = model.state_dict()
    unexpected: list[str] = []
    for key, tensor in sd.items():
        if key.startswith(AUDIO_ROOT):
            continue
        if key.startswith(MAPPER_ROOT):
            new = MAPPER_ATTR + key[len(MAPPER_ROOT):]
        elif key.startswith(GPT_ROOT):
            new = key
            rest = key[len(GPT_ROOT):]
            if new not in target and LEGACY_GPT2_BUFFER.fullmatch(rest) and _is_gpt2_mask_constant(rest, tensor):
                report.dropped.setdefault("legacy GPT-2 causal-mask buffers (older transformers saved them)", []).append(key)
                continue
        else:
            unexpected.append(key)
            continue
        mapped[new], origin[new] = tensor, key

    decoder_keys = [k for k in target if k.startswith((MAPPER_ATTR, GPT_ROOT))]
    shapes = [k for k, t in mapped.items() if k in target and t.shape != target[k].shape]
    problems += key_problems(mapped, origin, target, decoder_keys, sorted(unexpected))
    tied = getattr(model.gpt.config, "tie_word_embeddings", True)
    if tied and TIED_HEAD in mapped and TIED_EMBEDDING in mapped and not shapes:
        if torch.equal(mapped[TIED_HEAD], mapped[TIED_EMBEDDING]):
            report.verified.append("gpt.lm_head.weight equals gpt.transformer.wte.weight (GPT-2 ties them)")
        else:
            problems.append(f"{TIED_HEAD} differs from {TIED_EMBEDDING}, but the model's GPT-2 ties them "
                            "(tie_word_embeddings): one of the two would be lost")
    if problems:
        raise WeightsError(path, "does not match the msclap clapcap architecture", problems)
    report.loaded = len(mapped)
    return mapped, report


def load_clapcap(path: str | Path, model: Any = None, config: str | Path | Mapping[str, Any] | None = None,
                 state_dict: dict[str, torch.Tensor] | None = None) -> tuple[Any, LoadReport]:
    """``clapcap_weights_2023.pth`` into a ``ClapCapModel``; returns ``(model in eval mode, report)``.

    The model is ``model`` if given, else built from ``config`` (a clapcap config name, JSON path or dict;
    default ``clapcap-2023``) without random initialisation (strict loading overwrites every weight).
    ``state_dict``: the file's ``read_msclap_state_dict(path)`` when the caller has already read it.
    """
    from .models.clapcap import ClapCapModel  # late: transformers

    if model is not None and config is not None:
        raise ValueError("pass either model or config, not both")
    sd = read_msclap_state_dict(path) if state_dict is None else state_dict
    if model is None:
        model = _uninitialised_model(config if config is not None else "clapcap-2023", ClapCapModel)
    mapped, report = map_clapcap_state_dict(sd, model, path)
    model.load_state_dict(mapped, strict=True)
    describe_filterbank(report, model.audio.frontend, "clapcap")
    return model.eval(), report
