"""(Pretrain +) train + evaluate one variant of params.yaml (block.key=value overrides) into <out>/<name>, with every
output of those stages redirected there, so the workspace and dvc.lock are untouched; it reuses the workspace's
prepared/, and its models/pretrain unless an override touches the pretrain block (then the variant pretrains its
own encoder into <out>/<name>/pretrain).  Prints and writes summary.json: wall times, the transfer score (held-out
and training wordings), the in-domain zero-shot and probe scores.  docs/results.md quotes its runs, e.g.:

    python benchmarks/variants.py /tmp/v minilm_frozen model.text_encoder=minilm train.freeze_text=true
    python benchmarks/variants.py /tmp/v pretrain1200 pretrain.steps=1200
    python benchmarks/variants.py /tmp/v default_seed1 seed=1
"""
import json
import pathlib
import subprocess
import sys
import time

import yaml

out_dir, name, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
root = pathlib.Path(out_dir) / name
root.mkdir(parents=True, exist_ok=True)
p = yaml.safe_load(open("params.yaml"))
p["train"].update(out=str(root / "clap"), checkpoint_dir=str(root / "ckpt"), metrics=str(root / "train.json"),
                  live_dir=str(root / "live"))
p["evaluate"].update(model=str(root / "clap"), results=str(root / "results"), plots=str(root / "plots"),
                     metrics=str(root / "evaluate.json"), timings=None)
for o in overrides:
    key, value = o.split("=", 1)
    *path, last = key.split(".")  # block.key[.subkey] or a top-level key (seed=1)
    node = p
    for q in path:
        node = node[q]
    node[last] = yaml.safe_load(value)
own_pretrain = any(o.startswith("pretrain.") for o in overrides)
if own_pretrain:
    p["pretrain"].update(out=str(root / "pretrain"), metrics=str(root / "pretrain.json"),
                         loss_log=str(root / "pretrain_loss.csv"), checkpoint_dir=str(root / "pretrain_ckpt"),
                         timings=str(root / "pretrain_timings.json"))
    p["train"]["pretrain_dir"] = str(root / "pretrain")
pf = root / "params.yaml"
pf.write_text(yaml.safe_dump(p, sort_keys=False))
tp = time.time()
if own_pretrain:
    subprocess.run(["clapkit", "pretrain", "--params", str(pf), "--no-progress"], check=True)
t0 = time.time()
subprocess.run(["clapkit", "train", "--params", str(pf)], check=True)
t1 = time.time()
subprocess.run(["clapkit", "evaluate", "--params", str(pf)], check=True)
t2 = time.time()
ev = json.load(open(root / "evaluate.json"))
out = {"variant": name, "overrides": overrides, "pretrain_s": round(t0 - tp, 1) if own_pretrain else None,
       "train_s": round(t1 - t0, 1), "evaluate_s": round(t2 - t1, 1),
       **{k: ev.get(k) for k in ("transfer_zero_shot_score", "transfer_zero_shot_score_training_wordings",
                                 "transfer_chance", "transfer_entries_above_chance", "embedded_zero_shot_score",
                                 "embedded_linear_probe_score")}}
print(json.dumps(out))
(root / "summary.json").write_text(json.dumps(out, indent=1))
