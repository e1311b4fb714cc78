"""Time `make repro` on a fresh clone, stage by stage, and check that it leaves `git status` clean.

    python benchmarks/repro_timing.py --clone /tmp/clapkit-fresh --out benchmarks/repro-timing.json

Clones this repository's HEAD into ``--clone`` (which must not exist), then, in the clone, times ``make setup``
(venv from uv's cache), ``make data`` (the corpus from the Debian cache in ``data.cache_dir``; the downloads
themselves are not timed) and each DVC stage on its own (``dvc repro --single-item <stage>`` in pipeline order;
``dvc repro`` in a fresh clone runs every stage, as ``make repro`` does).  The feature caches the stages keep under
``~/.cache/clapkit`` (frozen text towers' caption features, the aisfx tower's clip features, the aisfx teacher's
embeddings) would make a rerun look faster than a first run, so they are moved aside for the run and put back after
(``--keep-feature-caches`` times a warm rerun instead).  Writes one JSON: seconds per step, the total after set-up,
the machine's load before and after, and ``git status --porcelain`` after the run (it must be empty: a rerun with
the same inputs writes the same bytes).  Run it with nothing else on the machine: the figure is wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("prepare", "pretrain", "pretrain_report", "train", "evaluate")
FEATURE_CACHES = ("text-features", "audio-features", "aisfx")


def timed(cmd: str, cwd: Path, log) -> float:
    t0 = time.perf_counter()
    log.write(f"\n$ {cmd}\n")
    log.flush()
    subprocess.run(["bash", "-c", cmd], cwd=cwd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return round(time.perf_counter() - t0, 1)


def home_as_tilde(value):
    """``value`` with every string path under the home folder written ``~/...`` (the stages' timings name their
    feature caches by absolute path; the record says which cache, not whose home)."""
    if isinstance(value, dict):
        return {k: home_as_tilde(v) for k, v in value.items()}
    if isinstance(value, list):
        return [home_as_tilde(v) for v in value]
    home = str(Path.home()) + "/"
    return "~/" + value[len(home):] if isinstance(value, str) and value.startswith(home) else value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clone", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--keep-feature-caches", action="store_true")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parent.parent
    if args.clone.exists():
        sys.exit(f"{args.clone} exists: give a new directory")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(repo), str(args.clone)], check=True)
    cache_root = Path("~/.cache/clapkit").expanduser()
    moved = []
    if not args.keep_feature_caches:
        stamp = time.strftime("%Y%m%d%H%M%S")
        for name in FEATURE_CACHES:
            if (cache_root / name).exists():
                aside = cache_root / f"{name}.aside-{stamp}"
                os.rename(cache_root / name, aside)
                moved.append((cache_root / name, aside))
    seconds: dict[str, float] = {}
    load_before = os.getloadavg()
    log_path = args.out.with_suffix(".log")  # beside the JSON: a file in the clone would dirty its git status
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "w") as log:
            seconds["make setup"] = timed("make setup", args.clone, log)
            seconds["make data"] = timed("make data", args.clone, log)
            for stage in STAGES:
                seconds[f"dvc repro {stage}"] = timed(
                    f"source .venv/bin/activate && dvc repro --single-item {stage}", args.clone, log)
            seconds["dvc status"] = timed("source .venv/bin/activate && dvc status", args.clone, log)
    finally:
        for home, aside in moved:  # the run's own caches are dropped; the earlier ones come back
            if home.exists():
                shutil.rmtree(home)
            os.rename(aside, home)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=args.clone, capture_output=True, text=True,
                            check=True).stdout.splitlines()
    after_setup = round(sum(v for k, v in seconds.items() if k != "make setup"), 1)
    timings = {}
    for name in ("prepare", "pretrain", "train", "evaluate"):
        path = args.clone / "reports" / "timings" / f"{name}.json"
        if path.exists():
            timings[name] = json.loads(path.read_text())
    out = {"commit": commit, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "load_average_before": [round(x, 2) for x in load_before],
                       "load_average_after": [round(x, 2) for x in os.getloadavg()]},
           "feature_caches": "kept (warm rerun)" if args.keep_feature_caches else "moved aside (first run)",
           "seconds": seconds, "make_repro_after_setup_s": after_setup,
           "make_repro_after_setup_min": round(after_setup / 60, 1), "stage_timings": timings,
           "git_status_after": status, "git_status_clean": not status}
    from clapkit.atomic_files import write_json  # the venv's clapkit (installed editable)

    write_json(args.out, home_as_tilde(out), indent=1)
    print(json.dumps({k: out[k] for k in ("seconds", "make_repro_after_setup_min", "git_status_clean")}, indent=1))
    return 0 if not status else 1


if __name__ == "__main__":
    raise SystemExit(main())
