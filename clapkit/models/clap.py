"""CLAPModel: an audio tower and a text tower projected into one space, compared by scaled cosine.

Module tree (the attribute paths are the state-dict keys of clapkit checkpoints)::

    CLAPModel
      .audio : AudioTower    .frontend (LogMelFrontend) -> .encoder (HTSAT | CNN14) -> .projection
                             (or the waveform -> .encoder (AisfxAudioEncoder, its own front-end) -> .projection)
      .text  : TextTower     .encoder (GPT2TextEncoder | BertTextEncoder | RobertaTextEncoder) -> .projection
      .logit_scale           ln(1 / temperature), a learned scalar

``encode_audio`` / ``encode_text`` return the *unnormalised* projections (as msclap's towers do);
``logits`` normalises them and multiplies the cosine matrix by ``logit_scale.exp()``.

A model is built from a config dict (JSON files in ``clapkit/model_configs/``, see ``load_model_config``)::

    {"frontend": {FrontendConfig fields}, "audio_encoder": {"name": "htsat", ...} or "htsat-xyz" (a JSON name),
     "text_encoder": {"name": "gpt2", ...}, "tokenizer": {"kind": "gpt2", "max_length": 77},
     "embed_dim": 1024, "projection_dropout": 0.5, "logit_scale_init": 2.6593 (= ln(1/0.07), msclap),
     "text_projection": "mlp"}

``text_projection`` ``"none"`` locks the shared space to the text encoder's own (LiT, Zhai et al. 2022: lock the
pretrained tower whose space you trust and train the other into it): the text tower has no projection, its
embedding is the pooled encoder output itself (all-MiniLM-L6-v2: its sentence embedding), ``embed_dim`` must be the
encoder's width, and only the audio projection (and the temperature) can learn.  With the encoder frozen (a packaged
tower, ``train.freeze_text``) no text weight trains at all.  ``"mlp"`` (default) is msclap's ``Projection``; the
state-dict keys of such models are msclap's, and a ``"none"`` model simply has no ``text.projection.*`` keys.

``tokenizer`` is not used by the model itself; ``clapkit.CLAP`` builds the matching ``TextTokenizer`` from it.

The audio encoder of a CLAP model has no AudioSet head: the contrastive loss never reaches one, so its weights
would be parameters without gradients (dead weight, and an error at DDP's second step without
``find_unused_parameters``).  A config's ``audio_encoder.num_classes`` must therefore be 0 (an omitted one is set
to 0, not to the standalone encoders' default of 527).  The official msclap checkpoints do carry a 527-class head;
``clapkit.msclap_weights.load_msclap`` verifies it and reports it as dropped.  A standalone ``HTSAT`` / ``CNN14``
still builds the head for tagging (``tag``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..audio import FrontendConfig, LogMelFrontend
from . import build_audio_encoder
from .text_encoders import build_text_encoder

__all__ = ["AudioTower", "CLAPModel", "MODEL_CONFIG_DIR", "Projection", "TextTower", "headless_audio_encoder_config",
           "load_model_config"]

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"
MSCLAP_LOGIT_SCALE_INIT = math.log(1 / 0.07)
REQUIRED_KEYS = ("frontend", "audio_encoder", "text_encoder", "embed_dim")
OPTIONAL_KEYS = {"tokenizer": {"kind": "gpt2", "max_length": 77}, "projection_dropout": 0.5,
                 "logit_scale_init": MSCLAP_LOGIT_SCALE_INIT, "description": "", "text_projection": "mlp"}
TEXT_PROJECTIONS = ("mlp", "none")  # msclap's Projection | none: the text encoder's own space (LiT)


def _read_config_file(name_or_path: str | Path) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix != ".json" or not path.is_file():
        shipped = MODEL_CONFIG_DIR / f"{name_or_path}.json"
        if not shipped.is_file():
            known = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
            raise FileNotFoundError(f"model config {str(name_or_path)!r}: no such file or shipped config; shipped: {known}")
        path = shipped
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def load_model_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A complete, self-contained model config from a shipped name, a JSON path or a dict.

    An encoder given by name (``"audio_encoder": "htsat-base"``) is replaced by that JSON's contents, and
    omitted optional keys get their defaults, so the result can be saved next to weights and rebuilt alone.
    """
    cfg = copy.deepcopy(dict(config)) if isinstance(config, Mapping) else _read_config_file(config)
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"model config is missing {missing} (needs {list(REQUIRED_KEYS)})")
    unknown = sorted(set(cfg) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"model config has unknown key(s) {unknown}")
    for key in ("audio_encoder", "text_encoder"):
        if isinstance(cfg[key], str):
            cfg[key] = _read_config_file(cfg[key])
    where = "model config" if isinstance(config, Mapping) else f"model config {str(config)!r}"
    cfg["audio_encoder"] = headless_audio_encoder_config(cfg["audio_encoder"], where)
    for key, default in OPTIONAL_KEYS.items():
        cfg.setdefault(key, copy.deepcopy(default))
    if cfg["text_projection"] not in TEXT_PROJECTIONS:
        raise ValueError(f"{where}: text_projection must be one of {TEXT_PROJECTIONS}, got {cfg['text_projection']!r}")
    return cfg


def headless_audio_encoder_config(encoder_cfg: Mapping[str, Any], where: str = "model config") -> dict[str, Any]:
    """``encoder_cfg`` with ``num_classes`` 0: the audio encoder of a CLAP model has no AudioSet head.

    A head asked for (``num_classes`` > 0) is an error naming ``where``, not silently dropped: the config
    would no longer describe the model built from it.
    """
    if not isinstance(encoder_cfg, Mapping):
        raise TypeError(f"{where}: audio_encoder must be a dict or a config name, got {type(encoder_cfg).__name__}")
    classes = encoder_cfg.get("num_classes", 0)
    if classes != 0:
        raise ValueError(
            f"{where}: audio_encoder.num_classes is {classes!r}, but the audio encoder of a CLAP model has no "
            "AudioSet head (the contrastive loss never reaches it, so under DDP its weights would be parameters "
            "without gradients); set it to 0. An official msclap checkpoint's head is verified and dropped by "
            "load_msclap; build a standalone HTSAT / CNN14 with num_classes for tagging."
        )
    return {**encoder_cfg, "num_classes": 0}


class Projection(nn.Module):
    """msclap's projection head: ``layer_norm(h + dropout(linear2(gelu(h))))`` with ``h = linear1(x)``.

    Same attribute names as msclap (``linear1``, ``linear2``, ``layer_norm``; bias-free linears), so its
    ``*.projection.*`` weights load unchanged.
    """

    def __init__(self, d_in: int, d_out: int, p: float = 0.5):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embed1 = self.linear1(x)
        embed2 = self.drop(self.linear2(F.gelu(embed1)))
        return self.layer_norm(embed1 + embed2)


class AudioTower(nn.Module):
    """Waveform (B, samples) -> log-mel -> encoder (never with an AudioSet head) -> projection (B, embed_dim)."""

    def __init__(self, frontend: FrontendConfig, encoder_cfg: Mapping[str, Any], embed_dim: int, dropout: float):
        super().__init__()
        self.frontend = LogMelFrontend(frontend)
        self.encoder = build_audio_encoder(headless_audio_encoder_config(encoder_cfg, "audio tower"))
        self.projection = Projection(self.encoder.out_dim, embed_dim, dropout)
        enc_cfg = getattr(self.encoder, "config", None)
        n_mels = getattr(enc_cfg, "n_mels", frontend.n_mels)
        if n_mels != frontend.n_mels:
            raise ValueError(f"audio encoder expects {n_mels} mel bins, the frontend makes {frontend.n_mels}")
        max_frames = getattr(enc_cfg, "max_frames", None)
        if max_frames is not None and frontend.num_frames() > max_frames:
            raise ValueError(
                f"a {frontend.clip_seconds} s clip gives {frontend.num_frames()} frames, "
                f"more than the audio encoder's {max_frames}"
            )
        self.takes_waveform = bool(getattr(self.encoder, "takes_waveform", False))
        rate = getattr(enc_cfg, "input_sample_rate", frontend.sample_rate)
        if self.takes_waveform and rate != frontend.sample_rate:
            raise ValueError(f"the {encoder_cfg.get('name')} audio encoder is fed {rate} Hz (input_sample_rate), "
                             f"the frontend gives {frontend.sample_rate} Hz")

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.takes_waveform:  # its own front-end (aisfx): the log-mel of the frontend is not computed
            return self.projection(self.encoder(wave))
        return self.projection(self.encoder(self.frontend(wave)))


class TextTower(nn.Module):
    """(input_ids, attention_mask) -> pooled transformer state -> projection (B, embed_dim).

    ``projection="none"``: no projection (an ``nn.Identity``, no parameters): the embedding is the pooled encoder
    state, so ``embed_dim`` must equal the encoder's width (the model config's ``text_projection``, LiT)."""

    def __init__(self, encoder_cfg: Mapping[str, Any], embed_dim: int, dropout: float, projection: str = "mlp"):
        super().__init__()
        self.encoder = build_text_encoder(encoder_cfg)
        if projection == "none":
            if embed_dim != self.encoder.out_dim:
                raise ValueError(f"text_projection none: the shared space is the text encoder's own, so embed_dim "
                                 f"must be its width {self.encoder.out_dim}, not {embed_dim}")
            self.projection = nn.Identity()
        else:
            self.projection = Projection(self.encoder.out_dim, embed_dim, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(input_ids, attention_mask))


class CLAPModel(nn.Module):
    """Two towers and a learned temperature; see the module docstring for the config."""

    def __init__(self, config: str | Path | Mapping[str, Any]):
        super().__init__()
        self.config = cfg = load_model_config(config)
        self.frontend_config = FrontendConfig.from_dict(cfg["frontend"])
        dropout = float(cfg["projection_dropout"])
        self.audio = AudioTower(self.frontend_config, cfg["audio_encoder"], int(cfg["embed_dim"]), dropout)
        self.text = TextTower(cfg["text_encoder"], int(cfg["embed_dim"]), dropout, cfg["text_projection"])
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg["logit_scale_init"])))

    @classmethod
    def from_config(cls, config: str | Path | Mapping[str, Any], seed: int | None = 0) -> "CLAPModel":
        """Build with freshly initialised weights; a given ``seed`` makes them the same on every call
        (without touching the global RNG state)."""
        if seed is None:
            return cls(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config)

    @property
    def embed_dim(self) -> int:
        return int(self.config["embed_dim"])

    def encode_audio(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) at ``frontend_config.sample_rate`` -> (B, embed_dim), not normalised."""
        return self.audio(wave)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask (B, L), right-padded -> (B, embed_dim), not normalised."""
        return self.text(input_ids, attention_mask)

    def logits(self, audio_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(N_audio, N_text) = exp(logit_scale) * cosine(audio_i, text_j) (msclap's ``compute_similarity``)."""
        a = F.normalize(audio_embeds, dim=-1)
        t = F.normalize(text_embeds, dim=-1)
        return self.logit_scale.exp() * a @ t.T

    def forward(self, wave: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both towers on a batch of pairs: normalised embeddings, the scale and both logit matrices."""
        audio = F.normalize(self.encode_audio(wave), dim=-1)
        text = F.normalize(self.encode_text(input_ids, attention_mask), dim=-1)
        scale = self.logit_scale.exp()
        logits_per_audio = scale * audio @ text.T
        return {
            "audio_embeds": audio,
            "text_embeds": text,
            "logit_scale": scale,
            "logits_per_audio": logits_per_audio,
            "logits_per_text": logits_per_audio.T,
        }
