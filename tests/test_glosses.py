"""WordNet glosses as optional caption wording (clapkit/data/glosses.py): reviewed table, exclusion, default off."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from clapkit.data import glosses
from clapkit.data.captions import make_captions
from clapkit.data.debian.vocabulary import EVENT_MERGES, is_event
from clapkit.data.prepare import PrepareConfig

ROOT = Path(__file__).resolve().parents[1]


def _rows():
    return [line.split("\t") for line in glosses.GLOSSES_TSV.read_text().splitlines()
            if line and not line.startswith("#") and not line.startswith("event\t")]


def test_gloss_table_names_vocabulary_events_and_synsets():
    rows = _rows()
    assert len(rows) >= 40
    events = [r[0] for r in rows]
    assert len(events) == len(set(events))
    for event, synset, lemma, gloss in rows:
        assert is_event(event) and event not in EVENT_MERGES, event
        assert re.fullmatch(r"\d{8}", synset) and lemma and gloss == gloss.strip() and gloss
    assert glosses.load_glosses()["dog bark"] == ["the sound made by a dog"]


def test_excluded_wordings_drop_their_glosses():
    kept = glosses.load_glosses(exclude=["dog", "  "])
    assert kept["dog bark"] == [] and kept["cat meow"]  # whole words only: "hound" is not "dog"...
    assert glosses.load_glosses(exclude=["hound"])["wolf howl"] == []
    assert glosses.load_glosses(exclude=["ow"])["cat meow"]  # ...and "ow" is no word of "cow"


def test_glosses_become_captions_only_when_given():
    labels = {"sound_event": "dog bark", "sound_category": "animal"}
    plain = make_captions("x/dog1", labels, [], n=8)
    assert plain == make_captions("x/dog1", labels, [], n=8, descriptions=[])
    g = glosses.glosses_for(labels, glosses.load_glosses())
    with_gloss = make_captions("x/dog1", labels, [], n=8, descriptions=g)
    assert "the sound made by a dog" in with_gloss and "the sound made by a dog" not in plain
    assert glosses.glosses_for({"sound_event": ["rain", "thunder"]}, glosses.load_glosses())[0].startswith("water")


def test_glosses_are_off_by_default():
    assert PrepareConfig().caption_glosses is False
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["prepare"]["caption_glosses"] is False


def _cached_wordnet() -> Path | None:
    found = sorted(Path("~/.cache/clapkit/debian/unpacked").expanduser().glob("wordnet-base_*/usr/share/wordnet"))
    return found[-1] if found else None


@pytest.mark.skipif(_cached_wordnet() is None, reason="wordnet-base is not in the Debian cache")
def test_glosses_match_wordnet_base():
    data = {}
    for line in (_cached_wordnet() / "data.noun").read_text(encoding="latin-1").splitlines():
        if not line.startswith("  "):
            head, _, gloss = line.partition("| ")
            f = head.split()
            data[f[0]] = ([f[4 + 2 * i].lower() for i in range(int(f[3], 16))], gloss)
    for event, synset, lemma, gloss in _rows():
        words, text = data[synset]
        assert lemma in words and text.startswith(gloss), (event, synset)
