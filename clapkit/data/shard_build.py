"""``clapkit shards build``: datasets, manifests and the corpus straight to WebDataset tar shards, in parallel.

Inputs (any mix; ``clapkit.data.shard_inputs`` documents each): ``--dataset name[:split]=root`` (an adapter of
``clapkit.data.adapters``), ``--manifest [name[:split]=]path`` (JSONL or CSV), ``--corpus [name[:split]=]root``.
Every file is decoded, mixed down (channel average), resampled to the preset's rate, cut to its centre
``max_seconds`` and stored as 16-bit FLAC; nothing else of the source is kept (``clapkit.data.shard_audio``: one
clip's checks, cut, resampling and FLAC).

Output folder
-------------
``<split>-NNNNNN.tar``
    WebDataset shards, one sequence per split.  A sample is two members, in this order: ``<key>.flac`` (mono,
    ``sample_rate``, 16-bit: ``round(clip(x, -1, 1) * 32767)`` of the resampled float audio; decode as
    ``int16 / 32767``) and ``<key>.json``: ``{"id", "key", "dataset", "split", "captions", "labels", "path"
    (the source as its input names it), "content_hash", "seconds", "sample_rate", "source_sample_rate",
    "source_channels"}``.  Tar headers are fixed (mtime 0, uid/gid 0, no user names, mode 0644).
``<split>.json``
    The index ``ShardStream`` reads: ``{"format", "split", "clips", "shard_size", "sample_rate", "shards",
    "sizes"}`` (``sizes``: clips per shard, LAION's ``sizes.json`` role; shards left empty by quarantine are not
    listed).
``samples.jsonl``
    One line per stored sample, in split, shard and tar order: ``{"key", "shard", "dataset", "split",
    "content_hash", "seconds"}``.  ``content_hash`` is ``clapkit.data.fingerprint.audio_content_hash`` of the
    decoded *source* (native rate, before resampling and cutting): the zero-shot overlap guard (``clapkit.hygiene``)
    compares it, read through ``clapkit.training_index``, with the evaluation datasets'.
``quarantine.jsonl``
    Every input that did not become a sample: ``{"input", "line", "path", "reason"}`` for manifest / adapter lines
    (missing file, no caption, malformed: ``line`` 1-based, null where the input has no lines), then ``{"key",
    "dataset", "split", "path", "shard", "reason"}`` for audio rejected at decoding (unreadable, empty, truncated,
    NaN/inf, all silent, over ``max_file_seconds``, sample rate out of range, too many channels, duplicate key).
``build.json``
    The build's settings and inputs, and the counts.
``.build/<shard>.json``
    Each finished shard's record (its plan digest, sha256, samples, quarantined inputs): how a resumed build
    knows a shard is done, and what the index is assembled from.

Determinism and parallelism
---------------------------
Items are sorted by key per split, shuffled with ``(seed, split)``, and cut into shards of ``shard_size`` planned
items: shard ``<split>-000007.tar`` holds the readable ones of planned items 7000..7999 in plan order, whatever
the workers or parts.  A shard is the unit of work: ``--workers N`` processes build shards concurrently,
``--part i/N`` builds the shards whose global number is ``i`` mod ``N`` (one per machine of a job array, all
writing to one shared folder); the part that completes the set (or any rerun once all are done) writes the index.
So the same inputs, settings and seed give byte-identical files whatever the workers and parts (with the same
libFLAC: its version is in every FLAC header).  Each worker decodes one clip at a time and streams it into its
tar, so the audio never accumulates; the plan holds every item's metadata (paths, captions, labels: about 1 KB a
clip, ~5 GB for the paper's 4.6M), so at that scale build each dataset into its own folder and mix the folders
at training (``train.shards: {folder: weight}``).

Resuming: a shard is written to a temporary ``.<name>.<random>.tmp`` (``atomic_files``) and renamed when
complete, then its record is written; a rerun keeps a shard whose record matches its plan (inputs, settings) and
whose sha256 matches the record, removes stale temporary files, and builds the rest.  An interrupted build
resumed gives the shards of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..atomic_files import leftovers, replacing, write_text
from ..file_hash import file_sha256
from .shard_audio import (FORMAT, PCM_SCALE, BuildConfig, ClipRejected, decode_flac,  # noqa: F401
                          encode_clip, flac_bytes)

__all__ = ["FORMAT", "BuildConfig", "ClipRejected", "build_shards", "decode_flac", "encode_clip", "plan_build",
           "read_samples"]


# --- a shard --------------------------------------------------------------------------------------------------------

def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = len(data), 0, 0o644
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    tar.addfile(member, io.BytesIO(data))


# --- the plan -------------------------------------------------------------------------------------------------------

@dataclass
class ShardJob:
    number: int  # global shard number over every split: what --part deals out
    name: str  # <split>-NNNNNN.tar
    split: str
    items: list[dict[str, Any]]
    digest: str  # of the format, the settings and the items (not their absolute paths)


def _read_inputs(inputs: Sequence[tuple[str, str, str | None, str]], params: dict | None):
    from .shard_inputs import read_adapter, read_corpus, read_manifest

    items, problems = [], []
    for kind, name, split, path in inputs:
        if kind == "dataset":
            got, bad = read_adapter(name, path, split)
        elif kind == "manifest":
            got, bad = read_manifest(name, path, split)
        elif kind == "corpus":
            got, bad = read_corpus(name, path, split, params)
        else:
            raise ValueError(f"unknown input kind {kind!r}")
        items += got
        problems += bad
    return items, problems


def plan_build(inputs: Sequence[tuple[str, str, str | None, str]], cfg: BuildConfig,
               params: dict | None = None) -> tuple[list[ShardJob], list[dict[str, Any]]]:
    """(every shard to build, in global order; the input problems).  Pure: the same inputs give the same plan."""
    items, problems = _read_inputs(inputs, params)
    by_key: dict[str, dict[str, Any]] = {}
    for item in sorted(items, key=lambda it: (it["key"], it["dataset"], it["path"])):
        if item["key"] in by_key:
            first = by_key[item["key"]]
            problems.append({"input": item["dataset"], "line": None, "path": item["path"],
                             "reason": f"duplicate key {item['key']!r} (kept {first['dataset']}: {first['path']})"})
            continue
        by_key[item["key"]] = item
    jobs: list[ShardJob] = []
    settings = dataclasses.asdict(cfg)
    for split in sorted({it["split"] for it in by_key.values()}):
        planned = [it for key, it in sorted(by_key.items()) if it["split"] == split]
        seed = int.from_bytes(hashlib.sha256(f"{cfg.seed}:{split}".encode()).digest()[:8], "little")
        random.Random(seed).shuffle(planned)
        for k in range(0, len(planned), cfg.shard_size):
            chunk = planned[k:k + cfg.shard_size]
            name = f"{split}-{k // cfg.shard_size:06d}.tar"
            portable = [{f: v for f, v in it.items() if f != "file"} for it in chunk]
            digest = hashlib.sha256(json.dumps({"format": FORMAT, "settings": settings, "name": name,
                                                "items": portable}, sort_keys=True).encode()).hexdigest()
            jobs.append(ShardJob(len(jobs), name, split, chunk, digest))
    return jobs, problems


# --- building -------------------------------------------------------------------------------------------------------

def _record_path(out: Path, name: str) -> Path:
    return out / ".build" / f"{name}.json"


def _finished(out: Path, job: ShardJob, verify: bool) -> dict[str, Any] | None:
    """The record of a finished shard of this plan (sha256 checked when ``verify``), else None."""
    try:
        record = json.loads(_record_path(out, job.name).read_text(encoding="utf-8"))
        tar = out / job.name
        if record.get("digest") != job.digest or tar.stat().st_size != record["bytes"]:
            return None
        if verify and file_sha256(tar) != record["sha256"]:
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_shard(job: ShardJob, cfg: BuildConfig, out: Path, on_clip=None) -> dict[str, Any]:
    """Write one shard (temp + rename) and its record; returns the record.  ``on_clip()`` after each input."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core per worker, and the same resampling arithmetic whatever the workers
    samples, quarantined = [], []
    try:
        with replacing(out / job.name) as tmp:
            with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
                for item in job.items:
                    if on_clip is not None:
                        on_clip()
                    try:
                        pcm, facts = encode_clip(item["file"], cfg)
                    except Exception as err:  # one bad file never stops a build: it is listed with the reason
                        reason = str(err) if isinstance(err, ClipRejected) else \
                            f"unexpected error: {type(err).__name__}: {err}"
                        quarantined.append({"key": item["key"], "dataset": item["dataset"], "split": item["split"],
                                            "path": item["path"], "shard": job.name, "reason": reason})
                        continue
                    meta = {"id": item["id"], "key": item["key"], "dataset": item["dataset"], "split": item["split"],
                            "captions": item["captions"], "labels": item["labels"], "path": item["path"],
                            **facts, "sample_rate": cfg.sample_rate}
                    _tar_add(tar, f"{item['key']}.flac", flac_bytes(pcm, cfg.sample_rate))
                    _tar_add(tar, f"{item['key']}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode())
                    samples.append({"key": item["key"], "shard": job.name, "dataset": item["dataset"],
                                    "split": item["split"], "content_hash": facts["content_hash"],
                                    "seconds": facts["seconds"]})
            record = {"digest": job.digest, "sha256": file_sha256(tmp), "bytes": tmp.stat().st_size,
                      "samples": samples, "quarantined": quarantined}
    finally:
        torch.set_num_threads(threads)
    write_text(_record_path(out, job.name), json.dumps(record, sort_keys=True) + "\n")
    return record


_clips_done = None  # in a worker process: the pool's shared count of inputs handled (the progress bar reads it)


def _init_worker(counter) -> None:
    global _clips_done
    _clips_done = counter


def _count_clip() -> None:
    with _clips_done.get_lock():
        _clips_done.value += 1


def _build_one(args: tuple[ShardJob, BuildConfig, str]) -> str:
    job, cfg, out = args
    build_shard(job, cfg, Path(out), on_clip=_count_clip)
    return job.name


def _parse_part(part: str | tuple[int, int] | None) -> tuple[int, int]:
    if part is None:
        return 0, 1
    if isinstance(part, str):
        try:
            i, n = (int(x) for x in part.split("/"))
        except ValueError:
            raise ValueError(f"--part {part!r}: expected I/N, e.g. 0/8") from None
    else:
        i, n = part
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--part {i}/{n}: need 0 <= i < N")
    return i, n


def _run_jobs(todo: list[ShardJob], cfg: BuildConfig, out: Path, workers: int, progress: bool) -> None:
    """Build ``todo``, ``workers`` processes at a time, with a progress bar in clips/s."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(j.items) for j in todo), unit="clip", desc="shards build", disable=not progress,
               mininterval=1.0, smoothing=0.1)
    try:
        workers = min(workers, len(todo))  # no more processes than shards to build
        if workers <= 1:
            for job in todo:
                build_shard(job, cfg, out, on_clip=lambda: bar.update(1))
            return
        import multiprocessing as mp

        # spawn, not fork: a forked torch (already threaded in the parent) can deadlock in its thread pools
        ctx = mp.get_context("spawn")
        counter = ctx.Value("q", 0)
        with ctx.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
            result = pool.map_async(_build_one, [(job, cfg, str(out)) for job in todo], chunksize=1)
            while not result.ready():
                result.wait(0.5)
                bar.update(counter.value - bar.n)
            result.get()  # a worker's exception is raised here
            bar.update(counter.value - bar.n)
    finally:
        bar.close()


def build_shards(inputs: Sequence[tuple[str, str, str | None, str]], out: str | Path, cfg: BuildConfig, *,
                 workers: int = 1, part: str | tuple[int, int] | None = None, params: dict | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Build this part's shards (resuming), then the index if every shard of the plan is done; returns a summary."""
    out = Path(out)
    (out / ".build").mkdir(parents=True, exist_ok=True)
    i, n = _parse_part(part)
    jobs, problems = plan_build(inputs, cfg, params)
    mine = [job for job in jobs if job.number % n == i]
    for job in mine:  # a temporary file of one of this part's shards is a killed earlier attempt
        for stale in leftovers(out / job.name):
            stale.unlink()
    todo = [job for job in mine if _finished(out, job, verify=True) is None]
    t0 = time.perf_counter()
    _run_jobs(todo, cfg, out, workers, progress)
    seconds = time.perf_counter() - t0
    summary = {"part": f"{i}/{n}", "shards_planned": len(jobs), "shards_in_part": len(mine),
               "shards_built": len(todo), "shards_kept": len(mine) - len(todo),
               "clips_built": sum(len(j.items) for j in todo), "seconds": round(seconds, 3)}
    records = [_finished(out, job, verify=False) for job in jobs]
    pending = [job.name for job, rec in zip(jobs, records) if rec is None]
    planned = {job.name for job in jobs}
    stray = sorted(p.name for p in out.glob("*.tar") if p.name not in planned)
    if stray:  # an earlier build's shards (other inputs or settings): not indexed, never read
        summary["stray_shards_not_in_the_index"] = stray
    if pending:
        summary["pending"] = pending
        return summary
    summary.update(write_index(out, jobs, records, problems, inputs, cfg))
    return summary


# --- the index ------------------------------------------------------------------------------------------------------

def write_index(out: Path, jobs: list[ShardJob], records: list[dict[str, Any]], problems: list[dict[str, Any]],
                inputs: Sequence[tuple[str, str, str | None, str]], cfg: BuildConfig) -> dict[str, Any]:
    """``<split>.json``, ``samples.jsonl``, ``quarantine.jsonl`` and ``build.json`` from the shard records."""
    splits: dict[str, dict[str, Any]] = {}
    for job, rec in zip(jobs, records):
        index = splits.setdefault(job.split, {"format": FORMAT, "split": job.split, "clips": 0,
                                              "shard_size": cfg.shard_size, "sample_rate": cfg.sample_rate,
                                              "shards": [], "sizes": []})
        if rec["samples"]:
            index["shards"].append(job.name)
            index["sizes"].append(len(rec["samples"]))
            index["clips"] += len(rec["samples"])
    for split, index in splits.items():
        write_text(out / f"{split}.json", json.dumps(index, indent=1) + "\n")
    write_text(out / "samples.jsonl",
                  "".join(json.dumps(s, sort_keys=True) + "\n" for rec in records for s in rec["samples"]))
    quarantined = problems + [q for rec in records for q in rec["quarantined"]]
    write_text(out / "quarantine.jsonl", "".join(json.dumps(q, sort_keys=True) + "\n" for q in quarantined))
    counts = {"clips": {s: ix["clips"] for s, ix in splits.items()}, "quarantined": len(quarantined)}
    build = {"format": FORMAT, "settings": dataclasses.asdict(cfg), **counts,
             "inputs": [{"kind": kind, "name": name, "split": split, "path": str(path)}
                        for kind, name, split, path in inputs]}
    write_text(out / "build.json", json.dumps(build, indent=1, sort_keys=True) + "\n")
    return counts


def read_samples(shard_dir: str | Path) -> Iterable[dict[str, Any]]:
    """The lines of ``<shard_dir>/samples.jsonl`` (see the module docstring), in order."""
    path = Path(shard_dir) / "samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sample index (not a `clapkit shards build` folder, or unfinished)")
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


# --- command line ----------------------------------------------------------------------------------------------------

def config_from_args(args) -> tuple[BuildConfig, dict[str, Any]]:
    """The build settings: ``--preset``'s rate and clip length (params.yaml ``frontend.<preset>``; the cut
    defaults to ``prepare.cache_seconds``, else the clip length, as ``prepare`` keeps), explicit flags winning."""
    from ..config import load_params

    params = load_params(args.params) if Path(args.params).is_file() else {}
    preset = args.preset or params.get("preset", "embedded")
    frontend = (params.get("frontend") or {}).get(preset, {})
    sample_rate = args.sample_rate or frontend.get("sample_rate")
    max_seconds = args.max_seconds or (params.get("prepare") or {}).get("cache_seconds") or \
        frontend.get("clip_seconds")
    if not sample_rate or not max_seconds:
        raise SystemExit(f"no frontend.{preset} in {args.params}: give --sample-rate and --max-seconds")
    limits = {k: getattr(args, k) for k in ("max_file_seconds", "min_sample_rate", "max_sample_rate",
                                            "max_channels", "silence_rms") if getattr(args, k) is not None}
    return BuildConfig(int(sample_rate), float(max_seconds), args.shard_size, args.seed, **limits), params


def register(subparsers) -> None:
    from .shard_inputs import parse_input_spec

    p = subparsers.add_parser("shards", help="build WebDataset shards from datasets, manifests and the corpus",
                              description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["build"])
    p.add_argument("--dataset", action="append", default=[], metavar="NAME[:SPLIT]=ROOT",
                   help="a public dataset in its official layout (clapkit.data.adapters)")
    p.add_argument("--manifest", action="append", default=[], metavar="[NAME[:SPLIT]=]PATH",
                   help="a JSONL or CSV manifest: audio (relative to the manifest), captions, labels, split")
    p.add_argument("--corpus", action="append", default=[], metavar="[NAME[:SPLIT]=]ROOT",
                   help="a clapkit corpus (`clapkit data build`), split and captioned as prepare does")
    p.add_argument("--out", required=True)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--preset", choices=["embedded", "paper"], help="default: params.yaml's preset")
    p.add_argument("--sample-rate", type=int)
    p.add_argument("--max-seconds", type=float, help="keep the centre N seconds of each clip")
    p.add_argument("--shard-size", type=int, default=1000, help="planned clips per shard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes on this machine")
    p.add_argument("--part", default=None, metavar="I/N", help="build only part I of N (0-based), e.g. a job array")
    for flag, kind in (("--max-file-seconds", float), ("--min-sample-rate", int), ("--max-sample-rate", int),
                       ("--max-channels", int), ("--silence-rms", float)):
        p.add_argument(flag, type=kind, default=None, help="a quarantine limit (default: prepare's)")
    p.add_argument("--no-progress", action="store_true")

    def run(args) -> int:
        inputs = [parse_input_spec(kind, spec) for kind in ("dataset", "manifest", "corpus")
                  for spec in getattr(args, kind)]
        if not inputs:
            raise SystemExit("clapkit shards build: give at least one --dataset, --manifest or --corpus")
        cfg, params = config_from_args(args)
        summary = build_shards(inputs, args.out, cfg, workers=args.workers, part=args.part, params=params,
                               progress=not args.no_progress)
        print(json.dumps(summary if "pending" not in summary else
                         {**summary, "pending": f"{len(summary['pending'])} shards of other parts; the index is "
                                                f"written when they are done"}, indent=1))
        return 0

    p.set_defaults(func=run)
