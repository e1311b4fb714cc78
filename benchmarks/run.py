"""clapkit against msclap, side by side: one command, one run, the same inputs, one JSON of every figure.

    python benchmarks/run.py --out benchmarks/results-cpu.json            # this CPU, about 2-3 minutes
    python benchmarks/run.py --out /tmp/smoke.json --quick                # code path only, seconds
    python benchmarks/run.py --out benchmarks/results-gpu.json --device cuda

What is measured (see benchmarks/README.md):

(a) the 2023 architecture (HTSAT + GPT-2 base + 1024-d projections), model only, inputs already in memory:
    msclap 1.3.4's own ``CLAP`` modules built with random weights, saved as an official-style container and loaded
    into clapkit with ``clapkit.checkpoints.load_msclap``, so both compute the same function.  Audio embeddings/s
    (7 s clips at 44.1 kHz) and text embeddings/s on real captions (clapkit: padded to each batch's longest caption;
    msclap: padded to 77 tokens, as its wrapper does), fp32 and bf16 autocast, with the cosine between each
    clapkit embedding and the msclap fp32 one.  The two systems run alternately, batch by batch, so that load from
    other processes on a shared machine hits both alike; throughput comes from the median batch time.
(d) the training data loader (``clapkit.data.loader``) over a prepared corpus: clips/s, and clips/s per worker.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from clapkit.checkpoints import load_msclap  # noqa: E402
from clapkit.models.clap import load_model_config  # noqa: E402
from clapkit.text import TextTokenizer  # noqa: E402

warnings.filterwarnings("ignore", message="torch.meshgrid")  # raised inside msclap's HTSAT

MSCLAP_TEXT_LENGTH = 77  # msclap's wrapper pads every caption to 77 GPT-2 tokens with id 0 ("!")
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


def machine_info(device: torch.device) -> dict:
    cpu_model, flags = platform.processor() or "unknown", ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name") and cpu_model in ("unknown", platform.processor()):
                cpu_model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": any(f in flags.split() for f in ("avx512_bf16", "amx_bf16")),
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


def timed(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def precision_context(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16)


def cosines(a: torch.Tensor, b: torch.Tensor) -> dict:
    c = F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1)
    return {"min": round(c.min().item(), 6), "mean": round(c.mean().item(), 6)}


# ------------------------------------------------------------------------------------- inputs


def load_captions(prepared: Path, n: int, seed: int) -> tuple[list[str], str]:
    """``n`` real captions drawn (seeded) from the prepared manifest, else the fixed sample captions."""
    manifest = prepared / "manifest.jsonl"
    if manifest.is_file():
        captions = []
        for line in open(manifest, encoding="utf-8"):
            captions.extend(json.loads(line).get("captions") or [])
        if captions:
            return random.Random(seed).sample(captions, min(n, len(captions))), str(manifest)
    reps = -(-n // len(SAMPLE_CAPTIONS))
    return (SAMPLE_CAPTIONS * reps)[:n], "fixed sample captions (no prepared manifest)"


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
    """Warm both on the first ``warmup`` batches, then time the rest alternately, reference / clapkit batch by
    batch; returns items/s (median batch time) and both systems' embeddings of the timed batches."""
    for b in batches[:warmup]:
        run_reference(b)
        run_clapkit(b)
    ref_t, ours_t, ref_out, ours_out = [], [], [], []
    for b in batches[warmup:]:
        t, e = timed(lambda: run_reference(b), device)
        ref_t.append(t)
        ref_out.append(e.float().cpu())
        t, e = timed(lambda: run_clapkit(b), device)
        ours_t.append(t)
        ours_out.append(e.float().cpu())
    ref_rate = items_per_batch / statistics.median(ref_t)
    ours_rate = items_per_batch / statistics.median(ours_t)
    return {
        "msclap_per_s": round(ref_rate, 2),
        "clapkit_per_s": round(ours_rate, 2),
        "ratio_clapkit_over_msclap": round(ours_rate / ref_rate, 3),
        "batches_timed": len(ref_t),
        "msclap_batch_s": [round(t, 4) for t in ref_t],
        "clapkit_batch_s": [round(t, 4) for t in ours_t],
    }, torch.cat(ref_out), torch.cat(ours_out)


def bench_models(args, device: torch.device, prepared: Path) -> dict:
    from _msclap_reference import build_reference_2023, save_as_official

    text_layers = 2 if args.quick else 12
    t0 = time.perf_counter()
    reference = build_reference_2023(seed=args.seed, text_layers=text_layers)
    config = load_model_config("msclap-2023")
    config["text_encoder"] = {**config["text_encoder"], "n_layer": text_layers}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "CLAP_weights_2023_random.pth"
        save_as_official(reference, path)
        ours, report = load_msclap(path, "2023", config=config)
    build_s = time.perf_counter() - t0
    reference.to(device).eval()
    ours.to(device).eval()
    tokenizer = TextTokenizer.from_spec(config["tokenizer"])

    g = torch.Generator().manual_seed(args.seed)
    samples = ours.frontend_config.clip_samples
    n_audio = args.audio_batch * (args.iters + args.warmup)
    waves = 0.1 * torch.randn(n_audio, samples, generator=g)
    audio_batches = [waves[i : i + args.audio_batch].to(device) for i in range(0, n_audio, args.audio_batch)]
    captions, caption_source = load_captions(prepared, args.text_batch * (args.iters + args.warmup), args.seed)
    tbatches = text_batches(tokenizer, captions, args.text_batch, device)

    result = {
        "model": "msclap-2023 architecture, random weights" + ("" if text_layers == 12 else f", GPT-2 cut to {text_layers} layers (--quick)"),
        "setup_s": round(build_s, 1),
        "load_msclap_tensors_loaded": report.loaded,
        "audio": {"clip_seconds": samples / ours.frontend_config.sample_rate,
                  "sample_rate": ours.frontend_config.sample_rate, "batch": args.audio_batch},
        "text": {"batch": args.text_batch, "captions": caption_source,
                 "msclap_tokens_per_caption": MSCLAP_TEXT_LENGTH,
                 "clapkit_mean_padded_tokens": round(statistics.mean(b["clapkit"]["input_ids"].shape[1] for b in tbatches), 1)},
    }
    fp32 = {}
    for precision in args.precisions:
        ctx = lambda: precision_context(device, precision)  # noqa: E731

        def ref_audio(x):
            with torch.no_grad(), ctx():
                return reference.audio_encoder(x)[0]

        def our_audio(x):
            with torch.no_grad(), ctx():
                return ours.encode_audio(x)

        def ref_text(b):
            with torch.no_grad(), ctx():
                return reference.caption_encoder(b["msclap"])

        def our_text(b):
            with torch.no_grad(), ctx():
                return ours.encode_text(b["clapkit"]["input_ids"], b["clapkit"]["attention_mask"])

        for tower, ref_fn, our_fn, batches, per in (("audio", ref_audio, our_audio, audio_batches, args.audio_batch),
                                                     ("text", ref_text, our_text, tbatches, args.text_batch)):
            try:
                # bf16 without native support (this CPU) is emulated and slow: fewer timed batches there
                n = args.warmup + (args.iters if precision == "fp32" else args.bf16_iters)
                stats, ref_emb, our_emb = side_by_side(ref_fn, our_fn, batches[:n], per, args.warmup, device)
            except RuntimeError as err:  # e.g. an op without a bf16 kernel on this device
                result[tower][precision] = {"error": f"{type(err).__name__}: {err}"[:300]}
                continue
            if precision == "fp32":
                fp32[tower] = ref_emb
            # every precision times a prefix of the same batches (after the same warm-up): row i is the same input
            reference_fp32 = fp32[tower][: len(our_emb)]
            stats["cosine_clapkit_vs_msclap_fp32"] = cosines(our_emb, reference_fp32)
            if precision != "fp32":
                stats["cosine_msclap_self_vs_msclap_fp32"] = cosines(ref_emb, reference_fp32)
            result[tower][precision] = stats
            print(f"[bench] {tower} {precision}: msclap {stats['msclap_per_s']}/s, clapkit {stats['clapkit_per_s']}/s "
                  f"(x{stats['ratio_clapkit_over_msclap']}), cosine min {stats['cosine_clapkit_vs_msclap_fp32']['min']}",
                  flush=True)
    return result


# ------------------------------------------------------------------------------------- (d) data loader


def bench_loader(args, prepared: Path) -> dict:
    from clapkit.data.loader import ClipCaptionDataset, EpochBatches, make_loader
    from clapkit.data.prepare import PreparedCorpus

    if not (prepared / "arrays.json").is_file():
        return {"skipped": f"no prepared corpus at {prepared} (run the prepare stage)"}
    corpus = PreparedCorpus(prepared)
    meta = json.loads((prepared / "arrays.json").read_text())
    front = meta["frontend"]
    clip_samples = int(round(front["clip_seconds"] * front["sample_rate"]))
    indices = corpus.split("train") or list(range(len(corpus)))
    dataset = ClipCaptionDataset(corpus, indices, clip_samples, train=True, seed=args.seed)
    tokenizer = TextTokenizer.from_spec({"kind": "gpt2", "max_length": 77})
    out = {"corpus": str(prepared), "clips": len(indices), "clip_seconds": front["clip_seconds"],
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


# ------------------------------------------------------------------------------------- entry point


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="JSON file to write (atomically)")
    p.add_argument("--quick", action="store_true", help="tiny inputs, 1 batch each, GPT-2 cut to 2 layers: proves the code path")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--prepared", type=Path, default=REPO / "prepared", help="prepared corpus (captions, loader)")
    p.add_argument("--audio-batch", type=int)
    p.add_argument("--text-batch", type=int)
    p.add_argument("--iters", type=int, help="timed batches per tower and precision")
    p.add_argument("--bf16-iters", type=int, help="timed batches per tower under bf16 autocast")
    p.add_argument("--warmup", type=int, help="untimed batches first")
    p.add_argument("--precisions", default="fp32,bf16-autocast")
    p.add_argument("--loader-batch", type=int)
    p.add_argument("--loader-batches", type=int)
    p.add_argument("--loader-workers", default=None, help="comma-separated worker counts")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    defaults = {  # (quick, cpu, cuda)
        "audio_batch": (1, 2, 64), "text_batch": (4, 16, 256), "iters": (1, 3, 10), "bf16_iters": (1, 1, 10), "warmup": (0, 1, 3),
        "loader_batch": (4, 8, 64), "loader_batches": (2, 20, 50), "loader_workers": ("0", "0,1,2", "0,4,8"),
    }
    for name, (quick, cpu, gpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else gpu if cuda else cpu)
    args.loader_workers = [int(w) for w in str(args.loader_workers).split(",") if w != ""]
    args.precisions = [s for s in args.precisions.split(",") if s]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    results = {"machine": machine_info(device),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    results["models"] = bench_models(args, device, args.prepared)
    results["loader"] = bench_loader(args, args.prepared)
    results["not_measured"] = ["(b) end-to-end from files", "(c) training step", "(e) dvc repro per stage"]
    results["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.out)
    print(f"[bench] wrote {args.out} in {results['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
