"""clapkit.data.adapters: every adapter on a fixture written in its dataset's exact on-disk layout.

Each fixture reproduces the real dataset's folder structure, file naming and metadata headers (a few rows taken
from, or shaped like, the real files) with tiny WAV files, and the test asserts the exact records: ids, labels,
splits, groups, captions, folds.  The error policy (raise by default, skip-and-report with a LoadReport) is
tested on the problems it names: missing audio, malformed rows, unknown labels, bad file names, duplicates.
"""

import json
from pathlib import Path

import pytest

from clapkit.data.adapters import ADAPTERS, TASK_CLASSES, DatasetError, LoadReport, Problem
from clapkit.data.records import ClipRecord
from dataset_fixtures import nsynth_example, text, wav  # shared with the evaluation tests

# ---------------------------------------------------------------------------------------------------------------
# Fixture helpers


def load(name: str, root: Path, report: LoadReport | None = None):
    records = ADAPTERS[name].load(root, report)
    for r in records:  # what every adapter promises, whatever the dataset
        assert Path(r.path).is_absolute() and Path(r.path).is_file()
        assert r.source == f"dataset:{name}" and r.real is True
        assert r.id.startswith(f"{name}/")
        assert r.licence
        assert ClipRecord.from_dict(json.loads(r.to_json())) == r  # survives clips.jsonl unchanged
        assert set(r.labels) <= set(ADAPTERS[name].tasks)
        for task, value in r.labels.items():  # closed vocabularies: every label is a listed class
            values = value if isinstance(value, list) else [value]
            assert task not in TASK_CLASSES or set(values) <= set(TASK_CLASSES[task]), (task, values)
    assert [r.id for r in records] == sorted(r.id for r in records)
    return records


def rows(records, root: Path):
    """The fields each test checks (id, path, split, group, labels, texts), paths relative to the fixture root."""
    return [
        (r.id, str(Path(r.path).relative_to(root)), r.split, r.group, r.labels, r.texts)
        for r in records
    ]


# ---------------------------------------------------------------------------------------------------------------
# Registry


def test_registry_covers_the_papers_datasets():
    required = {"esc50", "us8k", "audiocaps", "clotho", "gtzan_genre", "nsynth", "speech_commands", "fsd50k",
                "crema_d", "ravdess"}  # fmt: skip
    extra = {"gtzan_music_speech", "vocalsound", "esc50_actions", "tut2017", "beijing_opera", "libricount",
             "dcase2017_task4", "audioset", "sesa"}  # fmt: skip
    assert required | extra <= set(ADAPTERS)
    for name, a in ADAPTERS.items():
        assert a.name == name
        assert a.licence and a.confirmed
        assert "<root>" in a.reader.__doc__  # every layout is spelled out from the dataset root
    tasks = {t for a in ADAPTERS.values() for t in a.tasks}
    assert set(TASK_CLASSES) <= tasks
    assert TASK_CLASSES["esc50"][:3] == ("dog", "rooster", "pig") and len(TASK_CLASSES["esc50"]) == 50
    assert TASK_CLASSES["us8k"][0] == "air conditioner" and len(TASK_CLASSES["us8k"]) == 10
    assert len(TASK_CLASSES["speech_commands"]) == 35 and len(TASK_CLASSES["tut2017"]) == 15
    assert len(TASK_CLASSES["dcase2017_task4"]) == 17 and len(TASK_CLASSES["esc50_actions"]) == 20
    assert {"esc50", "us8k", "gtzan_genre", "nsynth_instrument_family", "nsynth_pitch", "nsynth_velocity",
            "nsynth_qualities", "speech_commands", "fsd50k", "crema_d", "ravdess"} <= tasks  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# ESC-50, ESC50-Actions, UrbanSound8K


ESC50_HEADER = "filename,fold,target,category,esc10,src_file,take\n"


def make_esc50(root: Path, extra_rows: str = "") -> Path:
    text(root / "meta" / "esc50.csv", ESC50_HEADER
         + "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
         + "1-100038-A-14.wav,1,14,chirping_birds,False,100038,A\n"
         + "2-100648-A-43.wav,2,43,car_horn,False,100648,A\n" + extra_rows)  # fmt: skip
    for name in ("1-100032-A-0", "1-100038-A-14", "2-100648-A-43"):
        wav(root / "audio" / f"{name}.wav")
    return root


def test_esc50_exact_records(tmp_path):
    root = make_esc50(tmp_path)
    records = load("esc50", root)
    assert rows(records, root) == [
        ("esc50/1-100032-A-0", "audio/1-100032-A-0.wav", "test", "100032", {"esc50": "dog"}, []),
        ("esc50/1-100038-A-14", "audio/1-100038-A-14.wav", "test", "100038", {"esc50": "chirping birds"}, []),
        ("esc50/2-100648-A-43", "audio/2-100648-A-43.wav", "test", "100648", {"esc50": "car horn"}, []),
    ]
    assert [r.meta for r in records] == [
        {"fold": 1, "esc10": True, "take": "A"},
        {"fold": 1, "esc10": False, "take": "A"},
        {"fold": 2, "esc10": False, "take": "A"},
    ]
    assert {r.licence for r in records} == {"CC-BY-NC-3.0"} and all(r.environmental for r in records)


def test_esc50_problems_raise_by_default_and_are_reported_on_request(tmp_path):
    root = make_esc50(tmp_path, extra_rows=(
        "3-1-A-0.wav,3,0,dog,False,1,A\n"          # line 5: listed, but no audio file
        "4-2-A-1.wav,4,1\n"                         # line 6: malformed (3 of 7 fields)
        "5-3-A-1.wav,5,1,unicorn,False,3,A\n"       # line 7: unknown label
        "5-4-A-1.wav,5,1,dog,False,4,A\n"           # line 8: target 1 is rooster, not dog
    ))  # fmt: skip
    meta = str(root.absolute() / "meta" / "esc50.csv")
    with pytest.raises(DatasetError) as e:
        ADAPTERS["esc50"].load(root)
    assert f"{meta}:5: audio file missing" in str(e.value)
    assert [p.line for p in e.value.problems] == [5, 6, 7, 8]

    report = LoadReport()
    records = load("esc50", root, report)
    assert [r.id for r in records] == ["esc50/1-100032-A-0", "esc50/1-100038-A-14", "esc50/2-100648-A-43"]
    assert [(p.file, p.line) for p in report.problems] == [(meta, 5), (meta, 6), (meta, 7), (meta, 8)]
    assert "audio file missing" in report.problems[0].reason
    assert "malformed row: 3 fields, header has 7" == report.problems[1].reason
    assert "unknown label 'unicorn'" == report.problems[2].reason
    assert "is 'rooster' but category is 'dog'" in report.problems[3].reason


def test_layout_errors_always_raise_naming_the_file(tmp_path):
    with pytest.raises(DatasetError, match="dataset root is not a directory"):
        ADAPTERS["esc50"].load(tmp_path / "nowhere", LoadReport())
    (tmp_path / "audio").mkdir()
    with pytest.raises(DatasetError, match=r"meta/esc50\.csv: required metadata file is missing"):
        ADAPTERS["esc50"].load(tmp_path, LoadReport())
    text(tmp_path / "meta" / "esc50.csv", "filename,fold,target\n1-1-A-0.wav,1,0\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['category', 'esc10', 'src_file', 'take'\]"):
        ADAPTERS["esc50"].load(tmp_path, LoadReport())


def test_esc50_actions_exact_records(tmp_path):
    root = make_esc50(tmp_path)
    actions = ("blowing,breaking,calling,crumpling,dripping,exhaling,exploding,gasping,groaning,pouring,ringing,"
               "rolling,rotating,scraping,singing,sizzling,splashing,tapping,vibrating,wailing")  # fmt: skip
    # The first two rows of the real actionvector_one_per_audiofile.csv.
    text(root / "action_vectors_dataset" / "actionvector_one_per_audiofile.csv",
         f"filename,fold,target,category,{actions}\n"
         "1-100032-A-0.wav,1,0,dog,0.3333333333333333,0.0,3.3333333333333335,0.0,0.0,1.0,0.0,1.0,0.0,0.0,0.0,"
         "0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.3333333333333333,1.3333333333333333\n"
         "1-100038-A-14.wav,1,14,chirping_birds,0.0,0.0,0.6666666666666666,0.0,0.0,0.3333333333333333,0.0,0.0,"
         "0.0,0.0,0.6666666666666666,0.0,0.0,0.0,2.0,0.0,0.0,0.0,1.0,1.0\n")  # fmt: skip
    records = load("esc50_actions", root)
    assert rows(records, root) == [
        ("esc50_actions/1-100032-A-0", "audio/1-100032-A-0.wav", "test", "100032",
         {"esc50_actions": ["calling"]}, []),
        ("esc50_actions/1-100038-A-14", "audio/1-100038-A-14.wav", "test", "100038",
         {"esc50_actions": ["singing"]}, []),  # 2.0 is exactly the threshold: present
    ]  # fmt: skip
    assert records[0].meta["action_ratings"]["calling"] == pytest.approx(10 / 3)
    assert records[1].meta["esc50"] == "chirping birds" and records[1].meta["fold"] == 1


def test_us8k_exact_records(tmp_path):
    text(tmp_path / "metadata" / "UrbanSound8K.csv",
         "slice_file_name,fsID,start,end,salience,fold,classID,class\n"
         "100032-3-0-0.wav,100032,0.0,0.317551,1,5,3,dog_bark\n"
         "100263-2-0-117.wav,100263,58.5,62.5,1,5,2,children_playing\n"
         "101415-0-0-1.wav,101415,0.5,4.5,2,10,0,air_conditioner\n"
         "102305-6-0-0.wav,102305,0.0,2.6,1,1,6,gun_shot\n")  # fmt: skip
    for fold, name in ((5, "100032-3-0-0"), (5, "100263-2-0-117"), (10, "101415-0-0-1")):
        wav(tmp_path / "audio" / f"fold{fold}" / f"{name}.wav")
    report = LoadReport()  # the gun shot's audio is absent
    records = load("us8k", tmp_path, report)
    assert rows(records, tmp_path) == [
        ("us8k/100032-3-0-0", "audio/fold5/100032-3-0-0.wav", "test", "100032", {"us8k": "dog bark"}, []),
        ("us8k/100263-2-0-117", "audio/fold5/100263-2-0-117.wav", "test", "100263", {"us8k": "children playing"},
         []),
        ("us8k/101415-0-0-1", "audio/fold10/101415-0-0-1.wav", "test", "101415", {"us8k": "air conditioner"}, []),
    ]  # fmt: skip
    assert records[2].meta == {"fold": 10, "salience": "background", "start": 0.5, "end": 4.5}
    assert [(Path(p.file).name, p.line) for p in report.problems] == [("UrbanSound8K.csv", 5)]
    assert "audio/fold1/102305-6-0-0.wav" in report.problems[0].reason


# ---------------------------------------------------------------------------------------------------------------
# FSD50K, DCASE 2017 Task 4, AudioSet


def test_fsd50k_exact_records(tmp_path):
    gt = tmp_path / "FSD50K.ground_truth"
    text(gt / "vocabulary.csv", "0,Electric_guitar,/m/02sgy\n1,Guitar,/m/0342h\n2,Music,/m/04rlf\n"
                                "3,Bark,/m/05tny_\n4,Dog,/m/0bt9lr\n")  # fmt: skip
    text(gt / "dev.csv", 'fname,labels,mids,split\n'
                         '64760,"Electric_guitar,Guitar,Music","/m/02sgy,/m/0342h,/m/04rlf",train\n'
                         '16399,"Bark,Dog","/m/05tny_,/m/0bt9lr",val\n')  # fmt: skip
    text(gt / "eval.csv", 'fname,labels,mids\n37199,Dog,/m/0bt9lr\n')
    info = {"64760": {"title": "riff", "description": "a riff", "tags": ["guitar"],
                      "license": "http://creativecommons.org/licenses/by/3.0/", "uploader": "alice"},
            "16399": {"title": "woof", "description": "", "tags": [],
                      "license": "http://creativecommons.org/publicdomain/zero/1.0/", "uploader": "bob"}}  # fmt: skip
    text(tmp_path / "FSD50K.metadata" / "dev_clips_info_FSD50K.json", json.dumps(info))
    for part, fname in (("dev", "64760"), ("dev", "16399"), ("eval", "37199")):
        wav(tmp_path / f"FSD50K.{part}_audio" / f"{fname}.wav")
    records = load("fsd50k", tmp_path)
    assert rows(records, tmp_path) == [
        ("fsd50k/16399", "FSD50K.dev_audio/16399.wav", "val", "bob", {"fsd50k": ["Bark", "Dog"]}, []),
        ("fsd50k/37199", "FSD50K.eval_audio/37199.wav", "test", "", {"fsd50k": ["Dog"]}, []),
        ("fsd50k/64760", "FSD50K.dev_audio/64760.wav", "train", "alice",
         {"fsd50k": ["Electric guitar", "Guitar", "Music"]}, []),
    ]  # fmt: skip
    assert [r.licence for r in records] == ["CC0-1.0", "unknown", "CC-BY-3.0"]
    assert records[2].meta["title"] == "riff" and records[2].meta["mids"] == ["/m/02sgy", "/m/0342h", "/m/04rlf"]

    text(gt / "eval.csv", 'fname,labels,mids\n37199,Dog,/m/0bt9lr\n99,Cat,/m/01yrx\n')
    with pytest.raises(DatasetError, match=r"eval\.csv:3: unknown label\(s\) \['Cat'\]"):
        ADAPTERS["fsd50k"].load(tmp_path)


def test_dcase2017_task4_exact_records(tmp_path):
    text(tmp_path / "groundtruth_weak_label_training_set.csv",
         "-5QrBL6MzLg_60.000_70.000.wav\t60.000\t70.000\tTrain horn\n"
         "-5QrBL6MzLg_60.000_70.000.wav\t60.000\t70.000\tTrain\n"
         "0Dt7H3b3nuM_30.000_40.000.wav\t30.000\t40.000\tCar alarm\n")  # fmt: skip
    text(tmp_path / "groundtruth_release" / "groundtruth_weak_label_evaluation_set.csv",
         "3ACjUf9QpAQ_30.000_40.000.wav\t30.000\t40.000\tAir horn, truck horn\n"
         "3ACjUf9QpAQ_30.000_40.000.wav\t30.000\t40.000\tBagpipes\n")  # fmt: skip
    wav(tmp_path / "audio" / "training" / "Y-5QrBL6MzLg_60.000_70.000.wav")  # the downloader's "Y" prefix
    wav(tmp_path / "audio" / "training" / "0Dt7H3b3nuM_30.000_40.000.wav")
    wav(tmp_path / "audio" / "evaluation" / "Y3ACjUf9QpAQ_30.000_40.000.wav")
    report = LoadReport()
    records = load("dcase2017_task4", tmp_path, report)
    assert rows(records, tmp_path) == [
        ("dcase2017_task4/-5QrBL6MzLg_60.000_70.000", "audio/training/Y-5QrBL6MzLg_60.000_70.000.wav", "train",
         "-5QrBL6MzLg", {"dcase2017_task4": ["Train horn", "Train"]}, []),
        ("dcase2017_task4/0Dt7H3b3nuM_30.000_40.000", "audio/training/0Dt7H3b3nuM_30.000_40.000.wav", "train",
         "0Dt7H3b3nuM", {"dcase2017_task4": ["Car alarm"]}, []),
        ("dcase2017_task4/3ACjUf9QpAQ_30.000_40.000", "audio/evaluation/Y3ACjUf9QpAQ_30.000_40.000.wav", "test",
         "3ACjUf9QpAQ", {"dcase2017_task4": ["Air horn, truck horn"]}, []),
    ]  # fmt: skip
    assert records[0].meta == {"part": "training", "youtube_id": "-5QrBL6MzLg", "start": 60.0, "end": 70.0}
    assert [(Path(p.file).name, p.line, p.reason) for p in report.problems] == [
        ("groundtruth_weak_label_evaluation_set.csv", 2, "unknown label 'Bagpipes'")
    ]


AUDIOSET_HEADER = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                   "# num_ytids=20371, num_segs=20371, num_unique_labels=527, num_positive_labels=51804\n"
                   "# YTID, start_seconds, end_seconds, positive_labels\n")  # fmt: skip


def test_audioset_exact_records_and_missing_youtube_audio(tmp_path):
    text(tmp_path / "class_labels_indices.csv",
         'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05x_td,"Air horn, truck horn"\n2,/m/0k4j,"Car"\n')
    text(tmp_path / "eval_segments.csv", AUDIOSET_HEADER
         + '--4gqARaEJE, 0.000, 10.000, "/m/09x0r,/m/05x_td"\n'
         + '--BfvyPmVMo, 20.000, 30.000, "/m/0k4j"\n'
         + '--missing00, 0.000, 10.000, "/m/09x0r"\n'
         + '--unknownXX, 0.000, 10.000, "/m/zzzz"\n')  # fmt: skip
    text(tmp_path / "balanced_train_segments.csv", AUDIOSET_HEADER + '-0DLPzsiXXE, 30.000, 40.000, "/m/09x0r"\n')
    wav(tmp_path / "audio" / "eval_segments" / "Y--4gqARaEJE.wav")
    wav(tmp_path / "audio" / "eval_segments" / "--BfvyPmVMo_20.000_30.000.flac", fmt="FLAC")
    wav(tmp_path / "audio" / "balanced_train_segments" / "part00" / "Y-0DLPzsiXXE.wav")
    with pytest.raises(DatasetError, match=r"eval_segments\.csv:6: audio file missing for --missing00"):
        ADAPTERS["audioset"].load(tmp_path)
    report = LoadReport()
    records = load("audioset", tmp_path, report)
    assert rows(records, tmp_path) == [
        ("audioset/--4gqARaEJE_0.000", "audio/eval_segments/Y--4gqARaEJE.wav", "test", "--4gqARaEJE",
         {"audioset": ["Speech", "Air horn, truck horn"]}, []),
        ("audioset/--BfvyPmVMo_20.000", "audio/eval_segments/--BfvyPmVMo_20.000_30.000.flac", "test",
         "--BfvyPmVMo", {"audioset": ["Car"]}, []),
        ("audioset/-0DLPzsiXXE_30.000", "audio/balanced_train_segments/part00/Y-0DLPzsiXXE.wav", "train",
         "-0DLPzsiXXE", {"audioset": ["Speech"]}, []),
    ]  # fmt: skip
    assert records[0].meta["subset"] == "eval_segments" and records[2].meta["subset"] == "balanced_train_segments"
    assert [(Path(p.file).name, p.line) for p in report.problems] == [("eval_segments.csv", 6),
                                                                      ("eval_segments.csv", 7)]  # fmt: skip
    assert "unknown label" in report.problems[1].reason


# ---------------------------------------------------------------------------------------------------------------
# VocalSound, SESA, TUT Acoustic Scenes 2017


def test_vocalsound_exact_records_with_and_without_datafiles(tmp_path):
    for name in ("f0003_0_cough", "f0003_0_laughter", "m0104_1_throatclearing"):
        wav(tmp_path / "audio_16k" / f"{name}.wav")
    text(tmp_path / "audio_16k" / "readme.txt", "not a clip")
    records = load("vocalsound", tmp_path)
    assert rows(records, tmp_path) == [
        ("vocalsound/f0003_0_cough", "audio_16k/f0003_0_cough.wav", None, "f0003", {"vocalsound": "cough"}, []),
        ("vocalsound/f0003_0_laughter", "audio_16k/f0003_0_laughter.wav", None, "f0003",
         {"vocalsound": "laughter"}, []),
        ("vocalsound/m0104_1_throatclearing", "audio_16k/m0104_1_throatclearing.wav", None, "m0104",
         {"vocalsound": "throat clearing"}, []),
    ]  # fmt: skip
    data = lambda *names: json.dumps({"data": [{"wav": f"/data/sls/vocalsound/audio_16k/{n}.wav",  # noqa: E731
                                                 "labels": "/m/vs_000"} for n in names]})  # fmt: skip
    text(tmp_path / "datafiles" / "tr.json", data("f0003_0_cough", "f0003_0_laughter"))
    text(tmp_path / "datafiles" / "val.json", data())
    text(tmp_path / "datafiles" / "te.json", data("m0104_1_throatclearing"))
    assert [(r.id, r.split) for r in load("vocalsound", tmp_path)] == [
        ("vocalsound/f0003_0_cough", "train"), ("vocalsound/f0003_0_laughter", "train"),
        ("vocalsound/m0104_1_throatclearing", "test"),
    ]  # fmt: skip
    wav(tmp_path / "audio_16k" / "f0005_0_yawn.wav")
    with pytest.raises(DatasetError, match=r"f0005_0_yawn\.wav: unknown label 'yawn'"):
        ADAPTERS["vocalsound"].load(tmp_path)


def test_sesa_exact_records(tmp_path):
    for rel in ("train/casual_138.wav", "train/gunshot_095.wav", "train/Gun_Shot-7.wav", "test/explosion_134.wav",
                "test/siren_066.wav"):
        wav(tmp_path / rel)
    records = load("sesa", tmp_path)
    assert rows(records, tmp_path) == [
        ("sesa/test/explosion_134", "test/explosion_134.wav", "test", "", {"sesa": "explosion"}, []),
        ("sesa/test/siren_066", "test/siren_066.wav", "test", "", {"sesa": "siren"}, []),
        ("sesa/train/Gun_Shot-7", "train/Gun_Shot-7.wav", "train", "", {"sesa": "gunshot"}, []),
        ("sesa/train/casual_138", "train/casual_138.wav", "train", "", {"sesa": "casual"}, []),
        ("sesa/train/gunshot_095", "train/gunshot_095.wav", "train", "", {"sesa": "gunshot"}, []),
    ]
    wav(tmp_path / "test" / "thunder_1.wav")
    report = LoadReport()
    assert len(load("sesa", tmp_path, report)) == 5
    assert [(Path(p.file).name, p.line) for p in report.problems] == [("thunder_1.wav", None)]


def test_tut2017_exact_records(tmp_path):
    dev = tmp_path / "TUT-acoustic-scenes-2017-development"
    text(dev / "meta.txt", "audio/a001_0_10.wav\tresidential_area\ta001\naudio/b020_90_100.wav\tbeach\tb020\n")
    text(dev / "evaluation_setup" / "fold1_evaluate.txt", "audio/b020_90_100.wav\tbeach\n")
    text(dev / "evaluation_setup" / "fold2_evaluate.txt", "audio/a001_0_10.wav\tresidential_area\n")
    wav(dev / "audio" / "a001_0_10.wav")
    wav(dev / "audio" / "b020_90_100.wav")
    ev = tmp_path / "TUT-acoustic-scenes-2017-evaluation"
    text(ev / "evaluation_setup" / "evaluate.txt", "audio/1.wav\tcafe/restaurant\naudio/2.wav\tairport\n")
    text(ev / "evaluation_setup" / "map.txt", "audio/1.wav\taudio/c044_30_40.wav\n")
    wav(ev / "audio" / "1.wav")
    wav(ev / "audio" / "2.wav")
    report = LoadReport()
    records = load("tut2017", tmp_path, report)
    assert rows(records, tmp_path) == [
        ("tut2017/development/a001_0_10", "TUT-acoustic-scenes-2017-development/audio/a001_0_10.wav", "train",
         "a001", {"tut2017": "residential area"}, []),
        ("tut2017/development/b020_90_100", "TUT-acoustic-scenes-2017-development/audio/b020_90_100.wav", "train",
         "b020", {"tut2017": "beach"}, []),
        ("tut2017/evaluation/1", "TUT-acoustic-scenes-2017-evaluation/audio/1.wav", "test", "c044",
         {"tut2017": "cafe/restaurant"}, []),
    ]  # fmt: skip
    assert [r.meta.get("fold") for r in records] == [2, 1, None]
    assert [(Path(p.file).name, p.line, p.reason) for p in report.problems] == [
        ("evaluate.txt", 2, "unknown label 'airport'")
    ]


# ---------------------------------------------------------------------------------------------------------------
# GTZAN music/speech, GTZAN genres, NSynth, Beijing Opera


def test_gtzan_music_speech_exact_records(tmp_path):
    wav(tmp_path / "music_wav" / "bagpipe.wav")
    wav(tmp_path / "speech_wav" / "comedy.wav")
    text(tmp_path / "music_speech.mf", "list file, not a clip")
    assert rows(load("gtzan_music_speech", tmp_path), tmp_path) == [
        ("gtzan_music_speech/music/bagpipe", "music_wav/bagpipe.wav", "test", "", {"gtzan_music_speech": "music"},
         []),
        ("gtzan_music_speech/speech/comedy", "speech_wav/comedy.wav", "test", "",
         {"gtzan_music_speech": "speech"}, []),
    ]  # fmt: skip


def test_gtzan_genre_exact_records_original_au_layout(tmp_path):
    wav(tmp_path / "genres" / "blues" / "blues.00000.au", fmt="AU")
    wav(tmp_path / "genres" / "hiphop" / "hiphop.00042.au", fmt="AU")
    text(tmp_path / "genres" / "input.mf", "list file, not a clip")
    assert rows(load("gtzan_genre", tmp_path), tmp_path) == [
        ("gtzan_genre/blues.00000", "genres/blues/blues.00000.au", "test", "", {"gtzan_genre": "blues"}, []),
        ("gtzan_genre/hiphop.00042", "genres/hiphop/hiphop.00042.au", "test", "", {"gtzan_genre": "hip hop"}, []),
    ]  # fmt: skip
    wav(tmp_path / "genres" / "polka" / "polka.00001.au", fmt="AU")
    wav(tmp_path / "genres" / "rock" / "rock1.au", fmt="AU")
    report = LoadReport()
    assert len(load("gtzan_genre", tmp_path, report)) == 2
    assert [(Path(p.file).name, p.reason) for p in report.problems] == [
        ("polka.00001.au", "unknown label 'polka'"), ("rock1.au", "file name is not rock.<5 digits>.au/.wav")
    ]


def test_nsynth_exact_records(tmp_path):
    test_examples = {
        "bass_synthetic_033-022-050": nsynth_example("bass_synthetic_033-022-050", "bass", "synthetic", 22, 50,
                                                     ["dark"]),
        "keyboard_electronic_001-021-127": nsynth_example("keyboard_electronic_001-021-127", "keyboard",
                                                          "electronic", 21, 127, ["bright", "fast_decay"]),
    }  # fmt: skip
    valid_examples = {"synth_lead_synthetic_000-100-100": nsynth_example(
        "synth_lead_synthetic_000-100-100", "synth_lead", "synthetic", 100, 100, ["nonlinear_env", "tempo-synced"])}
    text(tmp_path / "nsynth-test" / "examples.json", json.dumps(test_examples, indent=4))
    text(tmp_path / "nsynth-valid" / "examples.json", json.dumps(valid_examples, indent=4))
    for folder, examples in (("nsynth-test", test_examples), ("nsynth-valid", valid_examples)):
        for key in examples:
            wav(tmp_path / folder / "audio" / f"{key}.wav")
    records = load("nsynth", tmp_path)
    assert rows(records, tmp_path) == [
        ("nsynth/bass_synthetic_033-022-050", "nsynth-test/audio/bass_synthetic_033-022-050.wav", "test",
         "bass_synthetic_033",
         {"nsynth_instrument_family": "bass", "nsynth_pitch": "22", "nsynth_velocity": "50",
          "nsynth_qualities": ["dark"]}, []),
        ("nsynth/keyboard_electronic_001-021-127", "nsynth-test/audio/keyboard_electronic_001-021-127.wav", "test",
         "keyboard_electronic_001",
         {"nsynth_instrument_family": "keyboard", "nsynth_pitch": "21", "nsynth_velocity": "127",
          "nsynth_qualities": ["bright", "fast decay"]}, []),
        ("nsynth/synth_lead_synthetic_000-100-100", "nsynth-valid/audio/synth_lead_synthetic_000-100-100.wav",
         "val", "synth_lead_synthetic_000",
         {"nsynth_instrument_family": "synth lead", "nsynth_pitch": "100", "nsynth_velocity": "100",
          "nsynth_qualities": ["nonlinear env", "tempo-synced"]}, []),
    ]  # fmt: skip
    assert records[0].meta == {"instrument": "bass_synthetic_033", "instrument_source": "synthetic", "pitch": 22,
                               "velocity": 50}  # fmt: skip
    (tmp_path / "nsynth-valid" / "audio" / "synth_lead_synthetic_000-100-100.wav").unlink()
    with pytest.raises(DatasetError, match=r"nsynth-valid/examples\.json: audio file missing"):
        ADAPTERS["nsynth"].load(tmp_path)
    text(tmp_path / "nsynth-valid" / "examples.json", '{"truncated": ')
    with pytest.raises(DatasetError, match=r"nsynth-valid/examples\.json: not valid JSON"):
        ADAPTERS["nsynth"].load(tmp_path, LoadReport())  # a layout error raises even when skipping


def test_beijing_opera_exact_records(tmp_path):
    for name in ("222146__ajaysm__bangu-16", "205972__ajaysm__daluo-01", "222313__ajaysm__xiaoluo-16",
                 "222241__ajaysm__naobo-04"):
        wav(tmp_path / f"{name}.wav")
    records = load("beijing_opera", tmp_path)
    assert rows(records, tmp_path) == [
        ("beijing_opera/205972__ajaysm__daluo-01", "205972__ajaysm__daluo-01.wav", "test", "",
         {"beijing_opera": "daluo"}, []),
        ("beijing_opera/222146__ajaysm__bangu-16", "222146__ajaysm__bangu-16.wav", "test", "",
         {"beijing_opera": "bangu"}, []),
        ("beijing_opera/222241__ajaysm__naobo-04", "222241__ajaysm__naobo-04.wav", "test", "",
         {"beijing_opera": "naobo"}, []),
        ("beijing_opera/222313__ajaysm__xiaoluo-16", "222313__ajaysm__xiaoluo-16.wav", "test", "",
         {"beijing_opera": "xiaoluo"}, []),
    ]  # fmt: skip
    assert records[0].meta == {"freesound_id": "205972", "uploader": "ajaysm"}
    wav(tmp_path / "222400__ajaysm__gong-1.wav")
    wav(tmp_path / "bangu-01.wav")
    report = LoadReport()
    assert len(load("beijing_opera", tmp_path, report)) == 4
    assert [(Path(p.file).name, p.reason.split(" (")[0]) for p in report.problems] == [
        ("222400__ajaysm__gong-1.wav", "unknown label 'gong'"),
        ("bangu-01.wav", "file name is not <freesound id>__<uploader>__<instrument>-<n>.wav"),
    ]


# ---------------------------------------------------------------------------------------------------------------
# CREMA-D, RAVDESS, Speech Commands, LibriCount


def test_crema_d_exact_records(tmp_path):
    for name in ("1001_DFA_ANG_XX", "1001_IEO_HAP_HI", "1091_WSI_NEU_XX"):
        wav(tmp_path / "AudioWAV" / f"{name}.wav")
    records = load("crema_d", tmp_path)
    assert rows(records, tmp_path) == [
        ("crema_d/1001_DFA_ANG_XX", "AudioWAV/1001_DFA_ANG_XX.wav", "test", "1001", {"crema_d": "anger"}, []),
        ("crema_d/1001_IEO_HAP_HI", "AudioWAV/1001_IEO_HAP_HI.wav", "test", "1001", {"crema_d": "happy"}, []),
        ("crema_d/1091_WSI_NEU_XX", "AudioWAV/1091_WSI_NEU_XX.wav", "test", "1091", {"crema_d": "neutral"}, []),
    ]
    assert records[0].meta == {"sentence": "DFA", "transcript": "Don't forget a jacket", "level": "unspecified"}
    assert records[1].meta["level"] == "high"
    wav(tmp_path / "AudioWAV" / "1002_DFA_BOR_XX.wav")
    wav(tmp_path / "AudioWAV" / "take2.wav")
    report = LoadReport()
    assert len(load("crema_d", tmp_path, report)) == 3
    assert [(Path(p.file).name, p.reason) for p in report.problems] == [
        ("1002_DFA_BOR_XX.wav", "unknown label 'BOR'"),
        ("take2.wav", "file name is not <actor>_<sentence>_<emotion>_<level>.wav"),
    ]


def test_ravdess_exact_records_speech_and_song(tmp_path):
    wav(tmp_path / "Actor_01" / "03-01-01-01-01-01-01.wav")
    wav(tmp_path / "Actor_12" / "03-01-06-01-02-01-12.wav")
    wav(tmp_path / "Audio_Song_Actors_01-24" / "Actor_02" / "03-02-03-02-01-02-02.wav")
    records = load("ravdess", tmp_path)
    assert rows(records, tmp_path) == [
        ("ravdess/03-01-01-01-01-01-01", "Actor_01/03-01-01-01-01-01-01.wav", "test", "actor_01",
         {"ravdess": "neutral"}, []),
        ("ravdess/03-01-06-01-02-01-12", "Actor_12/03-01-06-01-02-01-12.wav", "test", "actor_12",
         {"ravdess": "fearful"}, []),
        ("ravdess/03-02-03-02-01-02-02", "Audio_Song_Actors_01-24/Actor_02/03-02-03-02-01-02-02.wav", "test",
         "actor_02", {"ravdess": "happy"}, []),
    ]  # fmt: skip
    assert records[2].meta == {"vocal_channel": "song", "intensity": "strong",
                               "transcript": "Kids are talking by the door", "repetition": 2, "sex": "female"}
    assert records[1].meta["sex"] == "female" and records[0].meta["sex"] == "male"

    wav(tmp_path / "Actor_03" / "03-01-09-01-01-01-03.wav")  # emotion 09 does not exist
    wav(tmp_path / "Actor_04" / "03-01-01-01-01-01-05.wav")  # actor 05 in Actor_04/
    wav(tmp_path / "copy" / "Actor_01" / "03-01-01-01-01-01-01.wav")  # the same clip twice
    report = LoadReport()
    assert len(load("ravdess", tmp_path, report)) == 3
    reasons = [(Path(p.file).parent.name, p.reason.split(" (")[0]) for p in report.problems]
    assert reasons == [("Actor_03", "unknown label '09'"), ("Actor_04", "fields break the convention"),
                       ("Actor_01", "duplicate clip id 'ravdess/03-01-01-01-01-01-01'")]  # fmt: skip


def test_speech_commands_exact_records(tmp_path):
    for rel in ("yes/0a7c2a8d_nohash_0.wav", "yes/0a7c2a8d_nohash_1.wav", "backward/0165e0e8_nohash_0.wav",
                "_background_noise_/white_noise.wav"):
        wav(tmp_path / rel)
    text(tmp_path / "validation_list.txt", "yes/0a7c2a8d_nohash_1.wav\n")
    text(tmp_path / "testing_list.txt", "backward/0165e0e8_nohash_0.wav\n")
    text(tmp_path / "README.md", "readme")
    text(tmp_path / "LICENSE", "CC BY 4.0")
    records = load("speech_commands", tmp_path)
    assert rows(records, tmp_path) == [
        ("speech_commands/backward/0165e0e8_nohash_0", "backward/0165e0e8_nohash_0.wav", "test", "0165e0e8",
         {"speech_commands": "backward"}, []),
        ("speech_commands/yes/0a7c2a8d_nohash_0", "yes/0a7c2a8d_nohash_0.wav", "train", "0a7c2a8d",
         {"speech_commands": "yes"}, []),
        ("speech_commands/yes/0a7c2a8d_nohash_1", "yes/0a7c2a8d_nohash_1.wav", "val", "0a7c2a8d",
         {"speech_commands": "yes"}, []),
    ]  # fmt: skip
    assert records[2].meta == {"utterance": 1}

    wav(tmp_path / "banana" / "0a7c2a8d_nohash_0.wav")
    text(tmp_path / "testing_list.txt", "backward/0165e0e8_nohash_0.wav\nno/ffffffff_nohash_0.wav\n")
    report = LoadReport()
    assert len(load("speech_commands", tmp_path, report)) == 3
    assert [(Path(p.file).name, p.line, p.reason.split(":")[0]) for p in report.problems] == [
        ("testing_list.txt", 2, "audio file missing"), ("0a7c2a8d_nohash_0.wav", None, "unknown label 'banana'")
    ]


def test_libricount_exact_records(tmp_path):
    wav(tmp_path / "test" / "0_f0e1d2c3.wav")
    text(tmp_path / "test" / "0_f0e1d2c3.json", "[]")
    wav(tmp_path / "test" / "3_a1b2c3d4.wav")
    speakers = [{"sex": "F", "activity": [[0, 80000]], "speaker_id": 1221},
                {"sex": "F", "activity": [[0, 51877]], "speaker_id": 3570},
                {"sex": "M", "activity": [[0, 15681]], "speaker_id": 5105}]  # fmt: skip
    text(tmp_path / "test" / "3_a1b2c3d4.json", json.dumps(speakers))
    wav(tmp_path / "test" / "10_ffff0000.wav")
    records = load("libricount", tmp_path)
    assert rows(records, tmp_path) == [
        ("libricount/0_f0e1d2c3", "test/0_f0e1d2c3.wav", "test", "", {"libricount": "0"}, []),
        ("libricount/10_ffff0000", "test/10_ffff0000.wav", "test", "", {"libricount": "10"}, []),
        ("libricount/3_a1b2c3d4", "test/3_a1b2c3d4.wav", "test", "", {"libricount": "3"}, []),
    ]
    assert records[2].meta == {"speaker_ids": [1221, 3570, 5105], "sexes": ["F", "F", "M"]}
    wav(tmp_path / "test" / "2_bad.wav")
    text(tmp_path / "test" / "2_bad.json", json.dumps(speakers[:1]))
    with pytest.raises(DatasetError, match=r"2_bad\.json: 1 speakers listed, file name says 2"):
        ADAPTERS["libricount"].load(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# AudioCaps, Clotho v2.1


def test_audiocaps_exact_records_all_captions_of_a_clip(tmp_path):
    header = "audiocap_id,youtube_id,start_time,caption\n"
    text(tmp_path / "train.csv", header + "91139,r1nicOVtvkQ,130,A woman talks nearby as water pours\n")
    val_captions = ["A vehicle driving as a man and woman are talking and laughing",
                    "People talking and laughing with a vehicle engine", "Men and women talk, then laugh",
                    "A car passes while people talk", "Adults speak and laugh as a motor runs"]  # fmt: skip
    text(tmp_path / "val.csv", header + "".join(
        f'{97151 + i},--0w1YA1Hm4,30,"{c}"\n' for i, c in enumerate(val_captions)))
    text(tmp_path / "test.csv", header + '103549,-0RWZT-miFs,420,"Birds chirp, then a dog barks"\n'
                                         '103550,zzzzzzzzzzz,10,Nothing was downloaded for this one\n')
    wav(tmp_path / "audio" / "train" / "r1nicOVtvkQ_130.wav")
    wav(tmp_path / "audio" / "val" / "--0w1YA1Hm4_30.flac", fmt="FLAC")
    wav(tmp_path / "audio" / "test" / "Y-0RWZT-miFs_420.wav")
    report = LoadReport()
    records = load("audiocaps", tmp_path, report)
    assert rows(records, tmp_path) == [
        ("audiocaps/--0w1YA1Hm4_30", "audio/val/--0w1YA1Hm4_30.flac", "val", "--0w1YA1Hm4", {}, val_captions),
        ("audiocaps/-0RWZT-miFs_420", "audio/test/Y-0RWZT-miFs_420.wav", "test", "-0RWZT-miFs", {},
         ["Birds chirp, then a dog barks"]),
        ("audiocaps/r1nicOVtvkQ_130", "audio/train/r1nicOVtvkQ_130.wav", "train", "r1nicOVtvkQ", {},
         ["A woman talks nearby as water pours"]),
    ]  # fmt: skip
    assert records[0].meta == {"youtube_id": "--0w1YA1Hm4", "start_time": 30,
                               "audiocap_ids": ["97151", "97152", "97153", "97154", "97155"]}
    assert [(Path(p.file).name, p.line) for p in report.problems] == [("test.csv", 3)]


def test_clotho_exact_records_with_optional_metadata(tmp_path):
    header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
    dev_caps = ["A radio is tuned, with static between stations", "Static and a voice on a radio",
                "Someone turns a radio dial", "A radio hisses as it is tuned", "Radio noise and distant talk"]
    text(tmp_path / "clotho_captions_development.csv",
         header + '"Distorted AM Radio noise.wav",' + ",".join(f'"{c}"' for c in dev_caps) + "\n")
    eval_caps = ["A dog breathes heavily", "A small dog pants", "An animal struggles to breathe",
                 "A pug snorts and wheezes", "Heavy breathing of a dog"]
    text(tmp_path / "clotho_captions_evaluation.csv",
         header + "01 A pug struggles to breathe 1_14_2008.wav," + ",".join(eval_caps) + "\n")
    # The metadata CSVs of Clotho v2.1 are ISO-8859-1, not UTF-8.
    text(tmp_path / "clotho_metadata_development.csv",
         "file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license\n"
         '"Distorted AM Radio noise.wav",radio;static;café,12345,https://freesound.org/people/x/sounds/12345,'
         '"[0, 882000]",x,http://creativecommons.org/licenses/by/3.0/\n', encoding="iso-8859-1")
    wav(tmp_path / "development" / "Distorted AM Radio noise.wav")
    wav(tmp_path / "evaluation" / "01 A pug struggles to breathe 1_14_2008.wav")
    records = load("clotho", tmp_path)
    assert rows(records, tmp_path) == [
        ("clotho/development/Distorted AM Radio noise", "development/Distorted AM Radio noise.wav", "train", "", {},
         dev_caps),
        ("clotho/evaluation/01 A pug struggles to breathe 1_14_2008",
         "evaluation/01 A pug struggles to breathe 1_14_2008.wav", "test", "", {}, eval_caps),
    ]  # fmt: skip
    assert [r.licence for r in records] == ["CC-BY-3.0", "unknown"]
    assert records[0].meta == {"subset": "development", "sound_id": "12345",
                               "license": "http://creativecommons.org/licenses/by/3.0/",
                               "keywords": ["radio", "static", "café"]}  # fmt: skip
    text(tmp_path / "clotho_captions_evaluation.csv", header + "gone.wav,a,b,c,d,e\nshort.wav,a,b\n")
    report = LoadReport()
    assert [r.id for r in load("clotho", tmp_path, report)] == ["clotho/development/Distorted AM Radio noise"]
    assert [(Path(p.file).name, p.line, p.reason.split(":")[0]) for p in report.problems] == [
        ("clotho_captions_evaluation.csv", 2, "audio file missing"),
        ("clotho_captions_evaluation.csv", 3, "malformed row"),
    ]


def test_freesound_licence_urls_become_spdx_ids():
    from clapkit.data.adapters import _cc_licence

    assert _cc_licence("http://creativecommons.org/publicdomain/zero/1.0/") == "CC0-1.0"
    assert _cc_licence("https://creativecommons.org/licenses/by/4.0/") == "CC-BY-4.0"
    assert _cc_licence("http://creativecommons.org/licenses/by-nc/3.0/") == "CC-BY-NC-3.0"
    assert _cc_licence("http://creativecommons.org/licenses/sampling+/1.0/") == "LicenseRef-CC-Sampling-Plus-1.0"
    assert _cc_licence("Creative Commons 0") == "CC0-1.0"
    assert _cc_licence("Attribution") is None and _cc_licence("") is None


def test_problem_and_report_text():
    p = Problem("/d/meta.csv", 7, "unknown label 'x'")
    assert str(p) == "/d/meta.csv:7: unknown label 'x'"
    assert str(Problem("/d/a.wav", None, "bad")) == "/d/a.wav: bad"
    assert str(LoadReport()) == "no problems" and len(LoadReport([p])) == 1
    e = DatasetError("esc50", [p] * 30)
    assert "30 problem(s)" in str(e) and "and 5 more" in str(e)
