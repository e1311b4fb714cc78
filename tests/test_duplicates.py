"""Stage prepare keeps every copy of one recording (content hash) in one split, and counts them."""

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from clapkit.audio import FrontendConfig
from clapkit.data.fingerprint import file_content_hash
from clapkit.data.prepare import PrepareConfig, PreparedCorpus, assign_split, prepare
from clapkit.data.records import ClipRecord, write_jsonl

FRONTEND = FrontendConfig(sample_rate=16000, clip_seconds=1.0)
SALT, TEST, VAL = "clapkit-split-v1", 0.3, 0.2


def group_in(split: str, prefix: str) -> str:
    """The first group name ``<prefix><n>`` that the salted hash sends to ``split``."""
    return next(g for g in (f"{prefix}{n}" for n in range(1000)) if assign_split(g, SALT, TEST, VAL) == split)


def pcm(seed: int, seconds: float = 0.5, sr: int = 16000) -> np.ndarray:
    return np.random.default_rng(seed).integers(-12000, 12000, int(sr * seconds)).astype(np.int16)


def write_source(root: Path, name: str, source: str, clips: list[tuple[str, str, np.ndarray, str]]) -> None:
    """clips: (file name, group, int16 samples, format)."""
    (root / name).mkdir(parents=True)
    records = []
    for fname, group, samples, fmt in clips:
        sf.write(root / name / fname, samples, 16000, subtype="PCM_16", format=fmt)
        records.append(ClipRecord(id=f"{name}/{Path(fname).stem}", path=f"{name}/{fname}", source=source,
                                  licence="CC0-1.0", real=True, group=group, labels={"thing": fname[0]}))
    write_jsonl(root / name / "clips.jsonl", records)


def make_corpus(root: Path) -> dict[str, str]:
    """Two sources sharing two recordings across splits (one as WAV and FLAC), one recording shipped twice inside
    one split, and a held-out source sharing a recording with a training clip."""
    g_train, g_test = group_in("train", "alpha"), group_in("test", "beta")
    g_val, g_train2 = group_in("val", "gamma"), group_in("train", "delta")
    shared, inside, held, other = pcm(1), pcm(2), pcm(3), pcm(4)
    write_source(root, "one", "synth:one", [
        ("a_shared.wav", g_train, shared, "WAV"),      # train copy of a test recording
        ("b_inside.wav", g_train, inside, "WAV"),
        ("c_inside_again.wav", g_train2, inside, "WAV"),  # same audio, same split: nothing moves
        ("d_held.wav", g_train, held, "WAV"),          # training copy of held-out audio
        ("e_val.wav", g_val, other, "WAV"),            # val copy of a test recording
    ] + [(f"f_filler{i}.wav", g_train, pcm(10 + i), "WAV") for i in range(4)])
    write_source(root, "two", "synth:two", [
        ("a_shared_renamed.flac", g_test, shared, "FLAC"),
        ("e_val_copy.wav", g_test, other, "WAV"),
        ("g_plain.wav", g_test, pcm(20), "WAV"),
    ])
    write_source(root, "held", "debian:held", [("h_held_copy.flac", "held-group", held, "FLAC")])
    (root / "corpus.json").write_text(json.dumps({"sources": {"one": {}, "two": {}, "held": {}}}))
    return {"train": g_train, "test": g_test}


def run(root: Path, out: Path, workers: int = 1):
    cfg = PrepareConfig(corpus=str(root), out=str(out / "prepared"), metrics=str(out / "data.json"),
                        cache_seconds=1.0, workers=workers, test_fraction=TEST, val_fraction=VAL, split_salt=SALT,
                        transfer_sources=["debian:held"], transfer_wordings=str(out / "wordings.yaml"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "wordings.yaml").write_text("")
    return cfg, prepare(cfg, FRONTEND, progress=False)


def test_copies_of_one_recording_end_in_one_split_and_are_counted(tmp_path):
    make_corpus(tmp_path / "corpus")
    cfg, metrics = run(tmp_path / "corpus", tmp_path / "out")
    pc = PreparedCorpus(cfg.out)
    split = {r["id"]: r["split"] for r in pc.rows}
    # the WAV in train and the FLAC in test are one recording: the test split wins, whatever the groups say
    assert split["one/a_shared"] == split["two/a_shared_renamed"] == "test"
    assert split["one/e_val"] == split["two/e_val_copy"] == "test"
    assert split["one/b_inside"] == split["one/c_inside_again"] == "train"  # already together: unchanged
    assert all(split[f"one/f_filler{i}"] == "train" for i in range(4))  # the rest of the assignment is unchanged
    # held-out audio: the training copy leaves the manifest, listed with the clip it duplicates
    assert "one/d_held" not in split and split["held/h_held_copy"] == "transfer"
    report = list(csv.DictReader(open(Path(cfg.out) / "quarantine.csv")))
    (dropped,) = [r for r in report if r["id"] == "one/d_held"]
    assert dropped["action"] == "quarantined" and "held/h_held_copy" in dropped["reason"]
    # every manifest row carries the hash of its source file, and no hash is in two splits
    rows = {r["id"]: r for r in pc.rows}
    assert rows["two/a_shared_renamed"]["content_hash"] == file_content_hash(tmp_path / "corpus/one/a_shared.wav")
    by_hash = {}
    for r in pc.rows:
        assert by_hash.setdefault(r["content_hash"], r["split"]) == r["split"]
    assert {k: metrics[k] for k in metrics if k.startswith("duplicate")} == {
        "duplicate_audio_hashes": 4, "duplicate_audio_clips": 8, "duplicate_audio_cross_source": 3,
        "duplicate_audio_straddling": 3, "duplicates_moved": 2,
        "duplicates_moved_by_split": {"train->test": 1, "val->test": 1}, "duplicates_dropped": 1}
    assert metrics["clips_total"] == 13 - 1 and metrics["quarantined"] == 1
    assert metrics["clips_by_split"] == {"test": 5, "train": 6, "transfer": 1}
    assert json.loads((tmp_path / "out" / "data.json").read_text()) == metrics
    # the waveform file was compacted: the windows tile it, and each is still its own clip's audio
    offs = sorted((r["offset"], r["length"]) for r in pc.rows)
    assert offs[0][0] == 0 and all(a + n == b for (a, n), (b, _) in zip(offs, offs[1:]))
    assert sum(n for _, n in offs) == (Path(cfg.out) / "waveforms.f16").stat().st_size // 2
    x, _ = sf.read(tmp_path / "corpus/one/f_filler3.wav", dtype="float32")
    np.testing.assert_allclose(pc.waveform(pc.index["one/f_filler3"]), x, atol=1e-3)


def test_settling_is_deterministic_with_workers(tmp_path):
    make_corpus(tmp_path / "corpus")
    a, ma = run(tmp_path / "corpus", tmp_path / "a", workers=1)
    b, mb = run(tmp_path / "corpus", tmp_path / "b", workers=2)
    for name in ("manifest.jsonl", "waveforms.f16", "quarantine.csv"):
        assert (Path(a.out) / name).read_bytes() == (Path(b.out) / name).read_bytes(), name
    assert ma == mb
