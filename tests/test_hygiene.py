"""Zero-shot hygiene: a model records the clips it trained on, and evaluate refuses to score them as zero-shot."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.data.fingerprint import file_content_hash
from clapkit.hygiene import FileHashes, OverlapGuard, TrainingOverlapError, load_training_index
from clapkit.training_index import (INDEX_FILE, TrainingData, hashes_to_array, iter_shard_hashes, training_data,
                                    write_training_index)
from dataset_fixtures import write_dataset
from test_train import make_prepared, train_config

H = [hashlib.sha256(str(i).encode()).hexdigest()[:32] for i in range(5)]


# --- the index file --------------------------------------------------------------------------------------------


def test_index_rows_are_the_hash_bytes_sorted_and_unique():
    arr = hashes_to_array([H[3], H[1], H[3], H[0]])
    assert arr.shape == (3, 2) and arr.dtype == np.dtype(">u8")
    assert [r.tobytes().hex() for r in arr] == sorted({H[0], H[1], H[3]})
    with pytest.raises(ValueError, match="'xyz' is not a 32-hex-digit"):
        hashes_to_array([H[0], "xyz"])
    with pytest.raises(ValueError, match="not a 32-hex-digit"):
        hashes_to_array(["g" * 32])


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"embed_dim": 4}))
    return d


def test_index_round_trip_and_tampering_is_refused(tmp_path):
    d = _model_dir(tmp_path)
    data = TrainingData(sources=["fixture"])
    data.add(H[:3], "fixture")
    assert data.hashes == sorted(H[:3])
    record = write_training_index(d, data)
    assert record["clips"] == 3 and record["provenance"] == "complete" and record["unlisted"] == []
    assert record["sha256"] == hashlib.sha256((d / INDEX_FILE).read_bytes()).hexdigest()
    config = json.loads((d / "config.json").read_text())
    assert config["embed_dim"] == 4 and config["training_data"] == record
    index = load_training_index(d)
    assert len(index) == 3 and index.status == "complete"
    assert index.contains([H[4], H[2], H[0]]).tolist() == [False, True, True]
    # rewriting the same clips gives the same bytes (deterministic), another order too
    before = (d / INDEX_FILE).read_bytes()
    again = TrainingData()
    again.add([H[2], H[0]], "part one")
    again.add([H[1], H[0]], "part two")  # a clip listed by two sources is one row
    write_training_index(d, again)
    assert (d / INDEX_FILE).read_bytes() == before
    np.save(d / INDEX_FILE, hashes_to_array(H[:2]), allow_pickle=False)  # swapped behind config.json's back
    with pytest.raises(ValueError, match="differs from the .* records"):
        load_training_index(d)
    (d / INDEX_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="training_index.npy: missing"):
        load_training_index(d)
    assert load_training_index(_model_dir(tmp_path / "other")) is None  # no record: no index


def test_shard_index_hashes_are_read_and_bad_lines_named(tmp_path):
    for name, hs in (("a", H[:2]), ("b", H[2:3])):
        (tmp_path / name).mkdir()
        lines = [json.dumps({"key": f"{name}{i}", "dataset": "fixture", "content_hash": h}) for i, h in enumerate(hs)]
        (tmp_path / name / "samples.jsonl").write_text("\n".join(lines) + "\n\n")
    assert list(iter_shard_hashes([tmp_path / "a", tmp_path / "b"])) == H[:3]
    assert list(iter_shard_hashes(str(tmp_path / "b"))) == H[2:3]
    # a folder holding a dataset's train and test splits: training reads only train, so only train is listed
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "samples.jsonl").write_text("".join(
        json.dumps({"content_hash": h, "split": sp}) + "\n" for h, sp in zip(H[:3], ("train", "test", "train"))))
    assert list(iter_shard_hashes(tmp_path / "s")) == [H[0], H[2]]
    (tmp_path / "b" / "samples.jsonl").write_text(json.dumps({"content_hash": H[0]}) + "\n{\"key\": 1}\n")
    with pytest.raises(ValueError, match=r"b/samples.jsonl:2: not a JSON object with a content_hash"):
        list(iter_shard_hashes([tmp_path / "b"]))
    with pytest.raises(FileNotFoundError, match=r"c/samples.jsonl: no per-sample index"):
        list(iter_shard_hashes([tmp_path / "c"]))


def test_training_data_of_shards_and_of_official_weights(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "samples.jsonl").write_text("".join(json.dumps({"content_hash": h}) + "\n" for h in H[:4]))
    cfg = train_config(tmp_path, tmp_path / "prepared", shards=str(shards))
    data = training_data(cfg, [{"id": "x", "content_hash": H[4]}])
    assert data.hashes == sorted(H[:4]) and data.unlisted == []  # the shards, not the prepared split, were trained on
    cfg = train_config(tmp_path, tmp_path / "prepared", init="msclap:2023:/weights/CLAP_weights_2023.pth")
    data = training_data(cfg, [{"id": "x", "content_hash": H[4]}])
    assert data.hashes == [H[4]] and len(data.unlisted) == 1
    assert "msclap:2023:/weights/CLAP_weights_2023.pth" in data.unlisted[0] and "unknown" in data.unlisted[0]
    # a packaged pretrained audio tower (aisfx) brings training data of its own
    aisfx = {"audio_encoder": {"name": "aisfx", "pretrained": "aisfx"}}
    data = training_data(train_config(tmp_path, tmp_path / "prepared"), [{"id": "x", "content_hash": H[4]}], aisfx)
    assert data.hashes == [H[4]] and len(data.unlisted) == 1 and "packaged 'aisfx' weights" in data.unlisted[0]
    htsat = {"audio_encoder": {"name": "htsat"}}
    assert training_data(train_config(tmp_path, tmp_path / "prepared"), [{"id": "x", "content_hash": H[4]}],
                         htsat).unlisted == []
    with pytest.raises(ValueError, match="clip 'y' has no content_hash .* rerun the prepare stage"):
        training_data(train_config(tmp_path, tmp_path / "prepared"), [{"id": "y"}])


def test_file_hashes_are_cached_by_path_size_and_mtime(tmp_path):
    x = np.random.default_rng(0).integers(-9000, 9000, 4000).astype(np.int16)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    cache = FileHashes(tmp_path / "cache")
    h = cache(tmp_path / "a.wav")
    cache.save()
    assert h == file_content_hash(tmp_path / "a.wav")
    stored = json.loads((tmp_path / "cache" / "content_hashes.json").read_text())
    assert list(stored.values())[0][2] == h
    # a cached entry is trusted while size and mtime match; a rewritten file is hashed again
    key = str((tmp_path / "a.wav").resolve())
    stored[key][2] = "0" * 32
    (tmp_path / "cache" / "content_hashes.json").write_text(json.dumps(stored))
    assert FileHashes(tmp_path / "cache")(tmp_path / "a.wav") == "0" * 32
    sf.write(tmp_path / "a.wav", x[::-1], 16000, subtype="PCM_16")
    assert FileHashes(tmp_path / "cache")(tmp_path / "a.wav") == file_content_hash(tmp_path / "a.wav") != h


# --- end to end: a tiny trained model, a dataset holding one of its training clips ------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from clapkit.models.clap import load_model_config
    from clapkit.train import train

    tmp = tmp_path_factory.mktemp("hygiene")
    prepared = make_prepared(tmp / "corpus", n=24)
    metrics = train(train_config(tmp, prepared, max_steps=2, batch_size=4), load_model_config("clap-tiny-htsat-gpt2"),
                    seed=0, progress=False)
    return tmp, prepared, metrics


def _train_rows(prepared: Path) -> list[dict]:
    rows = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def test_trained_model_records_its_training_clips(trained):
    from clapkit.api import CLAP

    tmp, prepared, metrics = trained
    train_rows = _train_rows(prepared)
    config = json.loads((tmp / "clap" / "config.json").read_text())
    record = config["training_data"]
    assert record["clips"] == len(train_rows) == metrics["training_index"]["clips"]
    assert record["provenance"] == "complete" and metrics["training_index"]["provenance"] == "complete"
    index = load_training_index(tmp / "clap")
    assert sorted(k.tobytes().hex() for k in index.keys) == sorted(r["content_hash"] for r in train_rows)
    # each manifest hash is its source file's
    r = train_rows[0]
    assert r["content_hash"] == file_content_hash(tmp / "corpus" / "fixture" / Path(r["path"]).name)
    CLAP.from_pretrained(tmp / "clap")  # the record does not disturb loading


def _dataset_with(tmp: Path, root: Path, training_clip: Path | None) -> Path:
    """An ESC-50 copy of 3 clips; with ``training_clip``, its first file holds that clip's int16 samples as FLAC
    (under ESC-50's .wav name: another name, another format, the same audio)."""
    rng = np.random.default_rng(5)
    clips = [(label, (0.2 * rng.standard_normal(8000)).astype(np.float32)) for label in ("dog", "rooster", "pig")]
    write_dataset("esc50", root, clips)
    if training_clip is not None:
        first = sorted((root / "audio").iterdir())[0]
        samples, sr = sf.read(training_clip, dtype="int16")
        sf.write(first, samples, sr, subtype="PCM_16", format="FLAC")
        assert sf.info(first).format == "FLAC"
    return root


def _params(tmp: Path, model: Path, prepared: Path, dataset: Path, allow: bool, out: str) -> Path:
    import yaml

    block = {"model": str(model), "prepared": str(prepared), "results": str(tmp / out / "results"),
             "plots": str(tmp / out / "plots"), "metrics": str(tmp / out / "metrics.json"), "timings": None,
             "cache_dir": str(tmp / "cache"), "datasets": {"esc50": str(dataset)}, "linear_probe": False,
             "transfer": False, "allow_training_overlap": allow, "retrieval_examples": 2}
    path = tmp / f"{out}.yaml"
    path.write_text(yaml.safe_dump({"evaluate": block}))
    return path


def test_evaluate_refuses_a_dataset_holding_a_training_clip_and_labels_an_allowed_run(trained, capsys):
    from clapkit.cli import main

    tmp, prepared, _ = trained
    train_file = tmp / "corpus" / "fixture" / Path(_train_rows(prepared)[0]["path"]).name
    dirty = _dataset_with(tmp, tmp / "ESC-50-dirty", train_file)
    leaked = sorted((dirty / "audio").iterdir())[0]
    # the stage: refused before anything is embedded, naming the dataset, the count and the file
    with pytest.raises(SystemExit) as err:
        main(["evaluate", "--params", str(_params(tmp, tmp / "clap", prepared, dirty, False, "refused"))])
    message = str(err.value)
    assert "esc50 (esc50 at" in message and "1 of 3 clips" in message and str(leaked) in message
    assert "allow_training_overlap" in message and not (tmp / "refused" / "metrics.json").exists()
    # the one-task command line too
    with pytest.raises(SystemExit, match=r"esc50 \(esc50 at .*\): 1 of 3 clips"):
        main(["evaluate", "--model", str(tmp / "clap"), "--task", "esc50", "--data", str(dirty),
              "--cache-dir", str(tmp / "cache")])
    # allowed: scored, and labelled
    assert main(["evaluate", "--params", str(_params(tmp, tmp / "clap", prepared, dirty, True, "allowed"))]) == 0
    metrics = json.loads((tmp / "allowed" / "metrics.json").read_text())
    overlap = metrics["training_overlap"]
    assert overlap["training_index"] == "complete" and overlap["training_index_clips"] == len(_train_rows(prepared))
    assert overlap["tasks"]["esc50"] == {"training_index": "complete", "overlap_clips": 1, "zero_shot": False}
    assert overlap["tasks"]["tone"] == {"training_index": "complete", "overlap_clips": 0, "zero_shot": True}
    results = json.loads((tmp / "allowed" / "results" / "results.json").read_text())
    assert results["tasks"]["esc50"]["training_overlap"]["zero_shot"] is False
    assert next(r for r in results["rows"] if r["task"] == "esc50")["overlap_clips"] == 1
    out = tmp / "one.json"
    assert main(["evaluate", "--model", str(tmp / "clap"), "--task", "esc50", "--data", str(dirty), "--out",
                 str(out), "--cache-dir", str(tmp / "cache"), "--allow-training-overlap"]) == 0
    assert json.loads(out.read_text())["training_overlap"] == {"training_index": "complete", "overlap_clips": 1,
                                                               "zero_shot": False}
    assert "NOT zero-shot: 1 of them are training clips" in capsys.readouterr().out


def test_evaluate_runs_a_clean_dataset_with_no_overlap_and_an_unindexed_model_as_unknown(trained, capsys):
    from clapkit import CLAP
    from clapkit.cli import main

    tmp, prepared, _ = trained
    clean = _dataset_with(tmp, tmp / "ESC-50-clean", None)
    assert main(["evaluate", "--params", str(_params(tmp, tmp / "clap", prepared, clean, False, "clean"))]) == 0
    overlap = json.loads((tmp / "clean" / "metrics.json").read_text())["training_overlap"]
    assert overlap["tasks"]["esc50"] == {"training_index": "complete", "overlap_clips": 0, "zero_shot": True}
    # a model saved without an index: scored, with a warning, and labelled unknown
    bare = CLAP.from_pretrained(tmp / "clap").save_pretrained(tmp / "bare")
    assert "training_data" not in json.loads((bare / "config.json").read_text())
    dirty = _dataset_with(tmp, tmp / "ESC-50-dirty2", tmp / "corpus" / "fixture" /
                          Path(_train_rows(prepared)[0]["path"]).name)
    assert main(["evaluate", "--params", str(_params(tmp, bare, prepared, dirty, False, "bare"))]) == 0
    assert "has no training index" in capsys.readouterr().err
    overlap = json.loads((tmp / "bare" / "metrics.json").read_text())["training_overlap"]
    assert overlap["training_index"] == "unknown" and overlap["training_index_clips"] is None
    assert overlap["tasks"]["esc50"] == {"training_index": "unknown", "overlap_clips": None, "zero_shot": None}


def test_guard_names_the_embedded_split_when_a_test_clip_is_a_training_clip(trained, tmp_path):
    """A test row whose audio is a training clip's (a manifest prepare would never write: it settles duplicates)
    is refused by name."""
    from clapkit.hygiene import check_split

    _, prepared, _ = trained
    copy = tmp_path / "prepared"
    copy.mkdir()
    for name in ("arrays.json", "tasks.json", "waveforms.f16"):
        (copy / name).write_bytes((prepared / name).read_bytes())
    rows = [json.loads(line) for line in (prepared / "manifest.jsonl").read_text().splitlines()]
    train_hash = next(r["content_hash"] for r in rows if r["split"] == "train")
    test_row = next(r for r in rows if r["split"] == "test")
    test_row["content_hash"] = train_hash
    (copy / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    guard = OverlapGuard.for_model(trained[0] / "clap")
    check = check_split(guard, copy, "test")
    assert check.overlap == {test_row["id"]} and check.label("tone")["overlap_clips"] == 1
    with pytest.raises(TrainingOverlapError, match=f"test split: 1 of {check.clips} clips, e.g. {test_row['id']}"):
        guard.refuse([check])


def test_fine_tuned_official_weights_give_a_partial_index(trained, tmp_path):
    """train.init from an msclap checkpoint: our clips are listed, Microsoft's are not, and the labels say so."""
    from clapkit.cli import main
    from clapkit.train import train
    from test_finetune_msclap import TINY, write_tiny

    tmp, prepared, _ = trained
    weights = write_tiny(tmp_path / "CLAP_weights_2023.pth")
    cfg = train_config(tmp_path, prepared, init=f"msclap:2023:{weights}", max_steps=1, batch_size=4,
                       text_cache_dir=None)
    metrics = train(cfg, TINY, seed=0, progress=False)
    assert metrics["training_index"] == {"clips": len(_train_rows(prepared)), "provenance": "partial"}
    record = json.loads((tmp_path / "clap" / "config.json").read_text())["training_data"]
    (note,) = record["unlisted"]
    assert f"msclap:2023:{weights}" in note and "not ours to list" in note
    clean = _dataset_with(tmp_path, tmp_path / "ESC-50", None)
    out = tmp_path / "esc50.json"
    assert main(["evaluate", "--model", str(tmp_path / "clap"), "--task", "esc50", "--data", str(clean), "--out",
                 str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads(out.read_text())["training_overlap"] == {"training_index": "partial", "overlap_clips": 0,
                                                               "zero_shot": True}


def test_training_data_includes_the_pretrained_encoders_clips(trained, tmp_path):
    """audio_init: pretrain adds the clips pretrain trained on (its own corpus' train split) when they differ from
    train's, and names the aisfx teacher it distilled; another save_pretrained model adds its own index."""
    tmp, prepared, _ = trained
    pre = tmp_path / "pretrain"
    pre.mkdir()
    info = {"format": "clapkit-pretrain/1", "pretrain": {"prepared": str(prepared), "distill_weight": 0.5}}
    (pre / "config.json").write_text(json.dumps(info))
    own = [{"id": "x", "content_hash": H[4]}]
    cfg = train_config(tmp_path, tmp_path / "elsewhere", audio_init="pretrain", pretrain_dir=str(pre))
    data = training_data(cfg, own)
    assert sorted(data.hashes) == sorted([H[4]] + [r["content_hash"] for r in _train_rows(prepared)])
    assert len(data.unlisted) == 1 and "aisfx teacher" in data.unlisted[0]
    info["pretrain"]["distill_weight"] = 0.0  # the same corpus as train's: its train split is listed once
    (pre / "config.json").write_text(json.dumps(info))
    data = training_data(train_config(tmp_path, prepared, audio_init="pretrain", pretrain_dir=str(pre)), own)
    assert data.hashes == [H[4]] and data.unlisted == []
    data = training_data(train_config(tmp_path, prepared, audio_init=str(tmp / "clap")), own)  # a trained model
    assert sorted(data.hashes) == sorted([H[4]] + [r["content_hash"] for r in _train_rows(prepared)])
    weights = tmp_path / "encoder.safetensors"
    data = training_data(train_config(tmp_path, prepared, audio_init=str(weights)), own)
    assert data.unlisted == [f"train.audio_init {weights}: audio-encoder weights whose training data is not listed"]


def test_a_manifest_without_hashes_is_hashed_from_its_files_or_refused_by_name(tmp_path):
    x = np.random.default_rng(3).integers(-9000, 9000, 4000).astype(np.int16)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    from clapkit.training_index import row_hashes

    files = FileHashes(None)
    rows = [{"id": "a", "path": str(tmp_path / "a.wav")}, {"id": "b", "path": "x", "content_hash": H[1]}]
    assert row_hashes(rows, "old/manifest.jsonl", files) == [file_content_hash(tmp_path / "a.wav"), H[1]]
    with pytest.raises(ValueError, match=r"old/manifest.jsonl: clip 'c' has no content_hash .* its file "
                                         r".*missing.wav cannot be hashed .*rerun the prepare stage"):
        row_hashes([{"id": "c", "path": str(tmp_path / "missing.wav")}], "old/manifest.jsonl", files)
