"""clapkit.train, clapkit.losses, clapkit.checkpointing, clapkit.data.loader / shards: tiny CPU runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clapkit.checkpointing import (CheckpointError, find_latest, list_checkpoints, load_checkpoint,
                                   save_checkpoint)


# --- checkpointing ---------------------------------------------------------------------------------------------------

def _toy_run(steps, ckpt_dir=None, resume=False, stop_after=None):
    """A small noisy optimisation with Adam + a scheduler + dropout: every RNG and state matters for the result."""
    torch.manual_seed(0); np.random.seed(0); random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    start = 0
    if resume:
        info = load_checkpoint(find_latest(ckpt_dir, {"toy": 1}), model, opt, sched)
        start = info["step"]
    for step in range(start, steps):
        x = torch.randn(16, 4) + float(np.random.rand()) + random.random()
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, step + 1, model, opt, sched, config={"toy": 1}, extra={"epoch": 0})
        if stop_after is not None and step + 1 == stop_after:
            return None
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_checkpoint_resume_is_exact(tmp_path):
    straight = _toy_run(6)
    assert _toy_run(6, tmp_path / "a", stop_after=3) is None
    resumed = _toy_run(6, tmp_path / "a", resume=True)
    assert torch.equal(straight, resumed)
    # keep=2: only the two newest survive
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [5, 6]


def test_find_latest_skips_other_configs_broken_and_temp_files(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, model, config={"lr": 1}, keep=None)
    save_checkpoint(tmp_path, 2, model, config={"lr": 2}, keep=None)
    assert find_latest(tmp_path, {"lr": 1}).name == "step_00000001.pt"
    assert find_latest(tmp_path, {"lr": 2}).name == "step_00000002.pt"
    assert find_latest(tmp_path, {"lr": 3}) is None
    # a truncated newest file (disk full, manual damage) falls back to the previous one
    (tmp_path / "step_00000003.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / ".step_00000004.pt.tmp123").write_bytes(b"half written")
    assert find_latest(tmp_path).name == "step_00000002.pt"
    with pytest.raises(CheckpointError, match="step_00000003.pt"):
        load_checkpoint(tmp_path / "step_00000003.pt", model)


def test_checkpoint_restores_rng_and_refuses_missing_state(tmp_path):
    model = torch.nn.Linear(2, 2)
    torch.manual_seed(5); np.random.seed(5); random.seed(5)
    path = save_checkpoint(tmp_path, 7, model, extra={"epoch": 3, "batch": 11})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99); np.random.seed(99); random.seed(99)
    info = load_checkpoint(path, model)
    assert info["step"] == 7 and info["extra"] == {"epoch": 3, "batch": 11}
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(CheckpointError, match="no optimizer state"):
        load_checkpoint(path, model, opt)
