"""clapkit.training and the resume rules of clapkit.training_state: fp16 loss scaling, exact accumulation with every
random layer on, run identities (code, corpus, finished runs) in whole training runs."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from clapkit.training import LRSchedule, Precision, ScheduleConfig, frozen_batchnorm_statistics, make_optimizer, \
    param_groups

from tests.test_train import prepared  # noqa: F401  (the tiny prepared corpus, a module fixture)

CPU = torch.device("cpu")


# --- fp16 with a loss scale ------------------------------------------------------------------------------------------

def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))


def _loss(model, precision, x, y):
    with precision.autocast():
        out = model(x)
    return nn.functional.cross_entropy(out.float(), y)


def test_fp16_scales_the_loss_and_unscaled_gradients_equal_fp32():
    x, y = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3] * 2)
    ref = _mlp()
    _loss(ref, Precision("fp32", CPU), x, y).backward()

    model = _mlp()
    fp16 = Precision("fp16", CPU, init_scale=1024.0)
    assert fp16.dtype is torch.float16 and fp16.scaler is not None
    assert Precision("bf16", CPU).scaler is None and Precision("fp32", CPU).scaler is None
    with fp16.autocast():
        assert model(x).dtype is torch.float16  # autocast really runs the matmuls in fp16
    fp16.backward(_loss(model, fp16, x, y))
    for p, q in zip(model.parameters(), ref.parameters()):  # backward saw loss x 1024
        torch.testing.assert_close(p.grad / 1024.0, q.grad, rtol=2e-2, atol=2e-4)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: only the gradients are looked at
    assert fp16.step(opt, list(model.parameters()), clip_norm=None)
    for p, q in zip(model.parameters(), ref.parameters()):  # step() unscaled them in place
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-2, atol=2e-4)


def test_fp16_skips_a_step_whose_gradients_overflowed_and_lowers_the_scale():
    model = _mlp()
    fp16 = Precision("fp16", CPU, init_scale=1024.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 16), torch.tensor([0, 1, 2, 3] * 2)
    fp16.backward(_loss(model, fp16, x, y))
    next(model.parameters()).grad[0, 0] = float("inf")  # what an fp16 overflow in backward leaves
    assert fp16.step(opt, list(model.parameters()), clip_norm=1.0) is False
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))  # skipped
    assert fp16.scaler.get_scale() == 512.0  # backed off
    opt.zero_grad()
    fp16.backward(_loss(model, fp16, x, y))
    assert fp16.step(opt, list(model.parameters()), clip_norm=1.0) is True
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    state = fp16.state_dict()
    again = Precision("fp16", CPU)
    again.load_state_dict(state)
    assert again.scaler.get_scale() == 512.0  # a checkpoint restores the scale


# --- optimiser groups and schedule -----------------------------------------------------------------------------------

def test_param_groups_decay_only_matrices_and_carry_lr_scales_through_the_schedule():
    model = nn.ModuleDict({"encoder": nn.Linear(4, 4), "wte": nn.Embedding(10, 4), "head": nn.Linear(4, 2)})
    model.register_parameter("logit_scale", nn.Parameter(torch.zeros(())))
    groups = param_groups(model, 0.1, lambda name: 0.5 if name.startswith("encoder.") else 1.0)
    by = {(g["lr_scale"], g["weight_decay"]): {id(p) for p in g["params"]} for g in groups}
    assert by[(0.5, 0.1)] == {id(model["encoder"].weight)} and by[(0.5, 0.0)] == {id(model["encoder"].bias)}
    assert by[(1.0, 0.1)] == {id(model["head"].weight)}
    assert by[(1.0, 0.0)] == {id(model["head"].bias), id(model["wte"].weight), id(model.logit_scale)}
    opt = make_optimizer(groups, "adamw", 1e-3, (0.9, 0.98), 1e-6, CPU)
    schedule = LRSchedule(opt, ScheduleConfig(lr=1e-3, total_steps=10, warmup_steps=2))
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([2.5e-4, 2.5e-4, 5e-4, 5e-4])
    schedule.step()
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([5e-4, 5e-4, 1e-3, 1e-3])
    adam = make_optimizer(param_groups(model, 0.1), "adam", 1e-3, (0.9, 0.98), 1e-6, CPU)
    assert all(g["weight_decay"] == 0.0 for g in adam.param_groups)  # Adam: no coupled L2 in disguise


def test_frozen_batchnorm_statistics_normalise_with_the_batch_and_restore_running_stats():
    bn = nn.BatchNorm1d(3).train()
    x = torch.randn(16, 3) * 4 + 2
    with frozen_batchnorm_statistics(bn):
        y = bn(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)  # batch statistics were used
    assert torch.equal(bn.running_mean, torch.zeros(3)) and int(bn.num_batches_tracked) == 0
    bn(x)
    assert int(bn.num_batches_tracked) == 1 and not torch.equal(bn.running_mean, torch.zeros(3))


# --- accumulation with every random layer on -------------------------------------------------------------------------

def test_accumulation_equals_one_graph_with_dropout_specaugment_and_batchnorm_in_train_mode():
    """k micro-batches in two passes give the loss, the gradients, the BatchNorm statistics and the RNG state of
    the same k micro-batches embedded with gradients in one graph (what a machine with memory for the whole
    batch computes with per-micro-batch BatchNorm, as each rank has under DDP; running statistics from the first
    micro-batch, as DDP keeps rank 0's)."""
    from clapkit.api import CLAP
    from clapkit.losses import ClipLoss
    from clapkit.models.clap import load_model_config
    from clapkit.train import train_step
    from tests.test_train import _batch

    cfg = load_model_config("clap-tiny-htsat-gpt2")  # dropout, drop-path and SpecAugment on
    assert cfg["audio_encoder"]["drop_path_rate"] > 0 and cfg["audio_encoder"]["time_mask_stripes"] > 0
    clap = CLAP.from_config(cfg, seed=0)
    batch = _batch(clap, n=8)
    fp32 = Precision("fp32", CPU)

    def one_graph(model, k):
        size = 8 // k
        parts = []
        for i in range(k):
            with frozen_batchnorm_statistics(model) if i > 0 else contextlib.nullcontext():
                parts.append(model(batch["wave"][i * size:(i + 1) * size], batch["input_ids"][i * size:(i + 1) * size],
                                   batch["attention_mask"][i * size:(i + 1) * size]))
        loss = ClipLoss()(torch.cat([p["audio_embeds"] for p in parts]), torch.cat([p["text_embeds"] for p in parts]),
                          parts[0]["logit_scale"])
        loss.backward()
        return float(loss.detach())

    results = {}
    for how in ("one_graph", "accumulated", "other_seed"):
        model = copy.deepcopy(clap.model).train()
        torch.manual_seed(11 if how != "other_seed" else 12)
        loss = one_graph(model, 4) if how != "accumulated" else train_step(model, batch, ClipLoss(), 4, fp32)
        results[how] = {"loss": loss, "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                        "bn": {k: v.clone() for k, v in model.audio.encoder.bn0.state_dict().items()},
                        "rng_after": torch.rand(4)}
    ref, acc = results["one_graph"], results["accumulated"]
    assert acc["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert ref["grads"].keys() == acc["grads"].keys()
    for name in ref["grads"]:
        torch.testing.assert_close(acc["grads"][name], ref["grads"][name], rtol=1e-4, atol=1e-6, msg=name)
    for key in ref["bn"]:  # updated once per step (the gradient pass's first micro-batch), not once per pass
        torch.testing.assert_close(acc["bn"][key], ref["bn"][key], rtol=0, atol=0, msg=key)
    assert int(acc["bn"]["num_batches_tracked"]) == 1
    assert torch.equal(acc["rng_after"], ref["rng_after"])  # the loop draws on as if each clip ran once
    # the random layers do act: another seed gives other gradients
    name = "audio.encoder.patch_embed.proj.weight"
    assert not torch.allclose(results["other_seed"]["grads"][name], ref["grads"][name], rtol=1e-3, atol=1e-6)


# --- identities in whole runs ----------------------------------------------------------------------------------------

def _run(prepared, tmp, **kw):
    from clapkit.models.clap import load_model_config
    from clapkit.train import train
    from tests.test_train import train_config

    cfg = train_config(tmp, prepared, max_steps=4, checkpoint_every=2, timings=str(tmp / "timings.json"), **kw)
    train(cfg, load_model_config("clap-tiny-htsat-gpt2"), seed=0, progress=False)
    return json.loads((tmp / "timings.json").read_text())["resumed_from_step"]


def _kill_after(tmp: Path, step: int) -> None:
    """What a kill -9 right after the step-``step`` checkpoint leaves: no later checkpoint."""
    from clapkit.training_state import list_checkpoints

    for run in (tmp / "ckpt").glob("run-*"):
        for s, path in list_checkpoints(run):
            if s > step:
                path.with_suffix(".json").unlink()
                path.unlink()


def test_a_changed_code_hash_or_corpus_trains_afresh_and_a_kill_resumes(prepared, tmp_path, monkeypatch):
    import clapkit.training_state as ckpt

    assert _run(prepared, tmp_path) == 0
    _kill_after(tmp_path, 2)
    assert _run(prepared, tmp_path) == 2  # same identity, unfinished: resumed
    assert _run(prepared, tmp_path) == 0  # finished: never resumed, trained afresh
    _kill_after(tmp_path, 2)
    real_code_hash = ckpt.code_hash()
    monkeypatch.setattr(ckpt, "code_hash", lambda *a, **k: "an-edited-package")
    assert _run(prepared, tmp_path) == 0  # an edit to the package (losses.py, ...) is another identity
    monkeypatch.setattr(ckpt, "code_hash", lambda *a, **k: real_code_hash)
    _kill_after(tmp_path, 2)
    # the same corpus with one sample changed (e.g. a new split_salt, a re-decoded clip) is another identity
    copy_dir = tmp_path / "prepared-copy"
    shutil.copytree(prepared, copy_dir)
    assert _run(copy_dir, tmp_path / "c") == 0
    _kill_after(tmp_path / "c", 2)
    assert _run(copy_dir, tmp_path / "c") == 2
    _kill_after(tmp_path / "c", 2)
    wave = np.memmap(copy_dir / "waveforms.f16", dtype=np.float16, mode="r+")
    wave[100] = wave[100] + np.float16(0.25)
    wave.flush()
    del wave
    assert _run(copy_dir, tmp_path / "c") == 0


def test_code_and_corpus_hashes_follow_content(tmp_path):
    from clapkit.training_state import code_hash, corpus_hash

    pkg = tmp_path / "pkg"
    shutil.copytree(Path(__file__).parents[1] / "clapkit", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = code_hash(pkg)
    assert before == code_hash(pkg)
    (pkg / "losses.py").write_text((pkg / "losses.py").read_text() + "\n# an edit\n")
    assert code_hash(pkg) != before
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(b"abc")
    memo = tmp_path / "memo.json"
    first = corpus_hash(data, memo)
    assert memo.is_file() and corpus_hash(data, memo) == first == corpus_hash(data)
    (data / "a.bin").write_bytes(b"abd")  # same size; the mtime moves, so the memo is not trusted
    assert corpus_hash(data, memo) != first


@pytest.mark.slow  # ~45 s: a real training process, killed and resumed
def test_a_real_kill_mid_run_resumes_to_the_weights_of_an_uninterrupted_run(prepared, tmp_path):
    """``clapkit train`` in a subprocess, SIGKILLed once its third checkpoint is on disk, then rerun: it resumes
    there and ends with the same weights and metrics as a run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import yaml

    from clapkit.api import CLAP
    from clapkit.models.clap import load_model_config

    def params(name):
        d = tmp_path / name
        return {"preset": "embedded", "seed": 0,
                "frontend": {"embedded": load_model_config("clap-tiny-htsat-gpt2")["frontend"]},
                "model": {"embedded": "clap-tiny-htsat-gpt2", "paper": "msclap-2023"},
                "train": {"prepared": str(prepared), "out": str(d / "clap"), "checkpoint_dir": str(d / "ckpt"),
                          "metrics": str(d / "metrics.json"), "live_dir": str(d / "live"),
                          "timings": str(d / "timings.json"), "max_steps": 20, "batch_size": 8, "warmup_steps": 2,
                          "checkpoint_every": 1, "keep_checkpoints": 3, "audio_init": "none", "log_every": 1,
                          "threads": 1, "precision": "fp32", "device": "cpu", "val_max_clips": 8}}

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}

    def command(name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(params(name)))
        return [sys.executable, "-m", "clapkit.cli", "train", "--params", str(path), "--no-progress"]

    subprocess.run(command("straight"), check=True, env=env, capture_output=True, timeout=600)
    proc = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "killed" / "ckpt").glob("run-*/step_00000003.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its third checkpoint"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "metrics.json").exists()  # killed mid-run (20 steps), not after
    subprocess.run(command("killed"), check=True, env=env, capture_output=True, timeout=600)
    timings = json.loads((tmp_path / "killed" / "timings.json").read_text())
    assert 3 <= timings["resumed_from_step"] < 20
    a = CLAP.from_pretrained(tmp_path / "straight" / "clap").model.state_dict()
    b = CLAP.from_pretrained(tmp_path / "killed" / "clap").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "straight" / "metrics.json").read_text())
