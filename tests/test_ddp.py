"""DDP equivalence: 2 CPU processes (gloo), each with half of a global batch, give the same loss and gradients as
1 process on the whole batch, for the gathered global loss, the local-loss variant and 2 accumulation micro-batches
per rank, with pair positives and with caption positives."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clapkit.training import Precision
from tests.test_train import _batch, assert_same_gradients, deterministic_tiny_config

pytestmark = pytest.mark.slow  # spawns gloo process groups and torchrun (~45 s for the file)


# Two gloo workers hang now and then in the full suite (CPU idle, never in ~20 runs of this file alone), so a hang
# must leave evidence and not stall CI.  Gloo's own timeout (RENDEZVOUS_S) covers the store and the collectives; a
# worker still running after WATCHDOG_S writes every thread's Python stack to its log and exits (faulthandler);
# the parent kills what is left after SPAWN_DEADLINE_S (a hang at interpreter exit, where faulthandler is off).
# A hung attempt is retried once with a fresh store, and reported as a warning with the stacks; a worker that
# raises fails the test at once.  A full run takes ~20-40 s here.
RENDEZVOUS_S = 60
WATCHDOG_S = 120
SPAWN_DEADLINE_S = 150
ATTEMPTS = 2


def _model_and_batch():
    from clapkit.api import CLAP

    clap = CLAP.from_config(deterministic_tiny_config(), seed=0)
    model = clap.model.train()
    # HTSAT's BatchNorm normalises with per-process batch statistics under DDP (as OpenCLIP without
    # --use-bn-sync); with running statistics the two computations are the same function.
    model.audio.encoder.bn0.eval()
    return model, _batch(clap, n=8, seed=0)


# (local_loss, accum_steps per rank): the global loss, the local one, and the global one over 2 accumulation
# micro-batches per rank (DDP synchronises in the last pass only: every parameter needs its gradient there)
VARIANTS = {"gathered": (False, 1), "local": (True, 1), "gathered, 2 micro-batches": (False, 2)}


def _worker(rank: int, world: int, store_file: str, out: str, stacks: str, caption_positives: bool = False) -> None:
    """This rank's half of ``_model_and_batch``'s batch through ``train_step`` under DDP, for every variant; rank 0
    saves the global losses and its gradients.  ``caption_positives``: the multi-positive loss on CAPTION_IDS."""
    import faulthandler

    from clapkit.losses import ClipLoss, MultiPositiveClipLoss
    from clapkit.train import train_step

    stack_log = open(f"{stacks}.rank{rank}", "w")
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True, file=stack_log)

    # A file store (no TCP port to race for with other processes) and gloo on the loopback interface.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=RENDEZVOUS_S))
    loss_cls = MultiPositiveClipLoss if caption_positives else ClipLoss
    try:
        results = {}
        for variant, (local_loss, accum) in VARIANTS.items():
            model, batch = _model_and_batch()
            if caption_positives:
                batch["caption_ids"] = CAPTION_IDS
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            n = batch["wave"].shape[0] // world
            mine = {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}
            loss = torch.tensor(train_step(ddp, mine, loss_cls(local_loss=local_loss), accum,
                                           Precision("fp32", torch.device("cpu"))))
            dist.all_reduce(loss)  # gathered: every rank holds the global loss; local: the ranks' parts average to it
            grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
            results[variant] = {"loss": float(loss) / world, "grads": grads}
        if rank == 0:  # whole or absent: the parent reads it only once the file is there
            torch.save(results, out + ".tmp")
            os.replace(out + ".tmp", out)
    finally:
        dist.destroy_process_group()
        faulthandler.cancel_dump_traceback_later()


def _caption_worker(rank: int, world: int, store_file: str, out: str, stacks: str) -> None:
    _worker(rank, world, store_file, out, stacks, caption_positives=True)


def test_two_gloo_processes_equal_one_process(tmp_path):
    from clapkit.losses import ClipLoss
    from clapkit.train import train_step

    model, batch = _model_and_batch()
    single_loss = train_step(model, batch, ClipLoss(), 1, Precision("fp32", torch.device("cpu")))
    single = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    out = _run_workers(tmp_path)
    results = torch.load(out, weights_only=True)
    assert results.keys() == VARIANTS.keys()
    for variant, ddp in results.items():
        assert ddp["loss"] == pytest.approx(single_loss, rel=1e-5), variant
        assert_same_gradients(ddp["grads"], single, variant)


# Caption positives: repeats inside a rank, across the ranks and across accumulation micro-batches.  The ids are
# assigned, not hashed from _batch's 8 distinct texts, so the "copies" embed differently (as under dropout) and the
# multi-positive loss differs from the plain one (with identical embeddings the two are the same function).
CAPTION_IDS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 0])


def test_caption_positives_on_two_gloo_processes_equal_one_process(tmp_path):
    """Identical captions on different ranks are positives of each other: the caption ids are gathered with the
    features, so 2 ranks (global or local loss, with or without accumulation) give one process's loss and
    gradients on the whole batch."""
    from clapkit.losses import ClipLoss, MultiPositiveClipLoss
    from clapkit.train import train_step

    fp32 = Precision("fp32", torch.device("cpu"))
    model, batch = _model_and_batch()
    single_loss = train_step(model, {**batch, "caption_ids": CAPTION_IDS}, MultiPositiveClipLoss(), 1, fp32)
    single = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert abs(train_step(model, batch, ClipLoss(), 1, fp32) - single_loss) > 1e-4  # the repeats count

    results = torch.load(_run_workers(tmp_path, _caption_worker), weights_only=True)
    assert results.keys() == VARIANTS.keys()
    for variant, ddp in results.items():
        assert ddp["loss"] == pytest.approx(single_loss, rel=1e-5), variant
        assert_same_gradients(ddp["grads"], single, variant)


def _run_workers(tmp_path, worker=None):
    """Run the two workers (``_worker`` unless another is given; retrying a hung attempt once); the path of rank
    0's results."""
    import time
    import warnings

    hangs = []
    for attempt in range(ATTEMPTS):
        run_dir = tmp_path / f"attempt{attempt}"
        run_dir.mkdir()
        out, stacks = run_dir / "rank0.pt", run_dir / "stacks"
        ctx = mp.spawn(worker or _worker, args=(2, str(run_dir / "store"), str(out), str(stacks)), nprocs=2, join=False)
        deadline = time.monotonic() + SPAWN_DEADLINE_S
        exited = False
        try:
            while not (exited := ctx.join(timeout=5)) and time.monotonic() < deadline:
                pass
        except mp.ProcessExitedException:  # the watchdog's exit (a raising worker is ProcessRaisedException)
            if not any(p.read_text() for p in run_dir.glob("stacks.rank*")):
                raise
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
        dumps = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(run_dir.glob("stacks.rank*")))
        if exited:
            return out
        if out.exists():  # the computation finished; a worker hung on the way out
            warnings.warn(f"gloo workers finished but did not exit within {SPAWN_DEADLINE_S} s; killed\n{dumps}")
            return out
        hangs.append(f"attempt {attempt}: no result within {SPAWN_DEADLINE_S} s\n{dumps}")
        warnings.warn(f"gloo workers hung (attempt {attempt + 1} of {ATTEMPTS})\n{dumps}")
    pytest.fail("the two gloo workers hung on every attempt:\n" + "\n".join(hangs))


def test_torchrun_runs_pretrain_and_train_on_two_cpu_processes(tmp_path):
    """The stage commands under ``torchrun --nproc-per-node 2`` (gloo, process group from the environment) give
    the per-step losses and the validation of one process running the same global batches as 2 accumulation
    micro-batches (BatchNorm normalises per rank there and per micro-batch here: the same slices)."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    from tests.test_train import make_prepared

    prepared = make_prepared(tmp_path / "corpus", n=48)
    model_cfg = deterministic_tiny_config()
    (tmp_path / "model.json").write_text(json.dumps(model_cfg))
    lm = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 48, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
          "attn_pdrop": 0.0}

    def params(run: str, accum: int, pretrain_dir: str) -> Path:
        d = tmp_path / run
        p = {"preset": "embedded", "seed": 0, "frontend": {"embedded": model_cfg["frontend"]},
             "model": {"embedded": str(tmp_path / "model.json"), "paper": "msclap-2023"},
             "pretrain": {"prepared": str(prepared), "out": str(d / "pretrain"), "metrics": str(d / "pm.json"),
                          "loss_log": str(d / "pretrain_loss.csv"), "checkpoint_dir": str(d / "pck"),
                          "timings": "", "steps": 3, "batch_size": 8, "accum_steps": accum, "lm": lm,
                          "warmup_steps": 1, "eval_clips_per_task": 4, "device": "cpu", "precision": "fp32",
                          "threads": 1, "log_every": 1, "checkpoint_every": 2},
             "train": {"prepared": str(prepared), "out": str(d / "clap"), "checkpoint_dir": str(d / "tck"),
                       "metrics": str(d / "tm.json"), "live_dir": str(d / "live"), "timings": None, "max_steps": 3,
                       "batch_size": 8, "accum_steps": accum, "warmup_steps": 1, "audio_init": pretrain_dir,
                       "device": "cpu", "precision": "fp32", "threads": 1, "log_every": 1, "val_batch_size": 4}}
        path = tmp_path / f"{run}.yaml"
        path.write_text(yaml.safe_dump(p))
        return path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc-per-node", "2"]
    one = [sys.executable, "-m", "clapkit.cli"]
    shared_encoder = str(tmp_path / "one" / "pretrain")  # both trainings start from the same encoder
    for launcher, run, accum in ((one, "one", 2), (torchrun + ["-m", "clapkit.cli"], "two", 1)):
        path = params(run, accum, shared_encoder)
        for stage in ("pretrain", "train"):
            done = subprocess.run(launcher + [stage, "--params", str(path), "--no-progress"], env=env,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{run} {stage}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    csv = {run: [line.split(",")[:2] for line in (tmp_path / run / "pretrain_loss.csv").read_text().splitlines()[1:]]
           for run in ("one", "two")}
    assert [s for s, _ in csv["one"]] == [s for s, _ in csv["two"]] == ["1", "2", "3"]
    for (_, a), (_, b) in zip(csv["one"], csv["two"]):
        assert float(b) == pytest.approx(float(a), abs=1e-5)
    # rank 0 alone evaluated and wrote the encoder; the two runs' tensors agree, BatchNorm's running statistics
    # too: DDP broadcasts rank 0's buffers, accumulation updates them from its first micro-batch only.
    from safetensors.torch import load_file

    ea, eb = (load_file(str(tmp_path / r / "pretrain" / "audio_encoder.safetensors")) for r in ("one", "two"))
    assert ea.keys() == eb.keys()
    assert all(torch.allclose(ea[k].float(), eb[k].float(), atol=1e-5) for k in ea)
    assert int(ea["bn0.num_batches_tracked"]) == int(eb["bn0.num_batches_tracked"]) == 3
    losses = {run: [float(r.split("\t")[-1]) for r in
                    (tmp_path / run / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]]
              for run in ("one", "two")}
    assert len(losses["one"]) == 3 and losses["two"] == pytest.approx(losses["one"], abs=1e-5)
    # validation, shared by the 2 ranks, equals one process validating the same final weights (the two runs'
    # BatchNorm buffers differ as above, so their validations are not compared with each other)
    from clapkit.api import CLAP
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.training import Runtime
    from clapkit.validation import validate

    two = json.loads((tmp_path / "two" / "tm.json").read_text())
    corpus = PreparedCorpus(prepared)
    tasks = {k: v for k, v in corpus.tasks.items() if len(v.get("classes", [])) >= 2}
    alone = validate(CLAP.from_pretrained(tmp_path / "two" / "clap"), corpus, corpus.split("val"), tasks, 4,
                     Runtime(0, 1, torch.device("cpu")), Precision("fp32", torch.device("cpu")))
    assert two["val_loss"] == pytest.approx(alone["loss"], abs=1e-6)
    assert two["val_zeroshot"] == alone["zeroshot"] and alone["zeroshot"]["tone"]["clips"] > 4
    shutil.rmtree(tmp_path / "corpus")
