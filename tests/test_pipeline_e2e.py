"""The whole pipeline, end to end, on a tiny slice of the corpus: `clapkit data build` + `dvc repro` in a copy
of the repository, with a params override.  A broken stage cannot land."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY = {
    # three small Debian packages (one of each kind of labels) and a few clips per generator
    "data.debian_sources": ["freedesktop-sounds", "scratch", "xemacs"],
    "data.synth": {"espeak": {"n_clips": 24}, "flite": {"n_clips": 12}, "fluidsynth": {"n_clips": 24},
                   "sox": {"n_clips": 16}},
    "prepare.limit_per_source": 25,
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
    assert "Running stage 'prepare'" in out

    metrics = json.loads((ws / "metrics/data.json").read_text())
    for key in ["clips_total", "clips_real", "clips_environmental", "environmental_labels", "tasks", "quarantined"]:
        assert key in metrics
    assert 0 < metrics["clips_real"] < metrics["clips_total"] <= 25 * 7
    assert metrics["clips_environmental"] > 0 and metrics["environmental_labels"] > 1 and metrics["tasks"] >= 5
    html = (ws / "reports/01_data.html").read_text()
    assert "Quarantined" in html and "Clips per source" in html and "Traceback" not in html

    # a second repro with nothing changed runs nothing, and rewrites nothing
    lock = (ws / "dvc.lock").read_bytes()
    nb = (ws / "reports/01_data.ipynb").read_bytes()
    again = run(["dvc", "repro"], ws, env)
    assert "Running stage" not in again
    assert (ws / "dvc.lock").read_bytes() == lock and (ws / "reports/01_data.ipynb").read_bytes() == nb

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], ws, env))
    assert any("metrics/data.json" in json.dumps(v) for v in shown.values())
