"""The transfer split of stage prepare: whole sources held out of training, held-out wordings kept out of every
training caption, and the transfer vocabulary the evaluate stage scores (clapkit/data/holdout.py)."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.audio import FrontendConfig
from clapkit.data.captions import COMBINED_TEMPLATES, TASK_TEMPLATES, label_phrases
from clapkit.data.prepare import PrepareConfig, PreparedCorpus, prepare
from clapkit.data.records import ClipRecord, write_jsonl
from clapkit.data.holdout import (DEFAULT_WORDINGS, TRANSFER, check_split, find_leaks, load_wordings, normalise,
                                   wording_core)

FRONTEND = FrontendConfig(sample_rate=16000, clip_seconds=0.5)
SEEN = ["dog bark", "rain", "thunder"]  # labels of the training source
HELD = ["dog bark", "rain", "owl hoot"]  # labels of the held-out source: owl hoot has no training clip
WORDINGS = """
sound_event:
  dog bark: a canine yelping
  rain: a downpour
  thunder: a storm's booming peal
  owl hoot: a nocturnal bird of prey calling
gender:
  female: lady's
  male: gentleman's
"""


def _clip(root: Path, rel: str, f: float) -> None:
    t = np.arange(8000) / 16000
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / rel, (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32), 16000)


def write_corpus(root: Path, extra_texts: list[str] = ()) -> Path:
    """Source ``seen`` (18 groups over 3 labels, with a speech clip per gender), source ``held`` (9 clips, one
    fixed by its dataset to ``train``: the transfer split still takes it)."""
    records = []
    for i in range(18):
        rel = f"seen/c{i:02d}.wav"
        _clip(root, rel, 200 + 20 * i)
        records.append(ClipRecord(id=f"seen/c{i:02d}", path=rel, source="debian:seen", licence="CC0-1.0", real=True,
                                  environmental=True, group=f"seen-g{i}", labels={"sound_event": SEEN[i % 3]}))
    for i, gender in enumerate(["female", "male"]):
        rel = f"seen/voice{i}.wav"
        _clip(root, rel, 600 + 50 * i)
        records.append(ClipRecord(id=f"seen/voice{i}", path=rel, source="debian:seen", licence="CC0-1.0", real=True,
                                  group=f"voice{i}", labels={"gender": gender}, split="train",
                                  texts=list(extra_texts) if i == 0 else []))
    for i in range(9):
        rel = f"held/h{i}.wav"
        _clip(root, rel, 900 + 30 * i)
        records.append(ClipRecord(id=f"held/h{i}", path=rel, source="debian:held", licence="CC0-1.0", real=True,
                                  environmental=True, group=f"held-g{i}", labels={"sound_event": HELD[i % 3]},
                                  split="train" if i == 0 else None))
    write_jsonl(root / "seen" / "clips.jsonl", [r for r in records if r.source == "debian:seen"])
    write_jsonl(root / "held" / "clips.jsonl", [r for r in records if r.source == "debian:held"])
    (root / "corpus.json").write_text(json.dumps({"sources": {"seen": {}, "held": {}}}))
    return root


def run(tmp_path: Path, corpus: Path, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    wordings = tmp_path / "wordings.yaml"
    if not wordings.exists():
        wordings.write_text(WORDINGS)
    cfg = PrepareConfig(corpus=str(corpus), out=str(tmp_path / "prepared"), metrics=str(tmp_path / "data.json"),
                        workers=1, transfer_wordings=str(wordings), **kw)
    return cfg, prepare(cfg, FRONTEND, progress=False)


def test_held_out_sources_reach_only_the_transfer_split(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    cfg, metrics = run(tmp_path, corpus, transfer_sources=["debian:held"])
    pc = PreparedCorpus(cfg.out)
    split_of = {r["id"]: r["split"] for r in pc.rows}
    assert {s for i, s in split_of.items() if i.startswith("held/")} == {TRANSFER}  # h0's dataset split too
    assert {s for i, s in split_of.items() if i.startswith("seen/")} <= {"train", "val", "test"}
    assert metrics["clips_by_split"][TRANSFER] == 9
    # tasks.json is the in-domain corpus: no held-out clip is counted, and owl hoot (held-out only) is no class
    tasks = pc.tasks
    assert "owl hoot" not in tasks["sound_event"]["classes"] and TRANSFER not in tasks["sound_event"]["clips"]
    assert sum(tasks["sound_event"]["clips"].values()) == 18
    # the transfer vocabulary: labels with a held-out wording and a training clip
    spec = json.loads((Path(cfg.out) / "transfer.json").read_text())
    train = Counter(r["labels"]["sound_event"] for r in pc.rows if r["split"] == "train" and "sound_event" in r["labels"])
    assert spec["tasks"]["sound_event"]["classes"] == sorted(label for label in SEEN if train[label] >= 1)
    assert spec["tasks"]["sound_event"]["train_clips"] == {c: train[c] for c in spec["tasks"]["sound_event"]["classes"]}
    assert spec["tasks"]["sound_event"]["wordings"]["dog bark"] == "a canine yelping"
    assert "owl hoot" in spec["tasks"]["sound_event"]["too_few_train_clips"]
    assert spec["tasks"]["gender"]["classes"] == ["female", "male"]
    held = spec["sources"]["debian:held"]
    assert held["clips"] == 9 and "gender" not in held["tasks"]
    assert held["tasks"]["sound_event"]["outside_vocabulary"] == {"owl hoot": 3}
    assert held["tasks"]["sound_event"]["covered"] == {"dog bark": 3, "rain": 3}
    assert spec["wordings_file"] == str(tmp_path / "wordings.yaml") and "exact phrase" in spec["leak_rule"]


def test_without_held_out_sources_nothing_is_held_out_and_a_misspelt_source_fails(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    cfg, metrics = run(tmp_path, corpus)
    assert TRANSFER not in metrics["clips_by_split"]
    assert json.loads((Path(cfg.out) / "transfer.json").read_text())["sources"] == {}
    with pytest.raises(ValueError, match=r"prepare.transfer_sources: \['debian:helt'\] not among the sources"):
        run(tmp_path / "b", corpus, transfer_sources=["debian:helt"])
    with pytest.raises(ValueError, match="must be a list of source ids"):
        PrepareConfig(transfer_sources="debian:held")


def test_check_split_raises_on_a_held_out_clip_in_training():
    rows = [{"id": "held/a", "source": "debian:held", "split": TRANSFER},
            {"id": "seen/a", "source": "debian:seen", "split": "train"}]
    check_split(rows, {"debian:held"})  # as prepare writes it
    with pytest.raises(AssertionError, match=r"transfer split violated: 1 clip.*held/b"):
        check_split(rows + [{"id": "held/b", "source": "debian:held", "split": "train"}], {"debian:held"})
    with pytest.raises(AssertionError, match=r"seen/b"):
        check_split(rows + [{"id": "seen/b", "source": "debian:seen", "split": TRANSFER}], {"debian:held"})


def test_no_training_caption_contains_a_held_out_wording(tmp_path):
    """The rule (exact phrase, whole words, leading article dropped), checked here independently of find_leaks on
    every train and val caption, text and label of the prepared fixture."""
    corpus = write_corpus(tmp_path / "corpus")
    cfg, _ = run(tmp_path, corpus, transfer_sources=["debian:held"])
    wordings = load_wordings(tmp_path / "wordings.yaml")
    cores = [wording_core(w) for table in wordings.values() for w in table.values()]
    assert "canine yelping" in cores and "lady's" in cores
    texts = [t for r in PreparedCorpus(cfg.out).rows if r["split"] in ("train", "val")
             for t in r["captions"] + r["texts"] + [p for v in r["labels"].values() for p in label_phrases(v)]]
    assert any("dog bark" in t for t in texts)  # the training wording is there...
    for text in texts:  # ...the held-out one is not
        padded = f" {normalise(text)} "
        assert not [c for c in cores if f" {c} " in padded], text


def test_prepare_raises_on_a_wording_that_training_uses(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", extra_texts=["A canine yelping in the yard"])
    with pytest.raises(ValueError, match=r"wordings.yaml: held-out wording.*'a canine yelping'.*seen/voice0"):
        run(tmp_path, corpus, transfer_sources=["debian:held"])
    # a training synonym (clapkit.data.captions.SYNONYMS) is a training wording too
    synonym = tmp_path / "synonym"
    synonym.mkdir()
    (synonym / "wordings.yaml").write_text(WORDINGS.replace("a canine yelping", "a dog barking"))
    with pytest.raises(ValueError, match=r"'a dog barking'"):
        run(synonym, write_corpus(tmp_path / "corpus2"), transfer_sources=["debian:held"])


def test_find_leaks_matches_whole_words_without_the_article():
    wordings = {"sound_event": {"dog bark": "a canine yelping", "rain": "a downpour"}}
    texts = [("c1", "Canine yelping!"), ("c2", "a downpourish day"), ("c3", "two canine yelping dogs"),
             ("c4", "canine"), ("c5", "the DOWNPOUR, again")]  # fmt: skip
    assert [(x["clip"], x["label"]) for x in find_leaks(wordings, texts)] == [
        ("c1", "dog bark"), ("c3", "dog bark"), ("c5", "rain")]


@pytest.mark.parametrize("text, message", [
    ("sound_event: [a, b]", "task 'sound_event': expected a non-empty mapping"),
    ("sound_event:\n  rain: a downpour\n  thunder: the downpour\n", "'thunder' and 'rain' share the wording"),
    ("sound_event:\n  rain: Rain\n", "the wording repeats the label"),
    ("gender:\n  no: nope\n", "label False is not a string"),
    ("sound_event:\n  rain: ''\n", "must be a non-empty string"),
    ("sound_event: {rain: [", "not valid YAML"),
])  # fmt: skip
def test_malformed_wordings_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.yaml") as err:
        load_wordings(path)
    assert message in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.yaml: cannot read"):
        load_wordings(tmp_path / "missing.yaml")


def test_packaged_wordings_are_no_caption_the_templates_can_write():
    """Every caption template of a task (single and combined) with every phrase of every label of the packaged
    list (the label and its training synonyms) contains no held-out wording of that list."""
    wordings = load_wordings(DEFAULT_WORDINGS)
    assert set(wordings) == {"sound_event", "sound_category", "language", "gender"}
    assert len(wordings["sound_event"]) >= 60 and len(wordings["language"]) >= 59
    texts = []
    for task, table in wordings.items():
        phrases = [p for label in table for p in label_phrases(label)]
        texts += [(task, t.format(p)) for t in TASK_TEMPLATES[task] for p in phrases]
        for needs, template in COMBINED_TEMPLATES:
            if task in needs:
                texts += [(task, template.format(*(p if n == task else "x" for n in needs))) for p in phrases]
    assert len(texts) > 800
    assert find_leaks(wordings, texts) == []
