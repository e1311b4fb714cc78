"""Stage ``prepare``: decode and validate every clip, resample to the model rate, write the manifest and cache.

Input: the corpus built by ``clapkit data build`` (``data/<source>/clips.jsonl``) plus any public dataset the user
points ``prepare.datasets`` at (``clapkit.data.adapters``).  Output, all in ``prepared/`` (written to
``prepared.tmp/`` and renamed at the end, so a killed run never leaves a half-written stage)::

    manifest.jsonl    one row per usable clip: id, path, duration, sample_rate, channels, source, licence, real,
                      environmental, group, split, captions, labels (task -> label), texts, offset, length,
                      content_hash (``clapkit.data.fingerprint`` of the decoded source)
    waveforms.f16     every clip's mono waveform at the model rate, centre window of ``cache_seconds``, float16,
                      concatenated; a row's ``offset``/``length`` (in samples) locate it.  ``PreparedCorpus`` reads it.
    arrays.json       dtype, sample rate, total samples
    tasks.json        per task: classes, clip counts per split and class, the sources it comes from (the transfer
                      split left out: the in-domain tasks are what training sees)
    transfer.json     the held-out sources and the transfer test's vocabulary and wordings (``.transfer``)
    quarantine.csv    every file that was rejected (action=quarantined) or accepted with a caveat (action=note),
                      with the reason

Splits are drawn per *group* (speaker, drum kit, voice pack, synth program, sentence...: see ``ClipRecord.group``),
by a salted hash, so no recording identity is in two splits; a dataset's own split is kept.  The evaluation split
of every task is its ``test`` clips, fixed by the salt, independent of the training seed.  Every clip of a source
named in ``transfer_sources`` goes to the ``transfer`` split instead (whole sources held out of training and
validation: the transfer test), and no held-out label wording may occur in a train or val clip's text
(``clapkit.data.holdout``: the stage raises on either violation).  Copies of identical audio (one content hash)
end in one split (``clapkit.data.duplicates``: the split furthest from training wins).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..atomic_files import write_json
from ..audio import FrontendConfig, mix_down, resample
from ..config import dataclass_from_dict, frontend_config, load_params
from .captions import make_captions
from .duplicates import compact_waveforms, settle_duplicates
from .fingerprint import audio_content_hash
from .glosses import glosses_for, load_glosses
from .records import ClipRecord, read_jsonl
from .holdout import (DEFAULT_WORDINGS, TRANSFER, check_no_leaks, check_sources, check_split, load_wordings,
                       transfer_summary)

__all__ = ["PrepareConfig", "PreparedCorpus", "check_clip", "prepare", "assign_split"]


@dataclass
class PrepareConfig:
    """The ``prepare:`` block of params.yaml."""

    corpus: str = "data"
    out: str = "prepared"
    metrics: str = "metrics/data.json"
    datasets: dict[str, str] = field(default_factory=dict)  # adapter name -> folder of a dataset on disk
    cache_seconds: float | None = None  # seconds kept per clip (centre window); None = the preset's clip_seconds
    max_file_seconds: float = 600.0  # longer files are quarantined without decoding them
    min_sample_rate: int = 4000
    max_sample_rate: int = 192000
    max_channels: int = 8
    silence_rms: float = 1e-4  # a clip whose RMS is below this is all silent
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    split_salt: str = "clapkit-split-v1"  # fixes the evaluation split; not the training seed on purpose
    captions_per_clip: int = 8
    # WordNet glosses of sound events as one more caption each (clapkit/data/glosses.py); wordings listed in
    # caption_glosses_exclude (e.g. ones held out of training) drop the glosses that contain them.
    caption_glosses: bool = False
    caption_glosses_exclude: list[str] = field(default_factory=list)
    limit_per_source: int | None = None  # keep N clips per source (by hashed id): tiny slices for tests
    workers: int = 2
    # Whole sources held out of training and validation (clip records' `source` ids): their clips form the
    # `transfer` split, which the evaluate stage scores zero-shot with held-out wordings.  params.yaml names them.
    transfer_sources: list[str] = field(default_factory=list)
    transfer_wordings: str | None = None  # task -> label -> held-out wording (YAML); None = the packaged list
    transfer_min_train_clips: int = 1  # a label joins a task's transfer vocabulary with this many training clips

    def __post_init__(self):
        if not isinstance(self.transfer_sources, list) or not all(isinstance(s, str) for s in self.transfer_sources):
            raise ValueError(f"prepare.transfer_sources must be a list of source ids, got {self.transfer_sources!r}")
        if self.transfer_min_train_clips < 1:
            raise ValueError("prepare.transfer_min_train_clips must be at least 1")

    @property
    def wordings_path(self) -> Path:
        return Path(self.transfer_wordings) if self.transfer_wordings else DEFAULT_WORDINGS

    @property
    def wordings_name(self) -> str:
        """How transfer.json names the wordings file (the packaged one relative to the repository: no absolute path
        in a DVC output)."""
        return self.transfer_wordings or "clapkit/data/transfer_wordings.yaml"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "PrepareConfig":
        return dataclass_from_dict(cls, params.get("prepare"), "prepare")


# ----------------------------------------------------------------------------------------------------------------
# One clip: validate, decode, mix down, resample, crop.  Runs in worker processes, so it takes plain arguments.


@dataclass
class ClipResult:
    ok: bool
    reason: str = ""  # why quarantined, or a caveat for an accepted clip ("" = nothing to say)
    duration: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    wave: np.ndarray | None = None  # float16 at the model rate
    content_hash: str = ""  # of the decoded source at its native rate (clapkit.data.fingerprint)


def wav_truncation(path: str) -> str | None:
    """For a RIFF/WAVE file, say if its data chunk is shorter than its header declares.

    libsndfile silently decodes what is there, so a WAV cut short in a download would otherwise pass as a
    shorter clip.  Returns the reason, or None for a complete (or non-WAV) file.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        size = os.path.getsize(path)
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, clen = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"data":
                have = size - pos - 8
                if clen != 0xFFFFFFFF and clen > have:  # 0xFFFFFFFF: streaming writers leave it unset
                    return f"truncated: WAV data chunk declares {clen} bytes, file holds {have}"
                return None
            pos += 8 + clen + (clen & 1)
    return None


def check_clip(path: str, target_sr: int, cfg: PrepareConfig) -> ClipResult:
    """Decode one file under the stage's rules; never raises for a bad file, returns the reason instead."""
    try:
        if not os.path.exists(path):
            return ClipResult(False, "unreadable path: file does not exist")
        if not os.access(path, os.R_OK):
            return ClipResult(False, "unreadable path: permission denied")
        if os.path.getsize(path) == 0:
            return ClipResult(False, "empty file (0 bytes)")
        try:
            info = sf.info(path)
        except Exception as err:  # libsndfile: unknown format, not audio, corrupt header
            return ClipResult(False, f"not audio: {str(err).splitlines()[0][:200]}")
        sr, ch, frames = int(info.samplerate), int(info.channels), int(info.frames)
        dur = frames / sr if sr else 0.0
        base = dict(duration=dur, sample_rate=sr, channels=ch)
        if frames <= 0:
            return ClipResult(False, "no audio samples (empty or truncated stream)", **base)
        truncated = wav_truncation(path)
        if truncated:
            return ClipResult(False, truncated, **base)
        if dur > cfg.max_file_seconds:
            return ClipResult(False, f"too long: {dur:.1f} s > max_file_seconds {cfg.max_file_seconds:g}", **base)
        if not cfg.min_sample_rate <= sr <= cfg.max_sample_rate:
            return ClipResult(False, f"sample rate {sr} Hz outside [{cfg.min_sample_rate}, {cfg.max_sample_rate}]",
                              **base)
        if ch > cfg.max_channels:
            return ClipResult(False, f"{ch} channels > max_channels {cfg.max_channels}", **base)
        try:
            data, _ = sf.read(path, dtype="float32", always_2d=True)
        except Exception as err:  # decoding failed part-way: a truncated or corrupt stream
            return ClipResult(False, f"truncated or corrupt stream: {str(err).splitlines()[0][:200]}", **base)
        if data.shape[0] == 0:
            return ClipResult(False, "no audio samples (empty or truncated stream)", **base)
        # Only where the header's frame count is exact: for MP3/Ogg it is an estimate (from bitrate and file size,
        # ID3 tags included), and a shorter decode is normal there.
        exact_count = info.format in ("WAV", "WAVEX", "AIFF", "FLAC", "W64", "RF64", "CAF", "AU")
        if exact_count and data.shape[0] < 0.98 * frames:
            return ClipResult(False, f"truncated: header says {frames} frames, decoded {data.shape[0]}", **base)
        if not np.isfinite(data).all():
            return ClipResult(False, "contains NaN or infinite samples", **base)
        mono = mix_down(data.T)
        rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
        if rms < cfg.silence_rms:
            return ClipResult(False, f"all silent: RMS {rms:.2e} < silence_rms {cfg.silence_rms:g}", **base)
        wave = resample(mono, sr, target_sr).numpy()
        keep = int(round(cfg.cache_seconds * target_sr))  # prepare() resolved None to the clip length
        if wave.shape[0] > keep:  # centre window, as inference crops
            start = (wave.shape[0] - keep) // 2
            wave = wave[start : start + keep]
        notes = []
        if ch > 2:
            notes.append(f"{ch} channels mixed down by averaging")
        if sr < 16000:
            notes.append(f"low sample rate {sr} Hz: no content above {sr // 2} Hz")
        if sr > 48000:
            notes.append(f"high sample rate {sr} Hz resampled to {target_sr} Hz")
        wave16 = np.clip(wave, -65000.0, 65000.0).astype(np.float16)
        return ClipResult(True, "; ".join(notes), wave=wave16, content_hash=audio_content_hash(mono, sr), **base)
    except Exception as err:  # anything unexpected is a quarantine reason too, never a dead stage
        return ClipResult(False, f"unexpected error: {type(err).__name__}: {err}")


def _worker(args: tuple[str, int, PrepareConfig]) -> ClipResult:
    return check_clip(*args)


# ----------------------------------------------------------------------------------------------------------------
# Records, splits, captions


def assign_split(group: str, salt: str, test_fraction: float, val_fraction: float) -> str:
    """Deterministic split of a recording identity: a salted hash mapped to [0, 1)."""
    h = hashlib.sha256(f"{salt}:{group}".encode()).digest()
    u = int.from_bytes(h[:8], "little") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _hash_order(clip_id: str) -> str:
    return hashlib.sha256(clip_id.encode()).hexdigest()


def collect_records(cfg: PrepareConfig, report: list[dict[str, str]] | None = None) -> list[ClipRecord]:
    """Every record of the corpus (paths made relative to the working directory) and of the listed datasets.

    Dataset rows that cannot be used (a listed file missing, a malformed row, an unknown label: see
    ``clapkit.data.adapters``) are skipped and appended to ``report`` as quarantined, with file:line and reason.
    """
    corpus = Path(cfg.corpus)
    summary_path = corpus / "corpus.json"
    if not summary_path.exists():
        raise FileNotFoundError(f"{summary_path}: no corpus summary; run `clapkit data build` first")
    sources = json.loads(summary_path.read_text())["sources"]
    records: list[ClipRecord] = []
    for name in sorted(sources):
        recs = read_jsonl(corpus / name / "clips.jsonl")
        for r in recs:
            r.path = str(corpus / r.path)
        if cfg.limit_per_source:
            recs = sorted(recs, key=lambda r: _hash_order(r.id))[: cfg.limit_per_source]
        records.extend(recs)
    if cfg.datasets:
        from .adapters import ADAPTERS, LoadReport

        for name, root in sorted(cfg.datasets.items()):
            if name not in ADAPTERS:
                raise ValueError(f"params.yaml prepare.datasets: unknown dataset {name!r}; known: {sorted(ADAPTERS)}")
            problems = LoadReport()
            recs = ADAPTERS[name].load(Path(os.path.expanduser(root)), problems)
            for p in problems.problems:
                where = f"{p.file}:{p.line}" if p.line is not None else p.file
                if report is not None:
                    report.append({"id": f"{name}/?", "path": where, "action": "quarantined", "reason": p.reason})
            if cfg.limit_per_source:
                recs = sorted(recs, key=lambda r: _hash_order(r.id))[: cfg.limit_per_source]
            records.extend(recs)
    ids = Counter(r.id for r in records)
    dup = [i for i, c in ids.items() if c > 1]
    if dup:
        raise ValueError(f"duplicate clip ids in the corpus (first: {dup[:5]})")
    return sorted(records, key=lambda r: r.id)


# ----------------------------------------------------------------------------------------------------------------
# The stage


def _iter_results(records: list[ClipRecord], sr: int, cfg: PrepareConfig) -> Iterator[ClipResult]:
    jobs = [(r.path, sr, cfg) for r in records]
    if cfg.workers <= 1:
        yield from map(_worker, jobs)
        return
    # fork is fine here: workers only run numpy/soundfile/torchaudio resampling on one thread each
    ctx = mp.get_context("fork")
    with ctx.Pool(cfg.workers, initializer=_init_worker) as pool:
        yield from pool.imap(_worker, jobs, chunksize=8)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def prepare(cfg: PrepareConfig, frontend: FrontendConfig, progress: bool = True) -> dict[str, Any]:
    t0 = time.time()
    if cfg.cache_seconds is None:
        cfg = dataclasses.replace(cfg, cache_seconds=frontend.clip_seconds)
    report: list[dict[str, str]] = []
    wordings = load_wordings(cfg.wordings_path)  # a malformed file fails before any decoding
    records = collect_records(cfg, report)
    held_out = set(cfg.transfer_sources)
    check_sources({r.source for r in records}, cfg.transfer_sources, cfg.corpus)
    out, tmp = Path(cfg.out), Path(str(cfg.out) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sr = frontend.sample_rate

    rows: list[dict[str, Any]] = []
    offset = 0
    glosses = load_glosses(cfg.caption_glosses_exclude) if cfg.caption_glosses else {}
    results = _iter_results(records, sr, cfg)
    with open(tmp / "waveforms.f16", "wb") as wav_out:
        for rec, res in tqdm(zip(records, results), total=len(records), desc="prepare", unit="clip",
                             disable=not progress, mininterval=2.0):
            if not res.ok:
                report.append({"id": rec.id, "path": rec.path, "action": "quarantined", "reason": res.reason})
                continue
            if res.reason:
                report.append({"id": rec.id, "path": rec.path, "action": "note", "reason": res.reason})
            wav_out.write(res.wave.tobytes())
            group = rec.group or rec.id
            # The split key is the group alone (not source+group): a sentence or a word shared by several
            # sources lands in one split everywhere, which is the conservative choice.
            split = TRANSFER if rec.source in held_out else \
                rec.split or assign_split(group, cfg.split_salt, cfg.test_fraction, cfg.val_fraction)
            rows.append({
                "id": rec.id, "path": rec.path, "duration": round(res.duration, 4), "sample_rate": res.sample_rate,
                "channels": res.channels, "source": rec.source, "licence": rec.licence, "real": rec.real,
                "environmental": rec.environmental, "group": group, "split": split,
                "captions": make_captions(rec.id, rec.labels, rec.texts, n=cfg.captions_per_clip,
                                          descriptions=glosses_for(rec.labels, glosses)),
                "labels": rec.labels, "texts": rec.texts, "offset": offset, "length": int(res.wave.shape[0]),
                "content_hash": res.content_hash,
            })
            offset += int(res.wave.shape[0])
    rows, dropped, duplicates = settle_duplicates(rows, held_out)  # one split per recording: see the module
    if dropped:
        report.extend(dropped)
        offset = compact_waveforms(tmp / "waveforms.f16", rows)
    check_split(rows, held_out)
    check_no_leaks(rows, wordings, cfg.wordings_name)

    with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    (tmp / "arrays.json").write_text(json.dumps(
        {"waveforms": "waveforms.f16", "dtype": "float16", "sample_rate": sr, "samples": offset,
         "clips": len(rows), "cache_seconds": cfg.cache_seconds, "frontend": frontend.to_dict()}, indent=2) + "\n")
    tasks = summarise_tasks([r for r in rows if r["split"] != TRANSFER])
    transfer = transfer_summary(rows, wordings, cfg.transfer_sources, cfg.transfer_min_train_clips,
                                cfg.wordings_name)
    (tmp / "transfer.json").write_text(json.dumps(transfer, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    (tmp / "tasks.json").write_text(json.dumps(tasks, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    with open(tmp / "quarantine.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "action", "reason"])
        w.writeheader()
        w.writerows(report)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # a whole folder (the stage's output): atomic_files writes files only; allow-listed

    metrics = {**data_metrics(rows, report, tasks), **duplicates}
    mpath = Path(cfg.metrics)
    write_json(mpath, metrics, indent=2, sort_keys=True)
    print(f"[prepare] {metrics['clips_total']} clips, {metrics['quarantined']} quarantined, "
          f"{metrics['tasks']} tasks in {time.time() - t0:.0f} s -> {out}")
    return metrics


def summarise_tasks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: classes, counts per split and class, sources.  A task needs at least two classes."""
    per: dict[str, dict[str, Any]] = defaultdict(lambda: {"splits": defaultdict(Counter), "sources": set()})
    for row in rows:
        for task, label in row["labels"].items():
            labels = label if isinstance(label, list) else [label]
            for lab in labels:
                per[task]["splits"][row["split"]][str(lab)] += 1
            per[task]["sources"].add(row["source"])
            per[task]["multi_label"] = per[task].get("multi_label", False) or isinstance(label, list)
    out = {}
    for task, d in sorted(per.items()):
        classes = sorted(set().union(*[set(c) for c in d["splits"].values()]))
        if len(classes) < 2:
            continue
        out[task] = {
            "classes": classes,
            "multi_label": d.get("multi_label", False),
            "eval_split": "test",
            "clips": {s: sum(c.values()) for s, c in sorted(d["splits"].items())},
            "counts": {s: dict(sorted(c.items())) for s, c in sorted(d["splits"].items())},
            "sources": sorted(d["sources"]),
        }
    return out


def data_metrics(rows: list[dict[str, Any]], report: list[dict[str, str]], tasks: dict[str, Any]) -> dict[str, Any]:
    env_labels = {str(r["labels"]["sound_event"]) for r in rows
                  if r["environmental"] and "sound_event" in r["labels"]}
    return {
        "clips_total": len(rows),
        "clips_real": sum(1 for r in rows if r["real"]),
        "clips_synthetic": sum(1 for r in rows if not r["real"]),
        "clips_environmental": sum(1 for r in rows if r["environmental"]),
        "environmental_labels": len(env_labels),
        "tasks": len(tasks),
        "quarantined": sum(1 for r in report if r["action"] == "quarantined"),
        "hours_total": round(sum(r["duration"] for r in rows) / 3600, 3),
        "sources": len({r["source"] for r in rows}),
        "clips_by_split": dict(sorted(Counter(r["split"] for r in rows).items())),
    }


# ----------------------------------------------------------------------------------------------------------------
# Reading the stage's output


class PreparedCorpus:
    """The manifest plus a memory-mapped view of the cached waveforms (float16 -> float32 on access)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta = json.loads((self.root / "arrays.json").read_text())
        self.sample_rate = int(meta["sample_rate"])
        self.rows = [json.loads(line) for line in open(self.root / "manifest.jsonl", encoding="utf-8")]
        self.tasks = json.loads((self.root / "tasks.json").read_text())
        n = int(meta["samples"])
        self._wave = np.memmap(self.root / meta["waveforms"], dtype=np.float16, mode="r", shape=(n,)) if n else \
            np.zeros(0, np.float16)
        self.index = {r["id"]: i for i, r in enumerate(self.rows)}

    def __len__(self) -> int:
        return len(self.rows)

    def waveform(self, i: int) -> np.ndarray:
        r = self.rows[i]
        return np.asarray(self._wave[r["offset"] : r["offset"] + r["length"]], dtype=np.float32)

    def split(self, name: str) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r["split"] == name]


def _cmd_prepare(args) -> int:
    params = load_params(args.params)
    prepare(PrepareConfig.from_params(params), frontend_config(params), progress=not args.no_progress)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="stage prepare: validate, resample, manifest, cached waveforms")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_prepare)
