"""A streaming reader of WebDataset shards that gives every rank the same number of steps, over a weighted mixture
of shard folders.

The shards are ``clapkit shards build``'s (``clapkit.data.shard_build`` documents the format: ``<key>.flac`` 16-bit
mono + ``<key>.json`` per sample, ``<split>.json`` with each shard's clip count).  ``read_index`` refuses other
formats (the float16 ``.npy`` shards of the former ``clapkit shards write`` included) naming the folder.

Reader (``ShardStream``): the epoch plan
---------------------------------------
Every rank and every DataLoader worker computes the same plan from ``(seed, epoch)`` and the shard sizes alone,
without talking to the others:

1. *Epoch order.*  Each shard folder (a ``ShardSet``: one source of a mixture, with a weight) contributes
   ``round(weight * its clips)`` clips to the epoch: its shards are shuffled with ``(seed, epoch)`` and taken in
   that order, whole, the last one in part where the share ends mid-shard, starting over where the weight is above
   1.  With several folders these *segments* (shard, first clip, clips) are shuffled together with the same
   generator.  The E clips of the segments are numbered 0..E-1, segment after segment, each in its tar order
   (evaluation: every shard once, whole, in the listed order; E = N, every clip).  The sizes come from the index
   (``ShardStream.from_index`` / ``from_mixture``), so planning opens no shard.  One folder of weight 1 is the
   plain epoch: every clip once.  A segment is read in tar order; the shuffle buffer mixes neighbouring
   segments (several folders) as it mixes shards.
2. *Rank ranges.*  A training epoch is ``batches_per_epoch = E // (per_rank_batch * world)`` steps, computed from
   the index, hence the same on every rank whatever each reads.  Rank r reads the ``batches_per_epoch *
   per_rank_batch`` clips from position ``r * batches_per_epoch * per_rank_batch`` on; the ``E mod global batch``
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
* *No duplicate within an epoch*: when ``batches_per_epoch * per_rank_batch * world <= E`` (the default), every
  sample reads and no weight is above 1, the clips of one epoch over all ranks and workers are distinct, and the set
  a rank reads does not depend on ``num_workers``. A larger ``batches_per_epoch`` wraps the spans round the epoch
  order (clips then repeat within the epoch, as with OpenCLIP's resampled shards).
* *Purity*: an epoch's batches are a function of (shards and their sizes, the weights, ``seed``, ``epoch``,
  ``rank``, ``world``, ``num_workers``, ``per_rank_batch``, ``shuffle_buffer``) only; ``num_workers`` 0 and 1 give
  the same stream. To resume mid-epoch, ``set_epoch(epoch, start_batch=k)`` yields batches k, k+1, ... of that
  epoch: the same batches as ``itertools.islice(loader, k, None)``, without cropping, collating and tokenising the k
  skipped ones (their clips are still read from the tars, to refill the shuffle buffers identically).
* *Crops and captions* are drawn exactly as ``clapkit.data.loader.ClipCaptionDataset`` draws them, from ``(seed,
  epoch, clip id)``: a clip gets the same crop and caption whichever rank, worker or buffer position it lands in.

Bad samples: an undecodable ``.flac``, unparsable JSON, a missing member or a clip without caption is skipped with a
``BadSampleWarning`` naming the shard and the key; a shard that cannot be opened or whose tar breaks off is skipped
from that point the same way. A training worker then reads on past the end of its span (into the next span, round
the epoch order) until its quota is full, so the counts hold and a long run never dies on one bad clip; the price is
that the clips read as replacements may also be read by the next span's worker (a duplicate in that epoch). If a
whole pass over the shards finds no readable clip the stream raises.

Evaluation (``train=False``): listed shard order, no shuffle buffer, centre crop, first caption.  Rank r reads the
clips ``[r N // world, (r + 1) N // world)``, each once, in ``ceil(clips / per_rank_batch)`` batches, the last one
short (so ranks can differ by one batch and one clip); a bad clip is skipped, not replaced, and leaves its batch
short.  That is enough for evaluating on one rank; the trainer evaluates from ``prepared/`` (the indexed
``ClipCaptionDataset``) rather than from shards.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..audio import fit_length
from .loader import clip_seed, train_crop, train_draw

__all__ = ["BadSampleWarning", "ShardSet", "ShardStream", "count_shard_samples", "parse_shard_mixture", "read_index"]


class BadSampleWarning(UserWarning):
    """A sample, or the rest of a shard, that a ``ShardStream`` could not read and skipped."""


def read_index(shard_dir: str | Path, split: str = "train") -> dict[str, Any]:
    """``<shard_dir>/<split>.json`` (written by ``clapkit shards build``), checked to be of the format read here."""
    from .shard_audio import FORMAT

    path = Path(shard_dir) / f"{split}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard index (build the folder with `clapkit shards build`)")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: shards of format {index.get('format', 'npy (clapkit shards write)')!r}, this "
                         f"reader reads {FORMAT!r}: rebuild them with `clapkit shards build`")
    if len(index["shards"]) != len(index["sizes"]) or sum(index["sizes"]) != index["clips"]:
        raise ValueError(f"{path}: {len(index['shards'])} shards, {len(index['sizes'])} sizes summing to "
                         f"{sum(index['sizes'])}, {index['clips']} clips: an inconsistent index")
    return index


@dataclass(frozen=True)
class ShardSet:
    """The shards of one folder (one source of a training mixture) and its weight.

    ``weight`` is an upsampling factor, as OpenCLIP's ``--train-data-upsampling-factors``: an epoch holds
    ``round(weight * clips)`` of this set's clips (weight 2: each clip twice an epoch; 0.5: half of them, other
    ones each epoch), so a mixture of one set of weight 1 is the plain epoch."""

    shards: tuple[str, ...]
    sizes: tuple[int, ...]
    weight: float = 1.0
    name: str = ""
    sample_rate: int | None = None

    def __post_init__(self):
        if len(self.shards) != len(self.sizes) or (self.sizes and min(self.sizes) < 0):
            raise ValueError(f"{self.name or 'shard set'}: {len(self.sizes)} shard sizes {list(self.sizes[:5])}... "
                             f"for {len(self.shards)} shards")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"{self.name or 'shard set'}: weight must be a finite number > 0, got {self.weight}")

    @classmethod
    def from_index(cls, shard_dir: str | Path, split: str = "train", weight: float = 1.0) -> ShardSet:
        index = read_index(shard_dir, split)
        return cls(tuple(str(Path(shard_dir) / s) for s in index["shards"]), tuple(int(n) for n in index["sizes"]),
                   float(weight), str(shard_dir), int(index["sample_rate"]))

    @property
    def clips(self) -> int:
        return sum(self.sizes)

    @property
    def epoch_clips(self) -> int:
        return int(round(self.weight * self.clips))


def parse_shard_mixture(value: Any) -> list[tuple[str, float]]:
    """``train.shards`` as ``[(folder, weight), ...]``: a folder (weight 1), a mapping ``{folder: weight}``, or a
    list of folders and ``{path: folder, weight: w}`` entries; None or "" is no shards."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        entries = [(value, 1.0)]
    elif isinstance(value, Mapping):
        entries = list(value.items())
    elif isinstance(value, (list, tuple)):
        entries = []
        for entry in value:
            if isinstance(entry, str):
                entries.append((entry, 1.0))
            elif isinstance(entry, Mapping) and set(entry) <= {"path", "weight"} and "path" in entry:
                entries.append((entry["path"], entry.get("weight", 1.0)))
            else:
                raise ValueError(f"train.shards: {entry!r} is neither a folder nor {{path: <folder>, weight: <w>}}")
    else:
        raise ValueError(f"train.shards: a folder, a list of folders or a {{folder: weight}} mapping, got {value!r}")
    out = []
    for path, weight in entries:
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"train.shards: the weight of {path} must be a number, got {weight!r}") from None
        if not isinstance(path, str) or not path or not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"train.shards: need a folder and a weight > 0, got {path!r}: {weight!r}")
        out.append((path, weight))
    if len({p for p, _ in out}) != len(out):
        raise ValueError(f"train.shards: a folder listed twice in {value!r} (give it one weight)")
    return out


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
    """The number of samples in one shard (reads it through; an indexed folder lists the sizes: ``read_index``)."""
    return sum(1 for _ in _raw_samples(url))


def _decode(url: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    """``{"id", "captions", "wave"}`` (wave: float32, ``int16 / 32767`` of the stored FLAC), or None, with a
    warning, for a bad sample."""
    from .shard_audio import decode_flac

    key = raw.get("__key__")
    try:
        if "json" not in raw or "flac" not in raw:
            raise ValueError(f"members {sorted(k for k in raw if not k.startswith('__'))}, need .json and .flac")
        meta = json.loads(raw["json"])
        captions = meta.get("captions") if isinstance(meta, dict) else None
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise ValueError(f"no caption (captions: {captions!r})")
        if not isinstance(meta.get("id"), str):
            raise ValueError(f"no clip id (id: {meta.get('id')!r})")
        wave, _ = decode_flac(raw["flac"])
        if wave.size == 0:
            raise ValueError("empty waveform")
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

    ``shards``: shard paths (one set, weight 1), or ``ShardSet``s (a mixture: ``from_mixture``).
    ``shard_sizes`` (paths only): the clip count of each shard (an index's ``sizes``; ``from_index`` reads them);
    None counts them by reading every shard once.  ``batches_per_epoch`` (training only): None is ``E //
    (per_rank_batch * world)`` for an epoch of E clips (the sets' weighted sizes), computed from the sizes, the
    same on every rank.
    """

    def __init__(self, shards: Sequence[str] | Sequence[ShardSet], clip_samples: int, seed: int = 0,
                 train: bool = True, shuffle_buffer: int = 1000, rank: int = 0, world: int = 1, *,
                 per_rank_batch: int, shard_sizes: Sequence[int] | None = None,
                 batches_per_epoch: int | None = None):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}: need 0 <= rank < world")
        if per_rank_batch < 1:
            raise ValueError(f"per_rank_batch must be at least 1, got {per_rank_batch}")
        if not shards:
            raise ValueError("no shards to stream")
        if all(isinstance(s, ShardSet) for s in shards):
            if shard_sizes is not None:
                raise ValueError("shard sizes come with each ShardSet")
            self.sets = list(shards)
        else:
            paths = [str(s) for s in shards]
            sizes = [count_shard_samples(s) for s in paths] if shard_sizes is None else [int(n) for n in shard_sizes]
            self.sets = [ShardSet(tuple(paths), tuple(sizes))]
        self.shards = [path for ss in self.sets for path in ss.shards]
        self.shard_sizes = [n for ss in self.sets for n in ss.sizes]
        self.clips = sum(self.shard_sizes)
        if self.clips == 0:
            raise ValueError(f"the {len(self.shards)} shards (first {self.shards[0]}) hold no clip")
        self.clip_samples, self.seed, self.train = int(clip_samples), int(seed), bool(train)
        self.shuffle_buffer, self.rank, self.world = int(shuffle_buffer), int(rank), int(world)
        self.per_rank_batch = int(per_rank_batch)
        # a training epoch: each set's weighted share; evaluation: every clip once
        self.epoch_clips = sum(ss.epoch_clips for ss in self.sets) if self.train else self.clips
        if self.train:
            global_batch = self.per_rank_batch * self.world
            self.batches_per_epoch = self.epoch_clips // global_batch if batches_per_epoch is None \
                else int(batches_per_epoch)
            if self.batches_per_epoch < 1:
                raise ValueError(f"{self.epoch_clips} clips an epoch from the shards, fewer than one global batch "
                                 f"of {global_batch}")
        else:
            if batches_per_epoch is not None:
                raise ValueError("an evaluation stream reads every clip once: batches_per_epoch is for training")
            self.batches_per_epoch = -(-self._rank_range()[1] // self.per_rank_batch)
        self.epoch, self.start_batch = 0, 0

    @classmethod
    def from_index(cls, shard_dir: str | Path, split: str, clip_samples: int, **kwargs) -> ShardStream:
        """The stream of ``<shard_dir>/<split>.json``'s shards, with their sizes from the index."""
        return cls([ShardSet.from_index(shard_dir, split)], clip_samples, **kwargs)

    @classmethod
    def from_mixture(cls, mixture: Sequence[tuple[str | Path, float]], split: str, clip_samples: int,
                     sample_rate: int | None = None, **kwargs) -> ShardStream:
        """The stream of several shard folders with their weights (``parse_shard_mixture``); ``sample_rate``: the
        rate every folder must be built at (the model's), checked from the indexes."""
        sets = [ShardSet.from_index(folder, split, weight) for folder, weight in mixture]
        for ss in sets:
            if sample_rate is not None and ss.sample_rate != sample_rate:
                raise ValueError(f"{ss.name}: shards built at {ss.sample_rate} Hz, the model reads {sample_rate} Hz "
                                 f"(rebuild them with `clapkit shards build --preset` of this model)")
        return cls(sets, clip_samples, **kwargs)

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

    def _epoch_segments(self) -> list[tuple[int, int, int]]:
        """The epoch order as ``(shard, first clip in it, clips)`` segments (module docstring, step 1)."""
        if not self.train:
            return [(k, 0, n) for k, n in enumerate(self.shard_sizes) if n]
        rng = random.Random(clip_seed(self.seed, self.epoch, "shard-order"))
        segments, base = [], 0
        for ss in self.sets:
            order = list(range(base, base + len(ss.shards)))
            base += len(ss.shards)
            rng.shuffle(order)
            left = ss.epoch_clips
            while left > 0:  # round the set's shuffled shards until its share is taken (weight > 1: again)
                for k in order:
                    take = min(self.shard_sizes[k], left)
                    if take:
                        segments.append((k, 0, take))
                        left -= take
                    if not left:
                        break
        if len(self.sets) > 1:
            rng.shuffle(segments)
        return segments

    def _read(self, first: int, length: int) -> Iterator[dict[str, Any]]:
        """Decoded samples from position ``first`` of the epoch order on: ``length`` readable ones when training
        (reading on round the order past bad ones), the readable ones of ``length`` positions when evaluating."""
        segments = self._epoch_segments()
        k, pos = 0, first % self.epoch_clips
        while pos >= segments[k][2]:
            pos -= segments[k][2]
            k += 1
        yielded = planned = 0
        opened_since_readable = 0
        while True:
            shard, start, count = segments[k]
            url = self.shards[shard]
            # training reads the segment to its end (and on, until its quota is full); evaluation its planned part
            lo = start + pos
            hi = start + count if self.train else lo + min(count - pos, length - planned)
            if hi > lo:
                opened_since_readable += 1
                if self.train and opened_since_readable > len(segments) + 1:
                    raise RuntimeError(f"no readable clip in a whole pass over the {len(segments)} shard segments "
                                       f"(e.g. {url}); see the BadSampleWarnings")
                for i, raw in enumerate(_raw_samples(url)):
                    if i < lo:
                        continue  # before this span: another worker's clips, not decoded
                    if i >= hi:
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
                planned += hi - lo
                if planned >= length:
                    return
            k, pos = (k + 1) % len(segments), 0

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
        wave = torch.from_numpy(sample["wave"])
        captions = sample["captions"]
        if self.train:
            start, k = train_draw(sample["id"], wave.shape[0], len(captions), self.clip_samples, self.seed,
                                  self.epoch)
            wave, caption = train_crop(wave, start, self.clip_samples), captions[k]
        else:
            wave = fit_length(wave, self.clip_samples, crop="center")
            caption = captions[0]
        return {"wave": wave.contiguous(), "caption": caption, "id": sample["id"], "index": -1}
