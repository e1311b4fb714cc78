"""Stage ``evaluate``: zero-shot classification, caption retrieval and a linear probe, on the paper's tasks and on
the embedded corpus, with the paper's numbers side by side; and ``clapkit evaluate --task`` for one task.

Where the parts live (their names are re-exported here):

* ``clapkit.scoring``: the protocols and what each task is scored on (a paper task on the user's copy of its
  dataset, every task of the embedded corpus);
* ``clapkit.metrics``: the metrics and their one tie rule (every metric is its average over the orders of tied
  scores: a prediction tied among m top classes earns 1/m; a tied rank is the tie group's mean rank);
* ``clapkit.zeroshot``: the zero-shot function (prompts -> text classifier -> logits), its prompt rule and its
  precision, shared with the validation inside ``train``;
* ``clapkit.probe``: the linear probe (training clips per class; a task whose test classes lack training clips
  is reported as not probed);
* ``clapkit.stats``: each accuracy's Wilson 95% interval and exact one-sided binomial test against chance,
  "significant" below ``THREE_SIGMA`` (P(Z > 3) = 0.00135);
* ``clapkit.embeddings`` (batches, the embedding cache), ``clapkit.embedding_map`` (the notebook's t-SNE);
* ``clapkit.transfer_eval``: the transfer test, the embedded model's headline: the clips of the sources ``prepare`` held
  out of training, scored zero-shot with label wordings no training text uses (and, beside them, the training
  wordings), per source and task;
* ``clapkit.hygiene``: no zero-shot score on clips the model trained on (its training index): every scored clip set
  is checked first, and refused unless ``allow_training_overlap``; every task is labelled ``training_overlap``.

This module: ``EvaluateConfig`` (params.yaml's ``evaluate`` block: its defaults are that block's values), the
stage (``run_stage``: metrics, results, confusion matrices, plots) and the command line, whose one-task form reads
the same block, so that it and the stage give the same numbers for a task.

Decisions the paper leaves open are stated where they are made: DCASE 2017 Task 4's F1 counts the top-``k``
classes of each clip as its predictions (``f1_top_k``, 1 by default); mAP is the macro mean over classes that
have at least one positive clip.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embedding_map import pca, tsne
from .atomic_files import replacing, write_json, write_text
from .embeddings import EmbeddingCache
from .hygiene import OverlapGuard, TrainingOverlapError, check_dataset_task, check_split, check_stage, label_results
from .metrics import (RetrievalMetrics, accuracy, average_precision, confusion_matrix, f1_micro,
                      mean_average_precision, positive_ranks, score_classification, top_classes, top_k_shares)
from .probe import MIN_TRAIN_PER_CLASS, linear_probe
from .scoring import (ClassificationResult, caption_positives, evaluate_corpus, evaluate_dataset_task, metric_value,
                      retrieval, zero_shot_classification)
from .stats import THREE_SIGMA, significant_digits
from .tasks import CAPTIONING, CLASSIFICATION, EMBEDDED_RETRIEVAL, PAPER_TASKS, clap_scored_tasks
from .transfer_eval import evaluate_transfer, transfer_metrics
from .zeroshot import DEFAULT_PRECISION, ClapEmbedder, Embedder, class_prompts

__all__ = [
    "EvaluateConfig", "RetrievalMetrics", "ClassificationResult", "Embedder", "ClapEmbedder", "EmbeddingCache",
    "accuracy", "average_precision", "mean_average_precision", "f1_micro", "top_k_shares", "top_classes",
    "confusion_matrix", "positive_ranks", "score_classification", "zero_shot_classification", "retrieval",
    "caption_positives", "linear_probe", "evaluate_dataset_task", "evaluate_corpus", "run_stage", "summarise",
    "pca", "tsne", "class_prompts", "SIGNIFICANCE",
]  # fmt: skip

SIGNIFICANCE = (f"exact one-sided binomial test of the accuracy against chance (1 / classes), significant at "
                f"p < {THREE_SIGMA:.5f} (one-sided 3 sigma); 95% intervals: Wilson score")


@dataclass
class EvaluateConfig:
    """The ``evaluate:`` block of params.yaml; the defaults are that block's values (tests/test_evaluate.py checks),
    so the stage and ``clapkit evaluate --task`` without a params.yaml score alike."""

    model: str = "models/clap"  # a CLAP.save_pretrained directory (the train stage's output)
    prepared: str = "prepared"  # the prepare stage's output: the embedded corpus
    results: str = "results/evaluate"  # results.json, retrieval examples, embedding sample (the notebook's input)
    plots: str = "plots/evaluate"  # confusion matrices as CSV rows (actual, predicted) for `dvc plots`
    metrics: str = "metrics/evaluate.json"
    timings: str | None = "reports/timings/evaluate.json"  # wall-clock seconds: not a dvc output (varies per run)
    cache_dir: str | None = ".cache/clapkit/embeddings"  # audio embeddings per model and clip set; null = none
    audio_cache_dir: str | None = "~/.cache/clapkit/audio-features"  # a waveform tower's (aisfx) feature store
    tasks: list[str] | str = "all"  # embedded tasks to evaluate ("all" = every task of tasks.json)
    datasets: dict[str, str] = field(default_factory=dict)  # paper datasets on disk: adapter name -> folder
    batch_size: int = 64
    threads: int = 1  # torch CPU threads (0 = torch's default); on this shared 2-core CPU 1 thread is ~3x faster
    precision: str = DEFAULT_PRECISION  # autocast of both towers here and in train's validation (clapkit.zeroshot)
    test_clips_per_task: int | None = 100  # evaluation clips per embedded task (hash-ordered subset); null = all
    linear_probe: bool = True
    probe_train_per_class: int = 10  # training clips per class for the probe (hash order), also probe-encoder's
    probe_steps: int = 50  # L-BFGS iterations
    probe_weight_decay: float = 1.0e-3
    retrieval_clips: int = 200  # test clips in the corpus retrieval task (hash-ordered subset of those with captions)
    retrieval_captions: int = 5  # captions per clip in retrieval (Clotho and AudioCaps test clips have 5)
    retrieval_examples: int = 8  # A->T queries kept with their top-5 captions for the notebook
    f1_top_k: int = 1  # DCASE 2017 Task 4 F1: each clip's k best classes are its predictions
    confusion_max_classes: int = 30  # confusion matrices for tasks with at most this many classes
    map_clips_per_task: int = 40  # test clips per task in the embedding map sample
    transfer: bool = True  # the transfer test on prepared/transfer.json's held-out sources (clapkit.transfer_eval)
    transfer_min_clips: int = 10  # fewer covered clips: a source x task is listed, not scored
    allow_training_overlap: bool = False  # score clip sets holding training clips anyway, labelled zero_shot: false

    def __post_init__(self):
        from .training import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(f"evaluate.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.probe_train_per_class < MIN_TRAIN_PER_CLASS:
            raise ValueError(f"evaluate.probe_train_per_class must be at least {MIN_TRAIN_PER_CLASS}")
        if self.transfer_min_clips < 1:
            raise ValueError("evaluate.transfer_min_clips must be at least 1")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "EvaluateConfig":
        from .config import dataclass_from_dict

        return dataclass_from_dict(cls, params.get("evaluate"), "evaluate")


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _claim_fields(prefix: str, claim: dict[str, Any] | None) -> dict[str, Any]:
    claim = claim or {}
    return {f"{prefix}_ci95": claim.get("ci95"), f"{prefix}_p_value": claim.get("p_value"),
            f"{prefix}_significant": claim.get("significant")}


def _interval_scalars(row: dict[str, Any]) -> dict[str, Any]:
    """A task's clips, chance, and each score's Wilson 95% interval and p-value against chance, as scalars
    (``dvc metrics show`` drops lists; README's and docs/' tables are generated from these: scripts/docs_results.py)."""
    out: dict[str, Any] = {"clips": row["clips"], "chance": row["chance"]}
    for prefix in ("zero_shot", "linear_probe"):
        ci = row[f"{prefix}_ci95"]
        if ci is not None:
            out.update({f"{prefix}_ci95_low": metric_value(ci[0]), f"{prefix}_ci95_high": metric_value(ci[1]),
                        f"{prefix}_p_value": significant_digits(row[f"{prefix}_p_value"])})
    if row["linear_probe_note"]:
        out["linear_probe_note"] = row["linear_probe_note"]
    return out


def summarise(corpus_results: dict[str, Any], paper_results: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """(dvc metrics, one table row per task: ours, with interval and test against chance, next to the paper's)."""
    metrics: dict[str, Any] = {"zero_shot": {}, "linear_probe": {}, "retrieval": {}}
    rows = []
    for name, r in list(corpus_results.items()) + list(paper_results.items()):
        if name.startswith("_"):
            continue
        task = PAPER_TASKS.get(name)
        source = "paper" if task else "embedded"
        if "retrieval" in r:
            ret = r["retrieval"]
            metrics["retrieval"][name] = {k: {m: metric_value(v) for m, v in d.items()} for k, d in ret.items()} \
                if "a2t" in ret else {m: metric_value(v) for m, v in ret.items()}
        else:
            metrics["zero_shot"][name] = metric_value(r["value"])
            if r.get("probe_value") is not None:
                metrics["linear_probe"][name] = metric_value(r["probe_value"])
        rows.append({"task": name, "source": source, "clips": r["clips"], "metric": r["metric"],
                     "overlap_clips": r.get("training_overlap", {}).get("overlap_clips"),
                     "chance": metric_value(r.get("chance")), "zero_shot": metric_value(r["value"]),
                     **_claim_fields("zero_shot", r.get("zero_shot_claim")),
                     "linear_probe": metric_value(r.get("probe_value")),
                     **_claim_fields("linear_probe", r.get("probe_claim")),
                     "linear_probe_note": r.get("probe_note"),
                     "paper": task.paper.get(task.metric) if task else None,
                     "benchmark": task.benchmark.get(task.metric) if task else None})  # fmt: skip
    embedded = [r for r in rows if r["source"] == "embedded" and r["task"] != EMBEDDED_RETRIEVAL]
    metrics["tasks"] = {r["task"]: _interval_scalars(r) for r in rows if r["chance"] is not None}
    metrics["embedded_zero_shot_score"] = metric_value(_mean([r["zero_shot"] for r in embedded]))
    metrics["embedded_zero_shot_tasks_above_chance"] = sum(bool(r["zero_shot_significant"]) for r in embedded)
    probed = [r for r in embedded if r["linear_probe"] is not None]
    if probed:
        metrics["embedded_linear_probe_score"] = metric_value(_mean([r["linear_probe"] for r in probed]))
        metrics["embedded_linear_probe_tasks"] = len(probed)  # the score's tasks: the others could not be probed
        metrics["embedded_linear_probe_tasks_above_chance"] = sum(bool(r["linear_probe_significant"]) for r in probed)
    metrics["significance_alpha"] = significant_digits(THREE_SIGMA)
    # The paper's "zero-shot score": the mean over its classification tasks; here over the ones evaluated.
    paper_rows = [r for r in rows if r["source"] == "paper" and PAPER_TASKS[r["task"]].kind == CLASSIFICATION]
    metrics["paper_tasks_evaluated"] = len(paper_rows)
    if paper_rows:
        metrics["paper_zero_shot_score"] = {"ours": metric_value(_mean([r["zero_shot"] for r in paper_rows])),
                                            "paper": metric_value(_mean([r["paper"] for r in paper_rows]), 3)}
    return metrics, rows


TIED = "(tied)"  # the predicted class of a clip whose top score several classes share, in the confusion CSV


def _confusion_rows(res: ClassificationResult) -> list[dict[str, str]]:
    """``dvc plots`` rows (actual, predicted), one per clip; a tie is its own column (its 1/m shares are in
    confusion.json, which the notebook draws)."""
    return [{"actual": res.classes[t], "predicted": res.classes[p[0]] if len(p) == 1 else TIED}
            for t, p in zip(res.targets, res.predictions)]


def _serialisable(entry: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in entry.items():
        if isinstance(v, ClassificationResult):
            d = asdict(v)
            d["value"] = metric_value(d["value"])
            out[k] = d
        elif isinstance(v, float):
            out[k] = metric_value(v)
        else:
            out[k] = v
    return out


def _entries(results: dict[str, Any]) -> dict[str, Any]:
    """What results.json keeps of each task (the per-clip results stay out: confusion.json has them)."""
    return {name: _serialisable({k: v for k, v in r.items() if k not in ("zero_shot", "linear_probe")})
            for name, r in results.items() if not name.startswith("_")}


def run_stage(cfg: EvaluateConfig, embedder: Embedder | None = None, progress: bool = True) -> dict[str, Any]:
    """The DVC stage: the embedded corpus plus any paper dataset named in ``cfg.datasets``; writes every output."""
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if embedder is None:
        from .api import CLAP

        embedder = ClapEmbedder(CLAP.from_pretrained(cfg.model), cfg.batch_size, cfg.precision)
    store = None
    if isinstance(embedder, ClapEmbedder):  # a waveform tower (aisfx) reads clips it has seen from its store
        from .audio_feature_cache import attach_feature_store

        store = attach_feature_store(embedder.clap.model.audio.encoder, cfg.audio_cache_dir)
    guard = OverlapGuard.for_model(cfg.model, cfg.allow_training_overlap, cfg.cache_dir)
    checks = check_stage(guard, cfg)  # refuses before anything is embedded
    cache = EmbeddingCache(cfg.cache_dir, embedder.key)
    transfer = evaluate_transfer(embedder, cfg, cache) if cfg.transfer else \
        {"entries": [], "skipped": [], "note": "no transfer test: evaluate.transfer is false"}
    corpus_results = evaluate_corpus(embedder, cfg, cache)
    paper_results: dict[str, Any] = {}
    for adapter, root in sorted(cfg.datasets.items()):
        # Captioning tasks (AudioCaps, Clotho) are not scored here: they need a captioner, not this CLAP
        # (clapkit evaluate --task clotho_captioning --data DIR --model <captioner>).
        names = [t.name for t in clap_scored_tasks(adapter)]
        if not names:
            raise ValueError(f"evaluate.datasets: no supported paper task reads {adapter!r}")
        for name in names:
            paper_results[name] = evaluate_dataset_task(embedder, PAPER_TASKS[name], root, cfg, cache)
    overlap = label_results(guard, checks, corpus_results, paper_results, transfer)
    metrics, rows = summarise(corpus_results, paper_results)
    metrics = {**transfer_metrics(transfer), **metrics, "training_overlap": overlap}  # the headline first

    results_dir, plots_dir = Path(cfg.results), Path(cfg.plots)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_dir / "results.json", {"model_key": embedder.key[:20], "significance": SIGNIFICANCE,
                                              "transfer": transfer, "rows": rows,
                                              "tasks": _entries({**corpus_results, **paper_results})}, allow_nan=False)
    confusion = {}
    for name, r in list(corpus_results.items()) + list(paper_results.items()):
        zs = r.get("zero_shot") if isinstance(r, dict) else None
        if isinstance(zs, ClassificationResult) and zs.predictions and len(zs.classes) <= cfg.confusion_max_classes:
            confusion[name] = {"classes": zs.classes,
                               "matrix": _round_matrix(confusion_matrix(zs.predictions, zs.targets, len(zs.classes)))}
            probe = r.get("linear_probe")
            if isinstance(probe, ClassificationResult):
                confusion[name]["probe_matrix"] = _round_matrix(
                    confusion_matrix(probe.predictions, probe.targets, len(probe.classes)))
            _write_csv(plots_dir / f"confusion_{name}.csv", _confusion_rows(zs))
    write_json(results_dir / "confusion.json", confusion, allow_nan=False)
    m = corpus_results.get("_map", {})
    emb = np.ascontiguousarray(m.get("embeddings", np.zeros((0, 0))), dtype=np.float32)
    with replacing(results_dir / "map_embeddings.npy") as tmp:
        _save_npy(tmp, emb)
    write_json(results_dir / "map_clips.json", {"task": m.get("task", []), "id": m.get("id", [])}, allow_nan=False)
    write_json(cfg.metrics, metrics, allow_nan=False)
    if store is not None:
        from .audio_feature_cache import detach_feature_store

        detach_feature_store(embedder.clap.model.audio.encoder, store)
    seconds = time.time() - t0
    if cfg.timings:
        write_json(cfg.timings, {"seconds": round(seconds, 1), "tasks": len(rows)}, allow_nan=False)
    if progress:
        print(f"evaluate: {len(rows)} tasks in {seconds:.0f} s -> {cfg.metrics}, {results_dir}, {plots_dir}; "
              f"transfer test {metrics['transfer_zero_shot_score']} over {metrics['transfer_entries']} source x task "
              f"(chance {metrics['transfer_chance']})")
    return metrics


def _round_matrix(m: np.ndarray) -> list[list[float | int]]:
    """Counts as integers; a tie's shares (1/m) to 6 decimals."""
    return [[int(v) if float(v).is_integer() else round(float(v), 6) for v in row] for row in m]


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a path; same bytes on every run
        np.save(f, array)


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["actual", "predicted"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())


# =============================================================================================================
# Command line


def _config(params_path: str) -> EvaluateConfig:
    """params.yaml's ``evaluate`` block, or the defaults (equal to it) where there is no params.yaml."""
    from .config import load_params

    return EvaluateConfig.from_params(load_params(params_path)) if Path(params_path).is_file() else EvaluateConfig()


def _cmd_evaluate(args) -> int:
    if args.task is None:  # the stage
        if args.data or args.model:
            raise SystemExit("clapkit evaluate: --model/--data go with --task (one task on your dataset)")
        try:
            run_stage(_config(args.params))
        except TrainingOverlapError as err:  # the evaluation data, not the code: one clear message
            raise SystemExit(f"clapkit evaluate: {err}") from None
        return 0
    from .data.adapters import DatasetError

    try:
        return _cmd_one_task(args)
    except (KeyError, ValueError, OSError, DatasetError) as err:  # a user's mistake: one clear line, no traceback
        raise SystemExit(f"clapkit evaluate: {err.args[0] if isinstance(err, KeyError) else err}") from None


def _one_task_config(args) -> EvaluateConfig:
    """The stage's configuration with only the options given on the command line changed."""
    from dataclasses import replace

    cfg = _config(args.params)
    given = {"batch_size": args.batch_size, "precision": args.precision, "linear_probe": args.linear_probe,
             "f1_top_k": args.f1_top_k, "threads": args.threads, "cache_dir": args.cache_dir,
             "probe_train_per_class": args.probe_train_per_class}  # fmt: skip
    cfg = replace(cfg, **{k: v for k, v in given.items() if v is not None})
    cfg.allow_training_overlap = cfg.allow_training_overlap or args.allow_training_overlap
    if args.cache_dir == "":
        cfg.cache_dir = None
    return cfg


def _cmd_one_task(args) -> int:
    from .infer import load_model
    from .tasks import get_task

    cfg = _one_task_config(args)
    if args.task not in PAPER_TASKS:  # an embedded task: of --data, or of the stage's corpus
        cfg.prepared = args.data or cfg.prepared
    task = get_task(args.task, cfg.prepared if args.task not in PAPER_TASKS else None)
    if task.source != "embedded" and not args.data:
        raise SystemExit(f"clapkit evaluate: --task {task.name} needs --data (your copy of {task.adapter})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    args.model = args.model or cfg.model
    if task.kind == CAPTIONING:  # scored by a captioner, not a CLAP embedder
        from .caption_eval import run_caption_task

        return run_caption_task(args, task, cfg)
    if args.prompt:
        from dataclasses import replace

        task = replace(task, prompt=args.prompt)
    embedder = ClapEmbedder(load_model(args), cfg.batch_size, cfg.precision)
    guard = OverlapGuard.for_model(args.model, cfg.allow_training_overlap, cfg.cache_dir)
    check = check_split(guard, cfg.prepared, "test") if task.source == "embedded" else \
        check_dataset_task(guard, task, args.data)
    guard.refuse([check])  # before anything is embedded
    cache = EmbeddingCache(cfg.cache_dir, embedder.key)
    if task.source == "embedded":
        cfg.tasks = [task.name]
        result = evaluate_corpus(embedder, cfg, cache, prompts={task.name: task.prompt})[task.name]
    else:
        result = evaluate_dataset_task(embedder, task, args.data, cfg, cache)
    result["training_overlap"] = check.label(task.name if task.source == "embedded" else None)
    summary = _serialisable({k: v for k, v in result.items() if k not in ("zero_shot", "linear_probe")})
    line = f"{task.name}: {task.metric} {summary['value']:.4f}"
    claim = summary.get("zero_shot_claim")
    if claim:
        lo, hi = claim["ci95"]
        line += f" [95% CI {lo:.3f}-{hi:.3f}; p = {claim['p_value']:.3g} against chance {summary['chance']:.3f}]"
    line += f" on {summary['clips']} clips ({task.protocol})"
    if summary["training_overlap"]["zero_shot"] is False:  # scored with --allow-training-overlap
        line += f" NOT zero-shot: {summary['training_overlap']['overlap_clips']} of them are training clips"
    if task.metric in task.paper:
        line += f"; paper CLAP 2023 {task.paper[task.metric]}, benchmark {task.benchmark.get(task.metric)}"
    if summary.get("probe_value") is not None:
        line += f"; linear probe {summary['probe_value']:.4f}"
    elif summary.get("probe_note"):
        line += f"; linear probe {summary['probe_note']}"
    if "retrieval" in summary:
        shown = summary["retrieval"].get("a2t", summary["retrieval"])
        line += "; " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items() if k.startswith(("R@", "mAP")))
    print(line)
    if summary.get("problems"):
        print(f"{len(summary['problems'])} problem(s) skipped (see --out)", file=sys.stderr)
    if args.out:
        write_json(args.out, summary, allow_nan=False)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="stage evaluate, or one task (--task; --data for your dataset)")
    p.add_argument("--params", default="params.yaml", help="params.yaml whose evaluate block configures the stage "
                   "and every default of --task (without the file: the same defaults, EvaluateConfig's)")
    p.add_argument("--model", help="one task: save_pretrained directory or msclap .pth (default: evaluate.model); "
                                   "captioning tasks: clapcap .pth or a caption-stage folder")
    p.add_argument("--msclap-version", choices=["2023", "2022"], help="version of a msclap .pth checkpoint")
    p.add_argument("--bert-vocab", help="bert-base-uncased vocab.txt (msclap 2022 only)")
    p.add_argument("--task", help=f"a paper task ({', '.join(t for t in PAPER_TASKS if PAPER_TASKS[t].supported)}) "
                                  "or an embedded task of the prepared corpus (--data, default evaluate.prepared)")
    p.add_argument("--data", help="the dataset's root folder in its official layout (or a prepared/ folder)")
    p.add_argument("--prompt", help="prompt template with {} (default: the task's)")
    p.add_argument("--linear-probe", action=argparse.BooleanOptionalAction, default=None,
                   help="also fit a linear probe on the train split (default: evaluate.linear_probe)")
    p.add_argument("--probe-train-per-class", type=int, help="default: evaluate.probe_train_per_class")
    p.add_argument("--f1-top-k", type=int, help="default: evaluate.f1_top_k")
    p.add_argument("--batch-size", type=int, help="default: evaluate.batch_size")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast of both towers (default: evaluate.precision)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--beam-size", type=int, help="captioning tasks: beams (default 5, msclap's; 1 = greedy)")
    p.add_argument("--entry-length", type=int, help="captioning tasks: max tokens per caption (default 67, msclap's)")
    p.add_argument("--temperature", type=float, help="captioning tasks: softmax temperature (default 1.0)")
    p.add_argument("--clapcap-config", help="captioning tasks: model config of a .pth in clapcap's layout "
                                            "(name or JSON; default clapcap-2023)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: evaluate.threads; 0 = torch's choice)")
    p.add_argument("--cache-dir", help="cache audio embeddings here (default: evaluate.cache_dir; '' = no cache)")
    p.add_argument("--out", help="write the full result as JSON")
    p.add_argument("--allow-training-overlap", action="store_true",
                   help="score clips that are in the model's training data (default: refuse; evaluate."
                        "allow_training_overlap), labelled zero_shot: false")
    p.set_defaults(func=_cmd_evaluate)

