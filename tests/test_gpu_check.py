"""What can be checked of the GPU check (``benchmarks/gpu.sh`` -> ``benchmarks/gpu_check.py``) without a GPU.

The synthetic corpus (layout, labels, determinism), the params it writes (unknown knobs left out, the rest accepted
by the stages' strict configs), the dvclive stand-in against the train stage's own log trimming, the process-group
kill, and the JSON assembly (step times, weight and curve comparisons, the summary, the deadline's cuts).  The
whole run on a CPU is ``bash benchmarks/gpu.sh OUT.json --cpu-smoke`` (about two minutes here, not in the suite).
"""

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parent.parent


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = load("gpu_check", REPO / "benchmarks" / "gpu_check.py")
synth = load("synth_corpus", REPO / "benchmarks" / "synth_corpus.py")

FRONTEND = {"sample_rate": 4000, "clip_seconds": 1.0}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_synth_corpus_is_a_prepared_corpus_and_deterministic(tmp_path):
    from clapkit.data.loader import ClipCaptionDataset
    from clapkit.data.prepare import PreparedCorpus

    summary = synth.write_corpus(tmp_path / "a", 80, FRONTEND, n_val=8, n_test=8, seed=3, workers=2)
    synth.write_corpus(tmp_path / "b", 80, FRONTEND, n_val=8, n_test=8, seed=3, workers=1)
    for name in ("waveforms.f16", "manifest.jsonl", "tasks.json", "arrays.json"):
        assert digest(tmp_path / "a" / name) == digest(tmp_path / "b" / name), name  # workers change nothing
    assert not (tmp_path / "a.tmp").exists()

    corpus = PreparedCorpus(tmp_path / "a")
    assert len(corpus) == 80 and corpus.sample_rate == 4000
    assert (len(corpus.split("train")), len(corpus.split("val")), len(corpus.split("test"))) == (64, 8, 8)
    assert summary["splits"] == {"train": 64, "val": 8, "test": 8}
    assert sorted(corpus.tasks) == ["pitch", "tone", "velocity"]
    assert set(corpus.tasks["tone"]["classes"]) == set(synth.KINDS)
    for i, row in enumerate(corpus.rows):
        wave = corpus.waveform(i)
        assert 0.5 * 4000 - 1 <= len(wave) <= 4000 and row["length"] == len(wave)
        assert row["captions"] and all(isinstance(c, str) and c for c in row["captions"])
        kind = row["labels"]["tone"]
        assert np.isfinite(wave).all() and np.abs(wave).max() > 0
        if kind in synth.TONAL:  # the velocity label is the peak amplitude
            assert abs(np.abs(wave).max() - synth.VELOCITIES[row["labels"]["velocity"]]) < 2e-3
            assert row["labels"]["pitch"] in synth.PITCHES
        else:
            assert "pitch" not in row["labels"]
    # the training loader reads it (repeat-pads the shorter clips to the model's clip length)
    item = ClipCaptionDataset(corpus, corpus.split("train"), 4000, train=True)[0]
    assert item["wave"].shape == (4000,) and item["caption"]

    other = synth.write_corpus(tmp_path / "c", 80, FRONTEND, n_val=8, n_test=8, seed=4, workers=1)
    assert other["clips"] == 80 and digest(tmp_path / "c" / "waveforms.f16") != digest(tmp_path / "a" / "waveforms.f16")


def test_synth_tones_have_their_pitch():
    for note in (0, 9):  # C4, A4
        spec = {"kind": "sine tone", "fraction": 1.0, "noise_seed": [0, 0, 2], "hz": synth.note_hz(note),
                "amplitude": 0.5}
        wave = synth.synthesize(spec, 16000, 1.0)
        peak = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
        assert abs(peak - synth.note_hz(note)) < 2.0
    assert abs(synth.note_hz(9) - 440.0) < 1e-9
    with pytest.raises(ValueError):
        synth.split_of(10, 5, 5, 0)


def test_params_leave_out_unknown_knobs_and_load_strictly(tmp_path):
    from clapkit.config import load_params
    from clapkit.pretrain import PretrainConfig
    from clapkit.train import TrainConfig

    fields = gpu_check.config_fields()
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    profile = gpu_check.PROFILES["gpu"]
    params, dropped = gpu_check.build_params(
        base, "paper", {"train": {**profile["train"], "no_such_knob": 1}, "pretrain": profile["pretrain"]}, fields)
    assert "no_such_knob" in dropped["train"]
    for block, keys in dropped.items():
        assert not set(keys) & fields[block]
    assert params["preset"] == "paper" and params["train"]["max_steps"] == 100
    assert params["pretrain"]["lm"]["n_embd"] == 768  # GPT-2 base sized prefix LM
    assert base["preset"] == "embedded"  # the base is not modified
    path = tmp_path / "p.yaml"
    gpu_check.write_yaml(path, params)
    loaded = load_params(path)
    train, pretrain = TrainConfig.from_params(loaded), PretrainConfig.from_params(loaded)  # strict: no unknown key
    assert train.batch_size == 128 and pretrain.steps == 50
    for block, cfg in (("train", train), ("pretrain", pretrain)):
        for knob in ("device", "compile", "precision"):
            if knob in fields[block]:
                assert getattr(cfg, knob) == profile[block][knob]


def test_dvclive_stand_in_writes_what_train_reads_and_trims(tmp_path):
    from clapkit.train import _trim_live_logs

    standin = load("dvclive_standin", REPO / "benchmarks" / "offline" / "dvclive" / "__init__.py")
    live = standin.Live(dir=str(tmp_path / "live"), resume=False, save_dvc_exp=False, dvcyaml=False)
    for step in (2, 4, 6):
        live.step = step
        live.log_metric("train/loss", 10.0 - step)
        live.log_metric("val/zeroshot/tone", step / 10)
    live.log_params({"ignored": 1})  # any other dvclive method: accepted, nothing written
    live.end()
    loss = tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv"
    assert loss.read_text().splitlines()[0] == "step\tloss"
    assert gpu_check.read_tsv(loss) == [(2, 8.0), (4, 6.0), (6, 4.0)]
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["val"]["zeroshot"]["tone"] == 0.6

    _trim_live_logs(tmp_path / "live", 4)  # what a resume from step 4 does
    resumed = standin.Live(dir=str(tmp_path / "live"), resume=True)
    resumed.step = 6
    resumed.log_metric("train/loss", 3.5)
    assert gpu_check.read_tsv(loss) == [(2, 8.0), (4, 6.0), (6, 3.5)]
    assert gpu_check.read_tsv(tmp_path / "missing.tsv") == []


def test_run_capped_kills_the_whole_process_group(tmp_path):
    flag, pid_file = tmp_path / "flag", tmp_path / "child.pid"
    script = ("import subprocess, sys, time, pathlib\n"
              f"child = subprocess.Popen(['sleep', '60'])\n"
              f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
              f"pathlib.Path({str(flag)!r}).write_text('x')\n"
              "time.sleep(60)\n")
    start = time.perf_counter()
    result = gpu_check.run_capped([sys.executable, "-c", script], tmp_path / "log.txt", cap=30,
                                  watch=lambda elapsed: "flag seen" if flag.exists() else None)
    assert result["status"] == "killed" and result["killed"] == "flag seen" and result["rc"] == -9
    assert time.perf_counter() - start < 20
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild got the SIGKILL too (it may linger a moment as a zombie of init)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child}/stat").is_file() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the child of the killed run is still alive")

    timed_out = gpu_check.run_capped([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "t.txt", cap=0.5)
    assert timed_out["status"] == "timeout"
    ok = gpu_check.run_capped([sys.executable, "-c", "print('hi')"], tmp_path / "ok.txt", cap=30)
    assert ok["status"] == "ok" and "hi" in (tmp_path / "ok.txt").read_text()
    failed = gpu_check.run_capped([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "f.txt", cap=30)
    assert failed["status"] == "failed" and failed["rc"] == 3


def test_step_stats_curves_weights_and_json_lines(tmp_path):
    entries = [0.0, 30.0] + [30.0 + 0.5 * k for k in range(1, 20)] + [45.0]  # compile, steady 0.5 s, a validation
    stats = gpu_check.step_stats(entries, batch=128)
    assert stats["first_interval_s"] == 30.0 and stats["median_step_s"] == 0.5
    assert stats["clips_per_s_median"] == 256.0 and stats["outlier_intervals"] == 1
    assert gpu_check.step_stats([1.0], 8) is None

    assert gpu_check.compare_curves([(1, 2.0), (2, 1.5)], [(1, 2.0), (2, 1.5)])["identical"]
    diff = gpu_check.compare_curves([(1, 2.0), (2, 1.5), (3, 1.0)], [(2, 1.25), (3, 1.0)])
    assert diff["common_steps"] == 2 and diff["max_abs_diff"] == 0.25 and diff["steps_only_in_a"] == 1

    from safetensors.torch import save_file

    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}
    for name, state in (("a", a), ("same", {k: v.clone() for k, v in a.items()}),
                        ("moved", {"w": a["w"] + torch.tensor([[0, 0, 1e-3], [0, 0, 0]]), "b": a["b"]})):
        (tmp_path / name).mkdir()
        save_file(state, str(tmp_path / name / "model.safetensors"))
    same = gpu_check.compare_weights(tmp_path / "a", tmp_path / "same")
    assert same["bit_identical"] and same["max_abs_diff"] == 0.0 and same["tensors_bit_identical"] == 2
    moved = gpu_check.compare_weights(tmp_path / "a", tmp_path / "moved")
    assert not moved["bit_identical"] and moved["tensors_bit_identical"] == 1 and moved["max_abs_diff_tensor"] == "w"
    assert abs(moved["max_abs_diff"] - 1e-3) < 1e-6

    text = 'noise\n{"precision": "fp32", "pairs_per_s": 330.0}\n{broken\n{"x": 1}\n'
    assert gpu_check.json_lines(text) == [{"precision": "fp32", "pairs_per_s": 330.0}, {"x": 1}]


def test_checkpoint_watch_needs_the_sidecar(tmp_path):
    run = tmp_path / "ckpt" / "run-0123abcd"
    run.mkdir(parents=True)
    assert gpu_check.checkpoints_in(tmp_path / "ckpt") == [] and gpu_check.checkpoints_in(tmp_path / "none") == []
    (run / "step_00000010.pt").write_bytes(b"x")  # weights written, sidecar not yet: incomplete
    (run / ".step_00000020.pt.0123abcd.tmp").write_bytes(b"x")  # clapkit.atomic_files' temporary name
    assert gpu_check.checkpoints_in(tmp_path / "ckpt") == []
    (run / "step_00000010.json").write_text("{}")
    assert gpu_check.checkpoints_in(tmp_path / "ckpt") == [10]


def check_args(tmp_path, **kw):
    base = {"out": str(tmp_path / "out" / "r.json"), "cpu_smoke": False, "budget": None, "scratch": str(tmp_path / "s"),
            "keep_scratch": False, "skip": None, "only": None, "bench_args": None}
    return argparse.Namespace(**{**base, **kw})


def test_deadline_cuts_and_summary_json(tmp_path):
    check = gpu_check.Check(check_args(tmp_path, budget=100, only="train_a,cosine"))
    assert check.mode == "gpu" and check.budget == 100
    assert check.cap_for("pretrain") is None  # not in --only
    assert check.cap_for("train_a") == 100 or 99 < check.cap_for("train_a") <= 100
    check.t0 -= 95  # 5 s left: below the phase's minimum
    assert check.cap_for("cosine") is None
    saved = json.loads(Path(check.out).read_text())  # written atomically on every cut
    assert saved["phases"]["pretrain"]["status"] == "cut" and "cosine" in saved["phases"]
    assert any(c.startswith("cosine:") and "s left" in c for c in saved["cut"])

    ok = gpu_check.Check(check_args(tmp_path, budget=300))
    assert ok.cap_for("bench") == pytest.approx(150, abs=1)  # its own cap, under the time left
    ok.t0 -= 240  # 60 s left: the time left
    assert ok.cap_for("bench") == pytest.approx(60, abs=1)

    gpu = {"device": "NVIDIA H200", "peak_allocated_gib": 20.5}
    step = {"median_step_s": 0.1, "clips_per_s_median": 1280.0, "first_interval_s": 70.0}
    ok.results["phases"] = {
        "pretrain": {"status": "ok", "result": {"gpu": gpu, "step_times": step, "final_loss": 2.5}},
        "train_a": {"status": "ok", "result": {"gpu": gpu, "step_times": step, "final_train_loss": 1.0, "val_loss": 1.2}},
        "cosine": {"status": "ok", "result": {"bf16-autocast": {"audio_cosine_to_fp32": {"min": 0.999, "mean": 0.9995},
                                                                "text_cosine_to_fp32": {"min": 0.998, "mean": 0.999}}}},
        "bench": {"status": "ok", "result": {
            "models": {"audio": {"bf16-autocast": {"clapkit_per_s": 5000.0, "msclap_per_s": 2500.0,
                                                   "ratio_clapkit_over_msclap": 2.0}, "batch": 256}},
            "train": {"bf16-autocast": {"clapkit_pairs_per_s": 900.0, "msclap_pairs_per_s": 600.0,
                                        "ratio_clapkit_over_msclap": 1.5}, "batch": 128}}},
    }
    ok.results["resume"] = {"final_weights": {"bit_identical": False, "max_abs_diff": 3e-5},
                            "train_loss_curve": {"max_abs_diff": 1e-3}}
    ok.summarise()
    s = ok.results["summary"]
    assert s["gpu"] == "NVIDIA H200" and s["train_a_peak_gpu_allocated_gib"] == 20.5
    assert s["train_a_clips_per_s"] == 1280.0 and s["pretrain_final_loss"] == 2.5
    assert s["resume_bit_identical"] is False and s["resume_max_abs_weight_diff"] == 3e-5
    assert s["bf16-autocast_audio_cosine_min"] == 0.999 and s["bf16-weights_audio_cosine_min"] is None
    assert s["bench_audio_bf16-autocast"]["ratio"] == 2.0 and s["bench_train_step_bf16-autocast"]["ratio"] == 1.5
    ok.save()
    assert json.loads(Path(ok.out).read_text())["summary"]["train_val_loss"] == 1.2
