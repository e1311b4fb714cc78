"""DDP equivalence: 2 CPU processes (gloo), each with half of a global batch, give the same loss and gradients as
1 process on the whole batch, for the gathered global loss and for the local-loss variant."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_train import _batch, deterministic_tiny_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_batch():
    from clapkit.api import CLAP

    clap = CLAP.from_config(deterministic_tiny_config(), seed=0)
    model = clap.model.train()
    # HTSAT's BatchNorm normalises with per-process batch statistics under DDP (as OpenCLIP without
    # --use-bn-sync); with running statistics the two computations are the same function.
    model.audio.encoder.bn0.eval()
    return model, _batch(clap, n=8, seed=0)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from clapkit.losses import ClipLoss
    from clapkit.train import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
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
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    results = torch.load(out, weights_only=True)
    for variant, ddp in results.items():
        assert ddp["loss"] == pytest.approx(single_loss, rel=1e-5), variant
        assert ddp["grads"].keys() == single.keys() and "logit_scale" in single
        for name, grad in single.items():
            torch.testing.assert_close(ddp["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=f"{variant}: {name}")
