"""Stage ``evaluate``: zero-shot classification, caption retrieval and a linear probe, on the paper's tasks and on
the embedded corpus, with the paper's numbers side by side.

Read top to bottom:

1. **Metrics** (pure functions of scores and targets): accuracy, average precision and mAP, micro F1, ranks with
   ties broken *against* the ground truth, ``RetrievalMetrics`` (R@1/5/10, mAP@10, mean/median rank).
2. **Embeddings**: an ``Embedder`` wraps a ``CLAP`` (audio in batches, text, logits); an ``EmbeddingCache`` keeps
   audio embeddings on disk per model (hash of its config and weights) and clip set, checked against the clips'
   identities, so a second evaluation of the same model and data embeds nothing.
3. **Protocols**: zero-shot classification (softmax over the class prompts for single-label tasks, sigmoid for
   multi-label ones, as the paper), retrieval with several captions per clip (the LAION-CLAP protocol), and a
   linear probe (logistic regression on frozen embeddings, full-batch L-BFGS, deterministic).
4. **Tasks**: a paper task on the user's copy of its dataset (``evaluate_dataset_task``), the embedded corpus
   (``evaluate_corpus``), and the stage (``run_stage``) that writes metrics, plots and the notebook's inputs.
5. **Embedding map**: PCA and a small exact t-SNE in numpy, for the notebook.

Decisions the paper leaves open are stated where they are made: DCASE 2017 Task 4's F1 counts the top-``k``
classes of each clip as its predictions (``f1_top_k``, 1 by default); mAP is the macro mean over classes that
have at least one positive clip; retrieval ties rank the ground truth last.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .tasks import CLASSIFICATION, EMBEDDED_RETRIEVAL, PAPER_TASKS, RETRIEVAL, Task, embedded_tasks, task_classes
from .checkpointing import model_fingerprint

__all__ = [
    "EvaluateConfig", "RetrievalMetrics", "ClassificationResult", "Embedder", "ClapEmbedder", "EmbeddingCache",
    "accuracy", "average_precision", "mean_average_precision", "f1_micro", "top_k_multi_hot", "confusion_matrix",
    "positive_ranks", "score_classification", "zero_shot_classification", "retrieval", "linear_probe",
    "evaluate_dataset_task", "evaluate_corpus", "run_stage", "pca", "tsne",
]  # fmt: skip


# =============================================================================================================
# 1. Metrics


def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose highest score is the target class (ties: the lowest class index wins)."""
    if len(targets) == 0:
        return float("nan")
    return float((scores.argmax(dim=1) == targets).float().mean())


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the precision-recall curve as a step function, one step per distinct score (sklearn's definition).

    Items with equal scores enter together, so a tie between a positive and a negative is neither rewarded nor
    punished by the order they were listed in.  NaN when there is no positive.
    """
    scores = scores.double().flatten()
    positives = positives.bool().flatten()
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = torch.argsort(scores, descending=True, stable=True)
    s, p = scores[order], positives[order].double()
    tp, seen = torch.cumsum(p, 0), torch.arange(1, len(s) + 1, dtype=torch.float64)
    last_of_tie = torch.ones(len(s), dtype=torch.bool)  # thresholds: the last item of each run of equal scores
    last_of_tie[:-1] = s[1:] != s[:-1]
    tp, seen = tp[last_of_tie], seen[last_of_tie]
    precision, recall = tp / seen, tp / n_pos
    recall_step = torch.diff(recall, prepend=torch.zeros(1, dtype=torch.float64))
    return float((precision * recall_step).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP over classes (columns) with at least one positive."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1]) if targets[:, c].any()]
    return float(np.mean(aps)) if aps else float("nan")


def top_k_multi_hot(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(N, C) bool: each row's ``k`` highest-scoring classes (ties: lower index first)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)


def f1_micro(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """Micro-averaged F1 of (N, C) bool decisions against (N, C) bool targets."""
    tp = float((predicted & targets).sum())
    fp, fn = float((predicted & ~targets).sum()), float((~predicted & targets).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, C) counts, row = true class, column = predicted class."""
    flat = targets.long() * n_classes + predicted.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> list[np.ndarray]:
    """Per query row, the 0-based ranks of its positive candidates, sorted.

    Candidates are ordered by score, and a negative tied with a positive is put *before* it: a model that scores
    everything alike gets no credit (an optimistic tie-break would give a constant model perfect recall).
    """
    out = []
    s_all, p_all = scores.double().numpy(), positives.bool().numpy()
    for s, p in zip(s_all, p_all):
        order = np.lexsort((p.astype(np.int8), -s))  # by score descending, then negatives before positives
        out.append(np.sort(np.nonzero(p[order])[0]))
    return out


@dataclass
class RetrievalMetrics:
    """Retrieval scores of one direction.  mAP@10 as LAION-CLAP: per query, the precision at each positive found in
    the top 10, summed and divided by the number of positives of the query (one for text-to-audio)."""

    r1: float
    r5: float
    r10: float
    map10: float
    mean_rank: float  # 1-based rank of the best-ranked positive
    median_rank: float
    queries: int

    @classmethod
    def from_scores(cls, scores: torch.Tensor, positives: torch.Tensor) -> "RetrievalMetrics":
        ranks = positive_ranks(scores, positives)
        if any(len(r) == 0 for r in ranks):
            raise ValueError("every query needs at least one positive candidate")
        best = np.array([r[0] for r in ranks], dtype=np.float64)
        ap10 = [np.sum(np.arange(1, (r < 10).sum() + 1) / (r[r < 10] + 1)) / len(r) for r in ranks]
        return cls(r1=float((best < 1).mean()), r5=float((best < 5).mean()), r10=float((best < 10).mean()),
                   map10=float(np.mean(ap10)), mean_rank=float(best.mean() + 1), median_rank=float(np.median(best) + 1),
                   queries=len(ranks))  # fmt: skip

    def as_dict(self) -> dict[str, float]:
        return {"R@1": self.r1, "R@5": self.r5, "R@10": self.r10, "mAP@10": self.map10,
                "mean_rank": self.mean_rank, "median_rank": self.median_rank, "queries": self.queries}  # fmt: skip


def score_classification(scores: torch.Tensor, targets: torch.Tensor, metric: str, f1_top_k: int = 1) -> float:
    """``metric`` of (N, C) scores: targets are (N,) class indices (accuracy) or (N, C) multi-hot (mAP, F1)."""
    if metric == "accuracy":
        return accuracy(scores, targets)
    if metric == "mAP":
        return mean_average_precision(scores, targets)
    if metric == "F1":
        return f1_micro(top_k_multi_hot(scores, f1_top_k), targets)
    raise ValueError(f"unknown classification metric {metric!r}")


# =============================================================================================================
# 2. Embeddings


class Embedder(Protocol):
    """What the protocols need from a model (``ClapEmbedder``; tests use an oracle with the same methods)."""

    key: str  # identifies the model's weights and config: the embedding cache is keyed by it
    sample_rate: int

    def load(self, item: Any, sample_rate: int | None = None) -> torch.Tensor: ...  # one clip, model rate/length

    def audio(self, waves: torch.Tensor) -> torch.Tensor: ...  # (B, samples) -> (B, D), L2-normalised

    def text(self, texts: Sequence[str]) -> torch.Tensor: ...  # -> (N, D), L2-normalised

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...  # (Na, Nt)


class ClapEmbedder:
    """A ``clapkit.CLAP`` as an ``Embedder``: deterministic, batched, audio optionally under bf16 autocast."""

    def __init__(self, clap, batch_size: int = 64, bf16: bool = False):
        self.clap = clap
        self.batch_size = batch_size
        self.bf16 = bf16
        self.sample_rate = clap.sample_rate
        self.key = model_fingerprint(dict(clap.config, tokenizer=clap.tokenizer.spec(), bf16=bf16),
                                     clap.model.state_dict())  # fmt: skip

    def _autocast(self):
        return torch.autocast(self.clap.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def load(self, item: Any, sample_rate: int | None = None) -> torch.Tensor:
        return self.clap.load_audio([item], sample_rate=sample_rate)[0]

    def audio(self, waves: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.clap.get_audio_embeddings(waves, batch_size=self.batch_size).float()

    def text(self, texts: Sequence[str]) -> torch.Tensor:  # fp32 always: autocast slows the small GPT-2 down here
        return self.clap.get_text_embeddings(list(texts), batch_size=self.batch_size)

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.clap.similarity(audio, text)


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


class EmbeddingCache:
    """Audio embeddings on disk: ``<root>/<model key[:20]>/<clip set>.npz`` with the hash of the clips' identities.

    A clip's identity says what its audio is (corpus: id + cached-waveform offset/length + the waveform file's
    size; a dataset file: path + size + mtime), so a changed clip or a different list is a miss, never a stale hit.
    """

    def __init__(self, root: str | Path | None, model_key: str):
        self.dir = Path(root) / model_key[:20] if root else None

    @staticmethod
    def _hash(identities: Sequence[str]) -> str:
        return hashlib.sha256("\n".join(identities).encode()).hexdigest()

    def get(self, name: str, identities: Sequence[str],
            compute: Callable[[], tuple[torch.Tensor, list[int], list[str]]]):  # fmt: skip
        """(embeddings, kept positions, problems) of ``identities``, from disk or ``compute()`` (then saved).

        ``problems`` (clips skipped as unreadable) are stored too, so a cache hit reports them again."""
        path = self.dir / f"{name}.npz" if self.dir else None
        want = self._hash(identities)
        if path is not None and path.is_file():
            with np.load(path) as z:
                if str(z["identities"]) == want:
                    return torch.from_numpy(z["embeddings"].copy()), z["kept"].tolist(), json.loads(str(z["problems"]))
        emb, kept, problems = compute()
        if path is not None:
            def write(tmp: str) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, embeddings=emb.numpy(), kept=np.asarray(kept, dtype=np.int64), identities=want,
                             problems=json.dumps(problems))

            _atomic_write(path, write)
        return emb, kept, problems


def embed_items(embedder: Embedder, items: Sequence[Any], batch_size: int,
                sample_rate: int | None = None) -> tuple[torch.Tensor, list[int], list[str]]:  # fmt: skip
    """Embed clips (file paths or waveforms) a batch at a time; an unreadable clip is reported and skipped.

    Returns the (K, D) embeddings, the positions in ``items`` of the K clips kept, and the problems met.
    """
    from .audio import AudioReadError

    chunks, kept, problems = [], [], []
    for start in range(0, len(items), batch_size):
        waves = []
        for i in range(start, min(start + batch_size, len(items))):
            try:
                waves.append(embedder.load(items[i], sample_rate))
                kept.append(i)
            except (AudioReadError, ValueError) as err:  # one bad clip never stops the evaluation
                problems.append(f"skipped {err}")
                print(f"clapkit evaluate: skipped {err}", file=sys.stderr)
        if waves:
            chunks.append(embedder.audio(torch.stack(waves)))
    if not chunks:
        raise ValueError("no clip could be read")
    return torch.cat(chunks), kept, problems


# =============================================================================================================
# 3. Protocols


@dataclass
class ClassificationResult:
    task: str
    metric: str
    value: float
    classes: list[str]
    clips: int
    predictions: list[int] = field(default_factory=list)  # single-label: predicted class per clip
    targets: list[int] = field(default_factory=list)  # single-label: true class per clip


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


def class_prompts(classes: Sequence[str], template: str) -> list[str]:
    from .text import apply_prompt

    return apply_prompt(classes, template)


def zero_shot_scores(embedder: Embedder, audio: torch.Tensor, classes: Sequence[str], template: str,
                     multi_label: bool) -> torch.Tensor:  # fmt: skip
    """(N, C) class probabilities: softmax of the logits over the class prompts, or their sigmoid (multi-label)."""
    logits = embedder.logits(audio, embedder.text(class_prompts(classes, template)))
    return torch.sigmoid(logits) if multi_label else logits.softmax(dim=1)


def zero_shot_classification(embedder: Embedder, task: Task, audio: torch.Tensor, labels: Sequence[Any],
                             classes: Sequence[str], f1_top_k: int = 1) -> ClassificationResult:  # fmt: skip
    targets = encode_targets(labels, classes, task.multi_label)
    scores = zero_shot_scores(embedder, audio, classes, task.prompt, task.multi_label)
    return _result(task, scores, targets, classes, f1_top_k)


def _result(task: Task, scores: torch.Tensor, targets: torch.Tensor, classes: Sequence[str],
            f1_top_k: int) -> ClassificationResult:  # fmt: skip
    value = score_classification(scores, targets, task.metric, f1_top_k)
    res = ClassificationResult(task.name, task.metric, value, list(classes), len(targets))
    if not task.multi_label:
        res.predictions, res.targets = scores.argmax(dim=1).tolist(), targets.tolist()
    return res


def retrieval(embedder: Embedder, audio: torch.Tensor, captions: Sequence[Sequence[str]],
              examples: int = 0) -> dict[str, Any]:  # fmt: skip
    """Audio-to-text and text-to-audio over every caption of every clip (LAION-CLAP's protocol).

    A->T: each clip ranks all captions; its positives are its own captions.  T->A: each caption ranks all clips;
    its one positive is its clip.  ``examples``: how many A->T queries (evenly spaced through the list) to return
    with their top-5 captions.
    """
    flat = [c for caps in captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    if len(flat) == 0:
        raise ValueError("no captions")
    text = embedder.text(flat)
    logits = embedder.logits(audio, text)  # (clips, captions)
    positives = owner[None, :] == torch.arange(len(captions))[:, None]
    a2t = RetrievalMetrics.from_scores(logits, positives)
    t2a = RetrievalMetrics.from_scores(logits.T, positives.T)
    shown = []
    for q in sorted({int(v) for v in np.linspace(0, len(captions) - 1, min(examples, len(captions)))}):  # spread out
        top = torch.sort(logits[q], descending=True, stable=True).indices[:5].tolist()
        shown.append({"clip": q, "captions": list(captions[q]),
                      "top5": [{"caption": flat[j], "score": round(float(logits[q, j]), 4),
                                "match": bool(owner[j] == q)} for j in top]})  # fmt: skip
    return {"a2t": a2t, "t2a": t2a, "examples": shown}


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, n_classes: int,
                 multi_label: bool, steps: int = 100, weight_decay: float = 1e-3) -> torch.Tensor:  # fmt: skip
    """Logistic regression on frozen embeddings; returns (N_test, C) scores (probabilities).

    Features are standardised with the training mean and std; weights start at zero and are fitted full-batch
    with L-BFGS (strong Wolfe line search) on cross-entropy (or per-class BCE for multi-label) plus an L2 penalty:
    no randomness at all, so the result depends only on the data.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xtr, xte = (train_x - mean) / std, (test_x - mean) / std
    w = torch.zeros(xtr.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=10, line_search_fn="strong_wolfe")
    ytr = train_y.float() if multi_label else train_y

    def closure():
        opt.zero_grad()
        logits = xtr @ w + b
        loss = F.binary_cross_entropy_with_logits(logits, ytr) if multi_label else F.cross_entropy(logits, ytr)
        loss = loss + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = xte @ w + b
    return torch.sigmoid(logits) if multi_label else logits.softmax(dim=1)


def probe_classification(task: Task, train_x, train_labels, test_x, test_labels, classes, cfg: "EvaluateConfig"):
    """Fit the probe on the classes the training clips have; the others score 0 (a probe cannot predict them)."""
    seen = {str(v) for lab in train_labels for v in (lab if isinstance(lab, list) else [lab])}
    fitted = [c for c in classes if c in seen]
    ytr = encode_targets(train_labels, fitted, task.multi_label)
    yte = encode_targets(test_labels, classes, task.multi_label)
    fitted_scores = linear_probe(train_x, ytr, test_x, len(fitted), task.multi_label, cfg.probe_steps,
                                 cfg.probe_weight_decay)  # fmt: skip
    scores = torch.zeros(len(test_x), len(classes))
    scores[:, [classes.index(c) for c in fitted]] = fitted_scores
    return _result(task, scores, yte, classes, cfg.f1_top_k)


# =============================================================================================================
# 4. Tasks and the stage


@dataclass
class EvaluateConfig:
    """The ``evaluate:`` block of params.yaml."""

    model: str = "models/clap"  # a CLAP.save_pretrained directory (the train stage's output)
    prepared: str = "prepared"  # the prepare stage's output: the embedded corpus
    results: str = "results/evaluate"  # results.json, retrieval examples, embedding sample (the notebook's input)
    plots: str = "plots/evaluate"  # confusion matrices as CSV rows (actual, predicted) for `dvc plots`
    metrics: str = "metrics/evaluate.json"
    timings: str | None = "reports/timings/evaluate.json"  # wall-clock seconds: not a dvc output (varies per run)
    cache_dir: str | None = ".cache/clapkit/embeddings"  # audio embeddings per model and clip set; null = none
    tasks: list[str] | str = "all"  # embedded tasks to evaluate ("all" = every task of tasks.json)
    datasets: dict[str, str] = field(default_factory=dict)  # paper datasets on disk: adapter name -> folder
    batch_size: int = 64
    threads: int = 1  # torch CPU threads (0 = torch's default); on this shared 2-core CPU 1 thread is ~3x faster
    bf16: bool = False  # bf16 autocast for the audio encoder (faster only with native bf16; embeddings differ slightly)
    f1_top_k: int = 1  # DCASE 2017 Task 4 F1: each clip's k best classes are its predictions
    test_clips_per_task: int | None = None  # evaluation clips per embedded task (hash-ordered subset); null = all
    linear_probe: bool = True
    probe_train_per_task: int = 300  # training clips per task for the probe (hash-ordered subset of "train")
    probe_steps: int = 100  # L-BFGS iterations
    probe_weight_decay: float = 1.0e-3
    retrieval_clips: int = 600  # test clips in the corpus retrieval task (hash-ordered subset)
    retrieval_captions: int = 5  # captions per clip in retrieval (Clotho and AudioCaps test clips have 5)
    retrieval_examples: int = 8  # A->T queries kept with their top-5 captions for the notebook
    confusion_max_classes: int = 30  # confusion matrices for tasks with at most this many classes
    map_clips_per_task: int = 40  # test clips per task in the embedding map sample

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "EvaluateConfig":
        from .config import dataclass_from_dict

        return dataclass_from_dict(cls, params.get("evaluate"), "evaluate")


def _hash_order(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _file_identity(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        return f"{path}|missing"


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
    cache = cache or EmbeddingCache(cfg.cache_dir, embedder.key)
    report = LoadReport()
    records = ADAPTERS[task.adapter].load(root, report)
    problems = [str(p) for p in report.problems]
    if task.kind == RETRIEVAL:
        usable = [r for r in records if r.texts]
    else:
        usable = [r for r in records if task.label_key in r.labels]  # an empty multi-label list is all negatives
    test = [r for r in usable if r.split == task.eval_split]
    if not test and all(r.split is None for r in usable):
        test = usable
    if not test:
        raise ValueError(f"{task.name}: no {task.eval_split!r} clips with labels under {root}")

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
    zs = zero_shot_classification(embedder, task, emb, [r.labels[task.label_key] for r in test], classes,
                                  cfg.f1_top_k)  # fmt: skip
    out.update(metric=task.metric, value=zs.value, classes=len(classes), zero_shot=zs)
    train = [r for r in usable if r.split == "train"]
    if cfg.linear_probe and train:
        train = sorted(train, key=lambda r: _hash_order(r.id))[: cfg.probe_train_per_task]
        tr_emb, tr_kept = embed(train, "train-probe")
        train = [train[i] for i in tr_kept]
        probe = probe_classification(task, tr_emb, [r.labels[task.label_key] for r in train], emb,
                                     [r.labels[task.label_key] for r in test], classes, cfg)  # fmt: skip
        out.update(linear_probe=probe, probe_value=probe.value, probe_train_clips=len(train))
    return out


def _selected_tasks(all_tasks: dict[str, Task], wanted: list[str] | str) -> list[Task]:
    if wanted == "all":
        return list(all_tasks.values())
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [t for t in wanted if t not in all_tasks]
    if unknown:
        raise ValueError(f"evaluate.tasks: unknown task(s) {unknown}; the corpus has {sorted(all_tasks)}")
    return [all_tasks[t] for t in wanted]


def evaluate_corpus(embedder: Embedder, cfg: EvaluateConfig, cache: EmbeddingCache | None = None) -> dict[str, Any]:
    """Every selected embedded task: zero-shot and linear probe on its test clips; caption retrieval; map sample."""
    from .data.prepare import PreparedCorpus

    cache = cache or EmbeddingCache(cfg.cache_dir, embedder.key)
    corpus = PreparedCorpus(cfg.prepared)
    tasks = _selected_tasks(embedded_tasks(cfg.prepared), cfg.tasks)
    wave_size = (corpus.root / "waveforms.f16").stat().st_size if (corpus.root / "waveforms.f16").exists() else 0

    def ident(i: int) -> str:
        r = corpus.rows[i]
        return f"{r['id']}|{r['offset']}|{r['length']}|{wave_size}"

    def embed(indices: list[int], name: str) -> dict[int, torch.Tensor]:
        emb, kept, _ = cache.get(f"corpus-{name}", [ident(i) for i in indices], lambda: embed_items(
            embedder, [corpus.waveform(i) for i in indices], cfg.batch_size, corpus.sample_rate))
        return {indices[k]: emb[j] for j, k in enumerate(kept)}

    classification = [t for t in tasks if t.kind == CLASSIFICATION]
    # One global order (a hash of the clip id) for every subset: a clip with several labels is picked by all its
    # tasks, so the clips to embed overlap as much as they can.
    def first(indices: list[int], n: int | None) -> list[int]:
        return sorted(sorted(indices, key=lambda i: _hash_order(corpus.rows[i]["id"]))[:n])

    test_of = {t.name: first([i for i in corpus.split(t.eval_split) if t.label_key in corpus.rows[i]["labels"]],
                             cfg.test_clips_per_task) for t in classification}  # fmt: skip
    # retrieval reuses the clips the classification tasks embed (all test clips when it is the only task)
    scored = {i for idx in test_of.values() for i in idx} or set(corpus.split("test"))
    test_pool = [i for i in sorted(scored) if corpus.rows[i]["captions"]]
    retrieval_idx = first(test_pool, cfg.retrieval_clips) if any(t.name == EMBEDDED_RETRIEVAL for t in tasks) else []
    test_idx = sorted({i for idx in test_of.values() for i in idx} | set(retrieval_idx))
    test_emb = embed(test_idx, "test")
    train_of: dict[str, list[int]] = {}
    if cfg.linear_probe:
        for t in classification:
            candidates = [i for i in corpus.split("train") if t.label_key in corpus.rows[i]["labels"]]
            train_of[t.name] = first(candidates, cfg.probe_train_per_task)
        train_idx = sorted({i for idx in train_of.values() for i in idx})
        train_emb = embed(train_idx, "train-probe") if train_idx else {}

    results: dict[str, Any] = {}
    for t in classification:
        idx = [i for i in test_of[t.name] if i in test_emb]
        if not idx:
            continue
        labels = [corpus.rows[i]["labels"][t.label_key] for i in idx]
        x = torch.stack([test_emb[i] for i in idx])
        entry: dict[str, Any] = {"task": t.name, "clips": len(idx), "metric": t.metric, "classes": len(t.classes)}
        zs = zero_shot_classification(embedder, t, x, labels, t.classes, cfg.f1_top_k)
        entry.update(value=zs.value, zero_shot=zs)
        tr = [i for i in train_of.get(t.name, []) if i in train_emb]
        if tr:
            probe = probe_classification(t, torch.stack([train_emb[i] for i in tr]),
                                         [corpus.rows[i]["labels"][t.label_key] for i in tr], x, labels, t.classes, cfg)
            entry.update(linear_probe=probe, probe_value=probe.value, probe_train_clips=len(tr))
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
                     key=lambda i: _hash_order(corpus.rows[i]["id"]))[: cfg.map_clips_per_task]  # fmt: skip
        used.update(idx)
        sample += [(t.name, i) for i in sorted(idx)]
    results["_map"] = {
        "task": [name for name, _ in sample], "id": [corpus.rows[i]["id"] for _, i in sample],
        "embeddings": torch.stack([test_emb[i] for _, i in sample]).numpy() if sample else np.zeros((0, 0)),
    }  # fmt: skip
    return results


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def summarise(corpus_results: dict[str, Any], paper_results: dict[str, Any]) -> tuple[dict[str, Any], list[dict]]:
    """(dvc metrics, one table row per task: ours next to the paper's)."""
    metrics: dict[str, Any] = {"zero_shot": {}, "linear_probe": {}, "retrieval": {}}
    rows = []
    for name, r in list(corpus_results.items()) + list(paper_results.items()):
        if name.startswith("_"):
            continue
        task = PAPER_TASKS.get(name)
        source = "paper" if task else "embedded"
        if "retrieval" in r:
            metrics["retrieval"][name] = {k: {m: _round(v) for m, v in d.items()} for k, d in r["retrieval"].items()} \
                if "a2t" in r["retrieval"] else {m: _round(v) for m, v in r["retrieval"].items()}
        else:
            metrics["zero_shot"][name] = _round(r["value"])
            if "probe_value" in r:
                metrics["linear_probe"][name] = _round(r["probe_value"])
        rows.append({"task": name, "source": source, "clips": r["clips"], "metric": r["metric"],
                     "zero_shot": _round(r["value"]), "linear_probe": _round(r.get("probe_value")),
                     "paper": task.paper.get(task.metric) if task else None,
                     "benchmark": task.benchmark.get(task.metric) if task else None})  # fmt: skip
    embedded = [r for r in rows if r["source"] == "embedded" and r["task"] != EMBEDDED_RETRIEVAL]
    metrics["embedded_zero_shot_score"] = _round(_mean([r["zero_shot"] for r in embedded]))
    if any(r["linear_probe"] is not None for r in embedded):
        metrics["embedded_linear_probe_score"] = _round(_mean([r["linear_probe"] for r in embedded]))
    # The paper's "zero-shot score": the mean over its classification tasks; here over the ones evaluated.
    paper_rows = [r for r in rows if r["source"] == "paper" and PAPER_TASKS[r["task"]].kind == CLASSIFICATION]
    metrics["paper_tasks_evaluated"] = len(paper_rows)
    if paper_rows:
        metrics["paper_zero_shot_score"] = {"ours": _round(_mean([r["zero_shot"] for r in paper_rows])),
                                            "paper": _round(_mean([r["paper"] for r in paper_rows]), 3)}
    return metrics, rows


def _confusion_rows(res: ClassificationResult) -> list[dict[str, str]]:
    return [{"actual": res.classes[t], "predicted": res.classes[p]} for t, p in zip(res.targets, res.predictions)]


def _serialisable(entry: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in entry.items():
        if isinstance(v, ClassificationResult):
            d = asdict(v)
            d["value"] = _round(d["value"])
            out[k] = d
        elif isinstance(v, float):
            out[k] = _round(v)
        else:
            out[k] = v
    return out


def run_stage(cfg: EvaluateConfig, embedder: Embedder | None = None, progress: bool = True) -> dict[str, Any]:
    """The DVC stage: the embedded corpus plus any paper dataset named in ``cfg.datasets``; writes every output."""
    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if embedder is None:
        from .api import CLAP

        embedder = ClapEmbedder(CLAP.from_pretrained(cfg.model), cfg.batch_size, cfg.bf16)
    cache = EmbeddingCache(cfg.cache_dir, embedder.key)
    corpus_results = evaluate_corpus(embedder, cfg, cache)
    paper_results: dict[str, Any] = {}
    for adapter, root in sorted(cfg.datasets.items()):
        names = [t.name for t in PAPER_TASKS.values() if t.adapter == adapter and t.supported]
        if not names:
            raise ValueError(f"evaluate.datasets: no supported paper task reads {adapter!r}")
        for name in names:
            paper_results[name] = evaluate_dataset_task(embedder, PAPER_TASKS[name], root, cfg, cache)
    metrics, rows = summarise(corpus_results, paper_results)

    results_dir, plots_dir = Path(cfg.results), Path(cfg.plots)
    results_dir.mkdir(parents=True, exist_ok=True)
    entries = {name: _serialisable({k: v for k, v in r.items() if k not in ("zero_shot", "linear_probe")})
               for name, r in list(corpus_results.items()) + list(paper_results.items()) if not name.startswith("_")}
    write_json(results_dir / "results.json", {"model_key": embedder.key[:20], "rows": rows, "tasks": entries})
    confusion = {}
    for name, r in list(corpus_results.items()) + list(paper_results.items()):
        zs = r.get("zero_shot") if isinstance(r, dict) else None
        if isinstance(zs, ClassificationResult) and zs.predictions and len(zs.classes) <= cfg.confusion_max_classes:
            confusion[name] = {"classes": zs.classes, "matrix": confusion_matrix(
                torch.tensor(zs.predictions), torch.tensor(zs.targets), len(zs.classes)).tolist()}
            probe = r.get("linear_probe")
            if isinstance(probe, ClassificationResult):
                confusion[name]["probe_matrix"] = confusion_matrix(
                    torch.tensor(probe.predictions), torch.tensor(probe.targets), len(probe.classes)).tolist()
            _write_csv(plots_dir / f"confusion_{name}.csv", _confusion_rows(zs))
    write_json(results_dir / "confusion.json", confusion)
    m = corpus_results.get("_map", {})
    emb = np.ascontiguousarray(m.get("embeddings", np.zeros((0, 0))), dtype=np.float32)
    _atomic_write(results_dir / "map_embeddings.npy", lambda tmp: _save_npy(tmp, emb))
    write_json(results_dir / "map_clips.json", {"task": m.get("task", []), "id": m.get("id", [])})
    write_json(cfg.metrics, metrics)
    seconds = time.time() - t0
    if cfg.timings:
        write_json(cfg.timings, {"seconds": round(seconds, 1), "tasks": len(rows)})
    if progress:
        print(f"evaluate: {len(rows)} tasks in {seconds:.0f} s -> {cfg.metrics}, {results_dir}, {plots_dir}")
    return metrics


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
    _atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))


# =============================================================================================================
# 5. Embedding map: PCA and t-SNE (numpy, deterministic)


def pca(x: np.ndarray, k: int = 2) -> np.ndarray:
    """Projection of the centred rows of ``x`` on their ``k`` principal axes (signs fixed: largest |loading| > 0)."""
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    vt = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(1)])[:, None]
    return xc @ vt.T


def _affinities(x: np.ndarray, perplexity: float) -> np.ndarray:
    """Symmetric t-SNE input affinities: per point, a Gaussian whose width gives the wanted perplexity."""
    n = len(x)
    d = np.square(x[:, None, :] - x[None, :, :]).sum(-1)
    p = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):
        lo, hi, beta = 0.0, np.inf, 1.0
        di = np.delete(d[i], i)
        for _ in range(64):  # bisection on the precision beta
            w = np.exp(-(di - di.min()) * beta)
            pi = w / w.sum()
            entropy = -np.sum(pi * np.log(np.maximum(pi, 1e-300)))
            if abs(entropy - target) < 1e-5:
                break
            if entropy > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = pi
    p = (p + p.T) / (2 * n)
    return np.maximum(p, 1e-12)


def tsne(x: np.ndarray, perplexity: float = 20.0, iterations: int = 500, seed: int = 0) -> np.ndarray:
    """Exact t-SNE (van der Maaten & Hinton 2008) of a few hundred points: PCA start, early exaggeration, momentum.

    Deterministic: the start is the PCA projection (scaled), the seed only adds a tiny fixed jitter.
    """
    n = len(x)
    if n < 3:
        return np.zeros((n, 2))
    perplexity = min(perplexity, (n - 1) / 3)
    p = _affinities(x.astype(np.float64), perplexity)
    y = pca(x.astype(np.float64), 2)
    y = y / (np.std(y[:, 0]) or 1.0) * 1e-2 + np.random.default_rng(seed).normal(0, 1e-6, (n, 2))
    velocity, gains = np.zeros_like(y), np.ones_like(y)
    learning_rate = max(n / 12.0 / 4.0, 50.0)  # sklearn's "auto" rate: a fixed 200 oscillates on small sets
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        momentum = 0.5 if it < 100 else 0.8
        num = 1.0 / (1.0 + np.square(y[:, None, :] - y[None, :, :]).sum(-1))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exaggeration * p - q) * num
        grad = 4.0 * (np.diag(pq.sum(1)) - pq) @ y
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - learning_rate * gains * grad
        y = y + velocity
        y = y - y.mean(0)
    return y


# =============================================================================================================
# Command line


def _cmd_evaluate(args) -> int:
    from .config import load_params

    if args.task is None:  # the stage
        if args.data or args.model:
            raise SystemExit("clapkit evaluate: --model/--data go with --task (one task on your dataset)")
        run_stage(EvaluateConfig.from_params(load_params(args.params)))
        return 0
    from .data.adapters import DatasetError

    try:
        return _cmd_one_task(args)
    except (KeyError, ValueError, OSError, DatasetError) as err:  # a user's mistake: one clear line, no traceback
        raise SystemExit(f"clapkit evaluate: {err.args[0] if isinstance(err, KeyError) else err}") from None


def _cmd_one_task(args) -> int:
    from .infer import load_model
    from .tasks import get_task

    if not args.model:
        raise SystemExit("clapkit evaluate --task: give --model (save_pretrained dir or msclap .pth)")
    task = get_task(args.task, args.data if args.task not in PAPER_TASKS else None)
    cfg = EvaluateConfig(batch_size=args.batch_size, linear_probe=args.linear_probe, cache_dir=args.cache_dir,
                         f1_top_k=args.f1_top_k, prepared=args.data or "prepared")  # fmt: skip
    if args.prompt:
        from dataclasses import replace

        task = replace(task, prompt=args.prompt)
    if args.threads:
        torch.set_num_threads(args.threads)
    embedder = ClapEmbedder(load_model(args), args.batch_size, args.bf16)
    cache = EmbeddingCache(cfg.cache_dir, embedder.key)
    if task.source == "embedded":
        cfg.tasks = [task.name]
        result = evaluate_corpus(embedder, cfg, cache)[task.name]
    else:
        if not args.data:
            raise SystemExit(f"clapkit evaluate: --task {task.name} needs --data (your copy of {task.adapter})")
        result = evaluate_dataset_task(embedder, task, args.data, cfg, cache)
    summary = _serialisable({k: v for k, v in result.items() if k not in ("zero_shot", "linear_probe")})
    line = f"{task.name}: {task.metric} {summary['value']:.4f} on {summary['clips']} clips ({task.protocol})"
    if task.metric in task.paper:
        line += f"; paper CLAP 2023 {task.paper[task.metric]}, benchmark {task.benchmark.get(task.metric)}"
    if summary.get("probe_value") is not None:
        line += f"; linear probe {summary['probe_value']:.4f}"
    if "retrieval" in summary:
        line += "; " + ", ".join(f"{k} {v:.4f}" for k, v in summary["retrieval"].items() if k.startswith(("R@", "mAP")))
    print(line)
    if summary.get("problems"):
        print(f"{len(summary['problems'])} problem(s) skipped (see --out)", file=sys.stderr)
    if args.out:
        write_json(args.out, summary)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="stage evaluate, or one task on your dataset (--model --task --data)")
    p.add_argument("--params", default="params.yaml", help="the stage: params.yaml's evaluate block")
    p.add_argument("--model", help="one task: save_pretrained directory or msclap .pth checkpoint")
    p.add_argument("--msclap-version", choices=["2023", "2022"], help="version of a msclap .pth checkpoint")
    p.add_argument("--bert-vocab", help="bert-base-uncased vocab.txt (msclap 2022 only)")
    p.add_argument("--task", help=f"a paper task ({', '.join(t for t in PAPER_TASKS if PAPER_TASKS[t].supported)}) "
                                  "or an embedded task of the prepared corpus given as --data")  # fmt: skip
    p.add_argument("--data", help="the dataset's root folder in its official layout (or a prepared/ folder)")
    p.add_argument("--prompt", help="prompt template with {} (default: the task's)")
    p.add_argument("--linear-probe", action="store_true", help="also fit a linear probe on the train split")
    p.add_argument("--f1-top-k", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on GPUs and CPUs with native bf16, slightly different numbers)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--cache-dir", default=None, help="cache audio embeddings here (per model and dataset)")
    p.add_argument("--out", help="write the full result as JSON")
    p.set_defaults(func=_cmd_evaluate)
