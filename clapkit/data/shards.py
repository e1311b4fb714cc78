"""The prepared corpus as WebDataset shards, and a streaming reader that gives every rank the same number of steps.

Writer (``write_shards``, ``clapkit shards write``): one tar per ``shard_size`` clips of a split, named
``<out>/<split>-000000.tar`` ...; each sample is two files sharing the key (the clip id, made tar-safe):

* ``<key>.npy``   the cached mono waveform (float16, as in ``prepared/waveforms.f16``);
* ``<key>.json``  ``{"id", "captions", "labels", "source", "split", "sample_rate"}``;

plus ``<out>/<split>.json`` with the shard names, the clip count and each shard's clip count (``sizes``: OpenCLIP's
``sizes.json`` role).  Shards are written to a temporary name and renamed, so a crash never leaves a truncated
shard behind a valid name.

Reader (``ShardStream``): the epoch plan
---------------------------------------
Every rank and every DataLoader worker computes the same plan from ``(seed, epoch)`` and the shard sizes alone,
without talking to the others:

1. *Epoch order.*  The shard list is shuffled with ``(seed, epoch)`` (evaluation keeps the listed order) and the
   N clips are numbered 0..N-1 in that order, shard after shard, each shard in its tar order.  The sizes come from
   the index (``ShardStream.from_index``), so planning opens no shard.
2. *Rank ranges.*  A training epoch is ``batches_per_epoch = N // (per_rank_batch * world)`` steps, computed from
   the index, hence the same on every rank whatever each reads.  Rank r reads the ``batches_per_epoch *
   per_rank_batch`` clips from position ``r * batches_per_epoch * per_rank_batch`` on; the ``N mod global batch``
   clips at the end of the order are left out of this epoch (other ones each epoch: the shard order changes).
3. *Worker spans.*  The rank's batches are dealt round-robin to ``W = max(1, num_workers)`` *logical* workers:
   batch j of the rank's epoch is batch ``j // W`` of logical worker ``j % W``.  Each logical worker reads the
   contiguous span of the rank's range that holds exactly its batches' clips, passes them through its own seeded
   shuffle buffer and yields them.  The DataLoader cuts each worker's clips into batches of ``per_rank_batch``
   (whole ones: nothing is left for ``drop_last`` to cut) and takes the workers' batches in turn (0, 1, ..., W-1,
   0, ..., passing over workers that have finished), which is the order j = 0, 1, ... above.

So a rank yields exactly ``batches_per_epoch`` full batches whatever ``num_workers`` and the shard sizes, every
rank the same number, and the epoch ends when the stream ends.  Spans cut through shards: a span may start in the
middle of a shard (its worker reads past the earlier clips without decoding them), two workers or two ranks may
share a shard, and one shard is enough for any world size (``make_stream_loader`` warns when a rank's workers
share shards, since each then reads through part of another's).

What is guaranteed:

* *Counts*: rank r yields ``batches_per_epoch`` batches of ``per_rank_batch`` clips (``- start_batch`` when
  resuming), for any ``num_workers`` and shard sizes, even with bad samples (below).
* *No duplicate within an epoch*: when ``batches_per_epoch * per_rank_batch * world <= N`` (the default) and every
  sample reads, the clips of one epoch over all ranks and workers are distinct, and the set a rank reads does not
  depend on ``num_workers``.  A larger ``batches_per_epoch`` wraps the spans round the epoch order (clips then
  repeat within the epoch, as with OpenCLIP's resampled shards).
* *Purity*: an epoch's batches are a function of (shards and their sizes, ``seed``, ``epoch``, ``rank``,
  ``world``, ``num_workers``, ``per_rank_batch``, ``shuffle_buffer``) only; ``num_workers`` 0 and 1 give the same
  stream.  To resume mid-epoch, ``set_epoch(epoch, start_batch=k)`` yields batches k, k+1, ... of that epoch:
  the same batches as ``itertools.islice(loader, k, None)``, without cropping, collating and tokenising the k
  skipped ones (their clips are still read from the tars, to refill the shuffle buffers identically).
* *Crops and captions* are drawn exactly as ``clapkit.data.loader.ClipCaptionDataset`` draws them, from ``(seed,
  epoch, clip id)``: a clip gets the same crop and caption whichever rank, worker or buffer position it lands in.

Bad samples: an undecodable ``.npy``, unparsable JSON, a missing member, a clip without caption or a non-finite
waveform is skipped with a ``BadSampleWarning`` naming the shard and the key; a shard that cannot be opened or
whose tar breaks off is skipped from that point the same way.  A training worker then reads on past the end of its
span (into the next span, round the epoch order) until its quota is full, so the counts hold and a long run never
dies on one bad clip; the price is that the clips read as replacements may also be read by the next span's worker
(a duplicate in that epoch).  If a whole pass over the shards finds no readable clip the stream raises.

Evaluation (``train=False``): listed shard order, no shuffle buffer, centre crop, first caption.  Rank r reads the
clips ``[r N // world, (r + 1) N // world)``, each once, in ``ceil(clips / per_rank_batch)`` batches, the last one
short (so ranks can differ by one batch and one clip); a bad clip is skipped, not replaced, and leaves its batch
short.  That is enough for evaluating on one rank; the trainer evaluates from ``prepared/`` (the indexed
``ClipCaptionDataset``) rather than from shards.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..audio import fit_length
from .loader import clip_seed, train_crop, train_draw

__all__ = ["BadSampleWarning", "ShardStream", "count_shard_samples", "read_index", "read_shard_sizes", "write_shards"]


class BadSampleWarning(UserWarning):
    """A sample, or the rest of a shard, that a ``ShardStream`` could not read and skipped."""


def _key(clip_id: str) -> str:
    # WebDataset splits a member name at its first dot: keys must not contain dots (or slashes, for tar tools)
    return re.sub(r"[^A-Za-z0-9_-]", "_", clip_id)


def write_shards(prepared_dir: str | Path, out_dir: str | Path, split: str = "train", shard_size: int = 1000) -> dict:
    """Write the clips of ``split`` as tar shards; returns the index written to ``<out>/<split>.json``."""
    import webdataset as wds

    from .prepare import PreparedCorpus

    corpus = PreparedCorpus(prepared_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = corpus.split(split)
    shards, sizes, seen = [], [], set()
    for start in range(0, len(indices), shard_size):
        name = f"{split}-{start // shard_size:06d}.tar"
        tmp = out / f".{name}.tmp"
        members = indices[start:start + shard_size]
        with wds.TarWriter(str(tmp)) as sink:
            for i in members:
                row = corpus.rows[i]
                key = _key(row["id"])
                if key in seen:
                    raise ValueError(f"{prepared_dir}: clip ids {row['id']!r} and another map to the same key {key!r}")
                seen.add(key)
                buf = io.BytesIO()
                np.save(buf, np.asarray(corpus._wave[row["offset"]:row["offset"] + row["length"]], dtype=np.float16))
                meta = {"id": row["id"], "captions": row["captions"], "labels": row["labels"],
                        "source": row["source"], "split": row["split"], "sample_rate": corpus.sample_rate}
                sink.write({"__key__": key, "npy": buf.getvalue(), "json": json.dumps(meta).encode()})
        os.replace(tmp, out / name)
        shards.append(name)
        sizes.append(len(members))
    index = {"split": split, "clips": len(indices), "shard_size": shard_size, "shards": shards, "sizes": sizes}
    tmp = out / f".{split}.json.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / f"{split}.json")
    return index


def read_index(shard_dir: str | Path, split: str = "train") -> tuple[list[str], int]:
    """(shard paths, clip count) from ``<shard_dir>/<split>.json``."""
    index = json.loads((Path(shard_dir) / f"{split}.json").read_text())
    return [str(Path(shard_dir) / s) for s in index["shards"]], int(index["clips"])


def read_shard_sizes(shard_dir: str | Path, split: str = "train") -> list[int]:
    """The clip count of each shard of ``<shard_dir>/<split>.json``, in its shard order."""
    index = json.loads((Path(shard_dir) / f"{split}.json").read_text())
    if "sizes" in index:
        return [int(n) for n in index["sizes"]]
    # An index written before the sizes were recorded: write_shards fills every shard but the last.
    n_shards, full = len(index["shards"]), int(index["shard_size"])
    return [full] * (n_shards - 1) + [int(index["clips"]) - full * (n_shards - 1)] if n_shards else []


def _raw_samples(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one shard, undecoded (``{"__key__", "npy", "json"}``, bytes), in tar order.

    A shard that cannot be opened, or whose tar breaks off, is warned about and ends there (the samples before the
    break are kept): one damaged file must not end a long run.
    """
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def skip_damage(exn: Exception) -> bool:
        warnings.warn(f"{url}: unreadable shard data skipped ({exn!r})", BadSampleWarning, stacklevel=2)
        return True

    try:
        stream = gopen(url)
    except Exception as exn:  # any failure to open (missing file, network, pipe) is the same case to the stream
        skip_damage(exn)
        return
    try:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}], handler=skip_damage),
                                 handler=skip_damage)
    finally:  # also when the reader stops mid-shard (its span ends there)
        stream.close()


def count_shard_samples(url: str) -> int:
    """The number of samples in one shard (reads it through; ``read_shard_sizes`` avoids that for indexed shards)."""
    return sum(1 for _ in _raw_samples(url))


def _decode(url: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """``{"id", "captions", "wave"}`` (wave: the stored float16 array), or None, with a warning, for a bad sample."""
    key = raw.get("__key__")
    try:
        if "json" not in raw or "npy" not in raw:
            raise ValueError(f"members {sorted(k for k in raw if not k.startswith('__'))}, need .json and .npy")
        meta = json.loads(raw["json"])
        captions = meta.get("captions") if isinstance(meta, dict) else None
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"no caption (captions: {captions!r})")
        if not isinstance(meta.get("id"), str):
            raise ValueError(f"no clip id (id: {meta.get('id')!r})")
        wave = np.load(io.BytesIO(raw["npy"]), allow_pickle=False)
        if wave.ndim != 1 or wave.size == 0 or wave.dtype.kind != "f":
            raise ValueError(f"waveform of shape {wave.shape} and dtype {wave.dtype}, need a non-empty float vector")
        if not np.isfinite(wave).all():
            raise ValueError("non-finite waveform samples")
    except Exception as exn:  # whatever is wrong with one clip, the run goes on without it
        warnings.warn(f"{url}: skipping sample {key!r}: {type(exn).__name__}: {exn}", BadSampleWarning, stacklevel=2)
        return None
    return {"id": meta["id"], "captions": captions, "wave": wave}


def _shuffled(samples: Iterable[dict[str, Any]], size: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """A shuffle buffer of ``size`` samples: once it is full, each new sample sends out a random one of those held."""
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        k = rng.randrange(size)
        out, buffer[k] = buffer[k], sample
        yield out
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """Stream ``{"wave", "caption", "id", "index"}`` samples from shards, an epoch of exactly ``batches_per_epoch``
    batches of ``per_rank_batch`` per rank through ``make_stream_loader``; see the module docstring.

    ``shard_sizes``: the clip count of each shard (``read_shard_sizes``; ``from_index`` reads them); None counts
    them by reading every shard once.  ``batches_per_epoch`` (training only): None is ``N // (per_rank_batch *
    world)``, computed from the sizes, the same on every rank.
    """

    def __init__(self, shards: Sequence[str], clip_samples: int, seed: int = 0, train: bool = True,
                 shuffle_buffer: int = 1000, rank: int = 0, world: int = 1, *, per_rank_batch: int,
                 shard_sizes: Sequence[int] | None = None, batches_per_epoch: int | None = None):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}: need 0 <= rank < world")
        if per_rank_batch < 1:
            raise ValueError(f"per_rank_batch must be at least 1, got {per_rank_batch}")
        self.shards = [str(s) for s in shards]
        if not self.shards:
            raise ValueError("no shards to stream")
        sizes = [count_shard_samples(s) for s in self.shards] if shard_sizes is None else [int(n) for n in shard_sizes]
        if len(sizes) != len(self.shards) or min(sizes) < 0:
            raise ValueError(f"{len(sizes)} shard sizes {sizes[:5]}... for {len(self.shards)} shards")
        self.shard_sizes, self.clips = sizes, sum(sizes)
        if self.clips == 0:
            raise ValueError(f"the {len(self.shards)} shards (first {self.shards[0]}) hold no clip")
        self.clip_samples, self.seed, self.train = int(clip_samples), int(seed), bool(train)
        self.shuffle_buffer, self.rank, self.world = int(shuffle_buffer), int(rank), int(world)
        self.per_rank_batch = int(per_rank_batch)
        if self.train:
            global_batch = self.per_rank_batch * self.world
            self.batches_per_epoch = self.clips // global_batch if batches_per_epoch is None else int(batches_per_epoch)
            if self.batches_per_epoch < 1:
                raise ValueError(f"{self.clips} clips in the shards, fewer than one global batch of {global_batch}")
        else:
            if batches_per_epoch is not None:
                raise ValueError("an evaluation stream reads every clip once: batches_per_epoch is for training")
            self.batches_per_epoch = -(-self._rank_range()[1] // self.per_rank_batch)
        self.epoch, self.start_batch = 0, 0

    @classmethod
    def from_index(cls, shard_dir: str | Path, split: str, clip_samples: int, **kwargs) -> ShardStream:
        """The stream of ``<shard_dir>/<split>.json``'s shards, with their sizes from the index."""
        shards, _ = read_index(shard_dir, split)
        return cls(shards, clip_samples, shard_sizes=read_shard_sizes(shard_dir, split), **kwargs)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Stream epoch ``epoch`` from its batch ``start_batch`` on (resuming in the middle of an epoch)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} outside an epoch of {self.batches_per_epoch} batches")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        """Clips this rank yields from ``start_batch`` on (the DataLoader's length is this over per_rank_batch)."""
        return max(0, self._rank_range()[1] - self.start_batch * self.per_rank_batch)

    def shards_per_worker(self, num_workers: int) -> float:
        """About how many shards each worker of this rank reads an epoch (below 1: workers share shards)."""
        return self._rank_range()[1] / (self.clips / len(self.shards)) / max(1, num_workers)

    # --- the epoch plan (module docstring) ---

    def _rank_range(self) -> tuple[int, int]:
        """(first position in the epoch order, number of clips) of this rank's epoch."""
        if self.train:
            per_rank = self.batches_per_epoch * self.per_rank_batch
            return self.rank * per_rank, per_rank
        first, end = self.rank * self.clips // self.world, (self.rank + 1) * self.clips // self.world
        return first, end - first

    def _worker_span(self, logical: int, workers: int) -> tuple[int, int]:
        """(first position, number of clips) read by logical worker ``logical`` of ``workers``."""
        first, rank_clips = self._rank_range()
        batches, b = self.batches_per_epoch, self.per_rank_batch
        lengths = [b * (batches // workers + (w < batches % workers)) for w in range(workers)]
        if batches:  # evaluation: the worker holding the rank's last batch holds its short tail
            lengths[(batches - 1) % workers] -= batches * b - rank_clips
        return first + sum(lengths[:logical]), lengths[logical]

    def _epoch_order(self) -> list[int]:
        order = list(range(len(self.shards)))
        if self.train:
            random.Random(clip_seed(self.seed, self.epoch, "shard-order")).shuffle(order)
        return order

    def _read(self, first: int, length: int) -> Iterator[dict[str, Any]]:
        """Decoded samples from position ``first`` of the epoch order on: ``length`` readable ones when training
        (reading on round the order past bad ones), the readable ones of ``length`` positions when evaluating."""
        order = self._epoch_order()
        k, pos = 0, first % self.clips
        while pos >= self.shard_sizes[order[k]]:
            pos -= self.shard_sizes[order[k]]
            k += 1
        yielded = planned = 0
        opened_since_readable = 0
        while True:
            url = self.shards[order[k]]
            # evaluation reads the planned positions of this shard only; training reads on until its quota is full
            stop = None if self.train else pos + min(self.shard_sizes[order[k]] - pos, length - planned)
            if stop is None or stop > pos:
                opened_since_readable += 1
                if self.train and opened_since_readable > len(order) + 1:
                    raise RuntimeError(f"no readable clip in a whole pass over the {len(order)} shards "
                                       f"(e.g. {url}); see the BadSampleWarnings")
                for i, raw in enumerate(_raw_samples(url)):
                    if i < pos:
                        continue  # before this span: another worker's clips, not decoded
                    if stop is not None and i >= stop:
                        break
                    sample = _decode(url, raw)
                    if sample is None:
                        continue
                    opened_since_readable = 0
                    yielded += 1
                    yield sample
                    if self.train and yielded == length:
                        return
            if not self.train:
                planned += stop - pos
                if planned >= length:
                    return
            k, pos = (k + 1) % len(order), 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # The DataLoader starts its round-robin at worker 0; when resuming at batch k, worker 0 must produce
        # batch k, i.e. play logical worker k % W.
        logical = (worker + self.start_batch) % workers
        first, length = self._worker_span(logical, workers)
        # of the batches j < start_batch already done, those with j % W == logical were this worker's
        batches_done = (self.start_batch - logical + workers - 1) // workers
        skip = min(length, batches_done * self.per_rank_batch)
        if skip >= length:
            return
        samples = self._read(first, length)
        if self.train and self.shuffle_buffer > 1:
            slot = f"buffer:{self.rank}/{self.world}:{logical}/{workers}"
            samples = _shuffled(samples, self.shuffle_buffer, random.Random(clip_seed(self.seed, self.epoch, slot)))
        for sample in itertools.islice(samples, skip, None):
            yield self._crop_and_caption(sample)

    def _crop_and_caption(self, sample: dict[str, Any]) -> dict[str, Any]:
        wave = torch.from_numpy(sample["wave"].astype(np.float32))
        captions = sample["captions"]
        if self.train:
            start, k = train_draw(sample["id"], wave.shape[0], len(captions), self.clip_samples, self.seed,
                                  self.epoch)
            wave, caption = train_crop(wave, start, self.clip_samples), captions[k]
        else:
            wave = fit_length(wave, self.clip_samples, crop="center")
            caption = captions[0]
        return {"wave": wave.contiguous(), "caption": caption, "id": sample["id"], "index": -1}


# --- command line ----------------------------------------------------------------------------------------------------

def register(subparsers) -> None:
    p = subparsers.add_parser("shards", help="write the prepared corpus as WebDataset shards")
    p.add_argument("action", choices=["write"])
    p.add_argument("--prepared", default="prepared")
    p.add_argument("--out", default="shards")
    p.add_argument("--split", action="append", help="split(s) to write (default: train and val)")
    p.add_argument("--shard-size", type=int, default=1000)

    def run(args) -> int:
        for split in args.split or ["train", "val"]:
            index = write_shards(args.prepared, args.out, split, args.shard_size)
            print(f"{split}: {index['clips']} clips in {len(index['shards'])} shards -> {args.out}")
        return 0

    p.set_defaults(func=run)
