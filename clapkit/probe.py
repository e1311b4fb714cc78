"""The linear probe, shared by the evaluate stage and ``clapkit probe-encoder``: which training clips it fits, when a
task can be probed at all, and the deterministic logistic regression itself.

* ``select_per_class``: the training clips, per class the first ``per_class`` in one hash order of the clip ids
  (``evaluate.probe_train_per_class`` in params.yaml, the one setting both commands read).  One global order for
  every class and task: a clip with several labels is picked by all of them, so the clips to embed overlap.
* ``unprobed_reason``: a task is probed only when every class among its test clips has at least
  ``MIN_TRAIN_PER_CLASS`` (2) training clips.  With fewer a probe cannot be fitted to that class (with none it
  can never predict it, with one it fits that clip), so its accuracy would measure which classes the training
  split happens to hold, not what the embedding separates.  Such a task is reported as not probed, with the
  reason, instead of scored.
* ``linear_probe`` / ``probe_logits``: logistic regression on standardised frozen embeddings, zero init, full-batch
  L-BFGS: no randomness at all.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["MIN_TRAIN_PER_CLASS", "hash_order", "select_per_class", "unprobed_reason", "linear_probe",
           "probe_logits"]  # fmt: skip

MIN_TRAIN_PER_CLASS = 2


def hash_order(key: str) -> str:
    """The sort key of a clip id: a fixed pseudo-random order, the same in every run and for every subset."""
    return hashlib.sha256(key.encode()).hexdigest()


def _label_list(label) -> list[str]:
    return [str(v) for v in label] if isinstance(label, (list, tuple)) else [str(label)]


def select_per_class(ids: Sequence[str], labels: Sequence, per_class: int) -> list[int]:
    """Positions (ascending) of the training clips: walking the clips in hash order of their ids, a clip is taken
    while one of its classes has fewer than ``per_class`` clips taken (a multi-label clip counts for all of its
    classes)."""
    taken: Counter = Counter()
    chosen = []
    for i in sorted(range(len(ids)), key=lambda i: hash_order(ids[i])):
        classes = _label_list(labels[i])
        if any(taken[c] < per_class for c in classes):
            chosen.append(i)
            taken.update(classes)
    return sorted(chosen)


def unprobed_reason(train_labels: Sequence, test_labels: Sequence,
                    minimum: int = MIN_TRAIN_PER_CLASS) -> str | None:  # fmt: skip
    """None when every class of the test clips has at least ``minimum`` training clips, else why not."""
    train = Counter(c for lab in train_labels for c in _label_list(lab))
    tested = sorted({c for lab in test_labels for c in _label_list(lab)})
    short = [c for c in tested if train[c] < minimum]
    if not tested:
        return "not probed: no test clip"
    if not short:
        return None
    shown = ", ".join(f"{c} ({train[c]})" for c in short[:5]) + (", ..." if len(short) > 5 else "")
    return (f"not probed: {len(short)} of the {len(tested)} classes of the test clips have fewer than {minimum} "
            f"training clips: {shown}")


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, n_classes: int,
                 multi_label: bool, steps: int = 100, weight_decay: float = 1e-3) -> torch.Tensor:  # fmt: skip
    """Logistic regression on frozen embeddings; returns the (N_test, C) logits.

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

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return xte @ w + b


def probe_logits(train_x: torch.Tensor, train_labels: Sequence, test_x: torch.Tensor, classes: Sequence[str],
                 multi_label: bool, steps: int, weight_decay: float) -> torch.Tensor:  # fmt: skip
    """(N_test, len(classes)) logits of a probe fitted on the classes the training clips have; a class without
    training clips gets -inf (the probe cannot predict it)."""
    fitted = [c for c in classes if any(c in _label_list(lab) for lab in train_labels)]
    index = {c: i for i, c in enumerate(fitted)}
    if multi_label:
        y = torch.zeros(len(train_labels), len(fitted), dtype=torch.bool)
        for i, lab in enumerate(train_labels):
            for c in _label_list(lab):
                y[i, index[c]] = True
    else:
        y = torch.tensor([index[str(lab)] for lab in train_labels], dtype=torch.long)
    fitted_logits = linear_probe(train_x, y, test_x, len(fitted), multi_label, steps, weight_decay)
    out = torch.full((len(test_x), len(classes)), -torch.inf)
    out[:, [list(classes).index(c) for c in fitted]] = fitted_logits
    return out
