"""clapkit.data.shard_build (``clapkit shards build``): byte-identical shards whatever the workers and parts,
resuming an interrupted build, the quarantine of bad inputs with reasons and line numbers, the stored audio
(FLAC round trip, content hashes), adapters, manifests and the command line."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.audio import mix_down, resample
from clapkit.data import shard_build
from clapkit.data.fingerprint import file_content_hash
from clapkit.data.shard_build import PCM_SCALE, BuildConfig, build_shards, decode_flac, read_samples
from dataset_fixtures import write_dataset

RATE = 16000
CFG = BuildConfig(RATE, 1.0, shard_size=5, seed=7, max_file_seconds=3.0)
N_GOOD = 17  # manifest clips that decode


def tone(seconds: float, rate: int, freq: float, channels: int = 1, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal((len(t), channels))
    return (0.3 * np.sin(2 * np.pi * freq * t)[:, None] + 0.05 * noise).astype(np.float32).squeeze()


def write_good_manifest(root: Path) -> Path:
    """17 decodable clips: 8-48 kHz, mono and stereo, 0.3-2.5 s (cut to 1 s), WAV and FLAC; splits train and val."""
    lines = []
    for i in range(N_GOOD):
        rate = [8000, 16000, 22050, 44100, 48000][i % 5]
        ext = "flac" if i % 4 == 3 else "wav"
        rel = f"clips/g{i:02d}.{ext}"
        (root / "clips").mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, tone(0.3 + 0.13 * i, rate, 200 + 30 * i, channels=1 + i % 2, seed=i), rate)
        row = {"audio": rel, "captions": [f"tone number {i}", f"a beep, {i}"], "labels": {"pitch": str(i)}}
        if i % 6 == 5:
            row["split"] = "val"
        lines.append(json.dumps(row))
    (root / "good.jsonl").write_text("\n".join(lines) + "\n")
    return root / "good.jsonl"


def write_bad_inputs(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """A JSONL and a CSV manifest with one input of each bad kind; returns them and {path or line: reason}."""
    bad = root / "bad"
    bad.mkdir(parents=True)
    (bad / "garbage.wav").write_bytes(b"this is not audio at all" * 20)
    (bad / "empty.wav").write_bytes(b"")
    sf.write(bad / "noframes.wav", np.zeros(0, np.float32), RATE)  # a valid header, no sample
    nan = tone(0.5, RATE, 300)
    nan[100] = np.nan
    sf.write(bad / "nan.wav", nan, RATE, subtype="FLOAT")
    inf = tone(0.5, RATE, 300)
    inf[7] = np.inf
    sf.write(bad / "inf.wav", inf, RATE, subtype="FLOAT")
    sf.write(bad / "silent.wav", np.zeros(RATE, np.float32), RATE)
    sf.write(bad / "long.wav", tone(3.5, 8000, 300), 8000)
    sf.write(bad / "lowrate.wav", tone(0.5, 2000, 300), 2000)
    sf.write(bad / "channels.wav", np.tile(tone(0.2, RATE, 300)[:, None], (1, 10)), RATE)
    sf.write(bad / "truncated.wav", tone(0.5, RATE, 300), RATE)
    data = (bad / "truncated.wav").read_bytes()
    (bad / "truncated.wav").write_bytes(data[: len(data) // 2])
    expected = {"bad/garbage.wav": "unreadable: not audio", "bad/empty.wav": "empty file (0 bytes)",
                "bad/noframes.wav": "empty: no audio samples",
                "bad/nan.wav": "contains NaN or infinite samples", "bad/inf.wav": "contains NaN or infinite samples",
                "bad/silent.wav": "all silent: RMS 0.00e+00 < silence_rms 0.0001",
                "bad/long.wav": "over-long: 3.5 s > max_file_seconds 3",
                "bad/lowrate.wav": "sample rate 2000 Hz outside [4000, 192000]",
                "bad/channels.wav": "10 channels > max_channels 8",
                "bad/truncated.wav": "truncated: WAV data chunk declares"}
    rows = [json.dumps({"audio": p, "caption": f"bad {k}"}) for k, p in enumerate(expected)]
    rows += [json.dumps({"audio": "bad/missing.wav", "caption": "gone"}),  # line 11
             json.dumps({"audio": "bad/nan.wav", "captions": []}),  # line 12
             "{not json",  # line 13
             json.dumps({"caption": "no audio field"})]  # line 14
    jsonl = root / "bad.jsonl"
    jsonl.write_text("\n".join(rows) + "\n")
    sf.write(root / "clips" / "csv0.wav", tone(0.6, 22050, 440), 22050)
    csv_path = root / "more.csv"
    csv_path.write_text("audio,caption_1,caption_2,label_event,split\n"
                        "clips/csv0.wav,a beep,,beep,train\n"
                        "clips/nope.wav,a beep,,beep,train\n"  # line 3: missing file
                        'clips/csv0.wav,,,"beep",train\n')  # line 4: no caption
    expected.update({"bad.jsonl:11": "audio file missing", "bad.jsonl:12": "no caption",
                     "bad.jsonl:13": "not a JSON object", "bad.jsonl:14": "no audio path",
                     "more.csv:3": "audio file missing", "more.csv:4": "no caption"})
    return jsonl, csv_path, expected


def write_corpus(root: Path) -> Path:
    """A clapkit corpus (``clapkit data build``'s layout) of 4 clips of one source, split train by the records."""
    from clapkit.data.records import ClipRecord, write_jsonl

    records = []
    for i in range(4):
        rel = f"synth/k{i}.wav"
        (root / "synth").mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, tone(0.4 + 0.2 * i, 22050, 330 + 110 * i, seed=60 + i), 22050)
        records.append(ClipRecord(id=f"synth/k{i}", path=rel, source="synth:test", licence="CC0-1.0", real=False,
                                  labels={"tone": "sine tone"}, split="train"))
    write_jsonl(root / "synth" / "clips.jsonl", records)
    (root / "corpus.json").write_text(json.dumps({"sources": {"synth": {"clips": 4}}}))
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_inputs")
    good = write_good_manifest(root)
    jsonl, csv_path, expected = write_bad_inputs(root)
    esc50 = write_dataset("esc50", root / "ESC-50", [("dog", tone(0.7, RATE, 500, seed=40)),
                                                      ("rain", tone(1.4, RATE, 700, seed=41))])
    caps = write_dataset("audiocaps", root / "audiocaps", [(["a dog barks twice", "barking"],
                                                            tone(1.2, RATE, 900, seed=42))])
    specs = [("manifest", "good", None, str(good)), ("manifest", "bad", None, str(jsonl)),
             ("manifest", "more", None, str(csv_path)), ("dataset", "esc50", "train", str(esc50)),
             ("dataset", "audiocaps", None, str(caps)), ("corpus", "corpus", None, str(write_corpus(root / "data")))]
    return {"root": root, "specs": specs, "expected": expected}


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("reference") / "shards"
    summary = build_shards(inputs["specs"], out, CFG, workers=1, progress=False)
    return out, summary


# --- determinism ---------------------------------------------------------------------------------------------------

def test_one_worker_two_workers_and_two_parts_give_byte_identical_shards(inputs, reference, tmp_path):
    out, summary = reference
    # 17 good (2 of them val) + 1 CSV + 2 ESC-50 (forced to train) + 1 AudioCaps (test) + 4 corpus clips; the bad
    # ones quarantined
    assert summary["clips"] == {"train": 22, "val": 2, "test": 1} and summary["quarantined"] == 10 + 6
    # train plans 15 + 10 bad files + 1 + 2 + 4 = 32 items: 7 shards of at most 5
    assert summary["shards_built"] == summary["shards_planned"] == 7 + 1 + 1
    expected = file_hashes(out)
    assert {"train-000000.tar", "train-000006.tar", "val-000000.tar", "test-000000.tar", "train.json", "val.json",
            "test.json", "samples.jsonl", "quarantine.jsonl", "build.json"} <= set(expected)
    assert not [name for name in expected if ".tmp" in name]

    two = build_shards(inputs["specs"], tmp_path / "workers", CFG, workers=2, progress=False)
    assert two["clips"] == summary["clips"] and file_hashes(tmp_path / "workers") == expected

    first = build_shards(inputs["specs"], tmp_path / "parts", CFG, part="0/2", progress=False)
    assert first["shards_in_part"] == 5 and len(first["pending"]) == 4
    assert not (tmp_path / "parts" / "train.json").exists()  # no index before every part is done
    second = build_shards(inputs["specs"], tmp_path / "parts", CFG, part="1/2", progress=False)
    assert "pending" not in second and second["shards_built"] == 4
    assert file_hashes(tmp_path / "parts") == expected

    other_seed = build_shards(inputs["specs"], tmp_path / "seed", BuildConfig(**{**CFG.__dict__, "seed": 8}),
                              progress=False)
    assert other_seed["clips"] == summary["clips"]
    assert file_hashes(tmp_path / "seed")["train-000000.tar"] != expected["train-000000.tar"]


def test_an_interrupted_build_resumes_to_the_same_shards(inputs, reference, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    real, calls = shard_build.encode_clip, []

    def killed_after_12(file, cfg):
        calls.append(file)
        if len(calls) == 12:  # the first clip of the fourth shard (test-000000 has 1, train-00000{0,1} 5 each)
            raise KeyboardInterrupt("simulated kill")
        return real(file, cfg)

    monkeypatch.setattr(shard_build, "encode_clip", killed_after_12)
    with pytest.raises(KeyboardInterrupt):
        build_shards(inputs["specs"], out, CFG, progress=False)
    monkeypatch.setattr(shard_build, "encode_clip", real)
    names = {p.name for p in out.iterdir()}
    # three shards done; the fourth's temporary file removed on the exception; no index yet
    assert {n for n in names if n.endswith(".tar")} == {"test-000000.tar", "train-000000.tar", "train-000001.tar"}
    assert not [n for n in names if n.startswith(".train-000002.tar.")] and "train.json" not in names
    stale = out / ".train-000002.tar.0123abcd.tmp"  # what a kill -9 leaves: the rerun deletes it
    stale.write_bytes(b"half a shard")

    resumed = build_shards(inputs["specs"], out, CFG, progress=False)
    assert not stale.exists()
    assert resumed["shards_kept"] == 3 and resumed["shards_built"] == 6
    assert file_hashes(out) == file_hashes(reference[0])

    # a finished shard damaged afterwards (its sha256 no longer its record's) is rebuilt; the others are kept
    damaged = out / "train-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[600] ^= 0xFF
    damaged.write_bytes(bytes(data))
    again = build_shards(inputs["specs"], out, CFG, progress=False)
    assert again["shards_built"] == 1 and again["shards_kept"] == 8
    assert file_hashes(out) == file_hashes(reference[0])


# --- bad input -----------------------------------------------------------------------------------------------------

def test_every_bad_input_is_quarantined_with_its_reason_and_line(inputs, reference):
    out, _ = reference
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    found = {}
    for q in quarantined:
        where = f"{Path(q['input']).name}:{q['line']}" if q.get("line") else q["path"]
        found[where] = q["reason"]
    expected = inputs["expected"]
    assert set(found) == set(expected)
    for where, reason in expected.items():
        assert found[where].startswith(reason), (where, found[where])
    # decoding rejects name the shard they were planned in and the input they came from
    assert all(q["shard"].endswith(".tar") and q["dataset"] == "bad" for q in quarantined if "shard" in q)
    stored = {s["key"] for s in read_samples(out)}
    assert not {k for k in stored if k.startswith("bad_")}
    assert len(stored) == 25


# --- what a sample holds -------------------------------------------------------------------------------------------

def shard_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_stored_audio_is_the_resampled_int16_and_the_metadata_names_its_source(inputs, reference):
    out, _ = reference
    root = inputs["root"]
    samples = list(read_samples(out))
    seen = long_files = 0
    for shard in sorted(out.glob("*.tar")):
        members = shard_members(shard)
        assert [m.name.split(".", 1)[1] for m, _ in members] == ["flac", "json"] * (len(members) // 2)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644
                   for m, _ in members)
        for (flac_member, flac), (_, meta_bytes) in zip(members[::2], members[1::2]):
            meta = json.loads(meta_bytes)
            if meta["dataset"] != "good":
                continue
            audio, rate = sf.read(root / meta["path"], dtype="float32", always_2d=True)
            mono = mix_down(audio.T)
            wave = resample(mono, rate, RATE).numpy()
            if wave.shape[0] > RATE:  # the centre second of the whole file resampled
                start = (wave.shape[0] - RATE) // 2
                wave = wave[start:start + RATE]
            stored, stored_rate = sf.read(io.BytesIO(flac), dtype="int16")
            assert stored_rate == RATE and stored.shape == wave.shape
            # exactly the resampled int16, also where the builder resampled only a slice of a long file
            exact = np.round(np.clip(wave, -1, 1) * PCM_SCALE).astype(np.int16)
            assert np.array_equal(stored, exact), meta["path"]
            long_files += mono.shape[0] / rate > 1.3
            decoded, _ = decode_flac(flac)
            assert np.array_equal(decoded, exact.astype(np.float32) / np.float32(PCM_SCALE))
            assert meta["content_hash"] == file_content_hash(root / meta["path"])
            assert meta["source_sample_rate"] == rate and meta["source_channels"] == audio.shape[1]
            assert meta["seconds"] == round(len(exact) / RATE, 4) and meta["sample_rate"] == RATE
            index_line = next(s for s in samples if s["key"] == meta["key"])
            assert index_line == {"key": meta["key"], "shard": shard.name, "dataset": "good", "split": meta["split"],
                                  "content_hash": meta["content_hash"], "seconds": meta["seconds"]}
            seen += 1
    assert seen == N_GOOD and long_files >= 5  # sliced before resampling


def test_adapters_keep_human_captions_make_label_captions_and_force_splits(reference):
    out, _ = reference
    metas = {}
    for shard in out.glob("*.tar"):
        for member, data in shard_members(shard):
            if member.name.endswith(".json"):
                meta = json.loads(data)
                metas[meta["id"]] = meta
    caps = [m for m in metas.values() if m["dataset"] == "audiocaps"]
    assert len(caps) == 1 and caps[0]["captions"] == ["a dog barks twice", "barking"] and caps[0]["split"] == "test"
    esc = sorted((m for m in metas.values() if m["dataset"] == "esc50"), key=lambda m: m["id"])
    assert [m["labels"] for m in esc] == [{"esc50": "dog"}, {"esc50": "rain"}]
    assert all(m["split"] == "train" and len(m["captions"]) >= 2 for m in esc)
    assert any("dog" in c for c in esc[0]["captions"]) and any("rain" in c for c in esc[1]["captions"])
    assert esc[0]["path"].startswith("audio/")  # relative to the dataset root
    corpus = [metas[f"synth/k{i}"] for i in range(4)]  # the corpus's own clip ids, captions made as prepare does
    assert all(m["dataset"] == "corpus" and m["split"] == "train" and m["path"] == f"synth/k{i}.wav"
               for i, m in enumerate(corpus))
    assert all("sine tone" in " ".join(m["captions"]) for m in corpus)
    csv = metas["more/clips/csv0"]
    assert csv["captions"] == ["a beep"] and csv["labels"] == {"event": "beep"} and csv["split"] == "train"


def test_content_hashes_come_from_the_sample_index(inputs, reference, tmp_path):
    out, _ = reference
    hashes = [s["content_hash"] for s in read_samples(out)]
    assert len(hashes) == 25
    good = {file_content_hash(p) for p in (inputs["root"] / "clips").glob("g*")}
    assert good <= set(hashes)
    with pytest.raises(FileNotFoundError, match="no sample index"):
        list(read_samples(tmp_path))


def test_command_line_builds_at_the_preset_rate(inputs, tmp_path):
    from clapkit.cli import main

    repo = Path(__file__).resolve().parents[1]
    good = inputs["specs"][0][3]
    assert main(["shards", "build", "--manifest", f"tones:train={good}", "--out", str(tmp_path / "paper"),
                 "--params", str(repo / "params.yaml"), "--preset", "paper", "--shard-size", "100", "--workers", "1",
                 "--no-progress"]) == 0
    index = json.loads((tmp_path / "paper" / "train.json").read_text())
    build = json.loads((tmp_path / "paper" / "build.json").read_text())
    assert index["sample_rate"] == 44100 and index["clips"] == N_GOOD  # :train forces every line's split
    assert build["settings"]["sample_rate"] == 44100 and build["settings"]["max_seconds"] == 7.0
    assert build["inputs"] == [{"kind": "manifest", "name": "tones", "split": "train", "path": good}]
    with pytest.raises(SystemExit):
        main(["shards", "build", "--out", str(tmp_path / "none")])
    with pytest.raises(ValueError, match="expected name"):
        main(["shards", "build", "--dataset", "/data/esc50", "--out", str(tmp_path / "none")])


def test_an_unexpected_error_on_one_file_is_quarantined_not_fatal(inputs, tmp_path, monkeypatch):
    real = shard_build.encode_clip

    def fails_on_g03(file, cfg):
        if file.endswith("g03.flac"):
            raise MemoryError("simulated")
        return real(file, cfg)

    monkeypatch.setattr(shard_build, "encode_clip", fails_on_g03)
    summary = build_shards(inputs["specs"][:1], tmp_path / "shards", CFG, progress=False)
    assert summary["clips"] == {"train": 14, "val": 2} and summary["quarantined"] == 1
    (line,) = (tmp_path / "shards" / "quarantine.jsonl").read_text().splitlines()
    assert json.loads(line)["path"] == "clips/g03.flac" and json.loads(line)["reason"] == \
        "unexpected error: MemoryError: simulated"
    with pytest.raises(ValueError, match="--part 2/2"):
        build_shards(inputs["specs"][:1], tmp_path / "x", CFG, part="2/2", progress=False)


def test_the_corpus_input_takes_prepares_slice_and_splits(inputs, tmp_path):
    import hashlib as h
    import shutil

    from clapkit.data.prepare import assign_split
    from clapkit.data.shard_inputs import read_corpus

    root = inputs["root"] / "data"
    items, problems = read_corpus("corpus", root, params={"prepare": {"limit_per_source": 2}})
    by_hash = sorted((f"synth/k{i}" for i in range(4)), key=lambda c: h.sha256(c.encode()).hexdigest())
    assert problems == [] and [it["id"] for it in items] == by_hash[:2]
    # records without a split of their own get prepare's, from the group and prepare's salt and fractions
    copy = tmp_path / "data"
    shutil.copytree(root, copy)
    clips = copy / "synth" / "clips.jsonl"
    clips.write_text(clips.read_text().replace('"split": "train"', '"split": null'))
    items, _ = read_corpus("corpus", copy)
    assert [it["split"] for it in items] == [assign_split(f"synth/k{i}", "clapkit-split-v1", 0.2, 0.1)
                                             for i in range(4)]
