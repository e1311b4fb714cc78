"""The whole pipeline, end to end, on a tiny slice of the corpus: `clapkit data build` + `dvc repro` in a copy
of the repository, with a params override.  A broken stage cannot land."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clapkit.grid import TINY as TINY_STAGES

pytestmark = pytest.mark.slow  # clapkit data build + dvc repro of every stage: ~5-8 min

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["embedded"]


TINY = {
    # three small Debian packages (one of each kind of labels) and a few clips per generator
    "data.debian_sources": ["freedesktop-sounds", "scratch", "xemacs"],
    "data.synth": {"espeak": {"n_clips": 24}, "flite": {"n_clips": 12}, "fluidsynth": {"n_clips": 24},
                   "sox": {"n_clips": 16}},
    "prepare.limit_per_source": 25,
    # the transfer test on sources of the slice (the default ones are not in it): an environmental package and a
    # speech synthesiser (its gender, 2 labels) held out of training
    "prepare.transfer_sources": ["debian:xemacs21-basesupport", "synth:flite"],
    # a few optimiser steps per training stage (the tiny grid's): every stage runs and hands over its output
    **TINY_STAGES,
    # the captioner: a few steps of a 1-layer decoder, a few test clips
    "caption.steps": 6, "caption.eval_clips": 8, "caption.examples": 3, "caption.beam_size": 2,
    "caption.entry_length": 8, "caption.decoder": {"n_layer": 1, "n_embd": 32, "n_head": 2},
    "caption.mapper": {"prefix_length": 2, "clip_length": 2, "num_layers": 1, "num_heads": 2, "mlp_ratio": 2.0},
    # first the from-scratch pair, so that the multi-task pretraining runs and hands its encoder to train; the
    # default's packaged towers (aisfx + MiniLM, frozen) run last (DEFAULT_MODEL)
    "model.embedded": "clap-small-htsat-gpt2",
}


def run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
    return res.stdout + res.stderr


def copy_tracked_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    for rel in filter(None, files.stdout.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def test_pipeline_end_to_end_on_a_tiny_slice(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    copy_tracked_tree(ws)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]  # clapkit, dvc, papermill of this venv
    env["HF_HUB_OFFLINE"] = "1"
    run(["git", "init", "-q"], ws, env)
    run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "add", "-A"], ws, env)
    run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "commit", "-qm", "copy"], ws, env)

    params = yaml.safe_load((ws / "params.yaml").read_text())
    for dotted, value in TINY.items():
        block, key = dotted.split(".")
        params[block][key] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["clapkit", "data", "build", "--params", "params.yaml"], ws, env)
    check = run(["clapkit", "data", "check"], ws, env)
    assert "differs" in check  # the tiny corpus is not the tracked one, and the check says so
    out = run(["dvc", "repro"], ws, env)
    for stage in ["prepare", "pretrain", "train", "evaluate", "caption"]:
        assert f"Running stage '{stage}'" in out, stage

    metrics = json.loads((ws / "metrics/data.json").read_text())
    for key in ["clips_total", "clips_real", "clips_environmental", "environmental_labels", "tasks", "quarantined"]:
        assert key in metrics
    assert 0 < metrics["clips_real"] < metrics["clips_total"] <= 25 * 7
    assert metrics["clips_environmental"] > 0 and metrics["environmental_labels"] > 1 and metrics["tasks"] >= 5
    html = (ws / "reports/01_data.html").read_text()
    assert "Quarantined" in html and "Clips per source" in html and "Traceback" not in html

    # pretrain: per-task exact match with chance beside it, and the encoder weights train starts from
    pm = json.loads((ws / "metrics/pretrain.json").read_text())
    assert pm["steps"] == 4 and pm["num_tasks"] >= 5
    for task, t in pm["tasks"].items():
        assert 0 <= t["accuracy"] <= 1 and abs(t["chance"] - 1 / t["classes"]) < 1e-3, task
    assert (ws / "models/pretrain/audio_encoder.safetensors").is_file()

    # train: started from the pretrained encoder, validated per task, saved with save_pretrained
    tm = json.loads((ws / "metrics/train.json").read_text())
    assert tm["step"] == 4 and 0.01 <= tm["temperature"] <= 1
    assert tm["val_zeroshot"] and tm["init"][0]["path"].endswith("audio_encoder.safetensors")
    (final_ckpt,) = (ws / "checkpoints/train").glob("run-*/step_00000004.pt")  # one folder per run identity
    assert json.loads(final_ckpt.with_suffix(".json").read_text())["finished"] is True
    wav = next((ws / "data/sox").rglob("*.wav"))
    zs = run(["clapkit", "zeroshot", "--model", "models/clap", "--labels", "sine tone,white noise", str(wav)], ws, env)
    assert "sine tone" in zs and "white noise" in zs

    # evaluate: every embedded task scored, retrieval, confusion plots, notebook
    em = json.loads((ws / "metrics/evaluate.json").read_text())
    tasks = json.loads((ws / "prepared/tasks.json").read_text())
    assert set(em["zero_shot"]) == set(tasks)
    assert all(0 <= v <= 1 for v in em["zero_shot"].values())
    assert "embedded_zero_shot_score" in em
    # the transfer test: the held-out sources reach only the transfer split, and lead the stage's metrics
    held = set(TINY["prepare.transfer_sources"])
    manifest = [json.loads(line) for line in (ws / "prepared/manifest.jsonl").read_text().splitlines()]
    assert {r["split"] for r in manifest if r["source"] in held} == {"transfer"}
    assert all(r["split"] != "transfer" for r in manifest if r["source"] not in held)
    assert list(em)[0] == "transfer_zero_shot_score" and em["transfer_entries"] >= 1
    assert 0 <= em["transfer_zero_shot_score"] <= 1 and 0 < em["transfer_chance"] < 1
    for source, per_task in em["transfer"].items():
        for task, e in per_task.items():
            assert source in held and e["ci95_low"] <= e["accuracy"] <= e["ci95_high"], (source, task)
    assert 0 <= em["retrieval"]["corpus_retrieval"]["a2t"]["R@1"] <= 1
    confusion = sorted((ws / "plots/evaluate").glob("confusion_*.csv"))
    assert confusion and confusion[0].read_text().splitlines()[0] == "actual,predicted"
    # caption: the captioner's scores beside its two reference points; the saved folder captions a file
    cm = json.loads((ws / "metrics/caption.json").read_text())
    assert cm["clips"] == 8 and 0 <= cm["bleu_1"] <= 1 and cm["cider_d"] >= 0
    assert set(cm["baselines"]) == {"prior", "nearest_training_clip"}
    cap = run(["clapkit", "caption", "--model", "models/caption", "--greedy", "--entry-length", "5", str(wav)], ws, env)
    assert cap.startswith(f"{wav}\t")
    for report, words in [("02_pretrain", []), ("03_train", ["Similarity matrix"]),
                          ("06_caption", ["Scores on the test split", "Example captions beside their references"]),
                          ("04_evaluate", ["Transfer test (the headline)", "Results table", "Confusion matrices"])]:
        html = (ws / f"reports/{report}.html").read_text()
        assert "Traceback" not in html and all(w in html for w in words), report

    # a second repro with nothing changed runs nothing, and rewrites nothing
    lock = (ws / "dvc.lock").read_bytes()
    notebooks = {p: p.read_bytes() for p in (ws / "reports").glob("*.ipynb")}
    again = run(["dvc", "repro"], ws, env)
    assert "Running stage" not in again
    assert (ws / "dvc.lock").read_bytes() == lock
    assert all(p.read_bytes() == b for p, b in notebooks.items())

    shown = json.dumps(json.loads(run(["dvc", "metrics", "show", "--json"], ws, env)))
    for m in ["metrics/data.json", "metrics/pretrain.json", "metrics/train.json", "metrics/evaluate.json",
              "transfer_zero_shot_score", "metrics/caption.json", "cider_d"]:
        assert m in shown, m

    # a forced rerun of a finished stage is never answered from the finished run's checkpoint: it trains afresh,
    # and (deterministic on the CPU) ends with the same metrics
    shutil.rmtree(ws / "models/clap")
    again = run(["dvc", "repro", "-f", "--single-item", "train"], ws, env)
    assert "a finished run of the same identity is not resumed" in again and "resumed from" not in again
    assert json.loads((ws / "metrics/train.json").read_text()) == tm

    # DVC's run-cache keeps every pretraining: another pretrain.seed runs, going back restores the first one without
    # running (what lets the grid's experiments share an encoder); the top-level seed (train's) leaves pretrain alone
    encoder = (ws / "models/pretrain/audio_encoder.safetensors").read_bytes()
    for pretrain_seed, expect in [(1, "Running stage 'pretrain'"), (0, "Stage 'pretrain' is cached")]:
        params["pretrain"]["seed"] = pretrain_seed
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = run(["dvc", "repro", "--single-item", "pretrain"], ws, env)
        assert expect in out, out[-2000:]
        assert ((ws / "models/pretrain/audio_encoder.safetensors").read_bytes() == encoder) == (pretrain_seed == 0)
    params["seed"] = 1
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "--json"], ws, env)
    assert "pretrain" not in json.loads(status) and "train" in json.loads(status)

    # the default model (params.yaml's own model.embedded): packaged pretrained towers, both frozen; pretrain writes
    # the aisfx tower's packaged weights, train fits the projections from the towers' feature caches, evaluate runs
    params["seed"] = 0
    params["model"]["embedded"] = DEFAULT_MODEL
    for key in ("text_cache_dir", "audio_cache_dir"):  # this run's own caches: a first run, not the machine's
        params["train"][key] = str(tmp_path / key)
    params["evaluate"]["audio_cache_dir"] = str(tmp_path / "audio_cache_dir")
    params["caption"]["audio_cache_dir"] = str(tmp_path / "audio_cache_dir")
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], ws, env)
    for stage in ["pretrain", "train", "evaluate", "caption"]:
        assert f"Running stage '{stage}'" in out, stage
    assert json.loads((ws / "metrics/pretrain.json").read_text())["mode"] == "packaged:aisfx"
    tm = json.loads((ws / "metrics/train.json").read_text())
    assert tm["step"] == 4 and tm["init"][0]["path"].endswith("audio_encoder.safetensors")  # pretrain's: aisfx's
    assert [e.get("packaged") for e in tm["init"]][1:] == ["minilm"]
    em = json.loads((ws / "metrics/evaluate.json").read_text())
    assert 0 <= em["transfer_zero_shot_score"] <= 1 and set(em["zero_shot"]) == set(tasks)
    assert list((tmp_path / "audio_cache_dir").glob("aisfx-*.safetensors"))  # the tower's clip features, kept

    # training from WebDataset shards (issue 17): the tiny slice's corpus to FLAC shards with 2 workers, then the
    # default model trains from them; every output of that run goes to tmp_path (the DVC outputs stay as they are)
    run(["clapkit", "shards", "build", "--corpus", "data", "--out", "shards", "--workers", "2", "--shard-size", "40",
         "--no-progress"], ws, env)
    samples = [json.loads(line) for line in (ws / "shards/samples.jsonl").read_text().splitlines()]
    train_rows = [r for r in manifest if r["split"] == "train"]
    assert len([s for s in samples if s["split"] == "train"]) == len(train_rows) and len(list(
        (ws / "shards").glob("train-*.tar"))) >= 2
    sharded = copy.deepcopy(params)
    sharded["train"].update(shards="shards", out=str(tmp_path / "clap-shards"), checkpoint_dir=str(tmp_path / "ckpt"),
                            metrics=str(tmp_path / "train-shards.json"), live_dir=str(tmp_path / "live"), timings=None)
    (ws / "params-shards.yaml").write_text(yaml.safe_dump(sharded, sort_keys=False))
    run(["clapkit", "train", "--params", "params-shards.yaml", "--no-progress"], ws, env)
    assert json.loads((tmp_path / "train-shards.json").read_text())["step"] == 4
    record = json.loads((tmp_path / "clap-shards/config.json").read_text())["training_data"]
    assert record["clips"] == len({s["content_hash"] for s in samples if s["split"] == "train"})
