"""clapkit against msclap, side by side: one command, one run, the same inputs, one JSON of every figure.

    python benchmarks/run.py --out benchmarks/results-cpu.json            # this CPU (docs/benchmarks.md)
    python benchmarks/run.py --out /tmp/smoke.json --quick                # code path only, seconds
    python benchmarks/run.py --out OUT.json --device cuda                 # one GPU, ~5-6 minutes (benchmarks/README.md)

What is measured (see benchmarks/README.md):

(a) models: the 2023 architecture (HTSAT + GPT-2 base + 1024-d projections), inputs already in memory.
    msclap 1.3.4's own ``CLAP`` modules built with random weights, saved as an official-style container and loaded
    into clapkit with ``clapkit.msclap_weights.load_msclap``, so both compute the same function.  Audio embeddings/s
    (7 s clips at 44.1 kHz) and text embeddings/s on real captions (clapkit: padded to each batch's longest caption;
    msclap: padded to 77 tokens, as its wrapper does), per precision (fp32, bf16 autocast, bf16 weights with
    optional ``torch.compile`` of both systems), with the cosine of each clapkit embedding to msclap's fp32 one.
(b) files: end-to-end audio embeddings from files on disk (decode, mix down, resample to 44.1 kHz, 7 s crop/pad,
    frontend, model): msclap's ``CLAPWrapper.get_audio_embeddings`` code, run as is with only ``torchaudio.load``
    swapped for soundfile (torchaudio 2.11 decodes through torchcodec, which is not installed here), against
    ``clapkit.CLAP.get_audio_embeddings``; plus clapkit decoding in DataLoader workers.
(c) train: one contrastive training step (forward, symmetric cross-entropy, backward, Adam) at the paper's
    architecture: a plain loop (``ref_step`` below) around msclap's modules against
    ``clapkit.train.train_step`` with clapkit's fused Adam; same batch, same inputs; pairs/s and peak memory.
(d) loader: the training data loader (``clapkit.data.loader``) over a prepared corpus: clips/s and per worker.
(e) pipeline: the per-stage wall times that ``dvc repro`` of the embedded pipeline wrote to
    ``reports/timings/*.json``, read (never re-run) and stored with their provenance.

The two systems run alternately, batch by batch (step by step), so that load from other processes on a shared
machine hits both alike; throughput comes from the median batch time.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import hashlib
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def shown(path: str | Path) -> str:
    """A path as the results record it: relative to the repository when inside it, else with ``~`` for the home
    folder (the JSON says what was read, not where this checkout lives)."""
    path = Path(path).absolute()
    if path.is_relative_to(REPO):
        return str(path.relative_to(REPO))
    home = Path.home()
    return str("~" / path.relative_to(home)) if path.is_relative_to(home) else str(path)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clapkit import atomic_files  # noqa: E402
from clapkit.msclap_weights import load_msclap  # noqa: E402
from clapkit.models.clap import load_model_config  # noqa: E402
from clapkit.text import TextTokenizer  # noqa: E402

warnings.filterwarnings("ignore", message="torch.meshgrid")  # raised inside msclap's HTSAT

MSCLAP_TEXT_LENGTH = 77  # msclap's wrapper pads every caption to 77 GPT-2 tokens with id 0 ("!")
PRECISIONS = ("fp32", "bf16-autocast", "bf16-weights")
SECTIONS = ("models", "files", "train", "loader", "pipeline")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
SAMPLE_CAPTIONS = [
    "a dog barks twice in the distance",
    "rain falls on a tin roof while thunder rumbles",
    "a man speaks over the noise of a passing car",
    "birds chirp in the morning",
    "a door creaks open slowly and then slams shut",
    "glass breaks",
    "an engine idles, then accelerates away down a wet street",
    "someone types quickly on a mechanical keyboard",
]


# ------------------------------------------------------------------------------------- machine and timing


def cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_info(device: torch.device) -> dict:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "load_average_at_start": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "clapkit_commit": commit,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def precision_context(device: torch.device, precision: str):
    """bf16 autocast for ``bf16-autocast``; nothing for fp32 and bf16 weights (the weights carry the dtype)."""
    if precision == "bf16-autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def cosines(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1)
    return {"min": round(c.min().item(), 6), "mean": round(c.mean().item(), 6)}


def rate_summary(ref_t: list[float], ours_t: list[float], items_per_batch: int) -> dict:
    ref_rate = items_per_batch / statistics.median(ref_t)
    ours_rate = items_per_batch / statistics.median(ours_t)
    return {
        "msclap_per_s": round(ref_rate, 2),
        "clapkit_per_s": round(ours_rate, 2),
        "ratio_clapkit_over_msclap": round(ours_rate / ref_rate, 3),
        "batches_timed": len(ref_t),
        "msclap_batch_s": [round(t, 4) for t in ref_t],
        "clapkit_batch_s": [round(t, 4) for t in ours_t],
    }


def compiled(module, args):
    """``torch.compile`` of ``module`` as ``--compile-backend`` says; ``eager`` runs Dynamo's graph capture with no
    code generation (how the CPU smoke test exercises this path in seconds); ``none`` = no compile."""
    if args.compile_backend == "none":
        return module
    return torch.compile(module, backend=args.compile_backend, mode=args.compile_mode)


# ------------------------------------------------------------------------------------- the two systems


def build_systems(args, device: torch.device):
    """msclap's own CLAP with random weights (the reference) and the same weights loaded into clapkit."""
    from _msclap_reference import build_reference_2023, save_as_official

    t0 = time.perf_counter()
    reference = build_reference_2023(seed=args.seed, text_layers=args.text_layers)
    config = load_model_config("msclap-2023")
    config["text_encoder"] = {**config["text_encoder"], "n_layer": args.text_layers}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "CLAP_weights_2023_random.pth"
        save_as_official(reference, path)
        ours, report = load_msclap(path, "2023", config=config)
    reference.to(device).eval()
    ours.to(device).eval()
    tokenizer = TextTokenizer.from_spec(config["tokenizer"])
    info = {
        "model": "msclap-2023 architecture, random weights"
        + ("" if args.text_layers == 12 else f", GPT-2 cut to {args.text_layers} layers (--quick)"),
        "setup_s": round(time.perf_counter() - t0, 1),
        "load_msclap_tensors_loaded": report.loaded,
    }
    return reference, ours, tokenizer, info


# ------------------------------------------------------------------------------------- inputs


def load_captions(prepared: Path, n: int, seed: int) -> tuple[list[str], str]:
    """``n`` real captions drawn (seeded) from the prepared manifest, else the fixed sample captions."""
    manifest = prepared / "manifest.jsonl"
    if manifest.is_file():
        captions = []
        for line in open(manifest, encoding="utf-8"):
            captions.extend(json.loads(line).get("captions") or [])
        if captions:
            rng = random.Random(seed)
            if len(captions) >= n:
                return rng.sample(captions, n), shown(manifest)
            return [rng.choice(captions) for _ in range(n)], shown(manifest)
    reps = -(-n // len(SAMPLE_CAPTIONS))
    return (SAMPLE_CAPTIONS * reps)[:n], "fixed sample captions (no prepared manifest)"


def sort_by_tokens(tokenizer: TextTokenizer, captions: list[str]) -> list[str]:
    """Captions in order of token count (stable): batches of similar lengths, so dynamic padding pads little.
    Real captions are short with rare long ones (prepared/: median 8 GPT-2 tokens, 99th percentile 20, a few at
    the 77 cap), so a large batch drawn at random almost always holds one 77-token caption."""
    lengths = [len(ids) for ids in tokenizer.encode_batch(captions)]
    return [c for _, c in sorted(zip(lengths, captions), key=lambda lc: lc[0])]


def text_batches(tokenizer: TextTokenizer, captions: list[str], batch: int, device: torch.device) -> list[dict]:
    """Per batch, the same token ids twice: clapkit's (padded to the batch's longest, pad id = its own, real mask)
    and msclap's (padded to 77 with id 0, mask = real tokens, as its wrapper tokenises)."""
    out = []
    for start in range(0, len(captions) - batch + 1, batch):
        chunk = captions[start : start + batch]
        dyn = {k: v.to(device) for k, v in tokenizer(chunk).items()}
        ids = tokenizer.encode_batch(chunk)
        fixed = torch.zeros(len(ids), MSCLAP_TEXT_LENGTH, dtype=torch.long)
        mask = torch.zeros_like(fixed)
        for row, seq in enumerate(ids):
            fixed[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        out.append({"clapkit": dyn, "msclap": {"input_ids": fixed.to(device), "attention_mask": mask.to(device)}})
    return out


# ------------------------------------------------------------------------------------- (a) model throughput


def side_by_side(run_reference, run_clapkit, batches: list, items_per_batch: int, warmup: int, device) -> dict:
    """Warm both on the first ``warmup`` batches (compilation happens there: timed apart), then time the rest
    alternately, reference / clapkit batch by batch; returns items/s (median batch time) and both systems'
    embeddings of the timed batches."""
    warm_ref = warm_ours = 0.0
    for b in batches[:warmup]:
        warm_ref += timed(lambda: run_reference(b), device)[0]
        warm_ours += timed(lambda: run_clapkit(b), device)[0]
    ref_t, ours_t, ref_out, ours_out = [], [], [], []
    for b in batches[warmup:]:
        t, e = timed(lambda: run_reference(b), device)
        ref_t.append(t)
        ref_out.append(e.float().cpu())
        t, e = timed(lambda: run_clapkit(b), device)
        ours_t.append(t)
        ours_out.append(e.float().cpu())
    stats = rate_summary(ref_t, ours_t, items_per_batch)
    stats["warmup_s"] = {"msclap": round(warm_ref, 2), "clapkit": round(warm_ours, 2)}
    return stats, torch.cat(ref_out), torch.cat(ours_out)


def tower_functions(reference, ours, precision: str, device: torch.device, args):
    """(msclap audio, clapkit audio, msclap text, clapkit text) callables for one precision.

    ``bf16-weights``: both models cast to bf16 (msclap's takes bf16 waveforms; clapkit's frontend computes in
    float32 whatever the weights), each tower under
    ``torch.compile`` as ``--compile-backend`` says, for both systems alike."""
    ctx = lambda: precision_context(device, precision)  # noqa: E731
    if precision == "bf16-weights":  # the models are cast by the caller (bf16_weights), here only compiled
        ref_a, ref_t = compiled(reference.audio_encoder, args), compiled(reference.caption_encoder, args)
        our_a, our_t = compiled(ours.audio, args), compiled(ours.text, args)
        audio_in = torch.bfloat16
    else:
        ref_a, ref_t, our_a, our_t = reference.audio_encoder, reference.caption_encoder, ours.audio, ours.text
        audio_in = torch.float32

    def ref_audio(x):
        with torch.no_grad(), ctx():
            return ref_a(x.to(audio_in))[0]

    def our_audio(x):
        with torch.no_grad(), ctx():
            return our_a(x)

    def ref_text(b):
        with torch.no_grad(), ctx():
            return ref_t(b["msclap"])

    def our_text(b):
        with torch.no_grad(), ctx():
            return our_t(b["clapkit"]["input_ids"], b["clapkit"]["attention_mask"])

    return ref_audio, our_audio, ref_text, our_text


@contextlib.contextmanager
def bf16_weights(*models):
    """Cast ``models`` to bf16 in place for the block, then restore their exact float32 weights (msclap's model
    holds a module object and cannot be deep-copied; a round trip through bf16 would lose the low mantissa bits)."""
    def tensors(m):  # parameters and every buffer, persistent or not (clapkit's STFT window is not)
        return {**dict(m.named_parameters()), **dict(m.named_buffers())}

    saved = [{k: v.detach().clone() for k, v in tensors(m).items()} for m in models]
    try:
        for m in models:
            m.to(torch.bfloat16)
        yield
    finally:
        for m, state in zip(models, saved):
            for name, t in tensors(m).items():
                t.data = state[name]  # the original tensor, dtype included


def bench_models(args, device: torch.device, reference, ours, tokenizer) -> dict:
    g = torch.Generator().manual_seed(args.seed)
    samples = ours.frontend_config.clip_samples
    n_audio = args.audio_batch * (args.iters + args.warmup)
    waves = 0.1 * torch.randn(n_audio, samples, generator=g)
    audio_batches = [waves[i : i + args.audio_batch].to(device) for i in range(0, n_audio, args.audio_batch)]
    captions, caption_source = load_captions(args.prepared, args.text_batch * (args.iters + args.warmup), args.seed)
    if args.sort_captions:  # as a job embedding a whole caption set would batch them (msclap pads to 77 anyway)
        captions = sort_by_tokens(tokenizer, captions)
    tbatches = text_batches(tokenizer, captions, args.text_batch, device)

    result = {
        "audio": {"clip_seconds": samples / ours.frontend_config.sample_rate,
                  "sample_rate": ours.frontend_config.sample_rate, "batch": args.audio_batch},
        "text": {"batch": args.text_batch, "captions": caption_source, "sorted_by_length": args.sort_captions,
                 "msclap_tokens_per_caption": MSCLAP_TEXT_LENGTH,
                 "clapkit_mean_padded_tokens": round(statistics.mean(b["clapkit"]["input_ids"].shape[1]
                                                                     for b in tbatches), 1)},
    }
    fp32 = {}
    for precision in args.precisions:
        with bf16_weights(reference, ours) if precision == "bf16-weights" else contextlib.nullcontext():
            bench_precision(args, device, reference, ours, precision, audio_batches, tbatches, result, fp32)
    return result


def bench_precision(args, device, reference, ours, precision, audio_batches, tbatches, result, fp32) -> None:
    """Both towers at one precision, into ``result[tower][precision]``; ``fp32`` keeps msclap's fp32 embeddings."""
    ref_audio, our_audio, ref_text, our_text = tower_functions(reference, ours, precision, device, args)
    for tower, ref_fn, our_fn, batches, per in (("audio", ref_audio, our_audio, audio_batches, args.audio_batch),
                                                 ("text", ref_text, our_text, tbatches, args.text_batch)):
        if args.quick and precision != "fp32" and device.type == "cpu" and not cpu_has_native_bf16():
            # emulated bf16 costs 5-15 s per tower and system here (GPT-2's addmm alone: 1.2 s per call)
            result[tower][precision] = {"skipped": "--quick on a CPU without native bf16"}
            continue
        try:
            # bf16 without native support (a CPU like this one) is emulated and slow: fewer timed batches there
            n = args.warmup + (args.iters if precision == "fp32" else args.bf16_iters)
            stats, ref_emb, our_emb = side_by_side(ref_fn, our_fn, batches[:n], per, args.warmup, device)
        except RuntimeError as err:  # e.g. an op without a bf16 kernel on this device
            result[tower][precision] = {"error": f"{type(err).__name__}: {err}"[:300]}
            continue
        if precision == "fp32":
            fp32[tower] = ref_emb
        if precision == "bf16-weights":
            stats["compile_backend"] = args.compile_backend
        if tower in fp32:  # every precision times a prefix of the same batches: row i is the same input
            reference_fp32 = fp32[tower][: len(our_emb)]
            stats["cosine_clapkit_vs_msclap_fp32"] = cosines(our_emb, reference_fp32)
            if precision != "fp32":
                stats["cosine_msclap_self_vs_msclap_fp32"] = cosines(ref_emb, reference_fp32)
        else:
            stats["cosine_clapkit_vs_msclap_same_precision"] = cosines(our_emb, ref_emb)
        result[tower][precision] = stats
        cos = stats.get("cosine_clapkit_vs_msclap_fp32") or stats["cosine_clapkit_vs_msclap_same_precision"]
        print(f"[bench] {tower} {precision}: msclap {stats['msclap_per_s']}/s, clapkit {stats['clapkit_per_s']}/s "
              f"(x{stats['ratio_clapkit_over_msclap']}), cosine min {cos['min']}", flush=True)
    del ref_audio, our_audio, ref_text, our_text


# ------------------------------------------------------------------------------------- (b) files on disk


def pick_audio_files(root: Path, n: int, clip_seconds: float, seed: int) -> list[dict]:
    """``n`` real files under ``root``, seeded, mixing sample rates (at most a third of them at any one rate).

    Only mono files no longer than the clip: for those, msclap's path and clapkit's define the same clip
    (msclap concatenates the channels of a stereo file instead of averaging them, and crops a long file at a
    random offset instead of the centre), so the cosine measures the implementation, not a design choice."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    random.Random(seed).shuffle(files)
    cap = max(1, -(-n // 3))
    per_rate: dict[int, int] = {}
    chosen = []
    for path in files:
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError):
            continue
        if info.channels != 1 or info.frames == 0 or info.duration > clip_seconds:
            continue
        if per_rate.get(info.samplerate, 0) >= cap:
            continue
        per_rate[info.samplerate] = per_rate.get(info.samplerate, 0) + 1
        chosen.append({"path": str(path), "sample_rate": info.samplerate, "seconds": round(info.duration, 3)})
        if len(chosen) == n:
            break
    return chosen


def msclap_wrapper(reference, device: torch.device):
    """msclap's ``CLAPWrapper`` around ``reference``, without its __init__ (which downloads weights from the hub):
    only the attributes its audio path reads are set.  ``torchaudio.load`` in its module is replaced by a
    soundfile reader returning what torchaudio returns (float32, channels first, the file's rate); the rest of
    its code (resampler, reshape(-1), repeat-pad / random crop, collate, encoder) runs unchanged."""
    import msclap.CLAPWrapper as wrapper_module

    def soundfile_load(path):
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), sr

    wrapper_module.torchaudio = types.SimpleNamespace(load=soundfile_load)
    wrapper = wrapper_module.CLAPWrapper.__new__(wrapper_module.CLAPWrapper)
    wrapper.np_str_obj_array_pattern = re.compile(r"[SaUO]")
    wrapper.default_collate_err_msg_format = "default_collate: batch must contain tensors; found {}"
    wrapper.args = argparse.Namespace(sampling_rate=44100, duration=7)
    wrapper.use_cuda = device.type == "cuda"
    wrapper.clap = reference
    return wrapper


def bench_files(args, device: torch.device, reference, ours, tokenizer) -> dict:
    from clapkit.api import CLAP
    from clapkit.audio import load_clip

    frontend = ours.frontend_config
    files = pick_audio_files(args.audio_dir, args.files, frontend.clip_seconds, args.seed)
    if len(files) < args.files_batch:
        return {"skipped": f"fewer than {args.files_batch} usable audio files under {args.audio_dir}"}
    paths = [f["path"] for f in files]
    wrapper = msclap_wrapper(reference, device)
    clap = CLAP(ours, tokenizer, device=device)

    def run_msclap(chunk):
        random.seed(args.seed)  # msclap crops long files with Python's global RNG (not reached: files <= 7 s)
        return wrapper.get_audio_embeddings(chunk, resample=True)

    def run_clapkit(chunk):
        return clap.get_audio_embeddings(chunk, batch_size=len(chunk), normalize=False)

    batches = [paths[i : i + args.files_batch] for i in range(0, len(paths) - args.files_batch + 1, args.files_batch)]
    warmup = min(1, len(batches) - 1)  # the first batch warms both (one-off set-up), unless it is the only one
    stats, ref_emb, our_emb = side_by_side(run_msclap, run_clapkit, batches, args.files_batch, warmup, device)
    stats["cosine_clapkit_vs_msclap"] = cosines(our_emb, ref_emb)
    rates = sorted({f["sample_rate"] for f in files})
    out = {"files": len(files), "batch": args.files_batch, "sample_rates": rates,
           "mean_seconds": round(statistics.mean(f["seconds"] for f in files), 2), "root": shown(args.audio_dir),
           "msclap_decoder": "soundfile (torchaudio.load swapped: torchcodec is not installed)",
           "clapkit_path": "clapkit.CLAP.get_audio_embeddings (read_audio, mix_down, resample, fit_length, model)",
           **stats}
    print(f"[bench] files: msclap {stats['msclap_per_s']} clips/s, clapkit {stats['clapkit_per_s']} clips/s "
          f"(x{stats['ratio_clapkit_over_msclap']}), cosine min {stats['cosine_clapkit_vs_msclap']['min']}", flush=True)

    if args.files_workers > 0:  # the same files, decoded in DataLoader workers while the model runs (not alternated)
        class Clips(torch.utils.data.Dataset):
            def __len__(self):
                return len(paths)

            def __getitem__(self, i):
                return load_clip(paths[i], frontend, crop="center")

        loader = torch.utils.data.DataLoader(Clips(), batch_size=args.files_batch, num_workers=args.files_workers,
                                             pin_memory=device.type == "cuda")
        start, embs = time.perf_counter(), []
        with torch.no_grad():
            for waves in loader:
                embs.append(ours.encode_audio(waves.to(device, non_blocking=True)).float().cpu())
        sync(device)
        elapsed = time.perf_counter() - start
        emb = torch.cat(embs)
        out["clapkit_decode_workers"] = {
            "workers": args.files_workers, "clips": len(paths), "clips_per_s": round(len(paths) / elapsed, 2),
            "note": "one pass over all files incl. worker start-up, run after the alternated comparison",
            # the alternated comparison timed (and kept the embeddings of) the files after its warm-up batch
            "cosine_vs_clapkit_api": cosines(emb[warmup * args.files_batch :][: len(our_emb)], our_emb),
        }
        print(f"[bench] files, clapkit with {args.files_workers} decode workers: "
              f"{out['clapkit_decode_workers']['clips_per_s']} clips/s", flush=True)
    return out


# ------------------------------------------------------------------------------------- (c) training step


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in open("/proc/self/status", encoding="utf-8"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one block beyond what was in use when it started.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensor memory).  CPU: the
    process's peak resident set (VmHWM) after resetting it to the current RSS (``/proc/self/clear_refs`` = 5),
    with glibc's free heap returned to the OS first (``malloc_trim``) so that reused heap pages do not hide new
    allocations.  Both systems run in this one process: only deltas per block are comparable."""

    def __init__(self, device: torch.device):
        self.device, self.libc = device, _libc()
        cuda = "torch.cuda.max_memory_allocated - memory_allocated before the step"
        cpu = "peak RSS (VmHWM, reset via /proc/self/clear_refs) - RSS before the step, after malloc_trim"
        self.method = cuda if device.type == "cuda" else cpu

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            if self.libc is not None:
                self.libc.malloc_trim(0)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.before = (_proc_status_kib("VmRSS") or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_delta = torch.cuda.max_memory_allocated(self.device) - self.before
        else:
            self.peak_delta = (_proc_status_kib("VmHWM") or 0) * 1024 - self.before
        return False


def tensor_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters + gradients + optimiser state: what stays resident between training steps."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v))
    return total


def bench_train(args, device: torch.device, reference, ours) -> dict:
    """Warning: trains both models in place (run after every section that needs the loaded weights)."""
    from clapkit.losses import ClipLoss
    from clapkit.train import train_step
    from clapkit.training import Precision

    b = args.train_batch
    g = torch.Generator().manual_seed(args.seed + 1)
    x = (0.1 * torch.randn(b, ours.frontend_config.clip_samples, generator=g)).to(device)
    ids = torch.randint(1, 50256, (b, MSCLAP_TEXT_LENGTH), generator=g).to(device)  # msclap_trainstep.py's inputs
    tok = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch = {"wave": x, **tok}
    labels = torch.arange(b, device=device)
    reference.train()
    ours.train()
    if args.quick:  # code path only: the encoders stay frozen (no backward through HTSAT / GPT-2), both alike
        for encoder in (reference.audio_encoder.base, reference.caption_encoder.base,
                        ours.audio.encoder, ours.text.encoder):
            encoder.requires_grad_(False)
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    ref_opt = torch.optim.Adam(trainable(reference), lr=1e-4)  # the plain loop's optimiser
    our_opt = torch.optim.Adam(trainable(ours), lr=1e-4, fused=True)  # the same Adam, fused as clapkit.train's
    loss_fn = ClipLoss()
    out = {"batch": b, "inputs": "random 7 s waveforms, random 77-token ids, full masks (msclap_trainstep.py)",
           "trained": "projections only, encoders frozen (--quick)" if args.quick else "the whole model",
           "optimiser": "Adam lr 1e-4; msclap: torch default implementation, clapkit: fused=True (as clapkit.train)",
           "memory_method": PeakMemory(device).method}
    for precision in args.train_precisions:
        dtype = torch.bfloat16 if precision == "bf16-autocast" else None
        our_precision = Precision("bf16" if dtype is not None else "fp32", device)

        def ref_step():  # msclap's forward, the symmetric cross-entropy of its paper, backward, Adam
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
                t, a, s = reference(x, tok)
                logits = s * F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).T
                loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            ref_opt.zero_grad(set_to_none=True)
            loss.backward()
            ref_opt.step()

        def our_step():
            train_step(ours, batch, loss_fn, 1, our_precision)
            our_opt.step()
            our_opt.zero_grad(set_to_none=True)

        try:
            for _ in range(args.train_warmup):
                ref_step()
                our_step()
            ref_t, our_t, ref_mem, our_mem = [], [], [], []
            for _ in range(args.train_iters):
                with PeakMemory(device) as m:
                    ref_t.append(timed(ref_step, device)[0])
                ref_mem.append(m.peak_delta)
                with PeakMemory(device) as m:
                    our_t.append(timed(our_step, device)[0])
                our_mem.append(m.peak_delta)
        except RuntimeError as err:
            out[precision] = {"error": f"{type(err).__name__}: {err}"[:300]}
            continue
        stats = rate_summary(ref_t, our_t, b)
        stats = {("msclap_pairs_per_s" if k == "msclap_per_s" else "clapkit_pairs_per_s" if k == "clapkit_per_s"
                  else k.replace("batch_s", "step_s")): v for k, v in stats.items()}
        gib = 2.0**30
        stats["peak_step_delta_gib"] = {"msclap": round(max(ref_mem) / gib, 3), "clapkit": round(max(our_mem) / gib, 3)}
        stats["resident_params_grads_optimiser_gib"] = {"msclap": round(tensor_bytes(reference, ref_opt) / gib, 3),
                                                       "clapkit": round(tensor_bytes(ours, our_opt) / gib, 3)}
        out[precision] = stats
        print(f"[bench] train {precision}: msclap {stats['msclap_pairs_per_s']} pairs/s, clapkit "
              f"{stats['clapkit_pairs_per_s']} pairs/s (x{stats['ratio_clapkit_over_msclap']}), step peak "
              f"{stats['peak_step_delta_gib']} GiB", flush=True)
    reference.eval()
    ours.eval()
    return out


# ------------------------------------------------------------------------------------- (d) data loader


def bench_loader(args, tokenizer: TextTokenizer | None = None) -> dict:
    from clapkit.data.loader import ClipCaptionDataset, EpochBatches, make_loader
    from clapkit.data.prepare import PreparedCorpus

    prepared = args.prepared
    if not (prepared / "arrays.json").is_file():
        return {"skipped": f"no prepared corpus at {prepared} (run the prepare stage)"}
    corpus = PreparedCorpus(prepared)
    meta = json.loads((prepared / "arrays.json").read_text())
    front = meta["frontend"]
    clip_samples = int(round(front["clip_seconds"] * front["sample_rate"]))
    indices = corpus.split("train") or list(range(len(corpus)))
    dataset = ClipCaptionDataset(corpus, indices, clip_samples, train=True, seed=args.seed)
    tokenizer = tokenizer or TextTokenizer.from_spec({"kind": "gpt2", "max_length": 77})
    out = {"corpus": shown(prepared), "clips": len(indices), "clip_seconds": front["clip_seconds"],
           "sample_rate": front["sample_rate"], "batch": args.loader_batch, "runs": []}
    for workers in args.loader_workers:
        batches = EpochBatches(len(dataset), args.loader_batch, seed=args.seed, epoch=0)
        loader = make_loader(dataset, batches, tokenizer, num_workers=workers)
        start = time.perf_counter()
        it = iter(loader)
        next(it)  # worker start-up and the first batch: reported apart
        first = time.perf_counter() - start
        start, n = time.perf_counter(), 0
        for _ in range(args.loader_batches):
            try:
                n += next(it)["wave"].shape[0]
            except StopIteration:
                break
        elapsed = time.perf_counter() - start
        del it
        rate = n / elapsed if elapsed > 0 else float("nan")
        run = {"workers": workers, "clips": n, "first_batch_s": round(first, 3), "clips_per_s": round(rate, 1),
               "clips_per_s_per_worker": round(rate / max(workers, 1), 1)}
        out["runs"].append(run)
        print(f"[bench] loader workers={workers}: {run['clips_per_s']} clips/s", flush=True)
    return out


# ------------------------------------------------------------------------------------- (e) dvc repro per stage


def pipeline_timings(timings_dir: Path, dvc_lock: Path) -> dict:
    """The stages' own timing files, as written by the last ``dvc repro`` (not re-run here), with provenance:
    file, modification time, sha256, and the stage's command as recorded in dvc.lock."""
    import yaml

    stages = {}
    if dvc_lock.is_file():
        stages = (yaml.safe_load(dvc_lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    out = {"source": shown(timings_dir), "dvc_lock": shown(dvc_lock) if dvc_lock.is_file() else None,
           "note": "written by the pipeline stages during `dvc repro` (reports/timings is git-ignored: these are the "
                   "last local run's figures); read here, never re-run by the benchmark",
           "stages": {}}
    for path in sorted(timings_dir.glob("*.json")) if timings_dir.is_dir() else []:
        raw = path.read_bytes()
        try:
            figures = json.loads(raw)
        except json.JSONDecodeError as err:
            out["stages"][path.stem] = {"error": f"{path}: not valid JSON ({err})"}
            continue
        mtime = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
        out["stages"][path.stem] = {
            "figures": figures,
            "file": shown(path), "modified_utc": mtime.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "dvc_lock_cmd": (stages.get(path.stem) or {}).get("cmd"),
        }
    out["stages_without_timings"] = sorted(set(stages) - set(out["stages"]))
    return out


# ------------------------------------------------------------------------------------- entry point


def write_json(path: Path, results: dict) -> None:
    atomic_files.write_json(path, results, indent=2)


def resolve_precisions(spec: str, device: torch.device) -> list[str]:
    """``auto``: on a GPU fp32, bf16 autocast and bf16 weights; on a CPU fp32, plus bf16 autocast only where
    the CPU has native bf16 (AVX512-BF16 / AMX): emulated bf16 is many times slower than fp32."""
    if spec == "auto":
        if device.type == "cuda":
            return list(PRECISIONS)
        return ["fp32", "bf16-autocast"] if cpu_has_native_bf16() else ["fp32"]
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        name = {"bf16": "bf16-autocast"}.get(name, name)
        if name not in PRECISIONS:
            raise SystemExit(f"--precisions: unknown precision {name!r} (known: auto, {', '.join(PRECISIONS)}, bf16)")
        out.append(name)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="JSON file to write (atomically)")
    p.add_argument("--quick", action="store_true",
                   help="tiny inputs, 1 batch each, GPT-2 cut to 2 layers: proves the code path")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--precisions", default="auto",
                   help="auto (GPU: fp32,bf16-autocast,bf16-weights; CPU: fp32, + bf16-autocast with native bf16) "
                        "or a comma-separated list of fp32, bf16-autocast (alias bf16), bf16-weights")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend for bf16-weights (both systems): inductor, eager (graph capture only), "
                        "none. Default: inductor on cuda, none on cpu")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    p.add_argument("--sort-captions", action="store_true",
                   help="batch the drawn captions in order of length (as a job embedding a caption set would)")
    p.add_argument("--prepared", type=Path, default=REPO / "prepared", help="prepared corpus (captions, loader)")
    p.add_argument("--audio-dir", type=Path, default=REPO / "data", help="real audio files for (b)")
    p.add_argument("--timings-dir", type=Path, default=REPO / "reports" / "timings", help="stage timings for (e)")
    p.add_argument("--audio-batch", type=int)
    p.add_argument("--text-batch", type=int)
    p.add_argument("--iters", type=int, help="timed batches per tower and precision")
    p.add_argument("--bf16-iters", type=int, help="timed batches per tower in bf16")
    p.add_argument("--warmup", type=int, help="untimed batches first")
    p.add_argument("--files", type=int, help="audio files for (b)")
    p.add_argument("--files-batch", type=int)
    p.add_argument("--files-workers", type=int,
                   help="DataLoader decode workers for clapkit's second (b) figure; 0 = skip")
    p.add_argument("--train-batch", type=int)
    p.add_argument("--train-iters", type=int)
    p.add_argument("--train-warmup", type=int)
    p.add_argument("--loader-batch", type=int)
    p.add_argument("--loader-batches", type=int)
    p.add_argument("--loader-workers", default=None, help="comma-separated worker counts")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads for this run (0 = torch's default); on a CPU shared with other jobs, "
                        "1 avoids oversubscription, which slows multi-threaded kernels far more than it costs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    defaults = {  # (quick, cpu, cuda); cuda: audio 256, text 1024, training 128 (benchmarks/README.md)
        "audio_batch": (1, 2, 256), "text_batch": (4, 16, 1024), "iters": (1, 5, 10), "bf16_iters": (1, 1, 10),
        "warmup": (0, 1, 3), "files": (2, 24, 256), "files_batch": (2, 4, 64), "files_workers": (0, 1, 8),
        "train_batch": (2, 2, 128), "train_iters": (1, 2, 5), "train_warmup": (0, 1, 2),
        "loader_batch": (4, 8, 64), "loader_batches": (2, 20, 50), "loader_workers": ("0", "0,1,2", "0,4,8"),
        "compile_backend": ("none", "none", "inductor"),
    }
    for name, (quick, cpu, gpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else quick if args.quick else cpu)  # --quick shrinks CPU runs only
    if args.quick and cuda:
        for name in ("iters", "bf16_iters", "train_iters"):
            setattr(args, name, 2)
    args.text_layers = 2 if args.quick else 12
    args.loader_workers = [int(w) for w in str(args.loader_workers).split(",") if w != ""]
    args.precisions = resolve_precisions(args.precisions, torch.device(args.device))
    args.train_precisions = [p for p in args.precisions if p != "bf16-weights"] or ["fp32"]
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown} (known: {', '.join(SECTIONS)})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another process (the smoke test)


def _run(args) -> int:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    results = {"machine": machine_info(device),
               "settings": {k: (shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    section_s = {}
    results["section_s"] = section_s
    results["complete"] = False

    def run_section(name, fn, *fn_args):
        t0 = time.perf_counter()
        results[name] = fn(*fn_args)
        section_s[name] = round(time.perf_counter() - t0, 1)
        write_json(args.out, results)  # after every section: a run cut short (GPU time limit) keeps what it had

    tokenizer = None
    if {"models", "files", "train"} & set(args.sections):
        t0 = time.perf_counter()
        reference, ours, tokenizer, results["systems"] = build_systems(args, device)
        section_s["systems"] = round(time.perf_counter() - t0, 1)
        if "models" in args.sections:
            run_section("models", bench_models, args, device, reference, ours, tokenizer)
        if "files" in args.sections:
            run_section("files", bench_files, args, device, reference, ours, tokenizer)
        if "train" in args.sections:  # last: it trains both models in place
            run_section("train", bench_train, args, device, reference, ours)
        del reference, ours
    if "loader" in args.sections:
        run_section("loader", bench_loader, args, tokenizer)
    if "pipeline" in args.sections:
        run_section("pipeline", pipeline_timings, args.timings_dir, REPO / "dvc.lock")
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["complete"] = True
    write_json(args.out, results)
    print(f"[bench] wrote {args.out} in {results['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
