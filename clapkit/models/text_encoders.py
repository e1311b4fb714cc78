"""Text encoders: a Hugging Face transformer built from a config dict (never from a hub), pooled to one vector.

``build_text_encoder({"name": "gpt2" | "bert" | "roberta", **fields})``; the fields are those of the
transformers config class (``GPT2Config``, ``BertConfig``, ``RobertaConfig``), omitted ones take that class's
defaults (GPT-2 base / BERT base / RoBERTa base sizes).  Every encoder has ``out_dim`` and
``forward(input_ids, attention_mask) -> (batch, out_dim)``:

* ``GPT2TextEncoder`` (msclap 2023): hidden state of the last real token, i.e. the appended ``<|endoftext|>``.
  The position comes from ``attention_mask``, not from counting non-zero ids as msclap does (see clapkit.text).
* ``BertTextEncoder`` (msclap 2022) / ``RobertaTextEncoder``: hidden state of the first token (``[CLS]``/``<s>``),
  or with ``"pooling": "mean"`` the mean of the hidden states over the attention mask (sentence-transformers'
  mean pooling: how all-MiniLM-L6-v2 was trained, ``clapkit.pretrained``).

Two more config fields are clapkit's, not the transformers config's: ``pooling`` (``first`` | ``mean``; BERT and
RoBERTa) and ``pretrained`` (a ``clapkit.pretrained.PACKAGED`` name: the weights this tower starts from, loaded and
hash-verified by the train stage; building the encoder never reads them, so ``CLAP.from_pretrained`` needs only its
own files).

A frozen encoder can answer from a ``clapkit.text_cache.CaptionFeatureCache`` (``attach_cache``): pooled outputs
computed once per corpus, looked up by token ids, so a training step runs no text transformer at all.

The transformer sits in ``.transformer``, so its parameters are ``text.encoder.transformer.<HF name>`` in a
CLAPModel (msclap: ``caption_encoder.base.<HF name>``).  Attention runs through PyTorch SDPA.  BERT/RoBERTa are
built without their pooler (msclap never uses it; an unused layer would also stall DDP), so a msclap 2022
checkpoint's ``caption_encoder.base.pooler.*`` is dropped on loading.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model, RobertaConfig, RobertaModel

__all__ = ["BertTextEncoder", "GPT2TextEncoder", "POOLINGS", "RobertaTextEncoder", "TEXT_ENCODERS",
           "build_text_encoder", "last_real_index", "mean_pool"]

POOLINGS = ("first", "mean")  # what BERT / RoBERTa may be configured with (GPT-2 always pools its last real token)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) mask of 1 = token, 0 = padding -> (B,) index of the last 1 in each row (0 for an all-padding row)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).amax(dim=1)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) hidden states, (B, L) mask -> (B, D) mean over the real tokens (sentence-transformers' rule)."""
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def _clapkit_fields(fields: Mapping[str, Any], name: str, poolings: tuple[str, ...] = POOLINGS):
    """Check clapkit's own fields (``pooling``, ``pretrained``); returns (the fields less ``pretrained``, it)."""
    fields = dict(fields)
    pooling = fields.get("pooling", poolings[0])
    if pooling not in poolings:
        raise ValueError(f"text encoder {name}: pooling must be one of {poolings}, got {pooling!r}")
    if name == "gpt2":
        fields.pop("pooling", None)
    pretrained = fields.pop("pretrained", None)
    if pretrained is not None:
        from ..pretrained import PACKAGED

        if pretrained not in PACKAGED or PACKAGED[pretrained].architecture != name:
            fits = sorted(k for k, v in PACKAGED.items() if v.architecture == name)
            raise ValueError(f"text encoder {name}: pretrained {pretrained!r} is not packaged {name} weights; "
                             f"known: {fits}")
    return fields, pretrained


def _hf_config(config_cls, fields: Mapping[str, Any], **fixed):
    cfg = dict(fields)
    known = set(config_cls().to_dict())
    unknown = sorted(set(cfg) - known)
    if unknown:  # transformers would silently keep a misspelt size as an attribute
        raise ValueError(f"unknown {config_cls.__name__} field(s) {unknown}")
    return config_cls(**cfg, **fixed)


class _HFTextEncoder(nn.Module):
    """A transformers encoder model plus a pooling rule."""

    pooling = "first"  # the sentence vector: "first" ([CLS]/<s>), "last" (GPT-2's end token) or "mean" (over the mask)

    def __init__(self, transformer: nn.Module, out_dim: int, pooling: str | None = None,
                 pretrained: str | None = None):
        super().__init__()
        self.transformer = transformer
        self.out_dim = out_dim
        if pooling is not None:
            self.pooling = pooling
        self.pretrained = pretrained  # the packaged weights this tower starts from (clapkit.pretrained), or None
        self.feature_cache = None  # a CaptionFeatureCache while frozen (plain attribute: not in the state dict)

    def attach_cache(self, cache) -> None:
        """Answer forward() from ``cache`` (None detaches).  Only a frozen encoder in eval mode may have one: its
        output is then a function of the token ids alone, which is what the cache stores."""
        if cache is not None and any(p.requires_grad for p in self.parameters()):
            raise ValueError("a caption feature cache needs a frozen text encoder (train.freeze_text: true)")
        self.feature_cache = cache

    @property
    def vocab_size(self) -> int:
        return self.transformer.config.vocab_size

    @property
    def max_positions(self) -> int:
        cfg = self.transformer.config
        return getattr(cfg, "n_positions", None) or cfg.max_position_embeddings

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The transformer run and pooled: (B, L) ids and mask -> (B, out_dim)."""
        hidden = self.hidden_states(input_ids, attention_mask)
        if self.pooling == "last":
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            return hidden[rows, last_real_index(attention_mask)]
        if self.pooling == "mean":
            return mean_pool(hidden, attention_mask)
        return hidden[:, 0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.feature_cache is not None:
            if self.training:
                raise RuntimeError("a text encoder with a caption feature cache must stay in eval mode (frozen)")
            return self.feature_cache.lookup(input_ids, attention_mask, self.pooled)
        return self.pooled(input_ids, attention_mask)


class GPT2TextEncoder(_HFTextEncoder):
    """GPT-2 (``GPT2Model``, no LM head), pooled at the last real token.  Needs right padding (TextTokenizer's)."""

    pooling = "last"

    def __init__(self, fields: Mapping[str, Any]):
        fields, pretrained = _clapkit_fields(fields, "gpt2", poolings=("last",))
        # No KV cache: the encoder sees every sequence once.
        cfg = _hf_config(GPT2Config, fields, attn_implementation="sdpa", use_cache=False)
        super().__init__(GPT2Model(cfg), cfg.n_embd, pretrained=pretrained)


class BertTextEncoder(_HFTextEncoder):
    """BERT, pooled at ``[CLS]`` (msclap 2022 takes ``last_hidden_state[:, 0]``, not BERT's pooler) or, with
    ``"pooling": "mean"``, averaged over the real tokens (all-MiniLM-L6-v2)."""

    def __init__(self, fields: Mapping[str, Any]):
        fields, pretrained = _clapkit_fields(fields, "bert")
        pooling = fields.pop("pooling", "first")
        cfg = _hf_config(BertConfig, fields, attn_implementation="sdpa")
        super().__init__(BertModel(cfg, add_pooling_layer=False), cfg.hidden_size, pooling, pretrained)


class RobertaTextEncoder(_HFTextEncoder):
    """RoBERTa, pooled at ``<s>`` (or ``"pooling": "mean"``).  Positions start after ``pad_token_id``, which must be
    the tokenizer's pad id."""

    def __init__(self, fields: Mapping[str, Any]):
        fields, pretrained = _clapkit_fields(fields, "roberta")
        pooling = fields.pop("pooling", "first")
        cfg = _hf_config(RobertaConfig, fields, attn_implementation="sdpa")
        super().__init__(RobertaModel(cfg, add_pooling_layer=False), cfg.hidden_size, pooling, pretrained)

    @property
    def max_positions(self) -> int:
        cfg = self.transformer.config  # RoBERTa spends pad_token_id + 1 positions before the first token
        return cfg.max_position_embeddings - cfg.pad_token_id - 1


TEXT_ENCODERS = {"gpt2": GPT2TextEncoder, "bert": BertTextEncoder, "roberta": RobertaTextEncoder}


def build_text_encoder(cfg: Mapping[str, Any]) -> _HFTextEncoder:
    """A text encoder from its config dict; forward(input_ids, attention_mask) -> (B, encoder.out_dim)."""
    fields = dict(cfg)
    name = fields.pop("name", None)
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; known: {sorted(TEXT_ENCODERS)}")
    return TEXT_ENCODERS[name](fields)
