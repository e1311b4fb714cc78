"""Tensor files keyed by what they were computed from: one safetensors file per (format, key), written atomically,
read back only when both match.  The caches of computed features (``text_cache``: a frozen text tower's caption
features; ``aisfx_cache``: the audio teacher's clip embeddings) store and check through these two functions, so a
file of another format or input is never read as this one's (a stale cache cannot be used)."""
from __future__ import annotations

from pathlib import Path

import torch

from .atomic_files import write_bytes

__all__ = ["read_keyed", "write_keyed"]


def write_keyed(path: str | Path, fmt: str, key: str, tensors: dict[str, torch.Tensor],
                metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (made contiguous) with ``metadata`` and their format and key, atomically."""
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={**(metadata or {}), "format": fmt,
                                                                         "key": key})
    write_bytes(path, data)


def read_keyed(path: str | Path, fmt: str, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """(tensors, metadata) of ``path`` if it holds format ``fmt`` computed for ``key``; None if it belongs to
    something else."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != fmt or meta.get("key") != key:
            return None
        return {name: f.get_tensor(name) for name in f.keys()}, meta
