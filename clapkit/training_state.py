"""Resumable training state: atomic checkpoints, run identities, ``--resume latest``, exact continuation.

A run's **identity** is everything that decides what it computes (``run_identity``): the stage's parameters, a
hash of the clapkit package's code, a hash of the prepared corpus (manifest and arrays) and a fingerprint of the
model's initial weights.  Checkpoints live in one folder per identity, ``<checkpoint_dir>/run-<hash>/``, as

    step_<NNNNNNNN>.pt     {"format", "step", "identity_hash", "model", "optimizer", "scheduler", "scaler",
                            "rng": {"python", "numpy", "torch", "cuda"}, "extra": {...}}
    step_<NNNNNNNN>.json   {"format", "step", "identity_hash", "identity", "finished"}   (the sidecar)

The sidecar is written after its ``.pt``, both through ``atomic_files`` (a temporary name, renamed), so a crash
(``kill -9``) leaves either the previous checkpoint or the new one, never half a file; a ``.pt`` without its
sidecar is incomplete and ignored.  Finding what to resume reads sidecars only, never the weights.

Resume rules (``find_resumable``, what ``--resume latest`` does):

* the newest checkpoint of the *same* identity is resumed: rerunning a stage after a kill continues where it
  stopped and ends with the same weights as an uninterrupted run;
* a *finished* run (its last checkpoint's sidecar says ``finished``) is never resumed implicitly: rerunning the
  stage trains afresh (same identity: the same result is recomputed; the old run's folder is cleared first);
* any change (params, code, corpus, initial weights) is another identity, so it trains afresh; runs of other
  identities are left in their folders and listed, with what differs.

``--resume PATH`` loads that checkpoint only if its identity matches (``TrainingStateError`` otherwise, naming the
components that differ); ``allow_other_identity`` overrides that, loudly.

Loading uses ``torch.load(weights_only=True)`` with every tensor mapped to the CPU first (RNG states must be CPU
tensors; the model and optimiser copy their tensors to their own device), so no pickled code is ever run.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .atomic_files import replacing, write_text
from .errors import TrainingStateError
from .file_hash import file_sha256

__all__ = ["FORMAT", "capture_rng_state", "code_hash", "config_hash", "corpus_hash",
           "find_resumable", "identity_differences", "list_checkpoints", "load_checkpoint", "model_fingerprint",
           "read_sidecar", "restore_rng_state", "run_directory", "run_identity", "save_checkpoint", "unwrap"]

FORMAT = "clapkit-train-checkpoint/2"
_NAME = re.compile(r"^step_(\d{8,})\.pt$")
_PACKAGE = Path(__file__).resolve().parent


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


# --- identity --------------------------------------------------------------------------------------------------------

def code_hash(package_dir: str | Path = _PACKAGE) -> str:
    """sha256 of every ``.py`` and ``.json`` file of the clapkit package (relative path and bytes): any edit to
    the code or a bundled model config is another identity."""
    root = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def corpus_hash(data_dir: str | Path, memo_path: str | Path | None = None) -> str:
    """sha256 over every file of a prepared corpus or a shard directory (relative names and contents).

    ``memo_path``: a JSON file (outside the corpus, which may be a DVC output) remembering each file's hash by
    (size, mtime), so that a rerun re-reads only the files that changed."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such corpus directory")
    memo: dict[str, Any] = {}
    if memo_path is not None:
        try:
            memo = json.loads(Path(memo_path).read_text(encoding="utf-8")).get(str(root.resolve()), {})
        except (OSError, ValueError, AttributeError):
            memo = {}
    fresh, digest = {}, hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        stat = path.stat()
        key = f"{stat.st_size}:{stat.st_mtime_ns}"
        entry = memo.get(rel)
        file_hash = entry["sha256"] if isinstance(entry, dict) and entry.get("stat") == key else file_sha256(path)
        fresh[rel] = {"stat": key, "sha256": file_hash}
        digest.update(f"{rel}\0{file_hash}\0".encode())
    if memo_path is not None and fresh != memo:
        write_text(memo_path, json.dumps({str(root.resolve()): fresh}, indent=0, sort_keys=True) + "\n")
    return digest.hexdigest()[:16]


def model_fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """sha256 of a model's config and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def run_identity(params: Mapping[str, Any], corpus: str, initial_weights: str, code: str | None = None,
                 **more: Any) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: ``{"params", "code", "corpus", "initial_weights", ...}``."""
    return {"params": dict(params), "code": code if code is not None else code_hash(), "corpus": corpus,
            "initial_weights": initial_weights, **more}


def identity_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The components in which two identities differ (``params.lr``, ``code``, ``corpus``, ...)."""
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            diffs += [f"{key}.{d}" for d in identity_differences(va, vb)]
        elif json.dumps(va, sort_keys=True, default=str) != json.dumps(vb, sort_keys=True, default=str):
            diffs.append(key)
    return diffs


def run_directory(checkpoint_dir: str | Path, identity: Mapping[str, Any]) -> Path:
    return Path(checkpoint_dir) / f"run-{config_hash(identity)}"


# --- RNG state -----------------------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator, as tensors and plain lists (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore ``capture_rng_state``'s output; every state is moved to the CPU first (where the setters want it)."""
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.cpu().numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --- files ---------------------------------------------------------------------------------------------------------

def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"step_{step:08d}.pt"


def sidecar_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``directory`` (its sidecar written), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file() and sidecar_path(path).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_sidecar(checkpoint: str | Path) -> dict[str, Any]:
    path = sidecar_path(checkpoint)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TrainingStateError(path, f"unreadable sidecar ({type(err).__name__}: {err})") from err
    if info.get("format") != FORMAT:
        raise TrainingStateError(path, f"not a {FORMAT} sidecar")
    return info


def save_checkpoint(directory: str | Path, step: int, model: torch.nn.Module, identity: Mapping[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None, scaler: Any = None,
                    extra: Mapping[str, Any] | None = None, keep: int | None = 2, finished: bool = False) -> Path:
    """Write ``step_<step>.pt`` and its sidecar atomically into ``directory`` (the run's folder,
    ``run_directory``) and delete all but the ``keep`` newest (None = keep all).

    Call it on one process only (rank 0) under DDP: the state is identical on every rank, except the RNG,
    which is stored as rank 0's (every rank re-derives its own data order from the seed and the step)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ident_hash = config_hash(identity)
    state = {
        "format": FORMAT,
        "step": int(step),
        "identity_hash": ident_hash,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "extra": dict(extra or {}),
    }
    path = checkpoint_path(directory, step)
    with replacing(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    sidecar = {"format": FORMAT, "step": int(step), "identity_hash": ident_hash, "identity": identity,
               "finished": bool(finished)}
    text = json.dumps(sidecar, indent=1, sort_keys=True, default=str) + "\n"
    write_text(sidecar_path(path), text)
    if keep is not None:
        for _, old in list_checkpoints(directory)[:-keep]:
            if old != path:
                sidecar_path(old).unlink(missing_ok=True)  # sidecar first: a half-deleted pair is incomplete
                old.unlink(missing_ok=True)
    return path


def find_resumable(checkpoint_dir: str | Path, identity: Mapping[str, Any], log=print) -> Path | None:
    """The newest unfinished checkpoint of ``identity`` under ``checkpoint_dir``, or None (train afresh).

    A finished run of the same identity has its folder cleared (rerunning recomputes the same result); runs of
    other identities are listed with what differs, and kept."""
    run_dir = run_directory(checkpoint_dir, identity)
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            info = read_sidecar(path)
        except TrainingStateError as err:
            log(f"warning: skipping {err}")
            continue
        if info["identity_hash"] != config_hash(identity):
            log(f"warning: {path} is in the folder of another identity; skipped")
            continue
        if info.get("finished"):
            log(f"{path}: a finished run of the same identity is not resumed; training afresh")
            shutil.rmtree(run_dir)
            return None
        return path
    root = Path(checkpoint_dir)
    others = sorted(p for p in root.glob("run-*") if p.is_dir() and p != run_dir) if root.is_dir() else []
    for other in others:
        ckpts = list_checkpoints(other)
        if not ckpts:
            continue
        try:
            theirs = read_sidecar(ckpts[-1][1])["identity"]
        except TrainingStateError:
            continue
        log(f"not resuming {other.name} (step {ckpts[-1][0]}): another run identity, differs in "
            f"{', '.join(identity_differences(identity, theirs)) or 'its hash'}")
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, not a torch file, pickled code refused...
        raise TrainingStateError(path, f"not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingStateError(path, f"not a {FORMAT} file")
    return state


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, scaler: Any = None, identity: Mapping[str, Any] | None = None,
                    allow_other_identity: bool = False, restore_rng: bool = True) -> dict[str, Any]:
    """Load a checkpoint into the given objects (strictly); returns ``{"step", "extra", "identity_hash"}``.

    With ``identity``, the checkpoint's sidecar must carry the same one (``TrainingStateError`` naming what
    differs), unless ``allow_other_identity``, which warns.  Everything is read onto the CPU; the model and the
    optimiser copy their tensors to the device of their parameters."""
    path = Path(path)
    if identity is not None:
        info = read_sidecar(path)
        if info["identity_hash"] != config_hash(identity):
            what = ", ".join(identity_differences(identity, info.get("identity", {}))) or "its hash"
            if not allow_other_identity:
                raise TrainingStateError(path, f"written by another run identity (differs in {what}); resuming it "
                                            "would mix two runs (override: --resume-any-identity)")
            warnings.warn(f"{path}: resuming a checkpoint of ANOTHER run identity (differs in {what}), as asked; "
                          "the result is not the run its parameters describe", stacklevel=2)
    state = _read(path)
    missing, unexpected = unwrap(model).load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise TrainingStateError(path, f"does not fit the model: {len(missing)} missing key(s) {missing[:3]}, "
                                    f"{len(unexpected)} unexpected {unexpected[:3]}")
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if state.get(name) is None:
            raise TrainingStateError(path, f"has no {name} state, but the run has a {name}")
        obj.load_state_dict(state[name])
    if restore_rng:
        restore_rng_state(state["rng"])
    return {"step": state["step"], "extra": state.get("extra", {}), "identity_hash": state.get("identity_hash")}
