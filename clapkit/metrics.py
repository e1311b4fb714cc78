"""Evaluation metrics as pure functions of scores and targets, with one rule for tied scores.

**The tie rule.**  Scores tie exactly more often than one would think: identical caption texts have identical
embeddings, two prompts can read the same, a collapsed model scores every class alike.  Every metric here is the
*average over all orders of the tied candidates* (as if ties were broken uniformly at random), computed exactly:

* a prediction tied among m top classes that include the truth scores 1/m (accuracy, the confusion matrix, the
  F1 decisions);
* a candidate's rank is the mean rank of its tie group; R@k is the probability that a positive is in the top k;
* average precision is its expectation over the orders of the tied candidates.

So a constant model scores exactly chance (not 0, as a pessimistic tie-break gives, nor 1, as an optimistic one
gives), and no result depends on the order in which classes or candidates happen to be listed.  ``tie_groups``
implements the rule once; every metric below is computed from it.

Contents: ``tie_groups`` (``TieGroups``), ``accuracy``, ``top_classes`` and ``confusion_matrix`` (single-label),
``average_precision`` and ``mean_average_precision`` (multi-label, macro over classes with a positive),
``top_k_shares`` and ``f1_micro`` (DCASE 2017 Task 4's F1 of each clip's k best classes), ``positive_ranks``
and ``RetrievalMetrics`` (R@1/5/10, mAP@10 as LAION-CLAP, mAP over all positives, mean/median rank of the first
positive), ``score_classification`` (a task's headline metric).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

__all__ = ["TieGroups", "tie_groups", "accuracy", "top_classes", "confusion_matrix", "average_precision",
           "mean_average_precision", "top_k_shares", "f1_micro", "positive_ranks", "RetrievalMetrics",
           "score_classification"]  # fmt: skip


@dataclass(frozen=True)
class TieGroups:
    """One query's candidates in descending score order, candidates of equal score grouped (the best group first).

    ``order``: candidate indices sorted by score; group g holds ``order[start[g] : start[g] + size[g]]``, has
    ``start[g]`` candidates strictly above it, ``positives[g]`` positives in it and ``positives_above[g]`` above it.
    """

    order: np.ndarray
    start: np.ndarray
    size: np.ndarray
    positives: np.ndarray
    positives_above: np.ndarray

    def members(self, g: int) -> np.ndarray:
        return self.order[self.start[g] : self.start[g] + self.size[g]]

    def _first_positive_group(self) -> int | None:
        hit = np.flatnonzero(self.positives > 0)
        return int(hit[0]) if len(hit) else None

    def recall_at(self, k: int) -> float:
        """P(at least one positive among the k best): 1 - C(m - q, j) / C(m, j) for the first group holding
        positives (m candidates, q positives, of which j = k - start places fall within the top k)."""
        g = self._first_positive_group()
        if g is None or self.start[g] >= k:
            return 0.0
        m, q = int(self.size[g]), int(self.positives[g])
        j = min(k - int(self.start[g]), m)
        return 1.0 - math.comb(m - q, j) / math.comb(m, j)

    def first_positive_rank(self) -> float:
        """Expected 1-based rank of the best-ranked positive: start + (m + 1) / (q + 1), the expected minimum of q
        places drawn from m.  NaN without positives."""
        g = self._first_positive_group()
        if g is None:
            return math.nan
        return float(self.start[g]) + (self.size[g] + 1.0) / (self.positives[g] + 1.0)

    def precision_sum(self, cutoff: int | None = None) -> float:
        """Expected sum, over the positives ranked within ``cutoff`` (None: all), of the precision at their rank.

        In a group of m candidates with q positives after ``start`` candidates of which c are positive, place j of
        the group holds a positive with probability q / m, and then the other q - 1 positives fill the other m - 1
        places at random: the precision there is (c + 1 + (j - 1)(q - 1)/(m - 1)) / (start + j) on average."""
        total = 0.0
        for g in np.flatnonzero(self.positives > 0):
            a, m, q, c = int(self.start[g]), int(self.size[g]), int(self.positives[g]), int(self.positives_above[g])
            last = m if cutoff is None else min(m, cutoff - a)
            if last <= 0:
                break
            j = np.arange(1, last + 1, dtype=np.float64)
            others = (q - 1) / (m - 1) if m > 1 else 0.0
            total += q / m * float(np.sum((c + 1 + (j - 1) * others) / (a + j)))
        return total

    def positive_mean_ranks(self) -> np.ndarray:
        """The 1-based rank of every positive, each the mean rank of its tie group, ascending."""
        groups = np.flatnonzero(self.positives > 0)
        return np.repeat(self.start[groups] + (self.size[groups] + 1) / 2.0, self.positives[groups]).astype(np.float64)

    def top_k_share(self, k: int) -> np.ndarray:
        """Per candidate (original order), the probability that it is among the k best: 1 in groups wholly inside
        the top k, (k - start) / m in the group that straddles it, else 0."""
        share = np.clip((k - self.start) / self.size, 0.0, 1.0)
        out = np.zeros(len(self.order))
        out[self.order] = np.repeat(share, self.size)
        return out


def tie_groups(scores: torch.Tensor | np.ndarray, positives: torch.Tensor | np.ndarray | None = None) -> TieGroups:
    """The tie rule: group one query's candidates by equal score (``positives``: which candidates are relevant)."""
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    new_group = np.ones(len(ranked), dtype=bool)
    new_group[1:] = ranked[1:] != ranked[:-1]
    start = np.flatnonzero(new_group)
    size = np.diff(np.append(start, len(ranked)))
    if positives is None:
        in_group = np.zeros(len(start), dtype=np.int64)
    else:
        p = np.asarray(positives.cpu() if isinstance(positives, torch.Tensor) else positives, dtype=bool).ravel()
        in_group = np.add.reduceat(p[order].astype(np.int64), start) if len(start) else np.zeros(0, np.int64)
    return TieGroups(order, start, size, in_group, np.cumsum(in_group) - in_group)


def _rows(scores: torch.Tensor) -> np.ndarray:
    return np.asarray(scores.detach().cpu().double() if isinstance(scores, torch.Tensor) else scores, np.float64)


# --- single-label classification ---------------------------------------------------------------------------------

def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over rows of the credit for the target class: 1 / m when it is among the m classes tied for the top."""
    if len(targets) == 0:
        return float("nan")
    s, t = _rows(scores), np.asarray(targets, dtype=np.int64)
    return float(np.mean([tie_groups(row, np.arange(len(row)) == c).recall_at(1) for row, c in zip(s, t)]))


def top_classes(scores: torch.Tensor) -> list[list[int]]:
    """Per row, the classes tied for the highest score (ascending): the prediction, shared when more than one."""
    return [sorted(tie_groups(row).members(0).tolist()) for row in _rows(scores)]


def confusion_matrix(predictions: Sequence[Sequence[int]], targets: Sequence[int], n_classes: int) -> np.ndarray:
    """(C, C) counts, row = true class, column = predicted class; a clip whose prediction is a tie of m classes
    (``top_classes``) adds 1/m to each, so every row sums to the number of clips of its class."""
    out = np.zeros((n_classes, n_classes), dtype=np.float64)
    for tied, t in zip(predictions, targets):
        for p in tied:
            out[int(t), int(p)] += 1.0 / len(tied)
    return out


# --- multi-label classification ----------------------------------------------------------------------------------

def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the precision-recall curve: the mean over positives of the precision at their rank (its
    expectation over the orders of tied items).  NaN when there is no positive."""
    groups = tie_groups(scores, positives)
    n_pos = int(groups.positives.sum())
    return groups.precision_sum() / n_pos if n_pos else float("nan")


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Macro mAP over classes (columns) with at least one positive."""
    s, t = _rows(scores), np.asarray(targets, dtype=bool)
    aps = [average_precision(s[:, c], t[:, c]) for c in range(s.shape[1]) if t[:, c].any()]
    return float(np.mean(aps)) if aps else float("nan")


def top_k_shares(scores: torch.Tensor, k: int) -> np.ndarray:
    """(N, C): how much of each class is among the row's ``k`` best classes (1 or 0 unless a tie straddles k)."""
    return np.stack([tie_groups(row).top_k_share(k) for row in _rows(scores)]) if len(scores) else np.zeros((0, 0))


def f1_micro(predicted: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor) -> float:
    """Micro-averaged F1 of (N, C) decisions (bool, or the fractional shares of ``top_k_shares``) against (N, C)
    bool targets."""
    p, t = np.asarray(predicted, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    tp, fp, fn = float((p * t).sum()), float((p * (1 - t)).sum()), float(((1 - p) * t).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def score_classification(scores: torch.Tensor, targets: torch.Tensor, metric: str, f1_top_k: int = 1) -> float:
    """``metric`` of (N, C) scores: targets are (N,) class indices (accuracy) or (N, C) multi-hot (mAP, F1)."""
    if metric == "accuracy":
        return accuracy(scores, targets)
    if metric == "mAP":
        return mean_average_precision(scores, targets)
    if metric == "F1":
        return f1_micro(top_k_shares(scores, f1_top_k), targets)
    raise ValueError(f"unknown classification metric {metric!r}")


# --- retrieval -----------------------------------------------------------------------------------------------------

def positive_ranks(scores: torch.Tensor, positives: torch.Tensor) -> list[np.ndarray]:
    """Per query row, the 1-based ranks of its positive candidates (each the mean rank of its tie group), sorted."""
    p = np.asarray(positives, dtype=bool)
    return [tie_groups(row, pos).positive_mean_ranks() for row, pos in zip(_rows(scores), p)]


@dataclass
class RetrievalMetrics:
    """Retrieval scores of one direction, averaged over queries.  R@k: a positive among the k best.  mAP@10 as
    LAION-CLAP: per query, the precision at each positive found in the top 10, summed and divided by the query's
    number of positives.  mAP: the same over all positives (the query's average precision)."""

    r1: float
    r5: float
    r10: float
    map10: float
    map: float
    mean_rank: float  # 1-based rank of the best-ranked positive
    median_rank: float
    queries: int

    @classmethod
    def from_scores(cls, scores: torch.Tensor, positives: torch.Tensor) -> "RetrievalMetrics":
        p = np.asarray(positives, dtype=bool)
        if not p.any(axis=1).all():
            raise ValueError("every query needs at least one positive candidate")
        groups = [tie_groups(row, pos) for row, pos in zip(_rows(scores), p)]
        n_pos = p.sum(axis=1)
        first = np.array([g.first_positive_rank() for g in groups])
        return cls(r1=float(np.mean([g.recall_at(1) for g in groups])),
                   r5=float(np.mean([g.recall_at(5) for g in groups])),
                   r10=float(np.mean([g.recall_at(10) for g in groups])),
                   map10=float(np.mean([g.precision_sum(10) / n for g, n in zip(groups, n_pos)])),
                   map=float(np.mean([g.precision_sum() / n for g, n in zip(groups, n_pos)])),
                   mean_rank=float(first.mean()), median_rank=float(np.median(first)), queries=len(groups))  # fmt: skip

    def as_dict(self) -> dict[str, float]:
        return {"R@1": self.r1, "R@5": self.r5, "R@10": self.r10, "mAP@10": self.map10, "mAP": self.map,
                "mean_rank": self.mean_rank, "median_rank": self.median_rank, "queries": self.queries}  # fmt: skip
