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

The temperature is clamped as CLIP does: ``clamp_logit_scale`` keeps ``logit_scale`` in [0, ln 100] after each
optimiser step, so the scale never exceeds 100 (temperature >= 0.01).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipLoss", "LOGIT_SCALE_MAX", "clamp_logit_scale", "gather_features"]

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


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over (audio, text) embeddings; see the module docstring for the distributed variants."""

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


@torch.no_grad()
def clamp_logit_scale(logit_scale: torch.Tensor, max_value: float = LOGIT_SCALE_MAX) -> None:
    """In place: keep the learned log-scale in [0, ln 100] (temperature between 0.01 and 1)."""
    logit_scale.clamp_(0.0, max_value)
