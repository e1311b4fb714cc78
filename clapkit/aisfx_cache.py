"""The aisfx teacher's clip embeddings, computed once per corpus (the targets a distillation task will read).

The teacher (``clapkit.aisfx_teacher``, checkpoint CC BY 4.0, Ma & Lerch, ISMIR 2022) costs about 0.065 s per 2.3 s
block on one CPU thread, so the embeddings of a corpus' clips are computed once, whole clips, and kept in
``<cache_dir>/aisfx-<key>.safetensors``: (clips, 512) fp32 and the clip ids, in the order asked for.  The key is the
sha256 of the format, the checkpoint's sha256, the teacher's config (front-end, blocking, pooling), the corpus'
sample rate and every clip's id and audio (the sha256 of its samples), so other weights, another recipe or a changed
clip never read a stale file.  Written atomically (``atomic_files``: a temp file beside it, renamed).

``corpus`` is anything with ``sample_rate``, ``rows`` (dicts with an ``"id"``) and ``waveform(i)`` (mono float
samples), e.g. ``clapkit.data.prepare.PreparedCorpus``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .aisfx_teacher import AISFX, AisfxEmbedder
from .keyed_cache import read_keyed, write_keyed

__all__ = ["TeacherEmbeddings", "build_teacher_embeddings", "teacher_cache_key", "teacher_embedding_cache"]

FORMAT = "clapkit-aisfx-clip-embeddings-1"


class TeacherEmbeddings:
    """(clips, D) teacher embeddings and their clip ids; ``for_ids`` gathers rows by id."""

    def __init__(self, features: torch.Tensor, ids: Sequence[str], key: str):
        if features.ndim != 2 or features.shape[0] != len(ids):
            raise ValueError(f"{tuple(features.shape)} features for {len(ids)} clip ids")
        self.features, self.ids, self.key = features, list(ids), key
        self.index = {c: i for i, c in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError("duplicate clip ids")

    def __len__(self) -> int:
        return len(self.ids)

    def for_ids(self, ids: Sequence[str]) -> torch.Tensor:
        missing = [c for c in ids if c not in self.index]
        if missing:
            raise KeyError(f"no teacher embedding for clips {missing[:5]} ({len(missing)})")
        return self.features[torch.tensor([self.index[c] for c in ids], dtype=torch.long)]


def teacher_cache_key(embedder: AisfxEmbedder, corpus, indices: Sequence[int]) -> str:
    """sha256 of the format, the checkpoint, the teacher's config, the sample rate and each clip's id and samples."""
    h = hashlib.sha256(FORMAT.encode())
    h.update(AISFX.sha256.encode())
    h.update(json.dumps(embedder.cfg.to_dict(), sort_keys=True).encode())
    h.update(str(int(corpus.sample_rate)).encode())
    for i in indices:
        wave = np.ascontiguousarray(corpus.waveform(i), dtype=np.float32)
        h.update(json.dumps(corpus.rows[i]["id"]).encode())
        h.update(hashlib.sha256(wave.tobytes()).digest())
    return h.hexdigest()


def build_teacher_embeddings(embedder: AisfxEmbedder, corpus, indices: Sequence[int], batch_clips: int = 16,
                             progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """(len(indices), D) fp32 whole-clip embeddings, ``batch_clips`` clips per ``embed`` call."""
    indices = list(indices)
    if not indices:
        raise ValueError("no clips to embed")
    out = []
    for start in range(0, len(indices), batch_clips):
        chunk = indices[start:start + batch_clips]
        out.append(embedder.embed([corpus.waveform(i) for i in chunk], corpus.sample_rate).float())
        if progress is not None:
            progress(start + len(chunk), len(indices))
    return torch.cat(out)


def _save(path: Path, cache: TeacherEmbeddings) -> None:
    write_keyed(path, FORMAT, cache.key, {"features": cache.features},
                {"ids": json.dumps(cache.ids, ensure_ascii=False)})


def _load(path: Path, key: str) -> TeacherEmbeddings | None:
    """The embeddings in ``path`` if they are those of ``key``; None if the file belongs to something else."""
    found = read_keyed(path, FORMAT, key)
    if found is None:
        return None
    tensors, meta = found
    return TeacherEmbeddings(tensors["features"], json.loads(meta["ids"]), key)


def teacher_embedding_cache(embedder: AisfxEmbedder, corpus, indices: Sequence[int], cache_dir: str | Path,
                            batch_clips: int = 16) -> tuple[TeacherEmbeddings, dict[str, Any]]:
    """The teacher embeddings of the corpus rows ``indices``: read from ``cache_dir`` or computed and written there.
    Returns them and a report ``{"file", "clips", "built", "seconds"}``."""
    indices = list(indices)
    t0 = time.perf_counter()
    key = teacher_cache_key(embedder, corpus, indices)
    path = Path(cache_dir).expanduser() / f"aisfx-{key[:24]}.safetensors"
    cache = _load(path, key) if path.is_file() else None
    built = cache is None
    if built:
        features = build_teacher_embeddings(embedder, corpus, indices, batch_clips)
        cache = TeacherEmbeddings(features, [corpus.rows[i]["id"] for i in indices], key)
        _save(path, cache)
    report = {"file": str(path), "clips": len(cache), "built": built,
              "seconds": round(time.perf_counter() - t0, 2)}
    return cache, report
