"""The transfer test of the evaluate stage: audio from sources held out of training, named with words training never
used.  Its score is the headline number of the embedded model.

``prepare`` holds whole sources out of training and validation (``prepare.transfer_sources``; their clips are the
``transfer`` split) and checks that a second wording of each label (``clapkit/data/transfer_wordings.yaml``) occurs
in no train or val caption, text or label phrase (``clapkit.data.holdout``).  ``prepared/transfer.json`` carries
each task's *transfer vocabulary* (the labels with a held-out wording that training clips carry) and the wordings.

Here, per held-out source and task, the source's clips whose label is in the task's vocabulary are scored zero-shot
by ``clapkit.zeroshot`` (through ``clapkit.scoring.zero_shot_classification``; the prompt rule of the embedded tasks:
the task's first caption template; ties share credit) over the whole vocabulary, twice:

* **held-out wordings** (the headline): "the sound of a canine yelping": new audio and new words;
* **training wordings**: "the sound of dog bark", the labels as the in-domain tasks word them: new audio only.

The difference between the two separates what the new words cost from what the new audio costs.  Each accuracy
carries its Wilson 95% interval and exact one-sided binomial p-value against chance (1 / vocabulary size;
``clapkit.stats``).  A source and task is listed with the reason and not scored when it has fewer than
``transfer_min_clips`` covered clips, a vocabulary of fewer than two labels, or clips that all carry one label: there
a model that always gives that answer, whatever it hears, scores 1.0, and the test against a uniform guess would
call it far above chance (one speaker's clips, all "male"; one language).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .embeddings import EmbeddingCache, embed_items
from .probe import hash_order
from .scoring import metric_value, zero_shot_classification
from .stats import significant_digits
from .tasks import CLASSIFICATION, Task
from .zeroshot import Embedder, class_prompts, embedded_task_prompt

if TYPE_CHECKING:
    from .evaluate import EvaluateConfig

__all__ = ["TRANSFER_FILE", "load_spec", "transfer_task", "evaluate_transfer", "transfer_metrics"]

TRANSFER_FILE = "transfer.json"  # written by prepare (clapkit.data.holdout.transfer_summary)
HELDOUT, TRAINING = "heldout_wordings", "training_wordings"


def load_spec(prepared: str | Path) -> dict[str, Any] | None:
    """``prepared/transfer.json``, or None for a prepared corpus written without one."""
    path = Path(prepared) / TRANSFER_FILE
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); rerun the prepare stage") from None
    for key in ("sources", "tasks"):
        if not isinstance(spec.get(key), dict):
            raise ValueError(f"{path}: no {key!r} mapping; rerun the prepare stage")
    return spec


def transfer_task(task: str, classes: Sequence[str]) -> Task:
    """The zero-shot task of one transfer entry: accuracy over ``classes`` with the embedded task's prompt."""
    return Task(name=task, kind=CLASSIFICATION, metric="accuracy", domain="transfer", title=task, label_key=task,
                prompt=embedded_task_prompt(task), prompt_note="the task's first caption template",
                source="transfer", classes=tuple(classes))  # fmt: skip


def _claim(res) -> dict[str, Any]:
    claim = res.claim()
    return {"accuracy": res.value, "ci95": claim["ci95"], "p_value": claim["p_value"],
            "significant": claim["significant"]}


def _entries(corpus, spec: dict[str, Any], min_clips: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(entries to score, with their clip indices; entries skipped, with the reason), in source then task order."""
    by_source: dict[str, list[int]] = {}
    for i in corpus.split("transfer"):
        by_source.setdefault(corpus.rows[i]["source"], []).append(i)
    todo, skipped = [], []
    for source in sorted(spec["sources"]):
        for task, vocab in sorted(spec["tasks"].items()):
            classes = vocab["classes"]
            idx = sorted((i for i in by_source.get(source, []) if corpus.rows[i]["labels"].get(task) in classes),
                         key=lambda i: hash_order(corpus.rows[i]["id"]))  # fmt: skip
            outside = spec["sources"][source].get("tasks", {}).get(task, {}).get("outside_vocabulary", {})
            if not idx and not outside:
                continue  # the source has no clip of this task
            entry = {"source": source, "task": task, "clips": len(idx), "classes": len(classes),
                     "outside_vocabulary": outside}  # fmt: skip
            present = sorted({corpus.rows[i]["labels"][task] for i in idx})
            if len(classes) < 2:
                skipped.append(dict(entry, reason=f"a vocabulary of {len(classes)} label(s) with training clips"))
            elif len(idx) < min_clips:
                skipped.append(dict(entry, reason=f"{len(idx)} covered clip(s) < transfer_min_clips {min_clips}"))
            elif len(present) < 2:
                skipped.append(dict(entry, reason=f"every clip is {present[0]!r}: a constant answer would score 1"))
            else:
                todo.append(dict(entry, indices=idx))
    return todo, skipped


def _score(embedder: Embedder, entry: dict[str, Any], vocab: dict[str, Any], audio: torch.Tensor,
           labels: list[str], f1_top_k: int) -> dict[str, Any]:  # fmt: skip
    classes, wordings = vocab["classes"], [vocab["wordings"][c] for c in vocab["classes"]]
    task = transfer_task(entry["task"], classes)
    word_of = dict(zip(classes, wordings))
    heldout = zero_shot_classification(embedder, task, audio, [word_of[lab] for lab in labels], wordings, f1_top_k)
    training = zero_shot_classification(embedder, task, audio, labels, classes, f1_top_k)
    counts = {c: labels.count(c) for c in classes if c in labels}
    return {"source": entry["source"], "task": entry["task"], "clips": len(labels), "classes": len(classes),
            "chance": 1.0 / len(classes), "prompt": task.prompt,
            "example": {HELDOUT: class_prompts(wordings[:1], task.prompt)[0],
                        TRAINING: class_prompts(classes[:1], task.prompt)[0]},
            HELDOUT: _claim(heldout), TRAINING: _claim(training), "labels": counts,
            "outside_vocabulary": entry["outside_vocabulary"]}  # fmt: skip


def evaluate_transfer(embedder: Embedder, cfg: "EvaluateConfig", cache: EmbeddingCache | None = None) -> dict[str, Any]:
    """Every held-out source and task of ``cfg.prepared``'s transfer split, scored with both wordings."""
    from .data.prepare import PreparedCorpus

    spec = load_spec(cfg.prepared)
    if spec is None or not spec["sources"]:
        why = "no prepared/transfer.json" if spec is None else "prepare.transfer_sources is empty"
        return {"entries": [], "skipped": [], "note": f"no transfer test: {why}"}
    corpus = PreparedCorpus(cfg.prepared)
    todo, skipped = _entries(corpus, spec, cfg.transfer_min_clips)
    wanted = sorted({i for e in todo for i in e["indices"]})
    emb: dict[int, torch.Tensor] = {}
    if wanted:
        cache = cache or EmbeddingCache(cfg.cache_dir, embedder.key)
        size = (corpus.root / "waveforms.f16").stat().st_size
        ident = [f"{corpus.rows[i]['id']}|{corpus.rows[i]['offset']}|{corpus.rows[i]['length']}|{size}" for i in wanted]
        x, kept, _ = cache.get("corpus-transfer", ident, lambda: embed_items(
            embedder, [corpus.waveform(i) for i in wanted], cfg.batch_size, corpus.sample_rate))
        emb = {wanted[k]: x[j] for j, k in enumerate(kept)}
    entries = []
    for e in todo:
        idx = [i for i in e["indices"] if i in emb]
        labels = [corpus.rows[i]["labels"][e["task"]] for i in idx]
        entries.append(_score(embedder, e, spec["tasks"][e["task"]], torch.stack([emb[i] for i in idx]), labels,
                              cfg.f1_top_k))
    return {"entries": entries, "skipped": skipped, "note": None,
            "vocabulary": {t: v["classes"] for t, v in spec["tasks"].items()},
            "wordings": {t: v["wordings"] for t, v in spec["tasks"].items()}, "leak_rule": spec.get("leak_rule")}


def _mean(values: list[float]) -> float | None:
    return metric_value(sum(values) / len(values)) if values else None


def transfer_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The dvc metrics of the transfer test: the headline (mean held-out-wording accuracy over the scored source x
    task entries) with the mean chance and the same clips' training-wording score beside it, then every entry's
    accuracies with their intervals and p-values as scalars (``dvc metrics show`` drops lists)."""
    entries = result["entries"]
    per: dict[str, dict[str, Any]] = {}
    for e in entries:
        row = {"clips": e["clips"], "classes": e["classes"], "chance": metric_value(e["chance"])}
        for prefix, key in (("", HELDOUT), ("training_wordings_", TRAINING)):
            c = e[key]
            row.update({f"{prefix}accuracy": metric_value(c["accuracy"]), f"{prefix}ci95_low": c["ci95"][0],
                        f"{prefix}ci95_high": c["ci95"][1], f"{prefix}p_value": significant_digits(c["p_value"]),
                        f"{prefix}significant": c["significant"]})  # fmt: skip
        per.setdefault(e["source"], {})[e["task"]] = row
    return {
        "transfer_zero_shot_score": _mean([e[HELDOUT]["accuracy"] for e in entries]),
        "transfer_zero_shot_score_training_wordings": _mean([e[TRAINING]["accuracy"] for e in entries]),
        "transfer_chance": _mean([e["chance"] for e in entries]),
        "transfer_entries": len(entries),
        "transfer_entries_above_chance": sum(bool(e[HELDOUT]["significant"]) for e in entries),
        "transfer": per,
    }
