"""Validation during contrastive training: loss and zero-shot accuracy on the ``val`` split, shared across ranks.

Design (why not "rank 0 validates while the others wait"): at the paper's scale a validation pass takes longer
than NCCL's collective timeout, and the ranks waiting in a broadcast would be killed.  Here every rank takes part:
the val clips are cut into fixed batches (one seeded permutation, the same for every world size), rank r embeds
batches r, r + W, r + 2W, ..., and the embeddings and per-batch losses are gathered (``all_gather_object``, CPU
tensors).  The gathered result is the same as one process computing every batch, so validation numbers do not
depend on the number of ranks (tests/test_train.py), and every rank leaves validation with the same result.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from .training import Precision, Runtime

__all__ = ["validate"]


@torch.no_grad()
def validate(clap, corpus, indices: Sequence[int], tasks: Mapping[str, Any], batch_size: int, runtime: Runtime,
             precision: Precision) -> dict[str, Any]:
    """Contrastive loss over batches of ``indices`` (centre crops, first captions) and zero-shot accuracy per task
    of the corpus, by the evaluate stage's zero-shot function and prompt rule (``clapkit.zeroshot``) and its tie
    rule (``clapkit.metrics.accuracy``).  ``precision``: the evaluation precision (``evaluate.precision``, not the
    training's), the autocast of both towers here.  Returns
    ``{"loss", "zeroshot": {task: {"accuracy", "chance", "classes", "clips"}}, "mean_accuracy"}``."""
    from .data.loader import ClipCaptionDataset, make_collate
    from .metrics import accuracy
    from .zeroshot import ClapEmbedder, embedded_task_prompt, zero_shot_logits

    model = clap.model
    runtime.broadcast_buffers(model)  # one model on every rank: rank 0's BatchNorm statistics (DDP syncs them lazily)
    was_training = model.training
    model.eval()
    embedder = ClapEmbedder(clap, batch_size, precision.name)
    # The split lists clips source by source; batches of neighbours (one speaker, one kit) have near-identical
    # captions and would make the loss meaningless.  A fixed permutation mixes them, the same for every run.
    order = [indices[k] for k in torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))]
    dataset = ClipCaptionDataset(corpus, order, clap.clip_samples, train=False)
    collate = make_collate(clap.tokenizer)
    device = runtime.device
    starts = list(range(0, len(dataset), batch_size))
    mine = []
    for b in range(runtime.rank, len(starts), runtime.world):
        batch = collate([dataset[i] for i in range(starts[b], min(starts[b] + batch_size, len(dataset)))])
        with embedder.autocast():
            a = model.encode_audio(batch["wave"].to(device))
            t = model.encode_text(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        a, t = F.normalize(a.float(), dim=-1), F.normalize(t.float(), dim=-1)
        loss = None
        if a.shape[0] > 1:
            per_audio = model.logit_scale.exp().float() * a @ t.T
            labels = torch.arange(a.shape[0], device=a.device)
            loss = float((F.cross_entropy(per_audio, labels) + F.cross_entropy(per_audio.T, labels)) / 2)
        mine.append((b, a.cpu(), loss))
    parts = sorted((p for rank_parts in runtime.all_gather_objects(mine) for p in rank_parts), key=lambda p: p[0])
    audio_all = torch.cat([a for _, a, _ in parts]) if parts else torch.zeros(0, model.embed_dim)
    weighted = [(loss, a.shape[0]) for _, a, loss in parts if loss is not None]
    results = {}
    for task, info in sorted(tasks.items()):
        classes = list(info["classes"])
        rows = [(j, corpus.rows[i]["labels"].get(task)) for j, i in enumerate(order)]
        rows = [(j, label) for j, label in rows if label in classes]
        if len(classes) < 2 or not rows:
            continue
        logits = zero_shot_logits(embedder, audio_all[[j for j, _ in rows]], classes, embedded_task_prompt(task))
        truth = torch.tensor([classes.index(label) for _, label in rows])
        results[task] = {"accuracy": accuracy(logits, truth), "chance": 1.0 / len(classes),
                         "classes": len(classes), "clips": len(rows)}
    model.train(was_training)
    loss = sum(l * w for l, w in weighted) / max(1, sum(w for _, w in weighted))
    mean_acc = sum(r["accuracy"] for r in results.values()) / max(1, len(results))
    return {"loss": loss, "zeroshot": results, "mean_accuracy": mean_acc}
