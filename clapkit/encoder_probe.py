"""How much of each label task a linear classifier reads off a frozen audio encoder's clip embedding.

Pretraining is there to hand contrastive training a better audio encoder, so behind the pretrain stage's answer
accuracies stands a second question: did the *encoder* get better?  ``probe_encoder`` fits the evaluate stage's
deterministic logistic regression (``clapkit.evaluate.linear_probe``: standardised features, zero init, L-BFGS)
on train-split clips of each label task and scores held-out test clips, for three feature sets side by side:

* ``pretrained``: the pretrain stage's encoder (``pretrain.out``);
* ``initial``: the seeded initial encoder the stage started from (what ``pretrain.tasks: none`` writes);
* ``mean_logmel``: the clip's log-mel spectrum averaged over time, no encoder at all, a floor for any encoder.

Clips are centre-cropped as at evaluation and drawn in a fixed order per task, so the numbers depend only on
the weights and the data.  ``clapkit probe-encoder --params params.yaml [--tasks gender,tone] [--out FILE]``.
Not a DVC stage: a diagnostic (README, stage pretrain): ~25 s for three tasks, 1.5 min for all 16 here.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .audio import FrontendConfig, LogMelFrontend
from .config import frontend_config, load_params, model_config_from_params
from .evaluate import linear_probe, write_json
from .pretrain import PretrainConfig, load_pretrained_audio_encoder
from .pretrain_tasks import clip_wave

__all__ = ["FEATURE_SETS", "probe_encoder"]

FEATURE_SETS = ("pretrained", "initial", "mean_logmel")


def _split_rows(corpus, task: str, classes: Sequence[str], split: str, limit: int, seed: int) -> list[int]:
    rows = [i for i, r in enumerate(corpus.rows) if r["split"] == split and r["labels"].get(task) in classes]
    random.Random(f"{seed}-probe-{task}-{split}").shuffle(rows)
    return sorted(rows[:limit])


@torch.no_grad()
def probe_encoder(prepared: str | Path, frontend: FrontendConfig, encoder_cfg: Mapping[str, Any],
                  pretrained_dir: str | Path, tasks: Sequence[str] | None = None, seed: int = 0,
                  train_per_task: int = 400, test_per_task: int = 150, probe_steps: int = 100,
                  weight_decay: float = 1e-3, batch_size: int = 64) -> dict[str, Any]:
    """``{task: {"classes", "train_clips", "test_clips", "chance", "pretrained", "initial", "mean_logmel"}}``:
    held-out accuracy of a linear probe on each feature set (``tasks`` None = every single-label task with clips
    in both the train and the test split)."""
    from .data.prepare import PreparedCorpus
    from .models import build_audio_encoder

    corpus = PreparedCorpus(prepared)
    torch.manual_seed(seed)  # the stage seeds the same way before building its encoder: the same initial weights
    encoders = {"initial": build_audio_encoder(encoder_cfg)}
    encoders["pretrained"] = build_audio_encoder(encoder_cfg)
    load_pretrained_audio_encoder(pretrained_dir, encoders["pretrained"])  # strict: a mismatch names the keys
    for enc in encoders.values():
        enc.eval()
    logmel = LogMelFrontend(frontend).eval()
    names = list(tasks) if tasks is not None else sorted(
        t for t, spec in corpus.tasks.items() if not spec.get("multi_label"))
    unknown = [t for t in names if t not in corpus.tasks]
    if unknown:
        raise ValueError(f"{prepared}: no label task(s) {unknown} (it has {sorted(corpus.tasks)})")
    results: dict[str, Any] = {}
    for task in names:
        classes = list(corpus.tasks[task]["classes"])
        split_rows = {"train": _split_rows(corpus, task, classes, "train", train_per_task, seed),
                      "test": _split_rows(corpus, task, classes, "test", test_per_task, seed)}
        if not split_rows["train"] or not split_rows["test"]:
            continue
        features: dict[str, dict[str, torch.Tensor]] = {name: {} for name in FEATURE_SETS}
        targets = {}
        for split, rows in split_rows.items():
            parts: dict[str, list[torch.Tensor]] = {name: [] for name in FEATURE_SETS}
            for start in range(0, len(rows), batch_size):
                waves = torch.stack([clip_wave(corpus, r, frontend.clip_samples, None)
                                     for r in rows[start : start + batch_size]])
                mel = logmel(waves)
                parts["mean_logmel"].append(mel.mean(dim=1))
                for name, enc in encoders.items():
                    parts[name].append(enc(mel).float())
            for name in FEATURE_SETS:
                features[name][split] = torch.cat(parts[name])
            targets[split] = torch.tensor([classes.index(corpus.rows[r]["labels"][task]) for r in rows])
        entry: dict[str, Any] = {"classes": len(classes), "train_clips": len(split_rows["train"]),
                                 "test_clips": len(split_rows["test"]), "chance": round(1.0 / len(classes), 4)}
        for name in FEATURE_SETS:
            scores = linear_probe(features[name]["train"], targets["train"], features[name]["test"], len(classes),
                                  multi_label=False, steps=probe_steps, weight_decay=weight_decay)
            entry[name] = round(float((scores.argmax(dim=1) == targets["test"]).float().mean()), 4)
        results[task] = entry
    return results


def _cmd_probe(args) -> int:
    params = load_params(args.params)
    cfg = PretrainConfig.from_params(params)
    _, model_config = model_config_from_params(params)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    tasks = args.tasks.split(",") if args.tasks else None
    results = probe_encoder(cfg.prepared, frontend_config(params), model_config["audio_encoder"],
                            args.encoder or cfg.out, tasks, seed=cfg.seed,
                            train_per_task=args.train_per_task, test_per_task=args.test_per_task)
    print(f"{'task':18s} {'chance':>7s} " + " ".join(f"{n:>11s}" for n in FEATURE_SETS))
    for task, r in results.items():
        print(f"{task:18s} {r['chance']:7.3f} " + " ".join(f"{r[n]:11.3f}" for n in FEATURE_SETS))
    if args.out:
        write_json(args.out, results)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("probe-encoder", help="linear probe of the pretrained audio encoder against its "
                                                    "initial weights and the mean log-mel, per label task")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--encoder", help="directory or audio_encoder.safetensors (default: pretrain.out)")
    p.add_argument("--tasks", help="comma-separated label tasks (default: every single-label task)")
    p.add_argument("--train-per-task", type=int, default=400)
    p.add_argument("--test-per-task", type=int, default=150)
    p.add_argument("--out", help="also write the results as JSON here")
    p.set_defaults(func=_cmd_probe)
