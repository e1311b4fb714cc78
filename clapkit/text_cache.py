"""Caption features of a frozen text encoder, computed once per corpus, so a training step runs no text transformer.

With ``train.freeze_text: true`` the text encoder (e.g. the pretrained ``minilm`` tower) stays in eval mode with
fixed weights: its pooled output is a function of a caption's token ids alone.  ``caption_feature_cache`` computes
that output for every distinct caption of the corpus' training and validation clips (fp32, shortest first in
batches) and keeps it in ``<train.text_cache_dir>/captions-<key>.safetensors``, by default under ``~/.cache`` so
that DVC experiments (each in its own temporary workspace) and other clones share it.  The key is the sha256 of the
encoder's weights and config (``clapkit.training_state.model_fingerprint``), the tokenizer (its whole
``tokenizer.json``) and the sorted caption texts, so another corpus, other weights or another vocabulary never read
a stale file.  The file is written atomically (``atomic_files``: a temp file beside it, renamed); every process that
finds it missing computes it itself (no collective: a long build cannot time out the others) and an equal file
replaces an equal file.

The text encoder's ``attach_cache`` (``clapkit.models.text_encoders``) then answers ``forward`` from it: rows whose
ids are in the cache are looked up, others (zero-shot prompts in validation) run through the encoder; ``hits`` /
``misses`` count rows.  The projection after the encoder still trains on the looked-up features.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from .keyed_cache import read_keyed, write_keyed
from .text import TextTokenizer

__all__ = ["CaptionFeatureCache", "build_caption_features", "caption_cache_key", "caption_feature_cache",
           "corpus_captions"]

FORMAT = "clapkit-caption-features-1"


class CaptionFeatureCache:
    """(N, D) pooled encoder outputs and the token ids they belong to; ``lookup`` serves a padded batch."""

    def __init__(self, features: torch.Tensor, ids: Sequence[Sequence[int]], key: str):
        if features.shape[0] != len(ids):
            raise ValueError(f"{features.shape[0]} feature rows for {len(ids)} id sequences")
        self.features = features
        self.key = key
        self.index = {tuple(int(t) for t in seq): row for row, seq in enumerate(ids)}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str) -> "CaptionFeatureCache":
        self.features = self.features.to(device)
        return self

    def lookup(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               compute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """(B, L) right-padded ids and mask -> (B, D): cached rows, the others from ``compute(ids, mask)``."""
        lengths = attention_mask.long().sum(dim=1)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        right_padded = bool(torch.equal(attention_mask.long() != 0, positions[None, :] < lengths[:, None]))
        if not right_padded:  # not what a TextTokenizer makes: no safe key, compute everything
            self.misses += input_ids.shape[0]
            return compute(input_ids, attention_mask)
        rows = [self.index.get(tuple(seq[:n])) for seq, n in zip(input_ids.tolist(), lengths.tolist())]
        missing = [i for i, r in enumerate(rows) if r is None]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        features = self.features.to(input_ids.device)
        if not missing:
            return features[torch.tensor(rows, device=features.device)]
        out = features.new_zeros((len(rows), features.shape[1]))
        found = [i for i, r in enumerate(rows) if r is not None]
        if found:
            out[found] = features[torch.tensor([rows[i] for i in found], device=features.device)]
        longest = int(lengths[missing].max())
        out[missing] = compute(input_ids[missing, :longest], attention_mask[missing, :longest]).to(out.dtype)
        return out


def corpus_captions(corpus, indices: Iterable[int]) -> list[str]:
    """Every caption of the corpus rows ``indices`` (what training and validation draw from)."""
    return [c for i in indices for c in corpus.rows[i].get("captions", [])]


def caption_cache_key(encoder, tokenizer: TextTokenizer, texts: Iterable[str]) -> str:
    """sha256 of the encoder (weights, transformer config, pooling), the tokenizer and the sorted distinct texts."""
    from .training_state import model_fingerprint

    config = {"class": type(encoder).__name__, "pooling": encoder.pooling,
              "transformer": encoder.transformer.config.to_dict()}
    h = hashlib.sha256(FORMAT.encode())
    h.update(model_fingerprint(config, encoder.state_dict()).encode())
    h.update(hashlib.sha256(tokenizer.tokenizer.to_str().encode()).hexdigest().encode())
    h.update(json.dumps(tokenizer.spec(), sort_keys=True).encode())
    h.update(json.dumps(sorted(set(texts)), ensure_ascii=False).encode())
    return h.hexdigest()


@torch.no_grad()
def build_caption_features(encoder, tokenizer: TextTokenizer, texts: Iterable[str], device: torch.device,
                           batch_size: int = 128) -> tuple[torch.Tensor, list[list[int]]]:
    """(N, D) fp32 pooled outputs of the distinct token sequences of ``texts`` and those sequences, in eval mode,
    batched shortest first (each batch padded to its own longest)."""
    ids = sorted({tuple(seq) for seq in tokenizer.encode_batch(sorted(set(texts)))}, key=lambda s: (len(s), s))
    if not ids:
        raise ValueError("no captions to compute text features for")
    was_training = encoder.training
    encoder.eval()
    out = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        longest = max(len(s) for s in chunk)
        input_ids = torch.full((len(chunk), longest), tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, seq in enumerate(chunk):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        out.append(encoder.pooled(input_ids.to(device), mask.to(device)).float().cpu())
    encoder.train(was_training)
    return torch.cat(out), [list(s) for s in ids]


def _save(path: Path, features: torch.Tensor, ids: list[list[int]], key: str) -> None:
    lengths = torch.tensor([len(s) for s in ids], dtype=torch.long)
    padded = torch.full((len(ids), int(lengths.max())), -1, dtype=torch.long)
    for row, seq in enumerate(ids):
        padded[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
    write_keyed(path, FORMAT, key, {"features": features, "ids": padded, "lengths": lengths})


def _load(path: Path, key: str) -> CaptionFeatureCache | None:
    """The cache in ``path`` if it is one of ``key``; None if it belongs to something else."""
    found = read_keyed(path, FORMAT, key)
    if found is None:
        return None
    t = found[0]
    ids = [row[:n] for row, n in zip(t["ids"].tolist(), t["lengths"].tolist())]
    return CaptionFeatureCache(t["features"], ids, key)


def caption_feature_cache(encoder, tokenizer: TextTokenizer, texts: Iterable[str], cache_dir: str | Path,
                          device: torch.device, batch_size: int = 128) -> tuple[CaptionFeatureCache, dict[str, Any]]:
    """The cache of ``texts`` for this encoder and tokenizer: read from ``cache_dir`` or computed and written there.
    Returns it (features on ``device``) and a report ``{"file", "captions", "built", "seconds"}``."""
    texts = list(texts)
    key = caption_cache_key(encoder, tokenizer, texts)
    path = Path(cache_dir).expanduser() / f"captions-{key[:24]}.safetensors"
    t0 = time.perf_counter()
    cache = _load(path, key) if path.is_file() else None
    built = cache is None
    if built:
        features, ids = build_caption_features(encoder, tokenizer, texts, device, batch_size)
        _save(path, features, ids, key)
        cache = CaptionFeatureCache(features, ids, key)
    report = {"file": str(path), "captions": len(cache), "built": built,
              "seconds": round(time.perf_counter() - t0, 2)}
    return cache.to(device), report
