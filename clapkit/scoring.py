"""Scoring tasks for the evaluate stage: the protocols and what each task is scored on.

* Classification: zero-shot (``clapkit.zeroshot``: prompts -> text classifier -> logits) and a linear probe
  (``clapkit.probe``) per task, scored by ``clapkit.metrics`` under its one tie rule, each accuracy with its
  Wilson interval and exact binomial test against chance (``ClassificationResult.claim``, ``clapkit.stats``).
* Retrieval (LAION-CLAP's protocol, both directions): every caption whose text is one of a clip's captions is a
  positive of that clip (``caption_positives``).
* A paper task on the user's copy of its dataset (``evaluate_dataset_task``) and every task of the embedded corpus
  (``evaluate_corpus``), each scored on clips chosen by that task alone, in one hash order of the clip ids.

The configuration is ``clapkit.evaluate.EvaluateConfig`` (params.yaml's ``evaluate`` block).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from .embeddings import EmbeddingCache, embed_items, prepared_clip_identities
from .metrics import RetrievalMetrics, score_classification, top_classes
from .probe import hash_order, probe_logits, select_per_class, unprobed_reason
from .stats import accuracy_claim
from .tasks import CAPTIONING, CLASSIFICATION, EMBEDDED_RETRIEVAL, RETRIEVAL, Task, embedded_tasks, task_classes
from .zeroshot import Embedder, zero_shot_logits

if TYPE_CHECKING:
    from .evaluate import EvaluateConfig
    from .data.records import ClipRecord

__all__ = ["ClassificationResult", "metric_value", "encode_targets", "zero_shot_classification", "probe_classification",
           "caption_positives", "retrieval", "evaluate_dataset_task", "evaluate_corpus"]  # fmt: skip


def metric_value(x: float | None, nd: int = 4) -> float | None:
    """A number as the metrics files store it: rounded to ``nd`` decimals, NaN and None as None."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


# =============================================================================================================
# Protocols


@dataclass
class ClassificationResult:
    task: str
    metric: str
    value: float
    classes: list[str]
    clips: int
    predictions: list[list[int]] = field(default_factory=list)  # single-label: the classes tied for the top, per clip
    targets: list[int] = field(default_factory=list)  # single-label: true class per clip

    def claim(self) -> dict[str, Any] | None:
        """For an accuracy: its Wilson 95% interval and the exact one-sided binomial test against chance
        (1 / classes), "significant" at ``THREE_SIGMA``.  Successes = accuracy x clips (fractional where ties
        shared credit)."""
        if self.metric != "accuracy" or not self.clips:
            return None
        successes = self.value * self.clips
        if abs(successes - round(successes)) < 1e-6:  # no shared credit: a whole number of correct clips
            successes = round(successes)
        return accuracy_claim(successes, self.clips, 1.0 / len(self.classes))


def encode_targets(labels: Sequence[Any], classes: Sequence[str], multi_label: bool) -> torch.Tensor:
    """Labels -> (N,) class indices, or (N, C) multi-hot for multi-label tasks.  An unknown label is an error."""
    index = {c: i for i, c in enumerate(classes)}
    values = {str(v) for lab in labels for v in (lab if isinstance(lab, list) else [lab])}
    unknown = sorted(values - set(index))
    if unknown:
        raise ValueError(f"labels not among the task's classes: {unknown[:10]}")
    if not multi_label:
        return torch.tensor([index[str(lab)] for lab in labels], dtype=torch.long)
    out = torch.zeros(len(labels), len(classes), dtype=torch.bool)
    for i, lab in enumerate(labels):
        for v in lab if isinstance(lab, list) else [lab]:
            out[i, index[str(v)]] = True
    return out


def _result(task: Task, logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
            f1_top_k: int) -> ClassificationResult:  # fmt: skip
    value = score_classification(logits, targets, task.metric, f1_top_k)
    res = ClassificationResult(task.name, task.metric, value, list(classes), len(targets))
    if not task.multi_label:
        res.predictions, res.targets = top_classes(logits), targets.tolist()
    return res


def zero_shot_classification(embedder: Embedder, task: Task, audio: torch.Tensor, labels: Sequence[Any],
                             classes: Sequence[str], f1_top_k: int = 1) -> ClassificationResult:  # fmt: skip
    targets = encode_targets(labels, classes, task.multi_label)
    return _result(task, zero_shot_logits(embedder, audio, classes, task.prompt), targets, classes, f1_top_k)


def probe_classification(task: Task, train_x, train_labels, test_x, test_labels, classes,
                         cfg: "EvaluateConfig") -> ClassificationResult:  # fmt: skip
    logits = probe_logits(train_x, train_labels, test_x, classes, task.multi_label, cfg.probe_steps,
                          cfg.probe_weight_decay)  # fmt: skip
    return _result(task, logits, encode_targets(test_labels, classes, task.multi_label), classes, cfg.f1_top_k)


def caption_positives(captions: Sequence[Sequence[str]]) -> torch.Tensor:
    """(clips, all captions) bool: caption j is a positive of clip i when its text is one of clip i's captions.

    Identical texts have identical embeddings, so they tie in every ranking; whichever clip a text was written
    for, it describes every clip that has it."""
    text_id: dict[str, int] = {}
    for caps in captions:
        for c in caps:
            text_id.setdefault(c, len(text_id))
    has = torch.zeros(len(captions), len(text_id), dtype=torch.bool)
    for i, caps in enumerate(captions):
        has[i, [text_id[c] for c in caps]] = True
    return has[:, [text_id[c] for caps in captions for c in caps]]


def retrieval(embedder: Embedder, audio: torch.Tensor, captions: Sequence[Sequence[str]],
              examples: int = 0) -> dict[str, Any]:  # fmt: skip
    """Audio-to-text and text-to-audio over every caption of every clip (LAION-CLAP's protocol), positives by
    caption text (``caption_positives``).

    A->T: each clip ranks all captions.  T->A: each caption ranks all clips.  ``examples``: how many A->T queries
    (evenly spaced through the list) to return with their top-5 captions.
    """
    flat = [c for caps in captions for c in caps]
    if len(flat) == 0:
        raise ValueError("no captions")
    logits = embedder.logits(audio, embedder.text(flat))  # (clips, captions)
    positives = caption_positives(captions)
    a2t = RetrievalMetrics.from_scores(logits, positives)
    t2a = RetrievalMetrics.from_scores(logits.T, positives.T)
    shown = []
    for q in sorted({int(v) for v in np.linspace(0, len(captions) - 1, min(examples, len(captions)))}):  # spread out
        top = torch.sort(logits[q], descending=True, stable=True).indices[:5].tolist()
        shown.append({"clip": q, "captions": list(captions[q]),
                      "top5": [{"caption": flat[j], "score": round(float(logits[q, j]), 4),
                                "match": bool(positives[q, j])} for j in top]})  # fmt: skip
    return {"a2t": a2t, "t2a": t2a, "examples": shown}


# =============================================================================================================
# Tasks


def _file_identity(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{path}|missing"


def _classification_entry(task: Task, zs: ClassificationResult, n_classes: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"task": task.name, "clips": zs.clips, "metric": task.metric, "classes": n_classes,
                             "value": zs.value, "zero_shot": zs, "zero_shot_claim": zs.claim()}
    if task.metric == "accuracy":
        entry["chance"] = 1.0 / n_classes
    return entry


def _add_probe(entry: dict[str, Any], probe: ClassificationResult | None, train_clips: int, note: str | None) -> None:
    entry["probe_train_clips"] = train_clips
    if probe is None:
        entry["probe_note"] = note
        return
    entry.update(linear_probe=probe, probe_value=probe.value, probe_claim=probe.claim())


def scored_records(task: Task, records: Sequence[ClipRecord], root: str | Path
                   ) -> tuple[list[ClipRecord], list[ClipRecord]]:  # fmt: skip
    """(the records a paper task can use, those it scores): clips with its label (captions for retrieval and
    captioning); of them the dataset's ``eval_split``, or all where the dataset has no splits."""
    if task.kind in (RETRIEVAL, CAPTIONING):
        usable = [r for r in records if r.texts]
    else:
        usable = [r for r in records if task.label_key in r.labels]  # an empty multi-label list is all negatives
    test = [r for r in usable if r.split == task.eval_split]
    if not test and all(r.split is None for r in usable):
        test = usable
    if not test:
        raise ValueError(f"{task.name}: no {task.eval_split!r} clips with labels under {root}")
    return usable, test


def evaluate_dataset_task(embedder: Embedder, task: Task, root: str | Path, cfg: EvaluateConfig,
                          cache: EmbeddingCache | None = None) -> dict[str, Any]:  # fmt: skip
    """One paper task on the user's copy of its dataset (official layout, read by the task's adapter).

    Clips of the dataset's test split are scored; evaluation-only datasets are "test" throughout.  (A dataset
    loaded without any split, e.g. VocalSound without its datafiles, is scored on all its clips.)  Problems met
    while reading (missing audio, malformed rows) and unreadable audio are skipped and listed in ``problems``.
    """
    from .data.adapters import ADAPTERS, LoadReport

    if not task.supported:
        raise ValueError(f"{task.name}: {task.prompt_note}")
    if task.kind == CAPTIONING:
        raise ValueError(f"{task.name} needs a captioner, not a CLAP embedder: clapkit.caption_eval."
                         f"evaluate_captioning_task (clapkit evaluate --task {task.name} --model <captioner>)")
    cache = cache or EmbeddingCache(cfg.cache_dir, embedder.key)
    report = LoadReport()
    records = ADAPTERS[task.adapter].load(root, report)
    problems = [str(p) for p in report.problems]
    usable, test = scored_records(task, records, root)

    def embed(rs, name):
        ident = [_file_identity(r.path) for r in rs]
        emb, kept, skipped = cache.get(f"{task.adapter}-{name}", ident,
                                       lambda: embed_items(embedder, [r.path for r in rs], cfg.batch_size))
        problems.extend(skipped)
        return emb, kept

    emb, kept = embed(test, task.eval_split)
    test = [test[i] for i in kept]
    out: dict[str, Any] = {"task": task.name, "dataset": str(root), "clips": len(test), "problems": problems}
    if task.kind == RETRIEVAL:
        res = retrieval(embedder, emb, [r.texts for r in test], cfg.retrieval_examples)
        metrics = res[task.direction]
        out.update(metric=task.metric, value=metrics.r1, retrieval=metrics.as_dict(),
                   examples=[dict(e, clip=test[e["clip"]].id) for e in res["examples"]])  # fmt: skip
        return out
    classes = task_classes(task, root, [r.labels[task.label_key] for r in usable])
    test_labels = [r.labels[task.label_key] for r in test]
    zs = zero_shot_classification(embedder, task, emb, test_labels, classes, cfg.f1_top_k)
    out.update(_classification_entry(task, zs, len(classes)), dataset=str(root), problems=problems)
    train = [r for r in usable if r.split == "train"]
    if cfg.linear_probe and train:
        train = [train[i] for i in select_per_class([r.id for r in train], [r.labels[task.label_key] for r in train],
                                                    cfg.probe_train_per_class)]  # fmt: skip
        note = unprobed_reason([r.labels[task.label_key] for r in train], test_labels)
        probe = None
        if note is None:
            tr_emb, tr_kept = embed(train, "train-probe")
            train = [train[i] for i in tr_kept]
            train_labels = [r.labels[task.label_key] for r in train]
            note = unprobed_reason(train_labels, test_labels)  # again: an unreadable training clip may be missing
            if note is None:
                probe = probe_classification(task, tr_emb, train_labels, emb, test_labels, classes, cfg)
        _add_probe(out, probe, len(train), note)
    return out


def _selected_tasks(all_tasks: dict[str, Task], wanted: list[str] | str) -> list[Task]:
    if wanted == "all":
        return list(all_tasks.values())
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [t for t in wanted if t not in all_tasks]
    if unknown:
        raise ValueError(f"evaluate.tasks: unknown task(s) {unknown}; the corpus has {sorted(all_tasks)}")
    return [all_tasks[t] for t in wanted]


def evaluate_corpus(embedder: Embedder, cfg: EvaluateConfig, cache: EmbeddingCache | None = None,
                    prompts: Mapping[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Every selected embedded task: zero-shot and linear probe on its test clips; caption retrieval; map sample.
    ``prompts``: templates replacing some tasks' own (``clapkit evaluate --task T --prompt P``).

    What a task is scored on depends on that task alone (its clips in one hash order of the clip ids), so scoring
    one task (``clapkit evaluate --task``) gives the stage's numbers for it."""
    from .data.prepare import PreparedCorpus

    cache = cache or EmbeddingCache(cfg.cache_dir, embedder.key)
    corpus = PreparedCorpus(cfg.prepared)
    tasks = [replace(t, prompt=prompts[t.name]) if prompts and t.name in prompts else t
             for t in _selected_tasks(embedded_tasks(cfg.prepared), cfg.tasks)]

    def embed(indices: list[int], name: str) -> dict[int, torch.Tensor]:
        emb, kept, _ = cache.get(f"corpus-{name}", prepared_clip_identities(corpus, indices), lambda: embed_items(
            embedder, [corpus.waveform(i) for i in indices], cfg.batch_size, corpus.sample_rate))
        return {indices[k]: emb[j] for j, k in enumerate(kept)}

    def first(indices: list[int], n: int | None) -> list[int]:
        """The first n in the hash order (one order for every subset: a clip with several labels is picked by all
        its tasks, so the clips to embed overlap as much as they can)."""
        return sorted(sorted(indices, key=lambda i: hash_order(corpus.rows[i]["id"]))[:n])

    def label(i: int, t: Task):
        return corpus.rows[i]["labels"][t.label_key]

    classification = [t for t in tasks if t.kind == CLASSIFICATION]
    test_of = {t.name: first([i for i in corpus.split(t.eval_split) if t.label_key in corpus.rows[i]["labels"]],
                             cfg.test_clips_per_task) for t in classification}  # fmt: skip
    retrieval_idx = []
    if any(t.name == EMBEDDED_RETRIEVAL for t in tasks):
        retrieval_idx = first([i for i in corpus.split("test") if corpus.rows[i]["captions"]], cfg.retrieval_clips)
    test_emb = embed(sorted({i for idx in test_of.values() for i in idx} | set(retrieval_idx)), "test")
    # the probe's training clips, for the tasks whose test classes all have enough of them
    train_of: dict[str, list[int]] = {}
    notes: dict[str, str] = {}
    if cfg.linear_probe:
        for t in classification:
            candidates = [i for i in corpus.split("train") if t.label_key in corpus.rows[i]["labels"]]
            picked = [candidates[k] for k in select_per_class([corpus.rows[i]["id"] for i in candidates],
                                                              [label(i, t) for i in candidates],
                                                              cfg.probe_train_per_class)]  # fmt: skip
            note = unprobed_reason([label(i, t) for i in picked], [label(i, t) for i in test_of[t.name]])
            if note is None:
                train_of[t.name] = picked
            else:
                train_of[t.name], notes[t.name] = [], note
    train_idx = sorted({i for idx in train_of.values() for i in idx})
    train_emb = embed(train_idx, "train-probe") if train_idx else {}

    results: dict[str, Any] = {}
    for t in classification:
        idx = [i for i in test_of[t.name] if i in test_emb]
        if not idx:
            continue
        labels = [label(i, t) for i in idx]
        x = torch.stack([test_emb[i] for i in idx])
        zs = zero_shot_classification(embedder, t, x, labels, t.classes, cfg.f1_top_k)
        entry = _classification_entry(t, zs, len(t.classes))
        if cfg.linear_probe:
            tr = [i for i in train_of[t.name] if i in train_emb]
            note = notes.get(t.name) or unprobed_reason([label(i, t) for i in tr], labels)
            probe = None if note else probe_classification(t, torch.stack([train_emb[i] for i in tr]),
                                                           [label(i, t) for i in tr], x, labels, t.classes, cfg)
            _add_probe(entry, probe, len(tr), note)
        results[t.name] = entry

    picked = [i for i in retrieval_idx if i in test_emb]
    if picked:
        captions = [corpus.rows[i]["captions"][: cfg.retrieval_captions] for i in picked]
        res = retrieval(embedder, torch.stack([test_emb[i] for i in picked]), captions, cfg.retrieval_examples)
        results[EMBEDDED_RETRIEVAL] = {
            "task": EMBEDDED_RETRIEVAL, "clips": len(picked), "metric": "R@1", "value": res["a2t"].r1,
            "retrieval": {"a2t": res["a2t"].as_dict(), "t2a": res["t2a"].as_dict()},
            "examples": [dict(e, clip=corpus.rows[picked[e["clip"]]]["id"]) for e in res["examples"]],
        }  # fmt: skip

    # the embedding map's sample: up to N test clips per task, each clip drawn for one task only
    sample, used = [], set()
    for t in classification:
        idx = sorted((i for i in test_of[t.name] if i in test_emb and i not in used),
                     key=lambda i: hash_order(corpus.rows[i]["id"]))[: cfg.map_clips_per_task]  # fmt: skip
        used.update(idx)
        sample += [(t.name, i) for i in sorted(idx)]
    results["_map"] = {
        "task": [name for name, _ in sample], "id": [corpus.rows[i]["id"] for _, i in sample],
        "embeddings": torch.stack([test_emb[i] for _, i in sample]).numpy() if sample else np.zeros((0, 0)),
    }  # fmt: skip
    return results
