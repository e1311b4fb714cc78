"""Clip features of a frozen waveform audio encoder (the ``aisfx`` tower), computed once per corpus.

With ``train.freeze_audio: true`` and an encoder that reads the waveform itself (``takes_waveform``), the encoder's
output is a function of the waveform alone.  ``waveform_feature_cache`` computes it for the training window of every
training and validation clip (the loader's: a clip not longer than the frontend's clip is used whole or
repeat-padded, ``fit_length``; the embedded corpus caches exactly one clip length, so there is one window per clip),
in corpus order and fixed batches, so the values depend on the corpus and the weights only, never on which run
computed them first.  It keeps them in ``<train.audio_cache_dir>/clips-<key>.safetensors`` (under ``~/.cache`` by
default, shared by DVC experiments and clones); the key is the sha256 of the encoder's weights and config and of the
windows' own hashes, so another corpus or other weights never read a stale file.

``WaveformFeatureCache.lookup`` serves a batch by each row's SHA-1 of its float32 samples: rows it knows are looked
up, the others (a random crop of a longer clip, a zero-shot clip) are computed; ``hits`` / ``misses`` count rows.
The projection after the encoder still trains on the looked-up features.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .audio import fit_length
from .keyed_cache import read_keyed, write_keyed

__all__ = ["WaveformFeatureCache", "waveform_digest", "waveform_feature_cache"]

FORMAT = "clapkit-waveform-features-1"


def waveform_digest(wave: torch.Tensor) -> bytes:
    """20-byte SHA-1 of one window's float32 samples (its identity in the cache)."""
    return hashlib.sha1(np.ascontiguousarray(wave.detach().float().cpu().numpy()).tobytes()).digest()


class WaveformFeatureCache:
    """(N, D) encoder outputs and the window digests they belong to; ``lookup`` serves a (B, samples) batch."""

    def __init__(self, features: torch.Tensor, digests: Sequence[bytes], key: str):
        if features.shape[0] != len(digests):
            raise ValueError(f"{features.shape[0]} feature rows for {len(digests)} waveform digests")
        self.features, self.key = features, key
        self.index = {d: row for row, d in enumerate(digests)}
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return self.features.shape[0]

    def lookup(self, wave: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        rows = [self.index.get(waveform_digest(w)) for w in wave]
        missing = [i for i, r in enumerate(rows) if r is None]
        self.hits += len(rows) - len(missing)
        self.misses += len(missing)
        out = self.features.new_zeros((len(rows), self.features.shape[1])).to(wave.device)
        found = [i for i, r in enumerate(rows) if r is not None]
        if found:
            out[found] = self.features[[rows[i] for i in found]].to(wave.device)
        if missing:
            out[missing] = compute(wave[missing]).to(out.dtype)
        return out


def corpus_windows(corpus, indices: Sequence[int], clip_samples: int) -> Iterator[torch.Tensor]:
    """The training window of each clip of ``indices`` whose cached waveform is not longer than one clip (a longer
    one has random crops: nothing fixed to cache), one at a time (a corpus' windows need not fit in memory)."""
    for i in indices:
        wave = torch.from_numpy(corpus.waveform(i))
        if wave.shape[0] <= clip_samples:
            yield fit_length(wave, clip_samples)


def cache_key(encoder, digests: Sequence[bytes]) -> str:
    from .checkpointing import model_fingerprint

    h = hashlib.sha256(FORMAT.encode())
    from .training import resolve_precision

    # the resolved precision too: "auto" is bf16 on one machine and fp32 on another
    config = {"class": type(encoder).__name__, **encoder.config.to_dict(),
              "resolved_precision": str(resolve_precision(encoder.config.precision, torch.device("cpu")))}
    h.update(model_fingerprint(config, encoder.state_dict()).encode())
    for d in sorted(set(digests)):
        h.update(d)
    return h.hexdigest()


@torch.no_grad()
def build_waveform_features(encoder, windows: Iterable[torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    """(N, D) fp32 outputs of ``encoder.compute`` on ``windows``, in eval mode, in order, ``batch_size`` at a time."""
    was_training = encoder.training
    encoder.eval()
    out, batch = [], []
    for w in windows:
        batch.append(w)
        if len(batch) == batch_size:
            out.append(encoder.compute(torch.stack(batch)).float().cpu())
            batch = []
    if batch:
        out.append(encoder.compute(torch.stack(batch)).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def waveform_feature_cache(encoder, corpus, indices: Sequence[int], clip_samples: int, cache_dir: str | Path,
                           ) -> tuple[WaveformFeatureCache, dict[str, Any]]:
    """The cache for ``indices`` (built, or read from ``cache_dir``) and a report for the run's timings."""
    started = time.perf_counter()
    digests = [waveform_digest(w) for w in corpus_windows(corpus, indices, clip_samples)]
    if not digests:
        raise ValueError("no clip fits one window: nothing to cache (prepare.cache_seconds > the clip length?)")
    key = cache_key(encoder, digests)
    path = Path(cache_dir).expanduser() / f"clips-{key[:24]}.safetensors"
    cache, built = None, False
    if path.exists():
        found = read_keyed(path, FORMAT, key)
        if found is not None:
            t = found[0]
            cache = WaveformFeatureCache(t["features"], [bytes(r) for r in t["digests"].tolist()], key)
    if cache is None:
        features = build_waveform_features(encoder, corpus_windows(corpus, indices, clip_samples))
        write_keyed(path, FORMAT, key, {"features": features,
                                        "digests": torch.tensor([list(d) for d in digests], dtype=torch.uint8)})
        cache, built = WaveformFeatureCache(features, digests, key), True
    return cache, {"path": str(path), "clips": len(digests), "built": built,
                   "seconds": round(time.perf_counter() - started, 1)}
