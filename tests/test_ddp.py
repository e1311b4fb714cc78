"""DDP equivalence: 2 CPU processes (gloo), each with half of a global batch, give the same loss and gradients as
1 process on the whole batch, for the gathered global loss and for the local-loss variant."""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_train import _batch, deterministic_tiny_config


# A rendezvous that never completes must fail the test, not hang CI: the workers give up after RENDEZVOUS_S, and
# the parent kills them after SPAWN_DEADLINE_S (a full run takes ~20 s here).
RENDEZVOUS_S = 60
SPAWN_DEADLINE_S = 240


def _model_and_batch():
    from clapkit.api import CLAP

    clap = CLAP.from_config(deterministic_tiny_config(), seed=0)
    model = clap.model.train()
    # HTSAT's BatchNorm normalises with per-process batch statistics under DDP (as OpenCLIP without
    # --use-bn-sync); with running statistics the two computations are the same function.
    model.audio.encoder.bn0.eval()
    return model, _batch(clap, n=8, seed=0)


def _worker(rank: int, world: int, store_file: str, out: str) -> None:
    from clapkit.losses import ClipLoss
    from clapkit.train import train_step

    # A file store (no TCP port to race for with other processes) and gloo on the loopback interface.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=RENDEZVOUS_S))
    try:
        results = {}
        for local_loss in (False, True):
            model, batch = _model_and_batch()
            ddp = torch.nn.parallel.DistributedDataParallel(model)
            n = batch["wave"].shape[0] // world
            mine = {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}
            loss = torch.tensor(train_step(ddp, mine, ClipLoss(local_loss=local_loss), 1, torch.device("cpu"), None))
            dist.all_reduce(loss)  # gathered: every rank holds the global loss; local: the ranks' parts average to it
            grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
            results["local" if local_loss else "gathered"] = {"loss": float(loss) / world, "grads": grads}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process(tmp_path):
    from clapkit.losses import ClipLoss
    from clapkit.train import train_step

    model, batch = _model_and_batch()
    single_loss = train_step(model, batch, ClipLoss(), 1, torch.device("cpu"), None)
    single = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    out = tmp_path / "rank0.pt"
    _spawn_with_deadline(tmp_path, out)
    results = torch.load(out, weights_only=True)
    for variant, ddp in results.items():
        assert ddp["loss"] == pytest.approx(single_loss, rel=1e-5), variant
        assert ddp["grads"].keys() == single.keys() and "logit_scale" in single
        for name, grad in single.items():
            torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"{variant}: {name}")


def _spawn_with_deadline(tmp_path, out) -> None:
    """Run the two workers; if they neither finish nor fail within the deadline, kill them and fail clearly."""
    import time

    ctx = mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=False)
    deadline = time.monotonic() + SPAWN_DEADLINE_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            pytest.fail(f"the two gloo workers did not finish within {SPAWN_DEADLINE_S} s (rendezvous hang)")
