"""Stage prepare on a fixture corpus: bad input quarantined with reasons, identity splits, cache, determinism."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.audio import FrontendConfig, resample
from clapkit.data.duplicates import SPLIT_PRECEDENCE
from clapkit.data.prepare import PrepareConfig, PreparedCorpus, assign_split, prepare
from clapkit.data.records import ClipRecord, write_jsonl

FRONTEND = FrontendConfig(sample_rate=16000, clip_seconds=1.0)


def tone(sr, seconds, f=440.0, channels=1, amp=0.3):
    t = np.arange(int(sr * seconds)) / sr
    x = (amp * np.sin(2 * np.pi * f * t)).astype(np.float32)
    return np.stack([x * (1 + 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x


BAD = {
    # file name -> (writer, expected action, expected reason fragment)
    "empty.wav": ("empty", "quarantined", "empty file"),
    "truncated.flac": ("truncated_flac", "quarantined", "truncated"),
    "truncated.wav": ("truncated_wav", "quarantined", "truncated"),
    "not_audio.wav": ("text", "quarantined", "not audio"),
    "nan.wav": ("nan", "quarantined", "NaN"),
    "silent.wav": ("silent", "quarantined", "all silent"),
    "one_hour.wav": ("hour", "quarantined", "too long"),
    "missing.wav": (None, "quarantined", "unreadable path"),
    "eight_channels.wav": ("8ch", "note", "8 channels mixed down"),
    "rate_8k.wav": ("8k", "note", "low sample rate 8000"),
    "rate_96k.wav": ("96k", "note", "high sample rate 96000"),
}


def write_bad(path: Path, kind: str | None) -> None:
    if kind is None:
        return
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_flac":
        sf.write(path, tone(16000, 2.0), 16000)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated_wav":
        sf.write(path, tone(16000, 2.0), 16000)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "text":
        path.write_text("definitely not a RIFF file\n" * 50)
    elif kind == "nan":
        x = tone(16000, 0.5)
        x[100:110] = np.nan
        sf.write(path, x, 16000, subtype="FLOAT")
    elif kind == "silent":
        sf.write(path, np.zeros(8000, np.float32), 16000)
    elif kind == "hour":
        sf.write(path, np.zeros(4000 * 3600, np.int16), 4000, subtype="PCM_16")
    elif kind == "8ch":
        sf.write(path, tone(16000, 0.5, channels=8), 16000)
    elif kind == "8k":
        sf.write(path, tone(8000, 0.5), 8000)
    elif kind == "96k":
        sf.write(path, tone(96000, 0.5), 96000)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    src = root / "fixture"
    src.mkdir()
    records = []
    # 40 good clips from 20 "speakers" (groups), two labels per clip
    for i in range(40):
        spk = f"speaker{i // 2:02d}"
        f = 220.0 * (1 + i % 4)
        rel = f"fixture/good_{i:02d}.wav"
        sf.write(root / rel, tone(22050, 0.4 + 0.05 * (i % 5), f=f), 22050)
        records.append(ClipRecord(id=f"fixture/good_{i:02d}", path=rel, source="synth:fixture", licence="CC0-1.0",
                                  real=i % 2 == 0, environmental=i % 4 == 0, group=spk,
                                  labels={"tone": ["low", "mid", "high", "top"][i % 4], "speaker": spk},
                                  texts=[f"tone number {i}"] if i < 3 else []))
    for name, (kind, _, _) in BAD.items():
        write_bad(src / name, kind)
        records.append(ClipRecord(id=f"fixture/{name}", path=f"fixture/{name}", source="synth:fixture",
                                  licence="CC0-1.0", real=False, group=name, labels={"tone": "bad"}))
    # a record whose dataset fixes the split itself
    sf.write(src / "fixed.wav", tone(16000, 0.5), 16000)
    records.append(ClipRecord(id="fixture/fixed", path="fixture/fixed.wav", source="synth:fixture",
                              licence="CC0-1.0", real=True, group="g-fixed", labels={"tone": "low"}, split="val"))
    write_jsonl(src / "clips.jsonl", records)
    (root / "corpus.json").write_text(json.dumps({"sources": {"fixture": {"clips": len(records)}}}))
    return root


def run_prepare(corpus, out, workers=1, **kw):
    cfg = PrepareConfig(corpus=str(corpus), out=str(out / "prepared"), metrics=str(out / "metrics.json"),
                        cache_seconds=1.0, workers=workers, **kw)
    metrics = prepare(cfg, FRONTEND, progress=False)
    return cfg, metrics


def test_bad_inputs_are_listed_with_reasons_and_the_rest_is_prepared(corpus, tmp_path):
    cfg, metrics = run_prepare(corpus, tmp_path)
    report = {Path(r["path"]).name: r for r in csv.DictReader(open(Path(cfg.out) / "quarantine.csv"))}
    for name, (_, action, reason) in BAD.items():
        assert name in report, f"{name} missing from the quarantine report"
        assert report[name]["action"] == action, (name, report[name])
        assert reason in report[name]["reason"], (name, report[name]["reason"])
    n_quarantined = sum(1 for a in BAD.values() if a[1] == "quarantined")
    assert metrics["quarantined"] == n_quarantined
    assert metrics["clips_total"] == 40 + 3 + 1  # good + the three accepted-with-a-note + the fixed-split one
    assert metrics["clips_real"] == 20 + 1
    assert metrics["clips_environmental"] == 10
    corpus_out = PreparedCorpus(cfg.out)
    ids = {r["id"] for r in corpus_out.rows}
    assert "fixture/eight_channels.wav" in ids and "fixture/nan.wav" not in ids


def test_cached_waveform_is_the_resampled_centre_window(corpus, tmp_path):
    cfg, _ = run_prepare(corpus, tmp_path)
    pc = PreparedCorpus(cfg.out)
    assert pc.sample_rate == 16000
    i = pc.index["fixture/good_04"]  # 0.6 s at 22.05 kHz: shorter than the cache, kept whole
    x, sr = sf.read(corpus / "fixture/good_04.wav", dtype="float32")
    expected = resample(x, sr, 16000).numpy()
    np.testing.assert_allclose(pc.waveform(i), expected, atol=2e-3)  # float16 storage
    row = pc.rows[i]
    assert row["length"] == expected.shape[0] and row["sample_rate"] == 22050
    assert row["duration"] == pytest.approx(0.6, abs=1e-3)
    # offsets tile the cache without gaps or overlaps
    offs = sorted((r["offset"], r["length"]) for r in pc.rows)
    assert all(a + n == b for (a, n), (b, _) in zip(offs, offs[1:]))


def test_splits_are_disjoint_by_identity_and_respect_dataset_splits(corpus, tmp_path):
    cfg, _ = run_prepare(corpus, tmp_path, test_fraction=0.3, val_fraction=0.2)
    pc = PreparedCorpus(cfg.out)
    split_of_group = {}
    for r in pc.rows:
        assert split_of_group.setdefault(r["group"], r["split"]) == r["split"], r["group"]
    assert pc.rows[pc.index["fixture/fixed"]]["split"] == "val"
    assert {"train", "test"} <= set(split_of_group.values())
    # the split is a function of the group and the salt only, except that the copies of one recording join the
    # split furthest from training (clapkit.data.duplicates): good_i and good_{i+20} are the same tone
    groups_of_hash = {}
    for r in pc.rows:
        groups_of_hash.setdefault(r["content_hash"], set()).add(r["group"])
    assert sum(len(g) > 1 for g in groups_of_hash.values()) == 20
    for r in pc.rows:
        if r["group"] != "g-fixed":
            drawn = [assign_split(g, cfg.split_salt, 0.3, 0.2) for g in groups_of_hash[r["content_hash"]]]
            assert r["split"] == min(drawn, key=SPLIT_PRECEDENCE.index), r["id"]
    # tasks.json counts agree with the manifest
    t = pc.tasks["tone"]
    assert sum(t["clips"].values()) == sum(1 for r in pc.rows if "tone" in r["labels"])


def test_captions_are_varied_and_include_texts(corpus, tmp_path):
    cfg, _ = run_prepare(corpus, tmp_path)
    pc = PreparedCorpus(cfg.out)
    r = pc.rows[pc.index["fixture/good_00"]]
    assert r["captions"][0] == "tone number 0"
    assert len(r["captions"]) >= 4 and len(set(r["captions"])) == len(r["captions"])
    assert any("low" in c for c in r["captions"]) and any("speaker00" in c for c in r["captions"])


def test_prepare_is_deterministic_and_parallel_equals_serial(corpus, tmp_path):
    cfg1, m1 = run_prepare(corpus, tmp_path / "a", workers=1)
    cfg2, m2 = run_prepare(corpus, tmp_path / "b", workers=2)
    for name in ["manifest.jsonl", "waveforms.f16", "tasks.json", "quarantine.csv"]:
        h1 = hashlib.sha256((Path(cfg1.out) / name).read_bytes()).hexdigest()
        h2 = hashlib.sha256((Path(cfg2.out) / name).read_bytes()).hexdigest()
        assert h1 == h2, name
    assert m1 == m2


def test_limit_per_source_takes_a_stable_slice(corpus, tmp_path):
    cfg, m = run_prepare(corpus, tmp_path, limit_per_source=10)
    pc = PreparedCorpus(cfg.out)
    cfg2, _ = run_prepare(corpus, tmp_path / "again", limit_per_source=10)
    assert [r["id"] for r in pc.rows] == [r["id"] for r in PreparedCorpus(cfg2.out).rows]
    assert len(pc) + m["quarantined"] <= 10


def test_public_dataset_rows_join_the_manifest_and_problems_are_quarantined(corpus, tmp_path):
    # ESC-50 layout: meta/esc50.csv + audio/*.wav; one listed file is missing on disk
    esc = tmp_path / "ESC-50-master"
    (esc / "audio").mkdir(parents=True)
    (esc / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (target, cat) in enumerate([(0, "dog"), (10, "rain"), (0, "dog")]):
        name = f"{i + 1}-1000{i}-A-{target}.wav"
        rows.append(f"{name},{i + 1},{target},{cat},True,1000{i},A")
        if i < 2:
            sf.write(esc / "audio" / name, tone(44100, 0.5, f=300 + 100 * i), 44100)
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    cfg, metrics = run_prepare(corpus, tmp_path / "out", datasets={"esc50": str(esc)})
    pc = PreparedCorpus(cfg.out)
    esc_rows = [r for r in pc.rows if r["source"] == "dataset:esc50"]
    assert sorted(r["labels"]["esc50"] for r in esc_rows) == ["dog", "rain"]
    assert all(r["split"] == "test" for r in esc_rows)
    report = list(csv.DictReader(open(Path(cfg.out) / "quarantine.csv")))
    missing = [r for r in report if "3-10002-A-0.wav" in r["reason"] or "3-10002-A-0.wav" in r["path"]]
    assert missing and missing[0]["action"] == "quarantined"
    assert metrics["quarantined"] == sum(1 for a in BAD.values() if a[1] == "quarantined") + 1
