"""The prepared corpus as WebDataset shards, and a streaming reader for corpora too big to index in memory.

Writer (``write_shards``, ``clapkit shards write``): one tar per ``shard_size`` clips of a split, named
``<out>/<split>-000000.tar`` ...; each sample is three files sharing the key (the clip id, made tar-safe):

* ``<key>.npy``   the cached mono waveform (float16, as in ``prepared/waveforms.f16``);
* ``<key>.json``  ``{"id", "captions", "labels", "source", "split", "sample_rate"}``;

plus ``<out>/<split>.json`` with the shard names and the clip count (OpenCLIP's ``sizes.json`` role).  Shards are
written to a temporary name and renamed, so a crash never leaves a truncated shard behind a valid name.

Reader (``ShardStream``): ``webdataset`` pipeline ``shard list -> (shuffle shards with seed + epoch) -> split by
node (rank) -> split by worker -> samples -> shuffle buffer (seeded) -> crop + caption``.  Crops and captions are
drawn exactly as ``clapkit.data.loader.ClipCaptionDataset`` does, from ``(seed, epoch, clip id)``, so a clip gets
the same crop and caption whichever rank, worker or buffer position it lands in.  Ranks must get equal numbers of
samples per epoch for DDP: give each rank the same number of shards (``len(shards) % world == 0`` is checked)
and cap the epoch with ``samples_per_rank``.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..audio import fit_length
from .loader import clip_seed

__all__ = ["ShardStream", "read_index", "write_shards"]


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
    shards, seen = [], set()
    for start in range(0, len(indices), shard_size):
        name = f"{split}-{start // shard_size:06d}.tar"
        tmp = out / f".{name}.tmp"
        with wds.TarWriter(str(tmp)) as sink:
            for i in indices[start:start + shard_size]:
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
    index = {"split": split, "clips": len(indices), "shard_size": shard_size, "shards": shards}
    tmp = out / f".{split}.json.tmp"
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, out / f"{split}.json")
    return index


def read_index(shard_dir: str | Path, split: str = "train") -> tuple[list[str], int]:
    """(shard paths, clip count) from ``<shard_dir>/<split>.json``."""
    index = json.loads((Path(shard_dir) / f"{split}.json").read_text())
    return [str(Path(shard_dir) / s) for s in index["shards"]], int(index["clips"])


class ShardStream(IterableDataset):
    """Stream ``{"wave", "caption", "id"}`` samples from shards; see the module docstring."""

    def __init__(self, shards: Sequence[str], clip_samples: int, seed: int = 0, train: bool = True,
                 shuffle_buffer: int = 1000, rank: int = 0, world: int = 1, samples_per_rank: int | None = None):
        if world > 1 and len(shards) % world:
            raise ValueError(f"{len(shards)} shards cannot be split evenly over {world} ranks")
        self.shards, self.clip_samples, self.seed, self.train = list(shards), int(clip_samples), int(seed), train
        self.shuffle_buffer, self.rank, self.world = shuffle_buffer, rank, world
        self.samples_per_rank = samples_per_rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _my_shards(self) -> list[str]:
        shards = list(self.shards)
        if self.train:
            random.Random(self.seed + self.epoch).shuffle(shards)  # the same shard order on every rank
        shards = shards[self.rank::self.world]  # split by node
        info = get_worker_info()
        if info is not None:  # split by worker
            shards = shards[info.id::info.num_workers]
        return shards

    def _samples(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        shards = self._my_shards()
        if not shards:
            return iter(())
        # nodesplitter / workersplitter: the split is done above (seeded), so webdataset must not split again.
        ds = wds.WebDataset(shards, shardshuffle=False, nodesplitter=lambda s: s, workersplitter=lambda s: s,
                            empty_check=False)
        if self.train and self.shuffle_buffer > 1:
            info = get_worker_info()
            rng = random.Random(clip_seed(self.seed, self.epoch, 1_000_000 * self.rank + (info.id if info else 0)))
            ds = ds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)
        return iter(ds)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for n, sample in enumerate(self._samples()):
            if self.samples_per_rank is not None and n >= self.samples_per_rank:
                return
            meta = json.loads(sample["json"])
            wave = torch.from_numpy(np.load(io.BytesIO(sample["npy"])).astype(np.float32))
            if self.train:
                gen = torch.Generator().manual_seed(clip_seed(self.seed, self.epoch, meta["id"]))
                wave = fit_length(wave, self.clip_samples, crop="random", generator=gen)
                caption = meta["captions"][int(torch.randint(len(meta["captions"]), (1,), generator=gen))]
            else:
                wave = fit_length(wave, self.clip_samples, crop="center")
                caption = meta["captions"][0]
            yield {"wave": wave.contiguous(), "caption": caption, "id": meta["id"], "index": -1}


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
