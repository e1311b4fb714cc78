"""Where the time of the 2023 audio tower goes, clapkit against msclap, on this machine (torch.profiler).

    python benchmarks/profile_audio.py --threads 1                 # per-op-group breakdown, ~1 minute
    python benchmarks/profile_audio.py --threads 1 --compile       # + clapkit under torch.compile (inductor)

Both systems hold the same random weights (as in run.py), run alternately on the same batch of 7 s clips, and are
profiled once each after the timing.  Self CPU time is summed per op group: GEMM-like (linear, attention, the STFT
as a convolution in msclap), layout copies, elementwise and norms, and the frontend's FFT / resize.  With
``--compile`` the clapkit audio tower is also compiled with inductor (needs a C++ compiler) and timed against
eager, compile time reported apart.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

warnings.filterwarnings("ignore", message="torch.meshgrid")

OP_GROUPS = {
    "gemm_attention_conv": ("aten::addmm", "aten::mm", "aten::bmm", "aten::mkldnn_convolution", "aten::_softmax",
                            "aten::_scaled_dot_product_flash_attention_for_cpu"),
    "layout_copies": ("aten::copy_", "aten::cat", "aten::clone", "aten::roll", "aten::index"),
    "elementwise_norm": ("aten::add", "aten::add_", "aten::mul", "aten::gelu", "aten::native_layer_norm",
                         "aten::native_batch_norm", "aten::div_", "aten::fill_", "aten::sum", "aten::pow",
                         "aten::log10", "aten::sub_", "aten::clamp", "aten::clamp_min"),
    "fft_resize_pad": ("aten::_fft_r2c", "aten::upsample_bicubic2d", "aten::reflection_pad1d"),
}


def profile_groups(fn, x) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(x)
    self_ms = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    out = {group: round(sum(self_ms.get(op, 0.0) for op in ops), 1) for group, ops in OP_GROUPS.items()}
    out["other"] = round(sum(self_ms.values()) - sum(out.values()), 1)
    out["total_ms"] = round(sum(self_ms.values()), 1)
    out["top_ops_ms"] = {k: round(v, 1) for k, v in sorted(self_ms.items(), key=lambda kv: -kv[1])[:8]}
    return out


def alternate(fns: dict, x, iters: int) -> dict:
    times = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(iters):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
    return {name: round(statistics.median(t), 4) for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--compile", action="store_true", help="also time clapkit's audio tower under torch.compile")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    run_args = bench.parse_args(["--out", "/dev/null", "--quick"])  # GPT-2 cut to 2 layers: only audio is timed
    reference, ours, _, _ = bench.build_systems(run_args, torch.device("cpu"))
    x = 0.1 * torch.randn(args.batch, ours.frontend_config.clip_samples, generator=torch.Generator().manual_seed(0))
    fns = {"msclap": lambda w: reference.audio_encoder(w)[0], "clapkit": ours.audio}
    with torch.no_grad():  # warm-up
        for fn in fns.values():
            fn(x)
    result = {"machine": bench.machine_info(torch.device("cpu")), "batch": args.batch,
              "median_batch_s": alternate(fns, x, args.iters)}
    result["profile_self_cpu_ms"] = {name: profile_groups(fn, x) for name, fn in fns.items()}
    if args.compile:
        t0 = time.perf_counter()
        compiled = torch.compile(ours.audio)
        with torch.no_grad():
            diff = (compiled(x) - ours.audio(x)).abs().max().item()
        result["compile"] = {"compile_s": round(time.perf_counter() - t0, 1), "max_abs_diff_vs_eager": diff,
                             "median_batch_s": alternate({"clapkit eager": ours.audio, "clapkit compiled": compiled},
                                                         x, args.iters)}
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
