"""Training and evaluation batches from a PreparedCorpus: cropped waveforms + one tokenised caption per clip.

Everything random is a pure function of ``(seed, epoch, clip index)``, never of a running generator:

* the *order* of an epoch is ``torch.randperm`` seeded with ``seed + epoch`` (every rank computes the same one);
* a clip's *crop* (train: a random window of ``clip_samples`` inside the cached waveform; eval: the centre) and
  its *caption* (one of its several captions, drawn once per epoch) come from a generator seeded with
  ``hash(seed, epoch, clip id)`` (so the WebDataset stream of ``clapkit.data.shards`` draws the same ones).

So a batch does not depend on how many workers read it, on which rank it lands, or on whether the run was
interrupted: resuming at step k of an epoch just starts the same index list at batch k (``EpochBatches.start``).

Sharding is DistributedSampler-style over the *global* batch: the epoch's permutation is cut into global batches
of ``global_batch`` clips (the tail that does not fill one is dropped), and rank r of W takes the r-th contiguous
``global_batch / W`` slice of each, so the union of the ranks' micro-batches is exactly the single-process batch.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..audio import fit_length
from ..text import TextTokenizer

__all__ = ["ClipCaptionDataset", "EpochBatches", "caption_group_ids", "caption_repeats", "clip_seed", "make_collate",
           "make_loader", "make_stream_loader", "train_draw"]


def clip_seed(seed: int, epoch: int, key: int | str) -> int:
    """A 63-bit seed for one clip (its id) in one epoch (stable across Python runs, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def caption_group_ids(captions: Sequence[str]) -> torch.Tensor:
    """(n,) int64: one id per caption, equal exactly when the texts are equal (a 63-bit hash of the text, so every
    rank and worker gives the same text the same id without talking to the others; a collision between two texts
    of a corpus has probability about (texts^2) / 2^64).  The multi-positive loss reads these, never strings."""
    ids = [int.from_bytes(hashlib.blake2b(c.encode(), digest_size=8, person=b"caption").digest(), "little")
           & ((1 << 63) - 1) for c in captions]
    return torch.tensor(ids, dtype=torch.long)


def train_draw(clip_id: str, length: int, n_captions: int, clip_samples: int, seed: int,
               epoch: int) -> tuple[int | None, int]:
    """(crop start, caption index) of one clip in one training epoch: the crop start inside its ``length`` cached
    samples (None when the clip is not longer than ``clip_samples``: it is used whole or repeat-padded, and no
    number is drawn), then the caption, from one generator seeded by (seed, epoch, clip id).  The one definition
    the indexed dataset, the shard stream and ``caption_repeats`` share, so they see the same captions."""
    gen = torch.Generator().manual_seed(clip_seed(seed, epoch, clip_id))
    start = None
    if length > clip_samples:  # fit_length's random crop draws exactly this number
        start = int(torch.randint(0, length - clip_samples + 1, (1,), generator=gen))
    return start, int(torch.randint(n_captions, (1,), generator=gen))


def train_crop(wave: torch.Tensor, start: int | None, clip_samples: int) -> torch.Tensor:
    """The training window of ``train_draw``'s ``start`` (repeat-padded like ``fit_length`` when None)."""
    return fit_length(wave, clip_samples) if start is None else wave[start:start + clip_samples]


class ClipCaptionDataset(Dataset):
    """Item ``i`` of ``indices`` -> ``{"wave": (clip_samples,) float32, "caption": str, "index": corpus row}``.

    ``train=True``: seeded random crop and a caption drawn per epoch (call ``set_epoch``).  ``train=False``: the
    centre crop and the clip's first caption, always the same.  Clips shorter than ``clip_samples`` are
    repeat-padded (``fit_length``), as at inference.
    """

    def __init__(self, corpus, indices: Sequence[int], clip_samples: int, train: bool, seed: int = 0):
        self.corpus = corpus
        self.indices = [int(i) for i in indices]
        self.clip_samples = int(clip_samples)
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        empty = [self.corpus.rows[i]["id"] for i in self.indices if not self.corpus.rows[i].get("captions")]
        if empty:
            raise ValueError(f"{len(empty)} clip(s) have no caption, e.g. {empty[:3]}: cannot train on them")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = self.indices[item]
        row = self.corpus.rows[index]
        wave = torch.from_numpy(self.corpus.waveform(index))
        if self.train:
            start, k = train_draw(row["id"], wave.shape[0], len(row["captions"]), self.clip_samples, self.seed,
                                  self.epoch)
            wave, caption = train_crop(wave, start, self.clip_samples), row["captions"][k]
        else:
            wave = fit_length(wave, self.clip_samples, crop="center")
            caption = row["captions"][0]
        return {"wave": wave.contiguous(), "caption": caption, "index": index}


def make_collate(tokenizer: TextTokenizer):
    """Stack waveforms; tokenise the captions padded to the longest one in the batch (dynamic padding)."""

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        tokens = tokenizer([it["caption"] for it in items])
        return {
            "wave": torch.stack([it["wave"] for it in items]),
            "input_ids": tokens["input_ids"],
            "attention_mask": tokens["attention_mask"],
            "captions": [it["caption"] for it in items],
            "caption_ids": caption_group_ids([it["caption"] for it in items]),
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        }

    return collate


@dataclass
class EpochBatches:
    """The dataset positions of this rank's batches in one epoch (a batch sampler for ``DataLoader``).

    ``global_batch`` clips per optimiser step over all ranks; this rank gets ``global_batch // world`` of each;
    iteration starts at batch ``start`` (to resume in the middle of an epoch).
    """

    n_items: int
    global_batch: int
    seed: int
    epoch: int = 0
    rank: int = 0
    world: int = 1
    shuffle: bool = True
    drop_last: bool = True
    start: int = 0

    def __post_init__(self):
        if self.global_batch % self.world:
            raise ValueError(f"global batch {self.global_batch} is not divisible by {self.world} ranks")

    def global_batches(self) -> list[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n_items))
        full = self.n_items // self.global_batch
        batches = [order[b * self.global_batch:(b + 1) * self.global_batch] for b in range(full)]
        if not self.drop_last and full * self.global_batch < self.n_items:
            batches.append(order[full * self.global_batch:])
        return batches

    def __len__(self) -> int:
        return len(self.global_batches()) - self.start

    def __iter__(self):
        for batch in self.global_batches()[self.start:]:
            per_rank = -(-len(batch) // self.world)
            yield batch[self.rank * per_rank:(self.rank + 1) * per_rank]


def make_loader(dataset: ClipCaptionDataset, batches: EpochBatches, tokenizer: TextTokenizer,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader over ``batches``; workers only read and crop (the order is fixed by ``batches``)."""
    # Our own generator: creating a DataLoader iterator otherwise draws a seed from the *global* RNG, which
    # would make a run resumed mid-epoch diverge from an uninterrupted one.
    generator = torch.Generator().manual_seed(clip_seed(batches.seed, batches.epoch, -1))
    return DataLoader(dataset, batch_sampler=batches, collate_fn=make_collate(tokenizer), num_workers=num_workers,
                      generator=generator)


def make_stream_loader(stream, tokenizer: TextTokenizer, num_workers: int = 0) -> DataLoader:
    """A DataLoader over a ``clapkit.data.shards.ShardStream``: its epoch's batches of ``stream.per_rank_batch``
    clips, ``stream.batches_per_epoch - stream.start_batch`` of them when training, in an order fixed by the
    stream's (seed, epoch, rank, world) and ``num_workers`` (the stream's module docstring explains how).

    Workers copy the stream when an iteration starts, so ``stream.set_epoch`` must come before ``iter(loader)``
    (and ``persistent_workers`` would keep the first epoch's copy: it is not used)."""
    if stream.shards_per_worker(num_workers) < 1:
        warnings.warn(f"rank {stream.rank} reads about {stream.shards_per_worker(1):.1f} shards an epoch with "
                      f"{max(1, num_workers)} workers: workers share shards, each reading through the clips before "
                      f"its own part; more, smaller shards avoid that extra reading", stacklevel=2)
    # Each worker yields whole batches (the stream's plan), so drop_last has nothing to cut; our own generator
    # because creating a DataLoader iterator otherwise draws a seed from the global RNG (see make_loader).
    return DataLoader(stream, batch_size=stream.per_rank_batch, collate_fn=make_collate(tokenizer),
                      num_workers=num_workers, drop_last=False,
                      generator=torch.Generator().manual_seed(clip_seed(stream.seed, stream.epoch, -1)))


def caption_repeats(corpus, indices: Sequence[int], batch_size: int, seed: int, clip_samples: int,
                    steps: int) -> dict[str, Any]:
    """How often the training batches hold identical captions: the false negatives of plain InfoNCE.

    Replays the first ``steps`` global batches of a training run on the indexed loader (``EpochBatches`` order and
    ``train_draw`` captions, epoch after epoch, the tail of each epoch dropped), from the corpus rows alone (no
    audio is read).  Returns

    * ``batches``, ``batches_with_repeat`` and its fraction: batches in which some caption text occurs twice or more;
    * ``false_negative_fraction``: of the B (B - 1) off-diagonal pairs of each batch's logits (plain InfoNCE's
      negatives), those whose two captions are identical;
    * ``false_negatives_per_clip``: the mean number of such negatives of one clip (per direction);
    * ``clips_with_twin_fraction``: clips whose caption another clip of the same batch shares;
    * ``max_same_caption``: the most clips of one batch with one caption.
    """
    per_epoch = len(indices) // batch_size
    if per_epoch < 1 or steps < 1:
        raise ValueError(f"{len(indices)} clips and {steps} steps: need at least one batch of {batch_size}")
    batches = repeated = false_negatives = twins = 0
    largest = 1
    for epoch in range(-(-steps // per_epoch)):
        for positions in EpochBatches(len(indices), batch_size, seed, epoch).global_batches()[:steps - batches]:
            counts: dict[str, int] = {}
            for pos in positions:
                row = corpus.rows[indices[pos]]
                _, k = train_draw(row["id"], int(row["length"]), len(row["captions"]), clip_samples, seed, epoch)
                counts[row["captions"][k]] = counts.get(row["captions"][k], 0) + 1
            batches += 1
            repeated += max(counts.values()) > 1
            false_negatives += sum(c * (c - 1) for c in counts.values())  # ordered pairs i != j, one caption
            twins += sum(c for c in counts.values() if c > 1)
            largest = max(largest, *counts.values())
    negatives = batches * batch_size * (batch_size - 1)
    return {"batches": batches, "batch_size": batch_size, "batches_with_repeat": repeated,
            "batches_with_repeat_fraction": repeated / batches, "false_negative_fraction": false_negatives / negatives,
            "false_negatives_per_clip": false_negatives / (batches * batch_size),
            "clips_with_twin_fraction": twins / (batches * batch_size), "max_same_caption": largest}
