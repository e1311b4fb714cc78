"""Resumable training state: atomic checkpoints, ``--resume latest``, exact continuation.

A checkpoint is one file ``<dir>/step_<NNNNNNNN>.pt`` holding everything a run needs to continue as if it had
never stopped::

    {"format": "clapkit-train-checkpoint/1", "step": int, "config_hash": str,
     "model": state_dict, "optimizer": ..., "scheduler": ..., "scaler": ... or None,
     "rng": {"python", "numpy", "torch", "cuda"},   # every generator the loop draws from
     "extra": {...}}                                  # the loop's own counters (epoch, position in the epoch, ...)

Files are written to a temporary name in the same directory, flushed to disk and renamed (``os.replace``), so a
crash (``kill -9``) leaves either the previous checkpoint or the new one, never half a file.  ``keep`` bounds how
many are kept (the newest).  ``config_hash`` ties a checkpoint to the run's parameters: ``find_latest`` ignores
checkpoints written under another config, so changing ``params.yaml`` starts afresh instead of resuming a
different experiment.

Loading uses ``torch.load(weights_only=True)``: the file holds only tensors and plain containers (RNG states are
stored as tensors / lists), so no pickled code is ever run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["FORMAT", "CheckpointError", "capture_rng_state", "config_hash", "find_latest", "list_checkpoints",
           "load_checkpoint", "restore_rng_state", "save_checkpoint", "unwrap"]

FORMAT = "clapkit-train-checkpoint/1"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the path and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable config (key order does not matter)."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / torch.compile wrappers (whose state-dict keys carry prefixes)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# --- RNG state -----------------------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator, as tensors and plain lists (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- files ---------------------------------------------------------------------------------------------------------

def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def model_fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """sha256 of a model's config and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint file in ``directory``, oldest first (temp files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    extra: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    keep: int | None = 2,
) -> Path:
    """Write ``step_<step>.pt`` atomically and delete all but the ``keep`` newest (None = keep all).

    Call it on one process only (rank 0) under DDP: the state is identical on every rank, except the RNG,
    which is stored as rank 0's (every rank re-derives its own sampler order from the seed and the epoch).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "step": int(step),
        "config_hash": config_hash(config) if config is not None else None,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "extra": dict(extra or {}),
    }
    path = checkpoint_path(directory, step)
    _atomic_torch_save(state, path)
    if keep is not None:
        for _, old in list_checkpoints(directory)[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def find_latest(directory: str | Path, config: Mapping[str, Any] | None = None) -> Path | None:
    """The newest checkpoint in ``directory`` written under ``config`` (any config if None), or None.

    A file that cannot be read (a disk error, a file someone truncated) is skipped with a warning in favour of
    the next older one.
    """
    want = config_hash(config) if config is not None else None
    for _, path in reversed(list_checkpoints(directory)):
        try:
            header = _read(path)
        except CheckpointError as err:
            print(f"warning: skipping unreadable checkpoint {err}")
            continue
        if want is None or header.get("config_hash") == want:
            return path
    return None


def _read(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled code refused...
        raise CheckpointError(path, f"not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(path, f"not a {FORMAT} file")
    return state


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    restore_rng: bool = True,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint into the given objects (strictly); returns ``{"step", "extra", "config_hash"}``."""
    path = Path(path)
    state = _read(path, map_location)
    unwrap(model).load_state_dict(state["model"], strict=True)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if state.get(name) is None:
            raise CheckpointError(path, f"has no {name} state, but the run has a {name}")
        obj.load_state_dict(state[name])
    if restore_rng:
        restore_rng_state(state["rng"])
    return {"step": state["step"], "extra": state.get("extra", {}), "config_hash": state.get("config_hash")}
