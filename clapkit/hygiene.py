"""Zero-shot hygiene: no zero-shot score on clips the model trained on (issue 17).

``evaluate`` (the stage and ``clapkit evaluate --task``) hashes every clip set it scores (the embedded test split
and transfer split from their manifest's ``content_hash``; a paper dataset's scored files through
``clapkit.data.fingerprint``, cached in ``<evaluate.cache_dir>/content_hashes.json`` by path, size and mtime) and
intersects them with the model's training index (``clapkit.training_index``).  Any overlap raises
``TrainingOverlapError`` naming the clip set, the count and a few files, before anything is embedded.
``evaluate.allow_training_overlap: true`` (``--allow-training-overlap``) scores it anyway, and the result says so.

Every scored task carries a label, in results.json and metrics/evaluate.json::

    {"training_index": "complete" | "partial" | "unknown", "overlap_clips": int | null, "zero_shot": bool | null}

``complete``: the index lists every clip behind the weights; ``partial``: it lists ours, and some weights came
from data nobody listed (the official msclap checkpoint of ``train.init``: its label names it); ``unknown``: the
model has no index (saved before there was one, or an official checkpoint): nothing can be checked, a warning is
printed, and ``overlap_clips`` and ``zero_shot`` are null.  ``zero_shot`` is false exactly when clips overlap.
An embedded task counts its clips in the whole split (not only the ``test_clips_per_task`` it scores): the check
runs once per split, and a training clip anywhere in a task's test clips is worth knowing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .atomic_files import write_text
from .training_index import INDEX_FILE, RECORD_KEY, keys, row_hashes

__all__ = ["TrainingOverlapError", "TrainingIndex", "load_training_index", "FileHashes", "OverlapGuard",
           "OverlapCheck", "UNKNOWN_LABEL", "check_split", "check_dataset_task", "check_stage",
           "label_results"]  # fmt: skip

UNKNOWN_LABEL = {"training_index": "unknown", "overlap_clips": None, "zero_shot": None}
EXAMPLES = 5  # files named in the error


class TrainingOverlapError(ValueError):
    """A zero-shot run on clips in the model's training data."""


@dataclass
class TrainingIndex:
    path: Path
    keys: np.ndarray  # sorted 16-byte rows (clapkit.training_index.keys)
    unlisted: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "partial" if self.unlisted else "complete"

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, hashes: Sequence[str]) -> np.ndarray:
        """One bool per hash (in its order): is it a training clip's?"""
        if not len(hashes):
            return np.zeros(0, bool)
        query = keys(np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=">u8").reshape(-1, 2))
        return np.isin(query, self.keys)


def load_training_index(model_dir: str | Path) -> TrainingIndex | None:
    """The index a ``save_pretrained`` directory records, checked against its sha256; None where there is none
    (not a directory, e.g. an msclap ``.pth``; a model saved before indexes, or outside the train stage)."""
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        return None
    record = json.loads(config_path.read_text(encoding="utf-8")).get(RECORD_KEY)
    if record is None:
        return None
    path = model_dir / record.get("index", INDEX_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {config_path} records it as the model's training index")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record.get("sha256"):
        raise ValueError(f"{path}: sha256 {digest[:12]}... differs from the {record.get('sha256', '')[:12]}... that "
                         f"{config_path} records: the index is not the one the model was saved with")
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype != np.dtype(">u8") or len(arr) != record.get("clips"):
        raise ValueError(f"{path}: expected ({record.get('clips')}, 2) big-endian uint64, got {arr.shape} {arr.dtype}")
    return TrainingIndex(path, keys(arr), list(record.get("unlisted", [])))


class FileHashes:
    """``file_content_hash`` of files, cached in ``<cache_dir>/content_hashes.json`` by absolute path, size and
    mtime (a changed file is hashed again); ``cache_dir`` None: no cache."""

    def __init__(self, cache_dir: str | Path | None):
        self.path = Path(os.path.expanduser(str(cache_dir))) / "content_hashes.json" if cache_dir else None
        self.entries: dict[str, list] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self.entries = {}  # a damaged cache is only a slower run
        self.changed = False

    def __call__(self, path: str | Path) -> str:
        from .data.fingerprint import file_content_hash

        key = str(Path(path).resolve())
        st = os.stat(key)
        got = self.entries.get(key)
        if got and got[0] == st.st_size and got[1] == st.st_mtime_ns:
            return got[2]
        h = file_content_hash(key)
        self.entries[key] = [st.st_size, st.st_mtime_ns, h]
        self.changed = True
        return h

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        write_text(self.path, json.dumps(self.entries, sort_keys=True) + "\n")
        self.changed = False


@dataclass
class OverlapCheck:
    """One scored clip set against the index: ``overlap`` holds the ids of its training clips."""

    name: str
    status: str
    clips: int = 0
    overlap: set[str] = field(default_factory=set)
    tasks: dict[str, list[str]] = field(default_factory=dict)  # embedded sets: task -> ids of its clips here

    def label(self, task: str | None = None) -> dict[str, Any]:
        """The label of the set, or of the clips of one of its ``tasks`` (the whole set for a task not listed:
        caption retrieval, which any clip with captions may join)."""
        if self.status == "unknown":
            return dict(UNKNOWN_LABEL)
        ids = self.tasks.get(task) if task is not None else None
        n = len(self.overlap) if ids is None else sum(1 for i in ids if i in self.overlap)
        return {"training_index": self.status, "overlap_clips": n, "zero_shot": n == 0}


class OverlapGuard:
    """The checks of one evaluation: a model's index (or None), whether overlap is allowed, the file-hash cache."""

    def __init__(self, index: TrainingIndex | None, allow: bool = False, cache_dir: str | Path | None = None,
                 warn: Callable[[str], None] | None = None):  # fmt: skip
        self.index, self.allow = index, allow
        self.file_hashes = FileHashes(cache_dir)
        self._warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
        self._warned = False

    @classmethod
    def for_model(cls, model: str | Path, allow: bool = False, cache_dir: str | Path | None = None) -> "OverlapGuard":
        return cls(load_training_index(model) if Path(model).is_dir() else None, allow, cache_dir)

    @property
    def status(self) -> str:
        return "unknown" if self.index is None else self.index.status

    def check(self, name: str, ids: Sequence[str], hashes: Sequence[str]) -> OverlapCheck:
        """Raise ``TrainingOverlapError`` if clips of ``name`` are training clips (unless allowed)."""
        if self.index is None:
            if not self._warned:
                self._warn("the model has no training index (saved before clapkit recorded one, or an official "
                           "checkpoint): zero-shot results cannot be checked for training clips; labelled "
                           "training_index: unknown")
                self._warned = True
            return OverlapCheck(name, "unknown", len(ids))
        hit = self.index.contains(list(hashes))
        return OverlapCheck(name, self.index.status, len(ids), {i for i, h in zip(ids, hit) if h})

    def refuse(self, checks: Sequence[OverlapCheck]) -> None:
        """Raise ``TrainingOverlapError`` naming every clip set with training clips, unless overlap is allowed (then
        warn).  Called before anything is embedded."""
        bad = [c for c in checks if c.overlap]
        if not bad:
            return
        said = "; ".join(f"{c.name}: {len(c.overlap)} of {c.clips} clips, e.g. "
                         + ", ".join(sorted(c.overlap)[:EXAMPLES]) + (", ..." if len(c.overlap) > EXAMPLES else "")
                         for c in bad)  # fmt: skip
        if self.allow:
            self._warn(f"clips in the model's training data, scored anyway (allow_training_overlap) and labelled "
                       f"zero_shot: false: {said}")
            return
        raise TrainingOverlapError(
            f"zero-shot evaluation refused: clips in the model's training data ({self.index.path}): {said}. A score on "
            f"them is not zero-shot: evaluate on clips the model never trained on, or set "
            f"evaluate.allow_training_overlap: true (--allow-training-overlap) to score them labelled zero_shot: false")

    def check_rows(self, name: str, rows: Sequence[Mapping[str, Any]]) -> OverlapCheck:
        """Manifest rows (their ``content_hash``; an old manifest's rows hashed from their files)."""
        if self.index is None:
            return self.check(name, [r["id"] for r in rows], [])
        hashes = row_hashes(rows, name, self.file_hashes)
        self.file_hashes.save()
        return self.check(name, [r["id"] for r in rows], hashes)

    def check_files(self, name: str, paths: Sequence[str]) -> OverlapCheck:
        """Audio files (a dataset's scored clips), named by path.  A file that cannot be decoded is left out: it
        cannot be scored either (the scorer lists it among its problems)."""
        from .audio import AudioReadError

        if self.index is None:
            return self.check(name, list(paths), [])
        ids, hashes = [], []
        for p in paths:
            try:
                hashes.append(self.file_hashes(p))
                ids.append(str(p))
            except (AudioReadError, OSError):
                continue
        self.file_hashes.save()
        return self.check(name, ids, hashes)



# ----------------------------------------------------------------------------------------------------------------
# The clip sets of the evaluate stage and of `clapkit evaluate --task`


def check_split(guard: OverlapGuard, prepared: str | Path, split: str) -> OverlapCheck:
    """The clips of one split of a prepared corpus, with each task's clips (for per-task labels)."""
    from .data.prepare import PreparedCorpus

    rows = [r for r in PreparedCorpus(prepared).rows if r["split"] == split]
    check = guard.check_rows(f"{prepared} {split} split", rows)
    for r in rows:
        for task in r.get("labels", {}):
            check.tasks.setdefault(task, []).append(r["id"])
    return check


def check_dataset_task(guard: OverlapGuard, task, root: str | Path, records=None) -> OverlapCheck:
    """The files a paper task scores on the user's copy of its dataset (``clapkit.scoring.scored_records``)."""
    from .data.adapters import ADAPTERS, LoadReport
    from .scoring import scored_records

    if not task.supported:  # the scorer's own refusal, before reading a dataset it could not score
        raise ValueError(f"{task.name}: {task.prompt_note}")
    if records is None:
        records = ADAPTERS[task.adapter].load(root, LoadReport())
    _, test = scored_records(task, records, root)
    return guard.check_files(f"{task.name} ({task.adapter} at {root})", [r.path for r in test])


def check_stage(guard: OverlapGuard, cfg) -> dict[str, OverlapCheck]:
    """Every clip set the evaluate stage scores zero-shot, checked (and refused) before anything is embedded:
    ``embedded`` (the test split), ``transfer`` (when the stage runs the transfer test), one per paper task."""
    from .data.adapters import ADAPTERS, LoadReport
    from .tasks import clap_scored_tasks

    checks = {"embedded": check_split(guard, cfg.prepared, "test")}
    if cfg.transfer:
        checks["transfer"] = check_split(guard, cfg.prepared, "transfer")
    for adapter, root in sorted(cfg.datasets.items()):
        records = ADAPTERS[adapter].load(root, LoadReport()) if adapter in ADAPTERS else []
        for task in clap_scored_tasks(adapter):  # the tasks run_stage scores (no captioning: it needs a captioner)
            checks[task.name] = check_dataset_task(guard, task, root, records)
    guard.refuse(list(checks.values()))
    return checks


def label_results(guard: OverlapGuard, checks: Mapping[str, OverlapCheck], corpus_results: dict[str, Any],
                  paper_results: dict[str, Any], transfer: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """Add each task's label to its results entry (``training_overlap``) and return the metrics block."""
    tasks = {}
    for name, r in corpus_results.items():
        if not name.startswith("_"):
            r["training_overlap"] = tasks[name] = checks["embedded"].label(name)
    for name, r in paper_results.items():
        r["training_overlap"] = tasks[name] = checks[name].label()
    block: dict[str, Any] = {"training_index": guard.status,
                             "training_index_clips": None if guard.index is None else len(guard.index),
                             "tasks": tasks}  # fmt: skip
    if "transfer" in checks:
        transfer["training_overlap"] = block["transfer"] = checks["transfer"].label()
    if guard.index is not None and guard.index.unlisted:
        block["unlisted"] = "; ".join(guard.index.unlisted)  # what "partial" leaves out
    return block
