"""clapkit.data.shards (ShardStream, write_shards) read through clapkit.data.loader.make_stream_loader: exact
per-rank batch counts whatever the workers and shard sizes, determinism, resuming mid-epoch, bad samples."""

from __future__ import annotations

import io
import itertools
import json
import re
import shutil
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from clapkit.data.loader import ClipCaptionDataset, make_stream_loader
from clapkit.data.prepare import PreparedCorpus
from clapkit.data.shards import (
    BadSampleWarning,
    ShardStream,
    count_shard_samples,
    read_index,
    read_shard_sizes,
    write_shards,
)
from clapkit.text import TextTokenizer, train_wordpiece

SAMPLE_RATE = 1000
CLIP_SAMPLES = 64
# Three splits written with different shard sizes give shards of 9, 9, 9, 3 | 5, 5, 4 | 2, 2, 2, 1 clips.
SPLITS = {"train": (30, 9), "val": (14, 5), "test": (7, 2)}
N_CLIPS = sum(n for n, _ in SPLITS.values())  # 51
SEED = 3


def caption(i: int, k: int) -> str:
    return f"sound {i} variant {k}"


def clip_number(text: str) -> int:
    """The clip a caption belongs to (batches carry captions, not ids)."""
    return int(re.fullmatch(r"sound (\d+) variant \d+", text).group(1))


def clip_id(i: int, split: str) -> str:
    return f"synth/{split}/c{i:03d}"


def write_prepared(root: Path) -> Path:
    """A prepared/ directory written directly: clips of 40-100 samples (crops and repeat-pads both occur), 1-3
    captions each, every waveform distinct."""
    rng = np.random.default_rng(0)
    rows, waves, offset, i = [], [], 0, 0
    for split, (n, _) in SPLITS.items():
        for _ in range(n):
            length = 40 + (i * 7) % 61
            waves.append((0.1 * rng.standard_normal(length)).astype(np.float16))
            rows.append({"id": clip_id(i, split), "captions": [caption(i, k) for k in range(1 + i % 3)],
                         "labels": {}, "source": "synth:test", "split": split, "offset": offset, "length": length})
            offset += length
            i += 1
    root.mkdir(parents=True)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.concatenate(waves).tofile(root / "waveforms.f16")
    (root / "arrays.json").write_text(json.dumps({"waveforms": "waveforms.f16", "dtype": "float16",
                                                  "sample_rate": SAMPLE_RATE, "samples": offset, "clips": len(rows)}))
    (root / "tasks.json").write_text("{}")
    return root


@dataclass
class Shards:
    dir: Path
    paths: list[str]
    sizes: list[int]
    corpus: PreparedCorpus


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Shards:
    root = tmp_path_factory.mktemp("shard_stream")
    prepared = write_prepared(root / "prepared")
    paths, sizes = [], []
    for split, (n, shard_size) in SPLITS.items():
        index = write_shards(prepared, root / "shards", split, shard_size=shard_size)
        assert index["clips"] == n and sum(index["sizes"]) == n
        paths += read_index(root / "shards", split)[0]
        sizes += read_shard_sizes(root / "shards", split)
    assert sizes == [9, 9, 9, 3, 5, 5, 4, 2, 2, 2, 1]
    return Shards(root / "shards", paths, sizes, PreparedCorpus(prepared))


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    texts = [caption(i, k) for i in range(N_CLIPS) for k in range(3)]
    return TextTokenizer(train_wordpiece(texts, vocab_size=200, min_frequency=1), "wordpiece", 16)


def make_stream(shards: Shards, rank: int = 0, world: int = 2, per_rank_batch: int = 4, **kwargs) -> ShardStream:
    kwargs = {"seed": SEED, "shuffle_buffer": 6, "shard_sizes": shards.sizes, **kwargs}
    return ShardStream(shards.paths, CLIP_SAMPLES, rank=rank, world=world, per_rank_batch=per_rank_batch, **kwargs)


def epoch_batches(stream: ShardStream, tokenizer, num_workers: int, epoch: int = 0, start_batch: int = 0) -> list:
    stream.set_epoch(epoch, start_batch)
    loader = make_stream_loader(stream, tokenizer, num_workers)
    batches = list(loader)
    assert len(batches) == len(loader)  # the loader's announced length is what it yields
    return batches


def clips_of(batches: list) -> list[int]:
    return [clip_number(c) for b in batches for c in b["captions"]]


# --- the epoch plan ------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")  # 2-core machines
def test_every_rank_yields_exactly_batches_per_epoch_full_batches_whatever_the_workers(shards, tokenizer):
    per_rank_sets = {}
    for num_workers in (0, 2, 3):
        ranks = [make_stream(shards, rank=r) for r in range(2)]
        assert [s.batches_per_epoch for s in ranks] == [N_CLIPS // 8] * 2 == [6, 6]
        epoch = [epoch_batches(s, tokenizer, num_workers) for s in ranks]
        for batches in epoch:
            assert len(batches) == 6
            assert all(b["wave"].shape == (4, CLIP_SAMPLES) and b["input_ids"].shape[0] == 4 for b in batches)
        clips = [clips_of(batches) for batches in epoch]
        # no clip twice in the epoch, over both ranks; 48 of the 51 clips read (3 are left for a later epoch)
        assert len(set(clips[0] + clips[1])) == 48 and set(clips[0] + clips[1]) <= set(range(N_CLIPS))
        per_rank_sets[num_workers] = [set(c) for c in clips]
    # which clips a rank reads in an epoch does not depend on the number of workers, only their order does
    assert per_rank_sets[0] == per_rank_sets[2] == per_rank_sets[3]


def test_one_worker_or_none_give_the_same_stream_and_an_epoch_is_reproducible(shards, tokenizer):
    def signature(batches):
        return [(b["captions"], b["wave"]) for b in batches]

    stream = make_stream(shards, rank=1)
    first = epoch_batches(stream, tokenizer, 0)
    assert [b["captions"] for b in epoch_batches(stream, tokenizer, 1)] == [b["captions"] for b in first]
    for num_workers in (0, 2):
        once = signature(epoch_batches(make_stream(shards, rank=1), tokenizer, num_workers, epoch=4))
        twice = signature(epoch_batches(make_stream(shards, rank=1), tokenizer, num_workers, epoch=4))
        assert [c for c, _ in once] == [c for c, _ in twice]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(once, twice))
        other_epoch = signature(epoch_batches(make_stream(shards, rank=1), tokenizer, num_workers, epoch=5))
        assert [c for c, _ in other_epoch] != [c for c, _ in once]
        assert len(other_epoch) == len(once) == 6


def test_resuming_at_batch_k_gives_the_rest_of_the_epoch(shards, tokenizer):
    for num_workers in (0, 2):
        stream = make_stream(shards, rank=0)
        full = epoch_batches(stream, tokenizer, num_workers, epoch=2)
        for k in (1, 3, 6):  # 3: odd, so with 2 workers the resumed loader's worker 0 plays logical worker 1
            rest = epoch_batches(stream, tokenizer, num_workers, epoch=2, start_batch=k)
            assert len(rest) == 6 - k
            assert [b["captions"] for b in rest] == [b["captions"] for b in full[k:]]
            assert all(torch.equal(a["wave"], b["wave"]) for a, b in zip(rest, full[k:]))
        # what the trainer does today, skipping batches on the loader, gives the same batches
        stream.set_epoch(2)
        skipped = list(itertools.islice(make_stream_loader(stream, tokenizer, num_workers), 4, None))
        assert [b["captions"] for b in skipped] == [b["captions"] for b in full[4:]]
    with pytest.raises(ValueError, match="start_batch 7"):
        make_stream(shards).set_epoch(0, start_batch=7)


def test_crops_and_captions_match_the_indexed_dataset(shards):
    corpus = shards.corpus
    dataset = ClipCaptionDataset(corpus, range(len(corpus)), CLIP_SAMPLES, train=True, seed=SEED)
    dataset.set_epoch(1)
    stream = make_stream(shards, rank=1)
    stream.set_epoch(1)
    samples = list(stream)
    assert len(samples) == 24
    for sample in samples:
        reference = dataset[corpus.index[sample["id"]]]
        assert sample["caption"] == reference["caption"]
        torch.testing.assert_close(sample["wave"], reference["wave"], rtol=0, atol=0)  # float16 both ways: exact


def test_longer_epochs_wrap_round_the_shards(shards, tokenizer):
    ranks = [make_stream(shards, rank=r, batches_per_epoch=10) for r in range(2)]
    epoch = [epoch_batches(s, tokenizer, 2) for s in ranks]
    assert [len(b) for b in epoch] == [10, 10]
    clips = Counter(clips_of(epoch[0]) + clips_of(epoch[1]))
    # 80 positions round 51 clips: every clip read once, 29 of them twice
    assert set(clips) == set(range(N_CLIPS)) and sorted(Counter(clips.values()).items()) == [(1, 22), (2, 29)]


def test_fewer_shards_than_ranks_and_workers(shards, tokenizer):
    one = shards.paths[:1]  # 9 clips, 2 ranks x batches of 2 -> 2 steps an epoch
    ranks = [ShardStream(one, CLIP_SAMPLES, seed=SEED, rank=r, world=2, per_rank_batch=2) for r in range(2)]
    assert ranks[0].shard_sizes == [9] and ranks[0].batches_per_epoch == 2  # sizes counted from the tar
    with pytest.warns(UserWarning, match="workers share shards"):
        epoch = [epoch_batches(s, tokenizer, 2) for s in ranks]
    assert [len(b) for b in epoch] == [2, 2]
    assert len(set(clips_of(epoch[0]) + clips_of(epoch[1]))) == 8


def test_constructor_refuses_impossible_plans(shards):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        make_stream(shards, per_rank_batch=26)
    with pytest.raises(ValueError, match="rank 2 of world 2"):
        make_stream(shards, rank=2)
    with pytest.raises(ValueError, match="shard sizes"):
        make_stream(shards, shard_sizes=[9, 9])


# --- evaluation ----------------------------------------------------------------------------------------------------

def test_evaluation_reads_every_clip_once_in_shard_order(shards, tokenizer):
    listed = list(range(N_CLIPS))  # the clips in write order, which is the listed shard order
    for num_workers in (0, 2):
        ranks = [make_stream(shards, rank=r, train=False) for r in range(2)]
        assert [s.batches_per_epoch for s in ranks] == [7, 7]  # 25 and 26 clips in batches of 4
        epoch = [epoch_batches(s, tokenizer, num_workers) for s in ranks]
        assert [[len(b["captions"]) for b in batches] for batches in epoch] == [[4] * 6 + [1], [4] * 6 + [2]]
        clips = clips_of(epoch[0]) + clips_of(epoch[1])
        assert sorted(clips) == listed
        if num_workers == 0:
            assert clips == listed
        # the first caption, the centre crop
        assert all(c.endswith("variant 0") for c in itertools.chain(*(b["captions"] for b in epoch[0])))
    stream = make_stream(shards, rank=0, world=1, train=False)
    sample = next(iter(stream))
    expected = torch.from_numpy(shards.corpus.waveform(0))  # clip 0: 40 samples, repeat-padded to 64
    assert torch.equal(sample["wave"], torch.cat([expected, expected[:24]]))


# --- the index -----------------------------------------------------------------------------------------------------

def test_index_records_shard_sizes_and_old_indexes_are_read(shards, tmp_path):
    assert [count_shard_samples(p) for p in shards.paths] == shards.sizes
    index = json.loads((shards.dir / "val.json").read_text())
    assert index["sizes"] == [5, 5, 4] and index["shard_size"] == 5
    del index["sizes"]  # as written before the sizes were recorded
    (tmp_path / "val.json").write_text(json.dumps(index))
    assert read_shard_sizes(tmp_path, "val") == [5, 5, 4]
    stream = ShardStream.from_index(shards.dir, "val", CLIP_SAMPLES, per_rank_batch=7)
    assert stream.shard_sizes == [5, 5, 4] and stream.batches_per_epoch == 2


# --- bad samples ---------------------------------------------------------------------------------------------------

def replace_member(tar_path: Path, name: str, content: bytes) -> None:
    with tarfile.open(tar_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(tar_path, "w") as dst:
        for member, data in members:
            data = content if member.name == name else data
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


@pytest.fixture
def damaged(shards, tmp_path) -> tuple[list[str], dict[str, str]]:
    """A copy of the shards with three bad samples and one missing shard; returns (paths, {key: shard name})."""
    out = tmp_path / "damaged"
    shutil.copytree(shards.dir, out)
    bad = {"synth_train_c001": "train-000000.tar", "synth_train_c012": "train-000001.tar",
           "synth_val_c035": "val-000001.tar"}
    replace_member(out / "train-000000.tar", "synth_train_c001.npy", b"not a numpy file")
    replace_member(out / "train-000001.tar", "synth_train_c012.json", b"{broken json")
    with tarfile.open(out / "val-000001.tar") as tar:
        meta = json.loads(tar.extractfile("synth_val_c035.json").read())
    replace_member(out / "val-000001.tar", "synth_val_c035.json", json.dumps({**meta, "captions": []}).encode())
    paths = [str(out / Path(p).name) for p in shards.paths]
    (out / "test-000003.tar").unlink()  # the 1-clip shard
    return paths, bad


def test_bad_samples_are_skipped_named_and_replaced(shards, damaged, tokenizer):
    paths, bad = damaged
    # one rank reading every position: the 4 unreadable clips are replaced by reading on round the epoch order
    stream = ShardStream(paths, CLIP_SAMPLES, seed=SEED, shuffle_buffer=6, per_rank_batch=3,
                         shard_sizes=shards.sizes)
    assert stream.batches_per_epoch == 17
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = epoch_batches(stream, tokenizer, 0)
    assert len(batches) == 17 and all(len(b["captions"]) == 3 for b in batches)
    clips = Counter(clips_of(batches))
    assert not {1, 12, 35, 50} & set(clips)  # 50: the clip of the missing shard
    assert len(clips) == 47 and sum(clips.values()) == 51  # every readable clip, 4 of them twice
    messages = [str(w.message) for w in caught if issubclass(w.category, BadSampleWarning)]
    for key, shard in bad.items():
        assert any(shard in m and repr(key) in m for m in messages), (key, messages)
    assert any("test-000003.tar" in m and "unreadable shard" in m for m in messages)
    assert any("no caption" in m for m in messages) and any("JSONDecodeError" in m for m in messages)
    # the counts hold on every rank with workers too
    for num_workers in (0, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadSampleWarning)
            ranks = [ShardStream(paths, CLIP_SAMPLES, seed=SEED, rank=r, world=2, per_rank_batch=4,
                                 shard_sizes=shards.sizes) for r in range(2)]
            for s in ranks:
                got = epoch_batches(s, tokenizer, num_workers, epoch=1)
                assert len(got) == 6 and all(len(b["captions"]) == 4 for b in got)


def test_a_stream_with_no_readable_clip_raises_instead_of_spinning(shards, tmp_path):
    path = tmp_path / "all-bad.tar"
    shutil.copy(shards.paths[-2], path)  # 2 clips
    with tarfile.open(path) as tar:
        names = tar.getnames()
    for member in names:
        if member.endswith(".json"):
            replace_member(path, member, b"[]")
    stream = ShardStream([str(path)], CLIP_SAMPLES, per_rank_batch=1, shard_sizes=[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadSampleWarning)
        with pytest.raises(RuntimeError, match="no readable clip"):
            list(stream)
