"""The symmetric contrastive (InfoNCE) loss of CLAP, over features gathered from every rank.

For a batch of N (audio, caption) pairs with L2-normalised embeddings ``a`` and ``t`` and the learned scale
``s = exp(logit_scale) = 1 / temperature``::

    logits = s * a @ t.T                      (N x N; pair i is the positive of row i and of column i)
    loss   = (CE(logits, arange N) + CE(logits.T, arange N)) / 2

Under data parallelism every rank holds N / world pairs.  The negatives of a pair are the whole global batch, so
the features are all-gathered first.  Two ways, as in OpenCLIP's ``ClipLoss``:

* ``gather_with_grad=True``: ``torch.distributed.nn.functional.all_gather`` is differentiable; its backward sums
  every rank's gradient w.r.t. a rank's features back onto that rank.  Each rank's loss is the full global loss,
  so each rank's local gradient is ``world`` times the true one, and DDP's gradient *average* divides it back:
  the update equals one process on the global batch (tests/test_ddp.py checks this).
* ``gather_with_grad=False``: a plain all_gather (no autograd), with the rank's own slice swapped back in so that
  at least the local features carry gradients (the other ranks' negatives are constants).  Cheaper, not exact.

``local_loss=True`` computes only this rank's rows and columns (N/world x N logits instead of N x N): each rank's
loss is the part of the global loss that belongs to its own pairs, their average over ranks is the global loss,
and the gradients are again exact after DDP's average (memory O(N) per rank instead of O(N^2)).

Caption positives (``MultiPositiveClipLoss``, params.yaml ``train.positives: caption``): template captions repeat,
so a batch can hold several clips with the same caption text, and plain InfoNCE counts as negatives of a clip the
other copies of its own caption (false negatives).  The multi-positive loss takes every pair whose caption
text is identical as a positive: per row, the target distribution is uniform over that row's positives,

    P[i, j] = (group_i == group_j),   target[i] = P[i] / sum_j P[i, j]
    loss    = (CE(logits, target) + CE(logits.T, target)) / 2          (soft-target cross-entropy)

i.e. the mean over a row's positives of -log softmax.

What it changes, exactly: when identical captions have identical text embeddings (a deterministic text tower:
eval mode, no dropout, or a frozen tower's cached embeddings), this loss IS plain InfoNCE, value and gradient.  In a
group G of one caption the |G| text columns are equal, so each audio row gives all of them one probability p and
``mean over G of -log p = -log p``; and the |G| equal text rows give the same softmax q over the audio, so
``sum_i -log q_i`` is the same whether row i counts audio i alone or all of G uniformly.  Plain InfoNCE already caps
each of them at 1 / |G|; nothing is pushed apart that the target keeps together.  The two differ only where the
copies of one caption embed differently: dropout in the text tower or its projection (train mode), where plain
InfoNCE makes each noisy copy a negative of the other copies' clips and the multi-positive target pulls every copy
toward every clip of its caption (tests/test_losses.py shows both).

Caption identity enters as one integer per sample
(``clapkit.data.loader.caption_group_ids``, a hash of the text), gathered across ranks like the features, so the
positives are defined over exactly the set the negatives are: the global batch.  Without a repeated caption P is the
identity and the loss is ClipLoss's, number for number.  With repeats, both losses have the floor mean log |G| > 0.
Validation keeps the pair loss; it runs in eval mode, where the two are equal anyway.

The temperature is clamped as CLIP does: ``clamp_logit_scale`` keeps ``logit_scale`` in [0, ln 100] after each
optimiser step, so the scale never exceeds 100 (temperature >= 0.01).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipLoss", "LOGIT_SCALE_MAX", "MultiPositiveClipLoss", "clamp_logit_scale", "gather_features",
           "gather_ids", "make_loss", "POSITIVES"]

LOGIT_SCALE_MAX = math.log(100.0)  # CLIP: the learned scale exp(logit_scale) is capped at 100


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(features: torch.Tensor, gather_with_grad: bool = True) -> torch.Tensor:
    """(n_local, d) on every rank -> (world * n_local, d), ranks in order; identity without distribution."""
    rank, world = _world()
    if world == 1:
        return features
    if gather_with_grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(features), dim=0)
    parts = [torch.empty_like(features) for _ in range(world)]
    dist.all_gather(parts, features.detach())
    parts[rank] = features  # keep the local slice differentiable
    return torch.cat(parts, dim=0)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """(n_local,) integer ids on every rank -> (world * n_local,), ranks in order, in the order gather_features
    puts the features (ids carry no gradient)."""
    rank, world = _world()
    if world == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over (audio, text) embeddings; see the module docstring for the distributed variants."""

    uses_groups = False  # train_step passes the caption group ids only to a loss that asks for them

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = True):
        super().__init__()
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad

    def logits(self, audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits_per_audio, logits_per_text, labels) for this rank's loss."""
        rank, world = _world()
        all_audio = gather_features(audio, self.gather_with_grad)
        all_text = gather_features(text, self.gather_with_grad)
        if self.local_loss:
            per_audio = scale * audio @ all_text.T  # this rank's audio rows against every caption
            per_text = scale * text @ all_audio.T
            labels = torch.arange(audio.shape[0], device=audio.device) + rank * audio.shape[0]
        else:
            per_audio = scale * all_audio @ all_text.T
            per_text = per_audio.T
            labels = torch.arange(all_audio.shape[0], device=audio.device)
        return per_audio, per_text, labels

    def forward(self, audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``audio``, ``text``: (n_local, d) L2-normalised; ``scale`` = exp(logit_scale).  Computed in float32."""
        per_audio, per_text, labels = self.logits(audio.float(), text.float(), scale.float())
        return (F.cross_entropy(per_audio, labels) + F.cross_entropy(per_text, labels)) / 2


class MultiPositiveClipLoss(ClipLoss):
    """Symmetric InfoNCE in which every pair with an identical caption is a positive (module docstring); the same
    ``local_loss`` / ``gather_with_grad`` variants as ``ClipLoss``.  ``groups``: (n_local,) integer ids, equal
    exactly when the captions are equal."""

    uses_groups = True

    def forward(self, audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
                groups: torch.Tensor) -> torch.Tensor:
        if groups.shape != (audio.shape[0],) or groups.is_floating_point():
            raise ValueError(f"groups must be ({audio.shape[0]},) integer ids, got {tuple(groups.shape)} "
                             f"{groups.dtype}")
        per_audio, per_text, _ = self.logits(audio.float(), text.float(), scale.float())
        groups = groups.to(audio.device)
        all_groups = gather_ids(groups)
        # The rows of this rank's loss: every sample (global loss) or this rank's own (local loss); the columns are
        # always the whole gathered batch, so positives and negatives come from the same set.
        rows = groups if self.local_loss else all_groups
        positives = (rows[:, None] == all_groups[None, :]).float()
        # each row holds its own pair, so no row sums to 0
        target = positives / positives.sum(dim=1, keepdim=True)
        # equal captions are an equivalence relation, so text i's positives among the audio are audio i's among
        # the texts: the one target serves both directions
        return (F.cross_entropy(per_audio, target) + F.cross_entropy(per_text, target)) / 2


POSITIVES = ("pair", "caption")


def make_loss(positives: str = "pair", local_loss: bool = False, gather_with_grad: bool = True) -> ClipLoss:
    """The training loss of params.yaml ``train.positives``: ``pair`` (each clip's own caption only, plain
    InfoNCE) or ``caption`` (every clip of an identical caption text)."""
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {POSITIVES}, got {positives!r}")
    cls = MultiPositiveClipLoss if positives == "caption" else ClipLoss
    return cls(local_loss=local_loss, gather_with_grad=gather_with_grad)


@torch.no_grad()
def clamp_logit_scale(logit_scale: torch.Tensor, max_value: float = LOGIT_SCALE_MAX) -> None:
    """In place: keep the learned log-scale in [0, ln 100] (temperature between 0.01 and 1)."""
    logit_scale.clamp_(0.0, max_value)
