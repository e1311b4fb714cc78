"""Training at the paper's scale: the full-size MS-CLAP 2023 architecture (HTSAT 96-768, depths 2/2/6/2 + GPT-2
base, 1024-d projections, 158M parameters; 44.1 kHz, 7 s, the ``frontend.paper`` block of params.yaml) trains 2
optimiser steps in ``train`` and in ``pretrain`` (GPT-2 base prefix LM) under 2 gloo processes, with the per-step
loss of one process running the same global batch (within 1e-5, absolute).

"The same global batch" is the 1-process run with ``accum_steps = 2``: HTSAT's BatchNorm (``bn0``) normalises with
per-rank batch statistics under DDP, and both stages cut a batch into contiguous pieces the same way (rank r of W
takes the r-th contiguous slice; accumulation micro-batch m of k the m-th), so the micro-batches of the 1-process
run are exactly the ranks' slices.  Dropout, drop-path and SpecAugment are off (ranks would draw other masks than
one process).  BatchNorm's running statistics follow the first micro-batch in both layouts (DDP keeps rank 0's,
accumulation updates only from its first micro-batch), so every tensor is compared, and so is validation.
The corpus is a tiny 44.1 kHz fixture (16 synthetic clips of 6.5-8 s), prepared once.

Measured here: losses agree to 1.2e-7 (train) and exactly (pretrain); weights to 2.4e-6 (train, after 2 AdamW
steps at lr 1e-3) and exactly (pretrain); the tolerance on weights is 1e-4.

Both 2-process runs happen in one spawn (each worker runs ``train`` then ``pretrain`` in one gloo group); the
1-process runs go on in the test process meanwhile.  Runtime of this file on the shared 2-core CPU: 71 s idle,
101 s at load ~1, 137 s at load ~3, 178 s at load ~4 (other jobs beside it); ~95 % of it is the runs.  Each
process peaks at ~4.4 GB (158M parameters, gradients, AdamW states, activations of 7 s clips); each run writes a
~1.9 GB final checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow  # the full-size model, 2 gloo processes: minutes and ~4.4 GB a process

REPO = Path(__file__).resolve().parents[1]
MODEL = "msclap-2023"
TONE_KINDS = ["sine tone", "square wave", "white noise", "chirp"]
LOSS_ABS = 1e-5  # per-step loss, 2 ranks vs 1 process, absolute (the losses are ~1.4 in train, ~3-6 in pretrain)
WEIGHTS_ABS = 1e-4  # final weights but BatchNorm statistics, 2 ranks vs 1 process: max absolute difference

# As tests/test_ddp.py: a gloo hang must leave evidence (every thread's stack, faulthandler) and not stall CI.
# Gloo's timeout covers the store and the collectives; a worker still running after WATCHDOG_S dumps its stacks
# and exits; the parent kills what is left after SPAWN_DEADLINE_S; a hung attempt is retried once with a fresh
# store, a raising worker fails at once.  The workers take 70-170 s here (idle / busy machine).
RENDEZVOUS_S = 300
WATCHDOG_S = 540
SPAWN_DEADLINE_S = 600
ATTEMPTS = 2


# --- configs -----------------------------------------------------------------------------------------------------

def paper_frontend():
    from clapkit.config import frontend_config, load_params

    params = load_params(REPO / "params.yaml")
    return frontend_config({**params, "preset": "paper"})


def paper_model_config() -> dict:
    """msclap-2023 with params.yaml's paper frontend (as the train stage builds it), every dropout, drop-path and
    SpecAugment off."""
    from clapkit.config import load_params, model_config_from_params

    params = load_params(REPO / "params.yaml")
    name, cfg = model_config_from_params({"preset": "paper", "frontend": params["frontend"],
                                          "model": {"paper": MODEL}})
    assert name == MODEL
    cfg["projection_dropout"] = 0.0
    cfg["audio_encoder"].update(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, time_mask_stripes=0,
                                freq_mask_stripes=0)
    cfg["text_encoder"].update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return cfg


# GPT-2 base as the prefix LM (Pengi / the paper); n_positions only needs prefix + prompt + answer.
PAPER_LM = {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 64,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def train_config(out: Path, prepared: Path, accum_steps: int):
    from clapkit.train import TrainConfig

    return TrainConfig(prepared=str(prepared), out=str(out / "clap"), checkpoint_dir=str(out / "ckpt"),
                       metrics=str(out / "metrics.json"), live_dir=str(out / "live"), timings=None, max_steps=2,
                       batch_size=4, accum_steps=accum_steps, warmup_steps=1, checkpoint_every=1000,
                       keep_checkpoints=1, log_every=1, val_max_clips=4, val_batch_size=2, audio_init="none",
                       device="cpu", precision="fp32", threads=1)


def pretrain_config(out: Path, prepared: Path, accum_steps: int):
    from clapkit.pretrain import PretrainConfig

    return PretrainConfig(prepared=str(prepared), out=str(out / "out"), metrics=str(out / "metrics.json"),
                          loss_log=str(out / "loss.csv"), checkpoint_dir=str(out / "ckpt"), timings="", steps=2,
                          batch_size=4, accum_steps=accum_steps, tasks="all", tasks_per_clip=2, warmup_steps=1,
                          lm=dict(PAPER_LM), output_vocab="answers", max_answer_tokens=12, device="cpu",
                          precision="fp32", threads=1, checkpoint_every=1000, keep_checkpoints=1, log_every=1,
                          eval_clips_per_task=2, eval_batch_size=4, examples_per_task=1)


def run_train(out: Path, prepared: Path, accum_steps: int) -> dict:
    from clapkit.train import train

    return train(train_config(out, prepared, accum_steps), paper_model_config(), seed=0, resume="none",
                 progress=False)


def run_pretrain(out: Path, prepared: Path, accum_steps: int) -> dict:
    from clapkit.pretrain import pretrain

    return pretrain(pretrain_config(out, prepared, accum_steps), paper_frontend(), MODEL, paper_model_config(),
                    seed=0, progress=False, resume="none")


# --- fixtures ----------------------------------------------------------------------------------------------------

def make_paper_prepared(root: Path, n: int = 16) -> Path:
    """``n`` synthetic clips of 6.5-8 s at 44.1 kHz (4 signal kinds, task ``tone``; half marked real), prepared
    with the paper frontend (7 s clips, 7.5 s cached: padded and cropped clips both occur).  Fixed splits: the
    first half trains (2 batches of 4), then a quarter each for val and test, every kind in each."""
    import soundfile as sf

    from clapkit.data.prepare import PrepareConfig, prepare
    from clapkit.data.records import ClipRecord, write_jsonl

    sr = 44100
    (root / "fixture").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        t = np.arange(int(sr * (6.5 + 0.5 * (i % 4)))) / sr
        f = 300 + 40 * (i % 7)
        x = [np.sin(2 * np.pi * f * t), np.sign(np.sin(2 * np.pi * f * t)), rng.standard_normal(len(t)),
             np.sin(2 * np.pi * (f + 200 * t) * t)][i % 4]
        rel = f"fixture/c{i:03d}.wav"
        sf.write(root / rel, (0.3 * x).astype(np.float32), sr)
        records.append(ClipRecord(id=f"fixture/c{i:03d}", path=rel, source="synth:fixture", licence="CC0-1.0",
                                  real=i % 2 == 0, group=f"g{i}", labels={"tone": TONE_KINDS[i % 4]},
                                  split="train" if i < n // 2 else "val" if i < 3 * n // 4 else "test"))
    write_jsonl(root / "fixture" / "clips.jsonl", records)
    (root / "corpus.json").write_text(json.dumps({"sources": {"fixture": {"clips": n}}}))
    cfg = PrepareConfig(corpus=str(root), out=str(root / "prepared"), metrics=str(root / "data.json"),
                        cache_seconds=7.5, workers=1, captions_per_clip=2)
    prepare(cfg, paper_frontend(), progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from clapkit.data.prepare import PreparedCorpus

    path = make_paper_prepared(tmp_path_factory.mktemp("paper_corpus"))
    corpus = PreparedCorpus(path)
    assert corpus.sample_rate == 44100
    splits = {s: len(corpus.split(s)) for s in ("train", "val", "test")}
    assert splits == {"train": 8, "val": 4, "test": 4}, splits
    return path


@pytest.fixture(scope="module")
def runs(prepared, tmp_path_factory):
    """Rank 0's outputs of the 2-process runs and the outputs of the 1-process (accum 2) runs, each with
    ``train/`` and ``pretrain/``: {"ddp": dir, "single": dir}.  The 1-process runs go on in this process while the
    workers run (3 processes share the 2 busy cores better than 2 then 1)."""
    base = tmp_path_factory.mktemp("paper_runs")
    single = base / "single"
    threads = torch.get_num_threads()
    started = time.perf_counter()
    took = {}

    def one_process():
        try:
            run_train(single / "train", prepared, accum_steps=2)
            run_pretrain(single / "pretrain", prepared, accum_steps=2)
        finally:
            torch.set_num_threads(threads)  # the stages set 1 thread for the whole process
        took["1 process"] = time.perf_counter() - started

    ddp = _run_workers(base / "ddp", prepared, meanwhile=one_process)
    took["2 processes"] = time.perf_counter() - started
    print("\npaper-scale runs (s): " + ", ".join(f"{k} {v:.0f}" for k, v in took.items()))
    return {"ddp": ddp, "single": single}


# --- the 2-process runs ------------------------------------------------------------------------------------------

def _worker(rank: int, world: int, store_file: str, out: str, prepared: str, stacks: str) -> None:
    import faulthandler

    with open(f"{stacks}.rank{rank}", "w") as stack_log:
        faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=stack_log)
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        torch.set_num_threads(1)
        # setup_runtime (clapkit.training) joins this group: a file store, no TCP port to race for.
        dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=RENDEZVOUS_S))
        try:
            run_train(Path(out) / "train", Path(prepared), accum_steps=1)
            run_pretrain(Path(out) / "pretrain", Path(prepared), accum_steps=1)  # rank 0 evaluates alone at the end
            if rank == 0:
                (Path(out) / "done").write_text("ok")  # the parent trusts the outputs only once this is there
        finally:
            dist.destroy_process_group()
            faulthandler.cancel_dump_traceback_later()


def _run_workers(base: Path, prepared: Path, meanwhile=None) -> Path:
    """Run the two workers (retrying a hung attempt once), calling ``meanwhile()`` in this process once while the
    first attempt runs; rank 0's output folder."""
    hangs = []
    for attempt in range(ATTEMPTS):
        run_dir = base / f"attempt{attempt}"
        run_dir.mkdir(parents=True)
        out, stacks = run_dir / "out", run_dir / "stacks"
        ctx = mp.spawn(_worker, args=(2, str(run_dir / "store"), str(out), str(prepared), str(stacks)), nprocs=2,
                       join=False)
        deadline = time.monotonic() + SPAWN_DEADLINE_S
        exited = False
        try:
            if meanwhile is not None:
                meanwhile()
                meanwhile = None
            while not (exited := ctx.join(timeout=5)) and time.monotonic() < deadline:
                pass
        except mp.ProcessExitedException:  # the watchdog's exit (a raising worker is ProcessRaisedException)
            if not any(p.read_text() for p in run_dir.glob("stacks.rank*")):
                raise
        finally:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
        dumps = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(run_dir.glob("stacks.rank*")))
        done = (out / "done").exists()
        if exited and done:
            return out
        if done:  # the computation finished; a worker hung on the way out
            warnings.warn(f"gloo workers finished but did not exit within {SPAWN_DEADLINE_S} s; killed\n{dumps}")
            return out
        hangs.append(f"attempt {attempt}: no result within {SPAWN_DEADLINE_S} s\n{dumps}")
        warnings.warn(f"gloo workers hung (attempt {attempt + 1} of {ATTEMPTS})\n{dumps}")
    pytest.fail("the two gloo workers hung on every attempt:\n" + "\n".join(hangs))


# --- reading the outputs -----------------------------------------------------------------------------------------

def train_losses(run: Path) -> dict[int, float]:
    """Step -> training loss from dvclive's train/loss.tsv (rank 0's: the gathered ClipLoss, the global loss)."""
    with open(run / "live" / "plots" / "metrics" / "train" / "loss.tsv", newline="") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f, delimiter="\t")}


def final_checkpoint(run: Path) -> dict:
    (path,) = (run / "ckpt").glob("run-*/step_*.pt")  # keep_checkpoints 1: the final one
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def pretrain_losses(run: Path) -> dict[int, float]:
    """Step -> loss, unrounded (the loss log CSV rounds to 5 decimals): the final checkpoint's copy of the log."""
    return {int(r["step"]): float(r["loss"]) for r in final_checkpoint(run)["extra"]["log"]}


def batchnorm_statistics(state: dict[str, torch.Tensor]) -> set[str]:
    """The BatchNorm running-statistics entries of a state dict."""
    return {k for k in state if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """The largest absolute difference over every tensor (parameters and buffers) and where."""
    assert a.keys() == b.keys()
    return max(((float((a[k].double() - b[k].double()).abs().max()), k) for k in a if a[k].numel()),
               key=lambda x: x[0])


# --- tests -------------------------------------------------------------------------------------------------------

def test_the_models_are_full_size(runs):
    """The runs really are msclap-2023 at full size (so this file cannot silently shrink): read from what the
    1-process runs wrote."""
    from safetensors.torch import load_file

    clap = runs["single"] / "train" / "clap"
    config = json.loads((clap / "config.json").read_text())
    assert config["frontend"]["sample_rate"] == 44100 and config["frontend"]["clip_seconds"] == 7.0
    assert config["frontend"] == dataclasses.asdict(paper_frontend())
    audio, text = config["audio_encoder"], config["text_encoder"]
    assert (audio["name"], audio["embed_dim"], audio["depths"], audio["num_heads"], audio["spec_size"]) == \
        ("htsat", 96, [2, 2, 6, 2], [4, 8, 16, 32], 256)
    assert (text["name"], text["n_layer"], text["n_embd"], text["n_head"], text["vocab_size"]) == \
        ("gpt2", 12, 768, 12, 50257)
    assert config["embed_dim"] == 1024
    weights = load_file(str(clap / "model.safetensors"))
    assert weights["audio.encoder.patch_embed.proj.weight"].shape[0] == 96  # 96 channels in ...
    assert weights["audio.encoder.norm.weight"].shape == (768,)  # ... 768 features out
    assert weights["audio.projection.linear1.weight"].shape == (1024, 768)
    assert weights["text.encoder.transformer.wte.weight"].shape == (50257, 768)
    assert {k.split(".")[4] for k in weights if k.startswith("text.encoder.transformer.h.")} == \
        {str(i) for i in range(12)}

    def count(prefix: str, state: dict[str, torch.Tensor]) -> int:
        return sum(v.numel() for k, v in state.items() if k.startswith(prefix))

    assert 27e6 < count("audio.encoder.", weights) < 29e6  # HTSAT-base without the AudioSet head: 27.5M
    assert 124e6 < count("text.encoder.", weights) < 125e6  # GPT-2 base: 124.4M
    assert count("", weights) > 155e6
    lm = final_checkpoint(runs["single"] / "pretrain")["model"]  # the pretrain model: encoder + GPT-2 base LM
    assert {k.split(".")[4] for k in lm if k.startswith("prefix_lm.lm.transformer.h.")} == {str(i) for i in range(12)}
    assert lm["prefix_lm.lm.transformer.wte.weight"].shape == (50257, 768)
    assert 27e6 < count("encoder.", lm) < 29e6 and count("prefix_lm.lm.", lm) > 124e6


def test_train_two_processes_equal_one_process(runs, prepared):
    """Per-step losses equal; every tensor close (BatchNorm statistics included); the validation of the two runs
    equal, and equal to one process validating the 2-rank weights (validation does not depend on the world)."""
    from safetensors.torch import load_file

    from clapkit.api import CLAP
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.training import Precision, Runtime
    from clapkit.validation import validate

    ddp, single = runs["ddp"] / "train", runs["single"] / "train"
    ddp_loss, single_loss = train_losses(ddp), train_losses(single)
    assert sorted(single_loss) == [1, 2]
    print(f"\ntrain losses: 2 ranks {ddp_loss}, 1 process {single_loss}")
    for step in single_loss:
        assert ddp_loss[step] == pytest.approx(single_loss[step], abs=LOSS_ABS, rel=0), step

    w_ddp = load_file(str(ddp / "clap" / "model.safetensors"))
    w_single = load_file(str(single / "clap" / "model.safetensors"))
    assert batchnorm_statistics(w_ddp) == {"audio.encoder.bn0." + k
                                           for k in ("running_mean", "running_var", "num_batches_tracked")}
    assert int(w_ddp["audio.encoder.bn0.num_batches_tracked"]) == 2  # one update per step in both layouts
    diff, where = max_abs_diff(w_ddp, w_single)
    print(f"train weights (every tensor): max abs difference {diff:.3g} ({where})")
    assert diff < WEIGHTS_ABS, where

    m_ddp = json.loads((ddp / "metrics.json").read_text())
    m_single = json.loads((single / "metrics.json").read_text())
    assert m_ddp["step"] == m_single["step"] == 2
    print(f"validation: 2 ranks {m_ddp['val_loss']} {m_ddp['val_zeroshot']}, "
          f"1 process {m_single['val_loss']} {m_single['val_zeroshot']}")
    assert m_ddp["val_loss"] == pytest.approx(m_single["val_loss"], abs=LOSS_ABS, rel=0)
    cfg = train_config(ddp, prepared, 1)
    corpus = PreparedCorpus(prepared)
    val = corpus.split("val")[: cfg.val_max_clips]
    tasks = {k: v for k, v in corpus.tasks.items() if len(v.get("classes", [])) >= 2}
    cpu = torch.device("cpu")
    alone = validate(CLAP.from_pretrained(ddp / "clap"), corpus, val, tasks, cfg.val_batch_size, Runtime(0, 1, cpu),
                     Precision("fp32", cpu))
    assert m_ddp["val_loss"] == pytest.approx(alone["loss"], abs=1e-6, rel=0)
    assert m_ddp["val_zeroshot"] == alone["zeroshot"] and alone["zeroshot"]["tone"]["clips"] == 4


def test_pretrain_two_processes_equal_one_process(runs):
    """Per-step losses equal; the written encoder and prefix LM equal, BatchNorm statistics included."""
    from safetensors.torch import load_file

    ddp, single = runs["ddp"] / "pretrain", runs["single"] / "pretrain"
    ddp_loss, single_loss = pretrain_losses(ddp), pretrain_losses(single)
    assert sorted(single_loss) == [1, 2]
    print(f"\npretrain losses: 2 ranks {ddp_loss}, 1 process {single_loss}")
    for step in single_loss:
        assert ddp_loss[step] == pytest.approx(single_loss[step], abs=LOSS_ABS, rel=0), step
    for name, norm in (("audio_encoder", "bn0"), ("prefix_lm", "mapper.input_norm")):
        a = load_file(str(ddp / "out" / f"{name}.safetensors"))
        b = load_file(str(single / "out" / f"{name}.safetensors"))
        assert batchnorm_statistics(a) == {f"{norm}.{k}" for k in ("running_mean", "running_var",
                                                                    "num_batches_tracked")}, name
        diff, where = max_abs_diff(a, b)
        print(f"pretrain {name} weights (every tensor): max abs difference {diff:.3g} ({where})")
        assert diff < WEIGHTS_ABS, f"{name}: {where}"
