"""A synthetic labelled corpus in the prepare stage's layout, generated deterministically with numpy.

For the GPU check (``benchmarks/gpu.sh``): the GPU machine has no network, no Debian packages and no copy of
``data/``, so the check writes its own small corpus at the model rate (44.1 kHz for ``preset: paper``) instead of
carrying one.  The layout is what ``clapkit.data.prepare.prepare`` writes and ``PreparedCorpus`` reads:
``manifest.jsonl``, ``waveforms.f16``, ``arrays.json``, ``tasks.json`` (``summarise_tasks``), ``quarantine.csv``;
captions come from ``clapkit.data.captions.make_captions``, so the text side is the one training sees on the
embedded corpus.

Clips: test signals with three label tasks, learnable from the audio alone:

* ``tone``: sine tone, square wave, sawtooth wave, triangle wave (tonal), white / pink / brown noise, click train;
* ``pitch``: the note of a tonal clip (C4 .. B4, twelve classes);
* ``velocity``: soft / medium / loud (peak amplitude) of a tonal clip.

Each clip is 50-100 % of ``clip_seconds`` long (the loader repeat-pads shorter clips), with a short fade in and
out.  Everything is a function of ``(seed, clip index)``: the same arguments give the same bytes.  Splits are
exact counts (``val``, ``test``, the rest ``train``) over a seeded permutation.

    python benchmarks/synth_corpus.py OUT_DIR --clips 3456 --val 128 --test 128 --preset paper
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TONAL = ("sine tone", "square wave", "sawtooth wave", "triangle wave")
NOISES = ("white noise", "pink noise", "brown noise", "click train")
KINDS = TONAL + NOISES
NOTES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
PITCHES = tuple(f"{n}4" for n in NOTES)  # C4 .. B4
VELOCITIES = {"soft": 0.08, "medium": 0.25, "loud": 0.7}  # peak amplitude
SOURCE = "gpu-synth"


def note_hz(index: int, octave: int = 4) -> float:
    """Equal temperament, A4 = 440 Hz; ``index`` 0 = C."""
    return 440.0 * 2.0 ** ((index - 9) / 12 + (octave - 4))


def clip_spec(seed: int, i: int) -> dict[str, Any]:
    """Labels and synthesis parameters of clip ``i`` (a function of ``seed`` and ``i`` only)."""
    rng = np.random.default_rng([seed, i, 1])
    kind = KINDS[i % len(KINDS)]  # balanced classes
    spec: dict[str, Any] = {"kind": kind, "fraction": float(rng.uniform(0.5, 1.0)), "noise_seed": [seed, i, 2]}
    labels: dict[str, str] = {"tone": kind}
    if kind in TONAL:
        note = int(rng.integers(len(NOTES)))
        velocity = list(VELOCITIES)[int(rng.integers(len(VELOCITIES)))]
        spec.update(hz=note_hz(note), amplitude=VELOCITIES[velocity])
        labels.update(pitch=PITCHES[note], velocity=velocity)
    else:
        spec.update(amplitude=float(rng.uniform(0.1, 0.5)), rate=float(rng.uniform(3.0, 20.0)))
    spec["labels"] = labels
    return spec


def synthesize(spec: dict[str, Any], sample_rate: int, clip_seconds: float) -> np.ndarray:
    """The float32 waveform of one clip."""
    n = max(1, int(round(spec["fraction"] * clip_seconds * sample_rate)))
    t = np.arange(n, dtype=np.float64) / sample_rate
    kind = spec["kind"]
    noise = np.random.default_rng(spec["noise_seed"])
    if kind in TONAL:
        phase = (spec["hz"] * t + noise.uniform()) % 1.0
        if kind == "sine tone":
            x = np.sin(2 * np.pi * phase)
        elif kind == "square wave":
            x = np.where(phase < 0.5, 1.0, -1.0)
        elif kind == "sawtooth wave":
            x = 2.0 * phase - 1.0
        else:  # triangle
            x = 4.0 * np.abs(phase - 0.5) - 1.0
    elif kind == "white noise":
        x = noise.standard_normal(n)
    elif kind in ("pink noise", "brown noise"):
        size = 1 << max(1, (n - 1).bit_length())  # a power of two: numpy's FFT is slow on other lengths
        spectrum = np.fft.rfft(noise.standard_normal(size))
        f = np.fft.rfftfreq(size, 1.0 / sample_rate)
        f[0] = f[1]
        spectrum /= np.sqrt(f) if kind == "pink noise" else f  # 1/f power, 1/f^2 power
        x = np.fft.irfft(spectrum, size)[:n]
    else:  # click train
        x = np.zeros(n)
        period = max(1, int(sample_rate / spec["rate"]))
        start = int(noise.integers(period))
        x[start::period] = 1.0
        x[min(n - 1, start + 1)::period] = -0.5
    x = x - x.mean() if kind != "click train" else x
    peak = np.max(np.abs(x))
    x = x / peak if peak > 0 else x
    fade = min(n // 4, int(0.01 * sample_rate))
    if fade > 0:
        ramp = np.linspace(0.0, 1.0, fade)
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    return (spec["amplitude"] * x).astype(np.float32)


def _clip_job(args: tuple[int, int, int, float]) -> tuple[dict[str, Any], bytes]:
    seed, i, sample_rate, clip_seconds = args
    spec = clip_spec(seed, i)
    wave = synthesize(spec, sample_rate, clip_seconds)
    return spec, np.clip(wave, -65000.0, 65000.0).astype(np.float16).tobytes()


def split_of(n_clips: int, n_val: int, n_test: int, seed: int) -> list[str]:
    """Exact split counts over a seeded permutation: ``val`` and ``test`` first, the rest ``train``."""
    if n_val + n_test >= n_clips:
        raise ValueError(f"{n_clips} clips leave no training clip after {n_val} val + {n_test} test")
    order = np.random.default_rng([seed, 0]).permutation(n_clips)
    splits = ["train"] * n_clips
    for k, i in enumerate(order[: n_val + n_test]):
        splits[int(i)] = "val" if k < n_val else "test"
    return splits


def write_corpus(out: str | Path, n_clips: int, frontend: dict[str, Any], n_val: int = 128, n_test: int = 128,
                 seed: int = 0, workers: int = 0, captions_per_clip: int = 8) -> dict[str, Any]:
    """Write the corpus into ``out`` (through ``out.tmp``, renamed at the end); returns a summary.

    ``frontend``: the preset's frontend dict (``FrontendConfig.to_dict()``): its ``sample_rate`` and
    ``clip_seconds`` size the clips, and it is recorded in ``arrays.json`` as the prepare stage does.
    ``workers``: processes synthesising clips (0 = one per CPU, at most 16); the output does not depend on it.
    """
    from clapkit.data.captions import make_captions
    from clapkit.data.prepare import summarise_tasks

    t0 = time.perf_counter()
    sample_rate, clip_seconds = int(frontend["sample_rate"]), float(frontend["clip_seconds"])
    out, tmp = Path(out), Path(str(out) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splits = split_of(n_clips, n_val, n_test, seed)
    jobs = [(seed, i, sample_rate, clip_seconds) for i in range(n_clips)]
    workers = workers or min(16, os.cpu_count() or 1)
    rows, offset = [], 0
    pool = mp.get_context("fork").Pool(workers) if workers > 1 and n_clips > 64 else None
    try:
        results = pool.imap(_clip_job, jobs, chunksize=16) if pool else map(_clip_job, jobs)
        with open(tmp / "waveforms.f16", "wb") as f:
            for i, (spec, data) in enumerate(results):
                length = len(data) // 2
                f.write(data)
                clip_id = f"{SOURCE}/{i:06d}"
                rows.append({
                    "id": clip_id, "path": f"{SOURCE}/{i:06d}.wav", "duration": round(length / sample_rate, 4),
                    "sample_rate": sample_rate, "channels": 1, "source": SOURCE, "licence": "generated (CC0)",
                    "real": False, "environmental": False, "group": clip_id, "split": splits[i],
                    "captions": make_captions(clip_id, spec["labels"], [], n=captions_per_clip),
                    "labels": spec["labels"], "texts": [], "offset": offset, "length": length,
                })
                offset += length
    finally:
        if pool:
            pool.close()
            pool.join()
    with open(tmp / "manifest.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    (tmp / "arrays.json").write_text(json.dumps(
        {"waveforms": "waveforms.f16", "dtype": "float16", "sample_rate": sample_rate, "samples": offset,
         "clips": len(rows), "cache_seconds": clip_seconds, "frontend": dict(frontend)}, indent=2) + "\n")
    tasks = summarise_tasks(rows)
    (tmp / "tasks.json").write_text(json.dumps(tasks, indent=2, sort_keys=True) + "\n")
    with open(tmp / "quarantine.csv", "w", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, fieldnames=["id", "path", "action", "reason"]).writeheader()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # a whole folder: clapkit.atomic_files writes files only (as clapkit.data.prepare does)
    return {"dir": str(out), "clips": len(rows), "splits": {s: splits.count(s) for s in ("train", "val", "test")},
            "sample_rate": sample_rate, "clip_seconds": clip_seconds,
            "hours": round(offset / sample_rate / 3600, 3), "bytes": offset * 2, "tasks": sorted(tasks),
            "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--clips", type=int, default=3456)
    p.add_argument("--val", type=int, default=128)
    p.add_argument("--test", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="paper", help="frontend.<preset> of --params")
    p.add_argument("--params", default=str(REPO / "params.yaml"))
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)
    from clapkit.config import frontend_config, load_params

    params = load_params(args.params)
    params["preset"] = args.preset
    summary = write_corpus(args.out, args.clips, frontend_config(params).to_dict(), args.val, args.test, args.seed,
                           args.workers)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
