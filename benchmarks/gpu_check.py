"""The GPU check of issue item 8 ("training that works at the paper's scale"): one run, one JSON.

    bash benchmarks/gpu.sh [OUT.json]                 # one H100/H200, under 8 minutes (what gpu.sh runs)
    bash benchmarks/gpu.sh /tmp/smoke.json --cpu-smoke  # the same phases on a CPU, tiny, ~3 minutes

Phases, in order (each a subprocess with a time cap; a global deadline cuts whatever does not fit, and the JSON
says what was cut):

1. ``corpus``: a synthetic labelled corpus in the prepare stage's layout at the preset's rate
   (``benchmarks/synth_corpus.py``; 44.1 kHz at ``preset: paper``): nothing to carry.
2. ``pretrain``: ``clapkit.cli pretrain`` at ``preset: paper`` (HTSAT + a GPT-2-base-sized prefix LM), 50 steps,
   cuda, bf16, ``torch.compile``.
3. ``train_a``: ``clapkit.cli train``, 100 steps from the pretrained encoder (HTSAT + GPT-2 base), the same
   settings: the uninterrupted run.
4. ``train_b``: the same run in another checkpoint folder, killed with SIGKILL (its whole process group) as soon
   as its first checkpoint file appears; ``train_c``: ``--resume latest`` on that folder, to step 100.  The JSON
   compares C's final weights, metrics and loss curve with A's (max abs differences; bf16 + compile on a GPU need
   not be bit-exact, and the figures say how far apart they are).
5. ``cosine``: the trained model's audio and text embeddings of the same test clips and captions in fp32 (TF32
   off), bf16 autocast and bf16 weights: cosines to fp32 and zero-shot agreement.
6. ``bench``: ``benchmarks/run.py`` (clapkit beside msclap's own modules, alternated batch by batch) for the audio
   tower, text tower and training step, capped to the time left.

Stages run through ``gpu_check.py stage`` (in-process ``clapkit.cli.main``) so that their peak GPU memory
(``torch.cuda.max_memory_allocated``) and the time between consecutive ``train_step`` calls are recorded beside
what the stages write themselves (timings, metrics, loss curves).  The params are ``params.yaml`` with
``preset``, paths under a scratch folder and the profile's knobs; a knob the stage's config does not know (the
``device`` / ``compile`` / ``precision`` of a branch that predates them) is left out and listed in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
CARRY = REPO / ".cache" / "gpu_carry"
_CKPT = re.compile(r"^step_(\d{8,})\.pt$")
_RESUMED = re.compile(r"resum\w* from .*?(?:at )?step (\d+)", re.IGNORECASE)

# --------------------------------------------------------------------------------------------- profiles

PROFILES: dict[str, dict[str, Any]] = {
    "gpu": {
        "preset": "paper",
        "budget_s": 470,  # gpu.sh's hard stop is 480 s: 8 minutes on one H100
        "corpus": {"clips": 3456, "val": 128, "test": 128},  # 3200 train clips: 25 steps of 128 per epoch
        "pretrain": {
            "steps": 50, "batch_size": 64, "warmup_steps": 5, "log_every": 5, "checkpoint_every": 50,
            "tasks_per_clip": 2, "lm": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 128},
            "eval_clips_per_task": 16, "eval_batch_size": 64, "examples_per_task": 2, "threads": 0,
            "device": "cuda", "compile": True, "precision": "bf16",
        },
        "train": {
            "max_steps": 100, "batch_size": 128, "warmup_steps": 10, "log_every": 5, "num_workers": 8, "threads": 0,
            "val_max_clips": 128, "val_batch_size": 128, "keep_checkpoints": 2,
            "device": "cuda", "compile": True, "precision": "bf16",
        },
        "kill_checkpoint_every": 10,  # run B checkpoints every 10 steps and is killed after its first checkpoint
        "caps": {"corpus": 60, "pretrain": 150, "train_a": 210, "train_b": 120, "train_c": 170, "cosine": 60,
                 "bench": 150},
        "min_s": {"pretrain": 60, "train_a": 90, "train_b": 40, "train_c": 60, "cosine": 20, "bench": 45},
        "cosine_clips": 128,
        "bench_args": ["--device", "cuda", "--sections", "models,train", "--precisions", "bf16-autocast",
                       "--iters", "8", "--train-iters", "4"],
        # with this much time left, the towers are also compared with bf16 weights under torch.compile (both
        # systems: four compilations), the stronger msclap baseline
        "bench_full_if_s": 260,
        "bench_full_args": ["--precisions", "bf16-autocast,bf16-weights"],
    },
    "cpu-smoke": {
        "preset": "embedded",
        "budget_s": 300,
        "corpus": {"clips": 160, "val": 16, "test": 16},  # 128 train clips: 8 steps of 16 per epoch
        "pretrain": {
            "steps": 4, "batch_size": 8, "warmup_steps": 1, "log_every": 2, "checkpoint_every": 4,
            "eval_clips_per_task": 4, "eval_batch_size": 16, "examples_per_task": 1, "threads": 1,
            "device": "cpu", "compile": False, "precision": "fp32",
        },
        "train": {
            "max_steps": 12, "batch_size": 16, "warmup_steps": 2, "log_every": 2, "num_workers": 0, "threads": 1,
            "val_max_clips": 16, "val_batch_size": 16, "keep_checkpoints": 2,
            "device": "cpu", "compile": False, "precision": "fp32",
        },
        "kill_checkpoint_every": 3,
        "caps": {"corpus": 30, "pretrain": 90, "train_a": 90, "train_b": 60, "train_c": 90, "cosine": 60,
                 "bench": 120},
        "min_s": {"pretrain": 20, "train_a": 20, "train_b": 15, "train_c": 15, "cosine": 10, "bench": 30},
        "cosine_clips": 16,
        "bench_args": ["--device", "cpu", "--quick", "--sections", "models,train", "--threads", "1"],
        "bench_full_if_s": 10**6,
        "bench_full_args": [],
    },
}
PHASES = ("corpus", "pretrain", "train_a", "train_b", "train_c", "cosine", "bench")


# --------------------------------------------------------------------------------------------- small helpers


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json(path: Path, data: dict) -> None:
    """Atomically (``clapkit.atomic_files``; imported here: ``main`` puts the repository on ``sys.path``)."""
    from clapkit import atomic_files

    atomic_files.write_json(path, data, indent=2, sort_keys=False, default=str)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_tsv(path: Path) -> list[tuple[int, float]]:
    """(step, value) rows of a dvclive metric file (header ``step<TAB>name``); [] when absent."""
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    if not lines:
        return rows
    header = lines[0].split("\t")
    step_col = header.index("step") if "step" in header else 0
    for line in lines[1:]:
        cells = line.split("\t")
        try:
            rows.append((int(float(cells[step_col])), float(cells[-1])))
        except (ValueError, IndexError):
            continue
    return rows


def json_lines(text: str) -> list[dict]:
    """The lines of ``text`` that are JSON objects (what the msclap reference scripts print), parsed."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def checkpoints_in(directory: Path) -> list[int]:
    """Steps of the complete checkpoints anywhere under ``directory``: ``step_N.pt`` with its sidecar
    ``step_N.json`` beside it (``clapkit.training_state`` writes the sidecar last, in the run's ``run-<hash>/``
    folder; a ``.pt`` without one is incomplete and would not be resumed)."""
    steps = []
    try:
        for path in Path(directory).rglob("step_*.pt"):
            match = _CKPT.match(path.name)
            if match and path.with_suffix(".json").is_file():
                steps.append(int(match.group(1)))
    except OSError:
        return []
    return sorted(steps)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def source_fingerprint() -> str:
    """sha256 of clapkit's and the benchmarks' Python sources: identifies the code where git is absent."""
    h = hashlib.sha256()
    for path in sorted([*REPO.glob("clapkit/**/*.py"), *BENCH.glob("*.py"), REPO / "params.yaml"]):
        h.update(str(path.relative_to(REPO)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str | None:
    if os.environ.get("CLAPKIT_COMMIT"):
        return os.environ["CLAPKIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def dvclive_origin() -> str:
    """Which dvclive the stages will import: the installed one, or gpu.sh's stand-in (benchmarks/offline)."""
    import importlib.util

    spec = importlib.util.find_spec("dvclive")
    if spec is None or not spec.origin:
        return "missing"
    return "stand-in (benchmarks/offline/dvclive)" if (BENCH / "offline") in Path(spec.origin).parents else "installed"


def nvidia_smi() -> dict | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    cells = [c.strip() for c in out.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(("name", "driver", "memory_total", "sm_clock_max"), cells))


def step_stats(entries: list[float], batch: int, warm: int = 3) -> dict | None:
    """Step period from the times at which consecutive ``train_step`` calls began.

    The first interval holds compilation (and the first batch); the median of the rest is the steady step time,
    robust to the epoch-end intervals that hold validation and a checkpoint.  ``mean_s_without_outliers`` drops
    intervals over 3x the median (listed by count and total seconds)."""
    if len(entries) < 2:
        return None
    gaps = [b - a for a, b in zip(entries, entries[1:])]
    steady = gaps[warm:] if len(gaps) > warm + 2 else gaps[1:] or gaps
    med = statistics.median(steady)
    inliers = [g for g in steady if g <= 3 * med]
    outliers = [g for g in steady if g > 3 * med]
    return {
        "steps_timed": len(entries), "first_interval_s": round(gaps[0], 3), "warm_intervals_skipped": len(gaps) - len(steady),
        "median_step_s": round(med, 4), "mean_step_s_without_outliers": round(statistics.mean(inliers), 4),
        "outlier_intervals": len(outliers), "outlier_s_total": round(sum(outliers), 2),
        "clips_per_s_median": round(batch / med, 1) if med > 0 else None,
    }


# --------------------------------------------------------------------------------------------- params


def config_fields() -> dict[str, set[str]]:
    """The keys each stage's config accepts (params.yaml blocks are strict: an unknown key is an error)."""
    from clapkit.pretrain import PretrainConfig
    from clapkit.train import TrainConfig

    return {"pretrain": {f.name for f in dataclasses.fields(PretrainConfig)},
            "train": {f.name for f in dataclasses.fields(TrainConfig)}}


def build_params(base: dict, preset: str, blocks: dict[str, dict], fields: dict[str, set[str]]) -> tuple[dict, dict]:
    """``base`` (params.yaml) with ``preset`` and each block's keys set; keys a config does not accept are left
    out and returned as ``{block: [keys]}``."""
    params = copy.deepcopy(base)
    params["preset"] = preset
    dropped: dict[str, list[str]] = {}
    for block, values in blocks.items():
        target = dict(params.get(block) or {})
        for key, value in values.items():
            if key in fields.get(block, set()):
                target[key] = value
            else:
                dropped.setdefault(block, []).append(key)
                target.pop(key, None)
        params[block] = target
    return params, dropped


def write_yaml(path: Path, params: dict) -> None:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------------------------- subprocesses


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


_RUNNING: set[int] = set()  # process groups of the phases running now (killed if the driver is stopped)


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_capped(cmd: list[str], log: Path, cap: float, env: dict | None = None, watch=None) -> dict:
    """Run ``cmd`` in its own process group, output to ``log``, killed (SIGKILL to the group) after ``cap``
    seconds.  ``watch(elapsed)``, called every 0.1 s, returns a reason to kill the run now (else None)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ.copy(),
                                start_new_session=True)
        _RUNNING.add(proc.pid)
        killed_for = None
        try:
            while proc.poll() is None:
                elapsed = time.perf_counter() - start
                reason = "time cap" if elapsed > cap else (watch(elapsed) if watch else None)
                if reason:
                    killed_for = reason
                    kill_group(proc.pid)  # the run's own group: the stage, its loader and compile workers
                    proc.wait()
                    break
                time.sleep(0.1)
            # whatever the stage left behind in its group (compile workers, loader workers) goes with it
            kill_group(proc.pid)
        finally:
            _RUNNING.discard(proc.pid)
    wall = time.perf_counter() - start
    result = {"rc": proc.returncode, "wall_s": round(wall, 1), "cap_s": round(cap, 1)}
    if killed_for:
        result["killed"] = killed_for
        result["status"] = "timeout" if killed_for == "time cap" else "killed"
    else:
        result["status"] = "ok" if proc.returncode == 0 else "failed"
    return result


# --------------------------------------------------------------------------------------------- `stage`: in-process


def cmd_stage(args) -> int:
    """Run one clapkit stage in this process; write its step times and peak GPU memory to ``--report``."""
    import importlib

    import torch

    entries: list[float] = []
    wrapped = []
    module = importlib.import_module(f"clapkit.{args.stage}")
    original = getattr(module, "train_step", None)
    if callable(original):
        def timed_step(*a, **k):
            entries.append(time.perf_counter())
            return original(*a, **k)

        module.train_step = timed_step
        wrapped.append(f"clapkit.{args.stage}.train_step")
    from clapkit.cli import main as cli_main

    argv = [args.stage, "--params", str(args.params)]
    if args.resume:
        argv += ["--resume", args.resume]
    if args.no_progress:
        argv.append("--no-progress")
    report: dict[str, Any] = {"argv": argv, "step_timer": wrapped or "no train_step to time in this version",
                              "started_utc": now_utc(), "torch": torch.__version__}
    start = time.perf_counter()
    rc = 1
    try:
        rc = int(cli_main(argv) or 0)
    except SystemExit as err:
        rc = err.code if isinstance(err.code, int) else 1
        report["error"] = f"SystemExit: {err.code}"
    except BaseException as err:  # noqa: BLE001 (recorded, then the exit code says it failed)
        report["error"] = f"{type(err).__name__}: {err}"[:2000]
        report["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
    report["wall_s"] = round(time.perf_counter() - start, 2)
    report["rc"] = rc
    report["step_entries_s"] = [round(t - start, 4) for t in entries]
    report["cuda"] = cuda_info(torch)
    report["peak_rss_gib"] = peak_rss_gib()
    write_json(Path(args.report), report)
    return rc


def peak_rss_gib() -> float | None:
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux
    except (ImportError, OSError):
        return None


def cuda_info(torch) -> dict | None:
    if not torch.cuda.is_available():
        return None
    info = {"device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
            "cuda": torch.version.cuda, "initialised": torch.cuda.is_initialized()}
    if torch.cuda.is_initialized():
        gib = 2.0**30
        info["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / gib, 3)
        info["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / gib, 3)
        info["total_gib"] = round(torch.cuda.get_device_properties(0).total_memory / gib, 1)
    return info


# --------------------------------------------------------------------------------------------- `cosine`


def cmd_cosine(args) -> int:
    """bf16 against fp32 embeddings of the trained model, same test clips and captions."""
    import torch
    import torch.nn.functional as F

    from clapkit.api import CLAP
    from clapkit.audio import fit_length
    from clapkit.data.captions import TASK_TEMPLATES
    from clapkit.data.prepare import PreparedCorpus

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 is the reference: no TF32 in it
    torch.backends.cudnn.allow_tf32 = False
    clap = CLAP.from_pretrained(args.model, device="cpu")
    model = clap.model.to(device).eval()
    corpus = PreparedCorpus(args.corpus)
    rows = (corpus.split("test") or list(range(len(corpus))))[: args.clips]
    waves = torch.stack([fit_length(torch.from_numpy(corpus.waveform(i)), clap.clip_samples, crop="center")
                         for i in rows])
    captions = [corpus.rows[i]["captions"][0] for i in rows]
    task = "tone" if "tone" in corpus.tasks else min(corpus.tasks)
    classes = list(corpus.tasks[task]["classes"])
    prompts = [TASK_TEMPLATES.get(task, ["{}"])[0].format(c) for c in classes]
    truth = torch.tensor([classes.index(corpus.rows[i]["labels"][task]) for i in rows])
    tokens = clap.tokenizer(captions + prompts)
    batch = args.batch

    def embed(m, ctx):
        audio, text = [], []
        with torch.no_grad():
            for s in range(0, len(waves), batch):
                with ctx():
                    audio.append(m.encode_audio(waves[s : s + batch].to(device)).float().cpu())
            ids, mask = tokens["input_ids"], tokens["attention_mask"]
            for s in range(0, len(ids), batch):
                with ctx():
                    text.append(m.encode_text(ids[s : s + batch].to(device), mask[s : s + batch].to(device)).float().cpu())
        return F.normalize(torch.cat(audio), dim=-1), F.normalize(torch.cat(text), dim=-1)

    def off():
        return torch.autocast(device.type, enabled=False)

    def bf16():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    report: dict[str, Any] = {"model": str(args.model), "clips": len(rows), "captions": len(captions),
                              "zero_shot_task": task, "classes": len(classes), "device": str(device)}
    t0 = time.perf_counter()
    variants = {"fp32": embed(model, off), "bf16-autocast": embed(model, bf16)}
    variants["bf16-weights"] = embed(model.to(torch.bfloat16), off)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    ref_a, ref_t = variants["fp32"]
    n_cap = len(captions)

    def zero_shot(a, t):
        return (a @ t[n_cap:].T).argmax(dim=-1)

    ref_pred = zero_shot(ref_a, ref_t)
    for name, (a, t) in variants.items():
        pred = zero_shot(a, t)
        entry = {"zero_shot_accuracy": round(float((pred == truth).float().mean()), 4),
                 "chance": round(1.0 / len(classes), 4)}
        if name != "fp32":
            ca, ct = (a * ref_a).sum(-1), (t * ref_t).sum(-1)
            entry.update({
                "audio_cosine_to_fp32": {"min": round(float(ca.min()), 6), "mean": round(float(ca.mean()), 6)},
                "text_cosine_to_fp32": {"min": round(float(ct.min()), 6), "mean": round(float(ct.mean()), 6)},
                "zero_shot_top1_agreement_with_fp32": round(float((pred == ref_pred).float().mean()), 4),
            })
        report[name] = entry
    report["cuda"] = cuda_info(torch)
    write_json(Path(args.report), report)
    print(json.dumps({k: report[k] for k in ("bf16-autocast", "bf16-weights")}, indent=1))
    return 0


# --------------------------------------------------------------------------------------------- comparisons


def compare_weights(a_dir: Path, c_dir: Path) -> dict:
    """Max abs difference of every tensor of two ``save_pretrained`` folders (``model.safetensors``)."""
    from safetensors.torch import load_file

    a = load_file(str(Path(a_dir) / "model.safetensors"))
    c = load_file(str(Path(c_dir) / "model.safetensors"))
    if set(a) != set(c):
        return {"error": f"different tensor names: {sorted(set(a) ^ set(c))[:5]}"}
    worst, worst_name, identical, scale = 0.0, None, 0, 0.0
    for name in sorted(a):
        x, y = a[name].float(), c[name].float()
        if x.shape != y.shape:
            return {"error": f"{name}: shapes {tuple(x.shape)} and {tuple(y.shape)}"}
        if x.numel() == 0:
            identical += 1
            continue
        diff = float((x - y).abs().max())
        if torch_equal(a[name], c[name]):
            identical += 1
        if diff > worst:
            worst, worst_name = diff, name
            scale = float(x.abs().max())
    return {"tensors": len(a), "tensors_bit_identical": identical, "bit_identical": identical == len(a),
            "max_abs_diff": worst, "max_abs_diff_tensor": worst_name,
            "max_abs_diff_relative_to_tensor_max": (worst / scale) if scale else None}


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


def compare_curves(a: list[tuple[int, float]], c: list[tuple[int, float]]) -> dict:
    da, dc = dict(a), dict(c)
    common = sorted(set(da) & set(dc))
    if not common:
        return {"common_steps": 0}
    diffs = [abs(da[s] - dc[s]) for s in common]
    return {"common_steps": len(common), "steps_only_in_a": len(set(da) - set(dc)),
            "steps_only_in_c": len(set(dc) - set(da)), "max_abs_diff": max(diffs),
            "identical": all(d == 0 for d in diffs), "a_last": da[common[-1]], "c_last": dc[common[-1]]}


# --------------------------------------------------------------------------------------------- the run


class Check:
    """The orchestration: paths, deadline, results (written after every phase)."""

    def __init__(self, args):
        self.args = args
        self.mode = "cpu-smoke" if args.cpu_smoke else "gpu"
        self.profile = copy.deepcopy(PROFILES[self.mode])
        self.budget = float(args.budget or self.profile["budget_s"])
        self.t0 = time.perf_counter()
        self.out = Path(args.out).resolve()
        self.scratch = Path(args.scratch or (Path(os.environ.get("TMPDIR", "/tmp")) / f"clapkit-gpu-check-{self.mode}")).resolve()
        self.skip = {p.strip() for p in (args.skip or "").split(",") if p.strip()}
        if args.only:
            self.skip |= set(PHASES) - {p.strip() for p in args.only.split(",")}
        self.results: dict[str, Any] = {
            "what": "clapkit GPU check (issue item 8): pretrain + train at preset paper, bf16 + torch.compile, "
                    "kill -9 and resume, bf16-vs-fp32 embeddings, peak memory, throughput beside msclap",
            "mode": self.mode, "complete": False, "started_utc": now_utc(),
            "command": os.environ.get("GPU_CHECK_COMMAND") or " ".join([Path(sys.executable).name] + sys.argv),
            "budget_s": self.budget, "phases": {}, "cut": [],
        }

    # --- bookkeeping
    def remaining(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def save(self) -> None:
        self.results["wall_s"] = round(time.perf_counter() - self.t0, 1)
        write_json(self.out, self.results)

    def cap_for(self, phase: str) -> float | None:
        """The phase's time cap, or None (recorded as cut) when it is skipped or too little time is left."""
        cap = float(self.profile["caps"].get(phase, 0))
        if phase in self.skip:
            self.cut(phase, "skipped (--skip)")
            return None
        if cap <= 0:
            self.cut(phase, "not in this profile")
            return None
        left = self.remaining()
        need = float(self.profile["min_s"].get(phase, 0))
        if left < need:
            self.cut(phase, f"{left:.0f} s left of the {self.budget:.0f} s budget, the phase needs at least {need:.0f} s")
            return None
        return min(cap, left)

    def cut(self, phase: str, why: str) -> None:
        self.results["phases"][phase] = {"status": "cut", "why": why}
        self.results["cut"].append(f"{phase}: {why}")
        print(f"[gpu-check] {phase}: cut ({why})", flush=True)
        self.save()

    def record(self, phase: str, result: dict, log: Path | None = None) -> None:
        if log is not None:
            result["log"] = str(log.relative_to(self.scratch)) if log.is_relative_to(self.scratch) else str(log)
            if result.get("status") not in ("ok", "killed"):
                result["log_tail"] = tail(log, 30)
        if result.get("status") == "timeout":
            self.results["cut"].append(f"{phase}: stopped at its {result.get('cap_s')} s cap")
        self.results["phases"][phase] = result
        print(f"[gpu-check] {phase}: {result.get('status')} in {result.get('wall_s')} s "
              f"(left {self.remaining():.0f} s)", flush=True)
        self.write_log_bundle()
        self.save()

    def path(self, *parts: str) -> Path:
        return self.scratch.joinpath(*parts)

    # --- phases
    def run(self) -> int:
        import yaml

        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(parents=True)

        def stop(signum, _frame):  # gpu.sh's hard stop (timeout) or Ctrl-C: end the phase, keep what was measured
            for pid in list(_RUNNING):
                kill_group(pid)
            self.results["stopped_by_signal"] = signal.Signals(signum).name
            self.results["cut"].append(f"the run was stopped by {signal.Signals(signum).name} after "
                                       f"{time.perf_counter() - self.t0:.0f} s")
            self.save()
            self.write_log_bundle()
            os._exit(124)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.results["machine"] = {
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "nvidia_smi": nvidia_smi(), "clapkit_commit": git_commit(), "source_sha256_16": source_fingerprint(),
            "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"),
            "dvclive": dvclive_origin(),
        }
        try:
            import torch

            self.results["machine"]["torch"] = torch.__version__
            self.results["machine"]["torch_cuda"] = torch.version.cuda
        except ImportError:
            pass
        base = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        fields = config_fields()
        prof = self.profile
        preset = prof["preset"]
        self.env = os.environ.copy()
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.env.setdefault("PYTHONUNBUFFERED", "1")

        # paths
        P = self.path
        corpus = P("corpus")
        pre = {"prepared": str(corpus), "out": str(P("pretrain", "out")), "metrics": str(P("pretrain", "metrics.json")),
               "loss_log": str(P("pretrain", "loss.csv")), "checkpoint_dir": str(P("pretrain", "checkpoints")),
               "timings": str(P("pretrain", "timings.json")), **prof["pretrain"]}

        def train_block(run: str, checkpoint_every: int, ckpt_run: str | None = None) -> dict:
            ckpt_run = ckpt_run or run
            return {"prepared": str(corpus), "out": str(P(run, "out")), "checkpoint_dir": str(P(ckpt_run, "checkpoints")),
                    "metrics": str(P(run, "metrics.json")), "live_dir": str(P(ckpt_run, "live")),
                    "timings": str(P(run, "timings.json")), "pretrain_dir": str(P("pretrain", "out")),
                    "audio_init": "pretrain", "checkpoint_every": checkpoint_every, **prof["train"]}

        never = 10**6  # A and C checkpoint only at epoch ends and the end (each file of the paper model is ~2 GB)
        blocks = {"pretrain": pre, "train_a": train_block("train_a", never),
                  "train_b": train_block("train_b", prof["kill_checkpoint_every"], "train_bc"),
                  "train_c": train_block("train_c", never, "train_bc")}
        dropped: dict[str, list[str]] = {}
        params_files = {}
        for name, block in blocks.items():
            key = "pretrain" if name == "pretrain" else "train"
            params, drop = build_params(base, preset, {key: block}, fields)
            params["seed"] = 0
            for k, v in drop.items():
                dropped[k] = sorted(set(dropped.get(k, [])) | set(v))
            params_files[name] = P("params", f"{name}.yaml")
            write_yaml(params_files[name], params)
        self.params_files = params_files
        self.results["settings"] = {
            "preset": preset, "model": (base.get("model") or {}).get(preset), "corpus": prof["corpus"],
            "pretrain": prof["pretrain"], "train": prof["train"],
            "train_checkpoint_every": {"a": "epoch ends and the end only", "b": prof["kill_checkpoint_every"],
                                       "c": "epoch ends and the end only"},
            "knobs_not_in_this_version": dropped,
            "scratch": str(self.scratch),
        }
        if dropped:
            print(f"[gpu-check] knobs this version's configs do not have (left out): {dropped}", flush=True)
        self.save()

        self.phase_corpus(preset, base)
        pretrained = self.phase_pretrain(dropped)
        if not pretrained:  # train from a random audio encoder rather than not at all
            for name in ("train_a", "train_b", "train_c"):
                params = yaml.safe_load(params_files[name].read_text(encoding="utf-8"))
                params["train"]["audio_init"] = "none"
                write_yaml(params_files[name], params)
            self.results["settings"]["train_audio_init"] = "none (no pretrained encoder from this run)"
        a_ok = self.phase_train_a()
        if a_ok:
            self.phase_kill_resume()
        else:
            self.cut("train_b", "run A did not finish: nothing to compare a resumed run with")
            self.cut("train_c", "run A did not finish")
        if a_ok:
            self.phase_cosine()
        else:
            self.cut("cosine", "no trained model (run A did not finish)")
        self.phase_bench()
        self.summarise()
        self.results["complete"] = True
        self.results["finished_utc"] = now_utc()
        self.write_log_bundle()
        self.save()
        self.print_summary()
        if not self.args.keep_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return 0

    def phase_corpus(self, preset: str, base: dict) -> None:
        cap = self.cap_for("corpus")
        if cap is None:
            return
        from clapkit.config import frontend_config

        params = copy.deepcopy(base)
        params["preset"] = preset
        frontend = frontend_config(params).to_dict()
        c = self.profile["corpus"]
        log = self.path("logs", "corpus.log")
        cmd = python_cmd(str(BENCH / "synth_corpus.py"), str(self.path("corpus")), "--clips", str(c["clips"]),
                         "--val", str(c["val"]), "--test", str(c["test"]), "--preset", preset)
        result = run_capped(cmd, log, cap, self.env)
        if result["status"] == "ok":
            lines = [ln for ln in tail(log, 5).splitlines() if ln.startswith("{")]
            if lines:
                result["summary"] = json.loads(lines[-1])
            result["frontend"] = frontend
        self.record("corpus", result, log)

    def stage(self, phase: str, stage: str, resume: str | None, cap: float, watch=None,
              progress: bool = True) -> tuple[dict, Path]:
        report = self.path("reports", f"{phase}.json")
        log = self.path("logs", f"{phase}.log")
        cmd = python_cmd(str(BENCH / "gpu_check.py"), "stage", stage, "--params", str(self.params_files[phase]),
                         "--report", str(report))
        if resume:
            cmd += ["--resume", resume]
        if not progress:
            cmd.append("--no-progress")
        result = run_capped(cmd, log, cap, self.env, watch)
        result["stage_report"] = read_json(report)
        return result, log

    def phase_pretrain(self, dropped: dict) -> bool:
        if self.mode == "gpu" and "device" in dropped.get("pretrain", []):
            self.cut("pretrain", "this version's pretrain stage has no `device` knob: it would run on the CPU")
            return False
        cap = self.cap_for("pretrain")
        if cap is None:
            return False
        result, log = self.stage("pretrain", "pretrain", None, cap, progress=False)
        rep = result.pop("stage_report") or {}
        prof = self.profile["pretrain"]
        out: dict[str, Any] = {"steps": prof["steps"], "batch_size": prof["batch_size"]}
        metrics = read_json(self.path("pretrain", "metrics.json")) or {}
        out["final_loss"] = metrics.get("final_loss")
        out["mean_accuracy"] = metrics.get("mean_accuracy")
        out["mean_chance"] = metrics.get("mean_chance")
        out["num_tasks"] = metrics.get("num_tasks")
        losses = self.pretrain_losses()
        if losses:
            out["loss_first_logged"], out["loss_last_logged"] = losses[0], losses[-1]
        out["stage_timings"] = read_json(self.path("pretrain", "timings.json"))
        out["step_times"] = step_stats([t for t in rep.get("step_entries_s", [])], prof["batch_size"])
        out["gpu"] = rep.get("cuda")
        out["peak_rss_gib"] = rep.get("peak_rss_gib")
        out["stage_wall_s"] = rep.get("wall_s")
        if rep.get("error"):
            out["error"] = rep["error"]
        result["result"] = out
        self.record("pretrain", result, log)
        return result["status"] == "ok" and self.path("pretrain", "out", "audio_encoder.safetensors").is_file()

    def pretrain_losses(self) -> list[float]:
        try:
            lines = self.path("pretrain", "loss.csv").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        out = []
        for line in lines[1:]:
            cells = line.split(",")
            try:
                out.append(float(cells[1]))
            except (ValueError, IndexError):
                pass
        return out

    def train_summary(self, run: str, rep: dict, live_run: str | None = None) -> dict:
        prof = self.profile["train"]
        metrics = read_json(self.path(run, "metrics.json")) or {}
        loss = read_tsv(self.path(live_run or run, "live", "plots", "metrics", "train", "loss.tsv"))
        rate = read_tsv(self.path(live_run or run, "live", "plots", "metrics", "train", "clips_per_s.tsv"))
        out = {
            "steps": metrics.get("step"), "epochs": metrics.get("epochs"),
            "final_train_loss": loss[-1][1] if loss else None, "first_train_loss": loss[0][1] if loss else None,
            "val_loss": metrics.get("val_loss"), "val_mean_accuracy": metrics.get("val_mean_accuracy"),
            "val_zeroshot": {k: round(v.get("accuracy", 0.0), 4) for k, v in (metrics.get("val_zeroshot") or {}).items()},
            "temperature": metrics.get("temperature"),
            "stage_timings": read_json(self.path(run, "timings.json")),
            "step_times": step_stats(rep.get("step_entries_s", []), prof["batch_size"]),
            "logged_clips_per_s": {"median_after_first_window": round(statistics.median([v for _, v in rate[1:]]), 1)
                                   if len(rate) > 1 else None, "windows": len(rate)},
            "gpu": rep.get("cuda"), "peak_rss_gib": rep.get("peak_rss_gib"), "stage_wall_s": rep.get("wall_s"),
        }
        if rep.get("error"):
            out["error"] = rep["error"]
        return out

    def phase_train_a(self) -> bool:
        cap = self.cap_for("train_a")
        if cap is None:
            return False
        result, log = self.stage("train_a", "train", "none", cap)
        rep = result.pop("stage_report") or {}
        result["result"] = self.train_summary("train_a", rep)
        self.record("train_a", result, log)
        return result["status"] == "ok" and self.path("train_a", "out", "model.safetensors").is_file()

    def phase_kill_resume(self) -> None:
        cap = self.cap_for("train_b")
        if cap is None:
            self.cut("train_c", "run B was cut")
            return
        ckpt_dir = self.path("train_bc", "checkpoints")
        max_steps = self.profile["train"]["max_steps"]
        seen: dict[str, Any] = {}

        def watch(elapsed: float):
            steps = checkpoints_in(ckpt_dir)
            if steps:
                seen.update(first_checkpoint_step=steps[0], checkpoints_at_kill=steps, seen_after_s=round(elapsed, 2))
                return "SIGKILL after its first checkpoint"
            return None

        result, log = self.stage("train_b", "train", "none", cap, watch=watch)
        result.pop("stage_report", None)
        result["kill"] = seen or {"note": "no checkpoint appeared before the run ended or hit its cap"}
        steps_logged = re.findall(r"step (\d+)/\d+", tail(log, 200))
        result["last_step_printed"] = int(steps_logged[-1]) if steps_logged else None
        if result["status"] == "ok":
            result["note"] = "run B finished before its first checkpoint was seen: nothing was killed"
        self.record("train_b", result, log)

        cap = self.cap_for("train_c")
        if cap is None:
            return
        result, log = self.stage("train_c", "train", "latest", cap)
        rep = result.pop("stage_report") or {}
        summary = self.train_summary("train_c", rep, live_run="train_bc")
        found = _RESUMED.findall(tail(log, 400))
        summary["resumed_from_step"] = int(found[0]) if found else None
        timings = summary.get("stage_timings") or {}
        if summary["resumed_from_step"] is None and isinstance(timings, dict):
            summary["resumed_from_step"] = timings.get("resumed_from_step") or None
        result["result"] = summary
        self.record("train_c", result, log)
        if result["status"] != "ok":
            return
        comparison: dict[str, Any] = {
            "killed_run": {k: v for k, v in self.results["phases"]["train_b"].items() if k in ("kill", "last_step_printed", "status")},
            "resumed_from_step": summary["resumed_from_step"], "max_steps": max_steps,
        }
        try:
            comparison["final_weights"] = compare_weights(self.path("train_a", "out"), self.path("train_c", "out"))
        except Exception as err:  # noqa: BLE001
            comparison["final_weights"] = {"error": f"{type(err).__name__}: {err}"}
        comparison["train_loss_curve"] = compare_curves(
            read_tsv(self.path("train_a", "live", "plots", "metrics", "train", "loss.tsv")),
            read_tsv(self.path("train_bc", "live", "plots", "metrics", "train", "loss.tsv")))
        ma, mc = read_json(self.path("train_a", "metrics.json")) or {}, read_json(self.path("train_c", "metrics.json")) or {}
        for key in ("val_loss", "val_mean_accuracy", "temperature"):
            if isinstance(ma.get(key), (int, float)) and isinstance(mc.get(key), (int, float)):
                comparison[f"{key}_abs_diff"] = abs(ma[key] - mc[key])
        comparison["metrics_identical"] = {k: v for k, v in ma.items() if k != "init"} == \
                                          {k: v for k, v in mc.items() if k != "init"}
        self.results["resume"] = comparison
        self.save()

    def phase_cosine(self) -> None:
        cap = self.cap_for("cosine")
        if cap is None:
            return
        report = self.path("reports", "cosine.json")
        log = self.path("logs", "cosine.log")
        device = self.profile["train"].get("device", "cpu")
        cmd = python_cmd(str(BENCH / "gpu_check.py"), "cosine", "--model", str(self.path("train_a", "out")),
                         "--corpus", str(self.path("corpus")), "--device", device, "--clips",
                         str(self.profile["cosine_clips"]), "--report", str(report))
        result = run_capped(cmd, log, cap, self.env)
        result["result"] = read_json(report)
        self.record("cosine", result, log)

    def phase_bench(self) -> None:
        cap = self.cap_for("bench")
        if cap is None:
            return
        bench_json = self.path("bench.json")
        log = self.path("logs", "bench.log")
        args = list(self.profile["bench_args"])
        full = cap >= self.profile["bench_full_if_s"]
        if full:
            args += self.profile["bench_full_args"]
        captions = CARRY / "captions"
        if (captions / "manifest.jsonl").is_file():
            args += ["--prepared", str(captions)]
        if self.args.bench_args:
            args += self.args.bench_args.split()
        cmd = python_cmd(str(BENCH / "run.py"), "--out", str(bench_json), *args)
        result = run_capped(cmd, log, cap, self.env)
        result["compiled_bf16_weights_included"] = bool(full and self.profile["bench_full_args"])
        if not result["compiled_bf16_weights_included"] and self.mode == "gpu":
            self.results["cut"].append(f"bench: bf16 weights + torch.compile not measured (needs about "
                                       f"{self.profile['bench_full_if_s']} s, {cap:.0f} s were left)")
        result["result"] = read_json(bench_json)  # run.py writes after every section: a cut run keeps what it had
        self.record("bench", result, log)

    # --- the end
    def summarise(self) -> None:
        """The handful of figures a reader wants first, copied from the phases."""
        ph = self.results["phases"]
        s: dict[str, Any] = {}
        gpu = None
        for name in ("pretrain", "train_a", "train_c"):
            res = (ph.get(name) or {}).get("result") or {}
            g = res.get("gpu") or {}
            gpu = gpu or g.get("device")
            s[f"{name}_peak_gpu_allocated_gib"] = g.get("peak_allocated_gib")
            st = res.get("step_times") or {}
            s[f"{name}_median_step_s"] = st.get("median_step_s")
            s[f"{name}_clips_per_s"] = st.get("clips_per_s_median")
            s[f"{name}_first_step_interval_s"] = st.get("first_interval_s")
        s["gpu"] = gpu
        pre = (ph.get("pretrain") or {}).get("result") or {}
        s["pretrain_final_loss"] = pre.get("final_loss")
        a = (ph.get("train_a") or {}).get("result") or {}
        s["train_final_loss"] = a.get("final_train_loss")
        s["train_val_loss"] = a.get("val_loss")
        resume = self.results.get("resume") or {}
        fw = resume.get("final_weights") or {}
        s["resume_bit_identical"] = fw.get("bit_identical")
        s["resume_max_abs_weight_diff"] = fw.get("max_abs_diff")
        s["resume_loss_curve_max_abs_diff"] = (resume.get("train_loss_curve") or {}).get("max_abs_diff")
        cos = (ph.get("cosine") or {}).get("result") or {}
        for prec in ("bf16-autocast", "bf16-weights"):
            e = cos.get(prec) or {}
            s[f"{prec}_audio_cosine_min"] = (e.get("audio_cosine_to_fp32") or {}).get("min")
            s[f"{prec}_text_cosine_min"] = (e.get("text_cosine_to_fp32") or {}).get("min")
        bench = (ph.get("bench") or {}).get("result") or {}
        for tower in ("audio", "text"):
            for prec, e in (bench.get("models", {}).get(tower) or {}).items():
                if isinstance(e, dict) and "clapkit_per_s" in e:
                    s[f"bench_{tower}_{prec}"] = {"clapkit_per_s": e["clapkit_per_s"], "msclap_per_s": e["msclap_per_s"],
                                                  "ratio": e["ratio_clapkit_over_msclap"]}
        for prec, e in (bench.get("train") or {}).items():
            if isinstance(e, dict) and "clapkit_pairs_per_s" in e:
                s[f"bench_train_step_{prec}"] = {"clapkit_pairs_per_s": e["clapkit_pairs_per_s"],
                                                 "msclap_pairs_per_s": e["msclap_pairs_per_s"],
                                                 "ratio": e["ratio_clapkit_over_msclap"]}
        self.results["summary"] = s

    def write_log_bundle(self) -> None:
        """Every phase's log (its last 400 lines) in one file beside the JSON: ``<out stem>.log``."""
        bundle = self.out.with_suffix(".log")
        parts = []
        for phase in PHASES:
            log = self.path("logs", f"{phase}.log")
            if log.is_file():
                parts.append(f"===== {phase} ({log}) =====\n{tail(log, 400)}\n")
        from clapkit.atomic_files import write_text

        write_text(bundle, "".join(parts))
        self.results["log_bundle"] = bundle.name

    def print_summary(self) -> None:
        print("\n[gpu-check] phases:", flush=True)
        for phase in PHASES:
            r = self.results["phases"].get(phase) or {}
            print(f"  {phase:9s} {r.get('status', '-'):8s} {r.get('wall_s', ''):>7} s  {r.get('why', '')}")
        print("[gpu-check] summary:")
        for k, v in (self.results.get("summary") or {}).items():
            print(f"  {k}: {v}")
        print(f"[gpu-check] wrote {self.out} in {self.results['wall_s']} s", flush=True)


# --------------------------------------------------------------------------------------------- entry point


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="every phase, one JSON")
    r.add_argument("--out", default=str(BENCH / "results-gpu.json"))
    r.add_argument("--cpu-smoke", action="store_true", help="the same phases on a CPU, tiny model and budgets")
    r.add_argument("--budget", type=float, help="seconds for the whole run (default: the profile's)")
    r.add_argument("--scratch", help="scratch folder (default: $TMPDIR/clapkit-gpu-check-<mode>, emptied first)")
    r.add_argument("--keep-scratch", action="store_true", help="leave the scratch folder (models, checkpoints, logs)")
    r.add_argument("--skip", help=f"comma-separated phases to leave out: {','.join(PHASES)}")
    r.add_argument("--only", help="comma-separated phases to run, the others skipped (e.g. cosine,bench)")
    r.add_argument("--bench-args", help="extra benchmarks/run.py arguments (one string)")
    s = sub.add_parser("stage", help="(internal) one clapkit stage in-process, with step times and peak memory")
    s.add_argument("stage", choices=("pretrain", "train"))
    s.add_argument("--params", required=True)
    s.add_argument("--report", required=True)
    s.add_argument("--resume")
    s.add_argument("--no-progress", action="store_true")
    c = sub.add_parser("cosine", help="(internal) bf16 vs fp32 embeddings of a trained model")
    c.add_argument("--model", required=True)
    c.add_argument("--corpus", required=True)
    c.add_argument("--device", default="cuda")
    c.add_argument("--clips", type=int, default=128)
    c.add_argument("--batch", type=int, default=64)
    c.add_argument("--report", required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if args.command == "stage":
        return cmd_stage(args)
    if args.command == "cosine":
        return cmd_cosine(args)
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
