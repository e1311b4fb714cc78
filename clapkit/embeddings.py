"""Embedding clips for evaluation, and keeping the embeddings: ``embed_items`` (batches, unreadable clips reported
and skipped), ``EmbeddingCache`` (on disk per model and clip set, written through ``atomic_files``)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .atomic_files import replacing
from .zeroshot import Embedder

__all__ = ["EmbeddingCache", "embed_items"]


class EmbeddingCache:
    """Audio embeddings on disk: ``<root>/<model key[:20]>/<name>-<hash of the clips' identities>.npz``.

    A clip's identity says what its audio is (corpus: id + cached-waveform offset/length + the waveform file's
    size; a dataset file: path + size + mtime), so a changed clip or a different list is a miss, never a stale hit.
    """

    def __init__(self, root: str | Path | None, model_key: str):
        self.dir = Path(root) / model_key[:20] if root else None

    @staticmethod
    def _hash(identities: Sequence[str]) -> str:
        return hashlib.sha256("\n".join(identities).encode()).hexdigest()

    def get(self, name: str, identities: Sequence[str],
            compute: Callable[[], tuple[torch.Tensor, list[int], list[str]]]):  # fmt: skip
        """(embeddings, kept positions, problems) of ``identities``, from disk or ``compute()`` (then saved).

        ``problems`` (clips skipped as unreadable) are stored too, so a cache hit reports them again."""
        want = self._hash(identities)
        # the clip set's hash in the name: another selection (the one-task CLI's, the stage's) gets its own file
        # instead of overwriting this one
        path = self.dir / f"{name}-{want[:12]}.npz" if self.dir else None
        if path is not None and path.is_file():
            with np.load(path) as z:
                if str(z["identities"]) == want:
                    return torch.from_numpy(z["embeddings"].copy()), z["kept"].tolist(), json.loads(str(z["problems"]))
        emb, kept, problems = compute()
        if path is not None:
            with replacing(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, embeddings=emb.numpy(), kept=np.asarray(kept, dtype=np.int64), identities=want,
                         problems=json.dumps(problems))
        return emb, kept, problems


def embed_items(embedder: Embedder, items: Sequence[Any], batch_size: int,
                sample_rate: int | None = None) -> tuple[torch.Tensor, list[int], list[str]]:  # fmt: skip
    """Embed clips (file paths or waveforms) a batch at a time; an unreadable clip is reported and skipped.

    Returns the (K, D) embeddings, the positions in ``items`` of the K clips kept, and the problems met.
    """
    from .audio import AudioReadError

    chunks, kept, problems = [], [], []
    for start in range(0, len(items), batch_size):
        waves = []
        for i in range(start, min(start + batch_size, len(items))):
            try:
                waves.append(embedder.load(items[i], sample_rate))
                kept.append(i)
            except (AudioReadError, ValueError) as err:  # one bad clip never stops the evaluation
                problems.append(f"skipped {err}")
                print(f"clapkit evaluate: skipped {err}", file=sys.stderr)
        if waves:
            chunks.append(embedder.audio(torch.stack(waves)))
    if not chunks:
        raise ValueError("no clip could be read")
    return torch.cat(chunks), kept, problems


def prepared_clip_identities(corpus, indices: Sequence[int]) -> list[str]:
    """The identity of each prepared clip in an ``EmbeddingCache`` key: its id, its place in the waveform file and
    the file's size, so a re-prepared corpus (another rate, another crop) never reads an older embedding."""
    path = corpus.root / "waveforms.f16"
    wave_size = path.stat().st_size if path.exists() else 0
    return [f"{corpus.rows[i]['id']}|{corpus.rows[i]['offset']}|{corpus.rows[i]['length']}|{wave_size}"
            for i in indices]

