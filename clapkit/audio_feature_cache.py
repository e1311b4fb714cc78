"""Clip features of a fixed waveform audio encoder (the ``aisfx`` tower), kept on disk across runs.

An encoder that reads the waveform itself (``takes_waveform``) and runs in eval mode with fixed weights (a frozen
tower in training; every tower in evaluation) maps a waveform to its features and nothing else.  The aisfx tower
computes each clip on its own in eval mode (``AisfxAudioEncoder.compute``), so a clip's features do not depend on
the batch it came in: a value read back from the store is the value a fresh computation gives, and a run's result
does not depend on what an earlier run left in the store.

``WaveformFeatureStore`` maps each window's SHA-1 (its float32 samples) to its features.  It lives in
``<dir>/<name>-<key>.safetensors``; the key is the sha256 of the encoder's weights, config and resolved precision,
so other weights never read a stale file.  ``lookup`` serves a (B, samples) batch: known rows are read, the others
computed and added; ``save`` merges what it added with the file's current content (another process may have added
rows meanwhile) and writes atomically.  ``hits`` / ``misses`` count rows.  The train stage attaches it for a frozen
waveform tower (``train.audio_cache_dir``), the evaluate stage for any waveform tower (``evaluate.audio_cache_dir``);
both default to ``~/.cache/clapkit/audio-features``, shared by DVC experiments and clones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .keyed_cache import read_keyed, write_keyed

__all__ = ["WaveformFeatureStore", "attach_feature_store", "detach_feature_store", "store_key", "waveform_digest"]

FORMAT = "clapkit-waveform-features-2"


def waveform_digest(wave: torch.Tensor) -> bytes:
    """20-byte SHA-1 of one window's float32 samples (its identity in the store)."""
    return hashlib.sha1(np.ascontiguousarray(wave.detach().float().cpu().numpy()).tobytes()).digest()


def store_key(encoder) -> str:
    """sha256 of the encoder's class, config, resolved precision ("auto" is bf16 on one machine, fp32 on another)
    and weights."""
    from .training_state import model_fingerprint
    from .training import resolve_precision

    config = {"class": type(encoder).__name__, **encoder.config.to_dict(), "format": FORMAT,
              "resolved_precision": str(resolve_precision(encoder.config.precision, torch.device("cpu")))}
    return model_fingerprint(config, encoder.state_dict())


class WaveformFeatureStore:
    """digest -> (D,) fp32 features of one encoder, read from and saved to ``path``."""

    def __init__(self, path: str | Path, key: str):
        self.path, self.key = Path(path).expanduser(), key
        self.rows: dict[bytes, torch.Tensor] = self._read()
        self.loaded = len(self.rows)
        self.added: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    def _read(self) -> dict[bytes, torch.Tensor]:
        if not self.path.exists():
            return {}
        found = read_keyed(self.path, FORMAT, self.key)
        if found is None:  # another format or encoder under this name: rebuilt (it is keyed, so this is rare)
            return {}
        t = found[0]
        return {bytes(d): f for d, f in zip(t["digests"].tolist(), t["features"])}

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, wave: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        digests = [waveform_digest(w) for w in wave]
        missing = [i for i, d in enumerate(digests) if d not in self.rows]
        self.hits += len(digests) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute(wave[missing]).detach().float().cpu()
            for i, row in zip(missing, computed):
                self.rows[digests[i]] = self.added[digests[i]] = row.clone()
        return torch.stack([self.rows[d] for d in digests]).to(wave.device)

    def save(self) -> None:
        """Merge the added rows into the file's current content, atomically; nothing to do if none were added."""
        if not self.added:
            return
        merged = {**self._read(), **self.added}
        digests = sorted(merged)
        write_keyed(self.path, FORMAT, self.key,
                    {"digests": torch.tensor([list(d) for d in digests], dtype=torch.uint8),
                     "features": torch.stack([merged[d] for d in digests])})
        self.added = {}

    def report(self) -> dict[str, Any]:
        return {"path": str(self.path), "rows_read": self.loaded, "hits": self.hits, "misses": self.misses}


def attach_feature_store(encoder, cache_dir: str | Path | None) -> WaveformFeatureStore | None:
    """Attach a store to a waveform encoder (``takes_waveform``) when ``cache_dir`` is set; None otherwise."""
    if not cache_dir or not getattr(encoder, "takes_waveform", False):
        return None
    key = store_key(encoder)
    store = WaveformFeatureStore(Path(cache_dir).expanduser() / f"{encoder.config_name}-{key[:24]}.safetensors", key)
    encoder.attach_cache(store)
    return store


def detach_feature_store(encoder, store: WaveformFeatureStore | None) -> dict[str, Any] | None:
    """Detach, save what was added, and report the row counts."""
    if store is None:
        return None
    encoder.attach_cache(None)
    store.save()
    return store.report()
