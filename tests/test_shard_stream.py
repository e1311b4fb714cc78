"""clapkit.data.shards (ShardStream) read through clapkit.data.loader.make_stream_loader, on shards written by
clapkit.data.shard_build: exact per-rank batch counts whatever the workers and shard sizes, determinism, resuming
mid-epoch, bad samples, weighted mixtures of shard folders."""

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
import soundfile as sf
import torch

from clapkit.data.loader import ClipCaptionDataset, make_stream_loader
from clapkit.data.prepare import PreparedCorpus
from clapkit.data.shards import (
    BadSampleWarning,
    ShardStream,
    count_shard_samples,
    ShardSet,
    parse_shard_mixture,
    read_index,
)
from clapkit.data.shard_build import PCM_SCALE, BuildConfig, build_shards, read_samples
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
    root: Path  # holds one shard folder per split: <root>/<split>/
    paths: list[str]
    sizes: list[int]
    corpus: PreparedCorpus
    listed: list[int]  # the clip numbers in the listed shard order (the build shuffles clips into shards)


def build_split(corpus: PreparedCorpus, root: Path, split: str, shard_size: int) -> Path:
    """The clips of ``split`` as 32-bit float WAVs + a manifest, built into ``<root>/shards/<split>``: the stored
    audio is the prepared waveform quantised to 16 bits (same rate, no cut)."""
    lines = []
    for i in corpus.split(split):
        row = corpus.rows[i]
        rel = row["id"].removeprefix("synth/") + ".wav"
        (root / "audio" / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio" / rel, corpus.waveform(i).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
        lines.append(json.dumps({"audio": rel, "captions": row["captions"]}))
    manifest = root / "audio" / f"{split}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    cfg = BuildConfig(SAMPLE_RATE, 1.0, shard_size=shard_size, seed=SEED, min_sample_rate=SAMPLE_RATE)
    summary = build_shards([("manifest", "synth", split, str(manifest))], root / "shards" / split, cfg,
                           progress=False)
    assert summary["clips"] == {split: len(corpus.split(split))} and summary["quarantined"] == 0
    return root / "shards" / split


def quantised(wave: torch.Tensor) -> torch.Tensor:
    """What a shard stores of a float waveform, read back: ``round(x * 32767) / 32767``."""
    return torch.from_numpy(np.round(np.clip(wave.numpy(), -1, 1) * PCM_SCALE).astype(np.int16).astype(np.float32)
                            / np.float32(PCM_SCALE))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Shards:
    root = tmp_path_factory.mktemp("shard_stream")
    corpus = PreparedCorpus(write_prepared(root / "prepared"))
    paths, sizes, listed = [], [], []
    for split, (n, shard_size) in SPLITS.items():
        folder = build_split(corpus, root, split, shard_size)
        index = read_index(folder, split)
        assert index["clips"] == n and sum(index["sizes"]) == n
        paths += [str(folder / name) for name in index["shards"]]
        sizes += index["sizes"]
        listed += [corpus.index[f"synth/{split}/" + s["key"].rsplit("_", 1)[1]] for s in read_samples(folder)]
    assert sizes == [9, 9, 9, 3, 5, 5, 4, 2, 2, 2, 1]
    assert sorted(listed) == list(range(N_CLIPS)) and listed != sorted(listed)  # shuffled into the shards
    return Shards(root / "shards", paths, sizes, corpus, listed)


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
        # the same crop of the same audio, stored in 16 bits: exact
        torch.testing.assert_close(sample["wave"], quantised(reference["wave"]), rtol=0, atol=0)


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
    listed = shards.listed  # the clips in the listed shard order
    for num_workers in (0, 2):
        ranks = [make_stream(shards, rank=r, train=False) for r in range(2)]
        assert [s.batches_per_epoch for s in ranks] == [7, 7]  # 25 and 26 clips in batches of 4
        epoch = [epoch_batches(s, tokenizer, num_workers) for s in ranks]
        assert [[len(b["captions"]) for b in batches] for batches in epoch] == [[4] * 6 + [1], [4] * 6 + [2]]
        clips = clips_of(epoch[0]) + clips_of(epoch[1])
        assert sorted(clips) == sorted(listed)
        if num_workers == 0:
            assert clips == listed
        # the first caption, the centre crop
        assert all(c.endswith("variant 0") for c in itertools.chain(*(b["captions"] for b in epoch[0])))
    stream = make_stream(shards, rank=0, world=1, train=False)
    sample = next(iter(stream))
    expected = quantised(torch.from_numpy(shards.corpus.waveform(listed[0]).astype(np.float32)))
    assert sample["id"] == shards.corpus.rows[listed[0]]["id"]
    assert torch.equal(sample["wave"], torch.cat([expected] * 2)[:CLIP_SAMPLES])  # 40-100 samples, repeat-padded


# --- the index -----------------------------------------------------------------------------------------------------

def test_index_records_shard_sizes_and_other_formats_are_refused_by_name(shards, tmp_path):
    assert [count_shard_samples(p) for p in shards.paths] == shards.sizes
    index = json.loads((shards.root / "val" / "val.json").read_text())
    assert index["sizes"] == [5, 5, 4] and index["shard_size"] == 5 and index["sample_rate"] == SAMPLE_RATE
    stream = ShardStream.from_index(shards.root / "val", "val", CLIP_SAMPLES, per_rank_batch=7)
    assert stream.shard_sizes == [5, 5, 4] and stream.batches_per_epoch == 2
    # an index of the former float16 .npy shards (`clapkit shards write`): refused, naming the file
    old = {k: index[k] for k in ("split", "clips", "shard_size", "shards", "sizes")}
    (tmp_path / "val.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"val\.json: shards of format 'npy.*rebuild them with `clapkit shards build`"):
        read_index(tmp_path, "val")
    (tmp_path / "val.json").write_text(json.dumps({**index, "sizes": [5, 5, 3]}))
    with pytest.raises(ValueError, match="inconsistent index"):
        ShardStream.from_index(tmp_path, "val", CLIP_SAMPLES, per_rank_batch=7)


# --- bad samples ---------------------------------------------------------------------------------------------------

def replace_member(tar_path: Path, name: str, content: bytes) -> None:
    with tarfile.open(tar_path) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    with tarfile.open(tar_path, "w") as dst:
        for member, data in members:
            data = content if member.name == name else data
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))


@dataclass
class Damaged:
    paths: list[str]
    bad: dict[str, str]  # key -> shard name
    lost: set[int]  # the clip numbers that cannot be read


@pytest.fixture
def damaged(shards, tmp_path) -> Damaged:
    """A copy of the shards with three bad samples and one missing shard."""
    out = tmp_path / "damaged"
    shutil.copytree(shards.root, out)
    in_shard = {}
    for split in SPLITS:
        for sample in read_samples(out / split):
            in_shard.setdefault(sample["shard"], []).append(sample["key"])
    bad = {in_shard["train-000000.tar"][1]: "train-000000.tar", in_shard["train-000001.tar"][4]: "train-000001.tar",
           in_shard["val-000001.tar"][2]: "val-000001.tar"}
    flac, broken_json, no_caption = bad
    replace_member(out / "train" / "train-000000.tar", f"{flac}.flac", b"not a flac file")
    replace_member(out / "train" / "train-000001.tar", f"{broken_json}.json", b"{broken json")
    with tarfile.open(out / "val" / "val-000001.tar") as tar:
        meta = json.loads(tar.extractfile(f"{no_caption}.json").read())
    replace_member(out / "val" / "val-000001.tar", f"{no_caption}.json", json.dumps({**meta, "captions": []}).encode())
    (out / "test" / "test-000003.tar").unlink()  # the 1-clip shard
    paths = [str(out / Path(p).parent.name / Path(p).name) for p in shards.paths]
    lost = {shards.corpus.index["synth/" + k.removeprefix("synth_").replace("_", "/")]
            for k in [*bad, *in_shard["test-000003.tar"]]}
    return Damaged(paths, bad, lost)


def test_bad_samples_are_skipped_named_and_replaced(shards, damaged, tokenizer):
    paths, bad = damaged.paths, damaged.bad
    # one rank reading every position: the 4 unreadable clips are replaced by reading on round the epoch order
    stream = ShardStream(paths, CLIP_SAMPLES, seed=SEED, shuffle_buffer=6, per_rank_batch=3,
                         shard_sizes=shards.sizes)
    assert stream.batches_per_epoch == 17
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = epoch_batches(stream, tokenizer, 0)
    assert len(batches) == 17 and all(len(b["captions"]) == 3 for b in batches)
    clips = Counter(clips_of(batches))
    assert len(damaged.lost) == 4 and not damaged.lost & set(clips)  # 3 bad samples, 1 clip in the missing shard
    assert len(clips) == 47 and sum(clips.values()) == 51  # every readable clip, 4 of them twice
    messages = [str(w.message) for w in caught if issubclass(w.category, BadSampleWarning)]
    for key, shard in bad.items():
        assert any(shard in m and repr(key) in m for m in messages), (key, messages)
    assert any("test-000003.tar" in m and "unreadable shard" in m for m in messages)
    assert any("no caption" in m for m in messages) and any("JSONDecodeError" in m for m in messages)
    assert any("LibsndfileError" in m or "not a flac" in m.lower() for m in messages), messages
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


# --- mixtures of shard folders -------------------------------------------------------------------------------------

def test_train_shards_setting_parses_to_folders_and_weights():
    assert parse_shard_mixture(None) == [] and parse_shard_mixture("") == []
    assert parse_shard_mixture("shards/a") == [("shards/a", 1.0)]
    assert parse_shard_mixture({"a": 2, "b": "0.5"}) == [("a", 2.0), ("b", 0.5)]
    assert parse_shard_mixture(["a", {"path": "b", "weight": 3}]) == [("a", 1.0), ("b", 3.0)]
    for bad, message in (({"a": 0}, "weight > 0"), ({"a": "x"}, "must be a number"), (["a", "a"], "listed twice"),
                         ([{"folder": "a"}], "neither a folder"), (3, "a folder, a list")):
        with pytest.raises(ValueError, match=message):
            parse_shard_mixture(bad)


def mixture(shards: Shards, weights: dict[str, float]) -> list[ShardSet]:
    return [ShardSet.from_index(shards.root / split, split, weight) for split, weight in weights.items()]


def test_a_mixture_draws_each_folder_by_its_weight(shards, tokenizer):
    """train (30 clips) at weight 2 and val (14) at 0.5: an epoch of 60 + 7 clips, every train clip exactly twice,
    7 distinct val clips (other ones another epoch)."""
    train_ids = {shards.corpus.rows[i]["id"] for i in shards.corpus.split("train")}
    val_ids = {shards.corpus.rows[i]["id"] for i in shards.corpus.split("val")}
    stream = ShardStream(mixture(shards, {"train": 2.0, "val": 0.5}), CLIP_SAMPLES, seed=SEED, shuffle_buffer=4,
                         per_rank_batch=67)
    assert stream.epoch_clips == 67 and stream.batches_per_epoch == 1
    seen = {}
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        counts = Counter(s["id"] for s in stream)
        assert {i: counts[i] for i in train_ids} == {i: 2 for i in train_ids}
        val = {i for i in counts if i in val_ids}
        assert len(val) == 7 and all(counts[i] == 1 for i in val) and sum(counts.values()) == 67
        seen[epoch] = val
    assert seen[0] != seen[1]
    # the sources are interleaved: both appear in the first half of the epoch order
    stream.set_epoch(0)
    first_half = [s["id"] for s in itertools.islice(iter(stream), 33)]
    assert set(first_half) & val_ids and set(first_half) & train_ids


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")
def test_a_mixture_keeps_equal_whole_batches_per_rank_determinism_and_resume(shards, tokenizer):
    def make(rank):
        return ShardStream(mixture(shards, {"train": 1.5, "test": 2.0}), CLIP_SAMPLES, seed=SEED, shuffle_buffer=6,
                           rank=rank, world=2, per_rank_batch=4)

    assert make(0).epoch_clips == 45 + 14 and make(0).batches_per_epoch == 7
    for num_workers in (0, 2):
        epoch = [epoch_batches(make(r), tokenizer, num_workers, epoch=3) for r in range(2)]
        assert [len(b) for b in epoch] == [7, 7] and all(len(b["captions"]) == 4 for bs in epoch for b in bs)
        again = epoch_batches(make(1), tokenizer, num_workers, epoch=3)
        assert [b["captions"] for b in again] == [b["captions"] for b in epoch[1]]
        rest = epoch_batches(make(1), tokenizer, num_workers, epoch=3, start_batch=3)
        assert [b["captions"] for b in rest] == [b["captions"] for b in epoch[1][3:]]
        assert all(torch.equal(a["wave"], b["wave"]) for a, b in zip(rest, epoch[1][3:]))
    with pytest.raises(ValueError, match="built at 1000 Hz, the model reads 16000 Hz"):
        ShardStream.from_mixture([(shards.root / "train", 1.0)], "train", CLIP_SAMPLES, sample_rate=16000,
                                 per_rank_batch=4)
