"""How much of each label task a linear classifier reads off a frozen audio encoder's clip embedding.

Pretraining is there to hand contrastive training a better audio encoder, so behind the pretrain stage's answer
accuracies stands a second question: did the *encoder* get better?  ``probe_encoder`` fits the evaluate stage's
deterministic logistic regression (``clapkit.evaluate.linear_probe``: standardised features, zero init, L-BFGS)
on train-split clips of each label task and scores held-out test clips, for three feature sets side by side:

* ``pretrained``: the pretrain stage's encoder (``pretrain.out``);
* ``initial``: the seeded initial encoder the stage started from (what ``pretrain.tasks: none`` writes);
* ``mean_logmel``: the clip's log-mel spectrum averaged over time, no encoder at all, a floor for any encoder.

The probe is the evaluate stage's (``clapkit.probe``): the same training clips per class (params.yaml
``evaluate.probe_train_per_class``, walked in one hash order of the clip ids), L-BFGS steps and weight decay
(``evaluate.probe_steps``, ``probe_weight_decay``), and the same rule: a task whose test classes do not all have
2 training clips is reported as not probed.  Test clips: the first ``test_per_task`` in that hash order.  Clips
are centre-cropped as at evaluation, so the numbers depend only on the weights and the data.
``clapkit probe-encoder --params params.yaml [--tasks gender,tone] [--out FILE]``.
Not a DVC stage: a diagnostic (docs/pretraining.md): ~25 s for three tasks, 1.5 min for all 16 here.
"""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .audio import FrontendConfig, LogMelFrontend
from .config import frontend_config, load_params, model_config_from_params
from .atomic_files import write_json
from .evaluate import EvaluateConfig
from .metrics import accuracy
from .probe import hash_order, probe_logits, select_per_class, unprobed_reason
from .pretrain import PretrainConfig, load_pretrained_audio_encoder
from .pretrain_tasks import clip_wave

__all__ = ["FEATURE_SETS", "probe_encoder"]

FEATURE_SETS = ("pretrained", "initial", "mean_logmel")


def _test_rows(corpus, task: str, classes: Sequence[str], limit: int) -> list[int]:
    rows = [i for i, r in enumerate(corpus.rows) if r["split"] == "test" and r["labels"].get(task) in classes]
    return sorted(sorted(rows, key=lambda i: hash_order(corpus.rows[i]["id"]))[:limit])


def _train_rows(corpus, task: str, classes: Sequence[str], per_class: int) -> list[int]:
    rows = [i for i, r in enumerate(corpus.rows) if r["split"] == "train" and r["labels"].get(task) in classes]
    return [rows[k] for k in select_per_class([corpus.rows[i]["id"] for i in rows],
                                              [corpus.rows[i]["labels"][task] for i in rows], per_class)]


@torch.no_grad()
def probe_encoder(prepared: str | Path, frontend: FrontendConfig, encoder_cfg: Mapping[str, Any],
                  pretrained_dir: str | Path, tasks: Sequence[str] | None = None, seed: int = 0,
                  probe: EvaluateConfig | None = None, test_per_task: int = 150,
                  batch_size: int = 64) -> dict[str, Any]:
    """``{task: {"classes", "train_clips", "test_clips", "chance", "pretrained", "initial", "mean_logmel"}}``:
    held-out accuracy of a linear probe on each feature set (``tasks`` None = every single-label task with clips
    in both the train and the test split); a task that cannot be probed has ``"not_probed"`` (why) instead of the
    accuracies.  ``probe``: the probe's settings (``probe_train_per_class``, ``probe_steps``,
    ``probe_weight_decay``), params.yaml's ``evaluate`` block; ``seed``: the initial encoder's."""
    from .data.prepare import PreparedCorpus
    from .models import build_audio_encoder

    probe = probe or EvaluateConfig()
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
        split_rows = {"train": _train_rows(corpus, task, classes, probe.probe_train_per_class),
                      "test": _test_rows(corpus, task, classes, test_per_task)}
        if not split_rows["train"] or not split_rows["test"]:
            continue
        labels = {split: [corpus.rows[r]["labels"][task] for r in rows] for split, rows in split_rows.items()}
        entry: dict[str, Any] = {"classes": len(classes), "train_clips": len(split_rows["train"]),
                                 "test_clips": len(split_rows["test"]), "chance": round(1.0 / len(classes), 4)}
        note = unprobed_reason(labels["train"], labels["test"])
        if note is not None:
            results[task] = dict(entry, not_probed=note)
            continue
        features: dict[str, dict[str, torch.Tensor]] = {name: {} for name in FEATURE_SETS}
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
        test_targets = torch.tensor([classes.index(c) for c in labels["test"]])
        for name in FEATURE_SETS:
            logits = probe_logits(features[name]["train"], labels["train"], features[name]["test"], classes,
                                  multi_label=False, steps=probe.probe_steps, weight_decay=probe.probe_weight_decay)
            entry[name] = round(accuracy(logits, test_targets), 4)
        results[task] = entry
    return results


def _cmd_probe(args) -> int:
    params = load_params(args.params)
    cfg = PretrainConfig.from_params(params)
    _, model_config = model_config_from_params(params)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    tasks = args.tasks.split(",") if args.tasks else None
    probe = EvaluateConfig.from_params(params)  # the evaluate stage's probe: one setting for both
    if args.train_per_class is not None:
        probe = replace(probe, probe_train_per_class=args.train_per_class)
    results = probe_encoder(cfg.prepared, frontend_config(params), model_config["audio_encoder"],
                            args.encoder or cfg.out, tasks, seed=cfg.seed, probe=probe,
                            test_per_task=args.test_per_task)
    print(f"{'task':18s} {'chance':>7s} " + " ".join(f"{n:>11s}" for n in FEATURE_SETS))
    for task, r in results.items():
        if "not_probed" in r:
            print(f"{task:18s} {r['chance']:7.3f} {r['not_probed']}")
        else:
            print(f"{task:18s} {r['chance']:7.3f} " + " ".join(f"{r[n]:11.3f}" for n in FEATURE_SETS))
    if args.out:
        write_json(args.out, results, allow_nan=False)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("probe-encoder", help="linear probe of the pretrained audio encoder against its "
                                                    "initial weights and the mean log-mel, per label task")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--encoder", help="directory or audio_encoder.safetensors (default: pretrain.out)")
    p.add_argument("--tasks", help="comma-separated label tasks (default: every single-label task)")
    p.add_argument("--train-per-class", type=int,
                   help="training clips per class (default: params.yaml evaluate.probe_train_per_class)")
    p.add_argument("--test-per-task", type=int, default=150)
    p.add_argument("--out", help="also write the results as JSON here")
    p.set_defaults(func=_cmd_probe)
