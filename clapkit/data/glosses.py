"""WordNet glosses as extra caption wording for sound events (off by default: ``prepare.caption_glosses``).

``wordnet_glosses.tsv`` beside this module gives, for the vocabulary events whose sound WordNet defines, the
gloss of the synset a person chose ("dog bark" -> 07376621 "the sound made by a dog"; the tree's bark is not that
synset).  The glosses were read from Debian's ``wordnet-base`` (the table's header pins the version and .deb
sha256) and are committed, so captions do not need the package at build or prepare time.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.  Permission to use, copy, modify and
distribute this software and database and its documentation for any purpose and without fee or royalty is hereby
granted, provided that the above copyright notice and this permission notice appear on all copies of the
software, database and documentation (the full WordNet licence: /usr/share/doc/wordnet-base/copyright).

A gloss is a caption of its own (``make_captions(descriptions=...)``), never spliced into a template.  Wordings
kept out of training (a held-out list for a transfer test) go in ``exclude``: a gloss that contains one of them
as whole words is dropped, so turning glosses on cannot leak a held-out wording into the training captions.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

__all__ = ["GLOSSES_TSV", "load_glosses", "glosses_for"]

GLOSSES_TSV = Path(__file__).with_name("wordnet_glosses.tsv")


@lru_cache(maxsize=1)
def _table() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for line in GLOSSES_TSV.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#") or line.startswith("event\t"):
            continue
        event, _synset, _lemma, gloss = line.split("\t")
        out.setdefault(event, []).append(gloss)
    return {k: tuple(v) for k, v in out.items()}


def _contains(text: str, wording: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(wording.lower().strip()) + r"(?!\w)", text.lower()) is not None


def load_glosses(exclude: Iterable[str] = ()) -> dict[str, list[str]]:
    """event -> its glosses, without those that contain an excluded wording."""
    excl = [w for w in exclude if w and w.strip()]
    return {event: [g for g in glosses if not any(_contains(g, w) for w in excl)]
            for event, glosses in _table().items()}


def glosses_for(labels: dict, glosses: dict[str, list[str]]) -> list[str]:
    """The glosses of a clip's ``sound_event`` (a list of events: each), in table order."""
    value = labels.get("sound_event")
    events = value if isinstance(value, list) else [value]
    return [g for e in events if isinstance(e, str) for g in glosses.get(e, [])]
