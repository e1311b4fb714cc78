"""ClapCapModel: MS-CLAP's audio captioner ("clapcap"), a ClipCap-style prefix model.

Data flow (module attributes = state-dict keys of the model)::

    waveform (B, samples)
      -> .audio   : AudioTower (log-mel -> HTSAT -> projection), the 2023 CLAP audio tower   (B, embed_dim)
      -> L2 normalisation (``normalize_prefix``; msclap: ``prefix / prefix.norm(2, -1)``)
      -> .mapper  : ClapCapMapper                                                     (B, prefix_length, n_embd)
      -> .gpt     : transformers.GPT2LMHeadModel, fed the prefix as ``inputs_embeds``, then the caption tokens

The mapper is msclap's ``TransformerMapper`` (``msclap/models/mapper.py``) with the same math and key names:
``linear`` maps the embedding to ``clip_length`` vectors, the learned ``prefix_const`` (``prefix_length`` vectors)
is appended, ``transformer.layers.N`` (pre-norm self-attention with bias-free ``to_queries`` /
``to_keys_values`` and a biased ``project``; a ReLU MLP ``fc1``/``fc2`` of width ``mlp_ratio * n_embd``) mixes
them, and the last ``prefix_length`` outputs are the GPT-2 prefix.  msclap hard-codes 8 heads and mlp_ratio 2.0;
here they are config fields with those defaults.  (``clapkit.models.mapper`` is a different mapper, for the
HTSAT-22 pretraining; it is not this one.)

The config (JSON in ``clapkit/model_configs/``, e.g. ``clapcap-2023``)::

    {"frontend": {FrontendConfig fields}, "audio_encoder": {"name": "htsat", ...}, "embed_dim": 1024,
     "projection_dropout": 0.5, "normalize_prefix": true,
     "mapper": {"prefix_length": 40, "clip_length": 40, "num_layers": 8, "num_heads": 8, "mlp_ratio": 2.0},
     "decoder": {GPT2Config fields: vocab_size, n_positions, n_embd, n_layer, n_head, ...},
     "tokenizer": {"kind": "gpt2", "max_length": 77}}

GPT-2 is always built from ``decoder`` (``GPT2LMHeadModel(GPT2Config(**decoder))``), never fetched from a hub.
Decoding (msclap's beam search) is ``clapkit.captioning``; training uses ``ClapCapModel.loss``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..audio import FrontendConfig
from .clap import AudioTower, _read_config_file, headless_audio_encoder_config

__all__ = ["ClapCapMapper", "ClapCapModel", "load_clapcap_config"]

REQUIRED_KEYS = ("frontend", "audio_encoder", "embed_dim", "mapper", "decoder")
OPTIONAL_KEYS = {"projection_dropout": 0.5, "normalize_prefix": True, "tokenizer": {"kind": "gpt2", "max_length": 77},
                 "description": ""}
MAPPER_DEFAULTS = {"num_layers": 8, "num_heads": 8, "mlp_ratio": 2.0}  # msclap's TransformerMapper constants


def load_clapcap_config(config: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A complete clapcap config from a shipped name (``clapcap-2023``), a JSON path or a dict."""
    cfg = copy.deepcopy(dict(config)) if isinstance(config, Mapping) else _read_config_file(config)
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"clapcap config is missing {missing} (needs {list(REQUIRED_KEYS)})")
    unknown = sorted(set(cfg) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        raise ValueError(f"clapcap config has unknown key(s) {unknown}")
    if isinstance(cfg["audio_encoder"], str):
        cfg["audio_encoder"] = _read_config_file(cfg["audio_encoder"])
    cfg["audio_encoder"] = headless_audio_encoder_config(cfg["audio_encoder"], "clapcap config")
    mapper = {**MAPPER_DEFAULTS, **cfg["mapper"]}
    if "prefix_length" not in mapper:
        raise ValueError("clapcap config: mapper.prefix_length is required")
    mapper.setdefault("clip_length", mapper["prefix_length"])
    cfg["mapper"] = mapper
    for key, default in OPTIONAL_KEYS.items():
        cfg.setdefault(key, copy.deepcopy(default))
    return cfg


# ------------------------------------------------------------------------------------------------ the mapper


class MapperAttention(nn.Module):
    """msclap's ``MultiHeadAttention`` used as self-attention: q and kv projections without bias."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"mapper width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, dim * 2, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        queries = self.to_queries(x).reshape(b, n, h, c // h)
        # msclap's layout: the kv projection's output is (2, heads, head_dim), keys first
        keys_values = self.to_keys_values(x).reshape(b, n, 2, h, c // h)
        keys, values = keys_values[:, :, 0], keys_values[:, :, 1]
        attention = (torch.einsum("bnhd,bmhd->bnmh", queries, keys) * self.scale).softmax(dim=2)
        return self.project(torch.einsum("bnmh,bmhd->bnhd", attention, values).reshape(b, n, c))


class MapperMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class MapperLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``+ mlp(norm2(x))`` (msclap's ``TransformerLayer``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MapperAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MapperMLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MapperTransformer(nn.Module):
    """Only a holder, so that the layers' keys are ``transformer.layers.N.*`` as in msclap."""

    def __init__(self, dim: int, num_heads: int, num_layers: int, mlp_ratio: float):
        super().__init__()
        self.layers = nn.ModuleList(MapperLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClapCapMapper(nn.Module):
    """(B, d_in) audio embedding -> (B, prefix_length, dim) GPT-2 prefix (msclap's ``TransformerMapper``)."""

    def __init__(self, d_in: int, dim: int, prefix_length: int, clip_length: int, num_layers: int = 8,
                 num_heads: int = 8, mlp_ratio: float = 2.0):
        super().__init__()
        self.clip_length = clip_length
        self.transformer = MapperTransformer(dim, num_heads, num_layers, mlp_ratio)
        self.linear = nn.Linear(d_in, clip_length * dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim))  # msclap's init

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        clip = self.linear(embedding).view(embedding.shape[0], self.clip_length, -1)
        learned = self.prefix_const.unsqueeze(0).expand(embedding.shape[0], *self.prefix_const.shape)
        return self.transformer(torch.cat((clip, learned), dim=1))[:, self.clip_length:]


# ------------------------------------------------------------------------------------------------ the model


class ClapCapModel(nn.Module):
    """Audio tower -> normalised embedding -> mapper -> GPT-2; see the module docstring."""

    def __init__(self, config: str | Path | Mapping[str, Any]):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel  # late: transformers imports in seconds

        self.config = cfg = load_clapcap_config(config)
        self.frontend_config = FrontendConfig.from_dict(cfg["frontend"])
        embed_dim = int(cfg["embed_dim"])
        self.audio = AudioTower(self.frontend_config, cfg["audio_encoder"], embed_dim, float(cfg["projection_dropout"]))
        self.gpt = GPT2LMHeadModel(GPT2Config(**cfg["decoder"]))
        m = cfg["mapper"]
        self.prefix_length = int(m["prefix_length"])
        self.mapper = ClapCapMapper(embed_dim, self.gpt.config.n_embd, self.prefix_length, int(m["clip_length"]),
                                    int(m["num_layers"]), int(m["num_heads"]), float(m["mlp_ratio"]))
        self.normalize_prefix = bool(cfg["normalize_prefix"])

    @classmethod
    def from_config(cls, config: str | Path | Mapping[str, Any], seed: int | None = 0) -> "ClapCapModel":
        """Freshly initialised weights; a given ``seed`` makes them reproducible (global RNG untouched)."""
        if seed is None:
            return cls(config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(config)

    def audio_embedding(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, embed_dim): the CLAP audio embedding, L2-normalised if ``normalize_prefix``."""
        embedding = self.audio(wave)
        if self.normalize_prefix:
            embedding = embedding / embedding.norm(2, -1).reshape(-1, 1)  # msclap's expression, no epsilon
        return embedding

    def prefix(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, prefix_length, n_embd): the GPT-2 input embeddings that stand for the audio."""
        return self.mapper(self.audio_embedding(wave))

    def forward(self, prefix: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: (B, P, n_embd) prefix + (B, L) caption ids -> (B, P + L, vocab) next-token logits."""
        embeds = torch.cat((prefix, self.gpt.transformer.wte(input_ids)), dim=1)
        mask = None
        if attention_mask is not None:
            ones = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
            mask = torch.cat((ones, attention_mask), dim=1)
        return self.gpt(inputs_embeds=embeds, attention_mask=mask).logits

    def loss(self, wave: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of the caption tokens given the audio prefix (teacher forcing).

        ``wave``: (B, samples) at ``frontend_config.sample_rate``.  ``input_ids`` / ``attention_mask``: (B, L),
        right-padded, as ``clapkit.text.TextTokenizer`` of kind ``gpt2`` makes them: each caption ends with
        ``' <|endoftext|>'`` (ids 220, 50256), which is how msclap trained clapcap (its stop token is that 220).
        Which parameters learn is the caller's choice (msclap freezes the audio tower and GPT-2:
        ``requires_grad_(False)`` on ``.audio`` and ``.gpt``).
        """
        return self.loss_from_embedding(self.audio_embedding(wave), input_ids, attention_mask)

    def loss_from_embedding(self, embedding: torch.Tensor, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor) -> torch.Tensor:
        """``loss`` from (B, embed_dim) audio embeddings already computed by ``audio_embedding`` (a frozen tower's
        embeddings computed once, as the caption stage does).  The logit at position P - 1 + t predicts token t;
        padded tokens (mask 0) are excluded from the mean."""
        logits = self.forward(self.mapper(embedding), input_ids, attention_mask)
        predicting = logits[:, self.prefix_length - 1 : -1]  # the positions whose next token is a caption token
        targets = input_ids.masked_fill(attention_mask == 0, -100)
        return F.cross_entropy(predicting.reshape(-1, predicting.shape[-1]), targets.reshape(-1), ignore_index=-100)
