"""Captions from labels: several templates per task, with synonyms, so the text side is never one fixed string.

A clip's labels (``{"language": "french", "gender": "female", "keyword": "moon"}``) and free texts (transcripts,
titles) become up to ``n`` distinct captions, drawn deterministically from a generator seeded by the clip id: the
same corpus always gets the same captions, and training samples one of them per epoch.  Templates combine tasks
where that reads naturally ("a woman saying 'moon' in french") and fall back to one task per caption.

Label words come from the corpus vocabulary (``.helpers``' shared list, see ``TASK_TEMPLATES``); ``SYNONYMS``
adds the words people would also query with (AudioSet-style names, plain-English variants).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

__all__ = ["TASK_TEMPLATES", "SYNONYMS", "make_captions", "label_phrases"]

# {} is the label phrase.  Each task has several phrasings; the first is the canonical zero-shot wording.
TASK_TEMPLATES: dict[str, list[str]] = {
    "language": ["someone speaking {}", "speech in {}", "a voice talking in {}", "a person saying a word in {}",
                 "{} speech", "a spoken {} word"],
    "keyword": ["someone saying '{}'", "the spoken word '{}'", "a voice says '{}'", "a person pronouncing '{}'"],
    "digit": ["someone saying the number {}", "the spoken digit {}", "a voice counting: {}", "the word '{}' spoken"],
    "speaker": ["the voice of {}", "{} speaking", "speech by {}"],
    "gender": ["a {} voice", "a {} speaker talking", "a {} person speaking"],
    "voice_pack": ["a {} character voice", "a cartoon {} voice shouting", "a game character exclaiming, {} voice"],
    "emotion": ["a {} exclamation", "someone sounding {}", "a voice expressing {}"],
    "drum": ["a {} hit", "the sound of a {}", "a single {} stroke", "a {} sample from a drum kit"],
    "instrument": ["a {} playing a note", "the sound of a {}", "a single note on a {}", "{} music"],
    "instrument_family": ["a {} instrument", "a note played by an instrument of the {} family", "{} sound"],
    "pitch": ["a note at pitch {}", "a musical tone of pitch {}", "the note {}"],
    "velocity": ["a note played {}", "a {} note", "a musical note, {} dynamics"],
    "tone": ["a {}", "the sound of a {}", "a synthetic {}", "a test signal: {}"],
    "sound_event": ["the sound of {}", "{}", "a recording of {}", "this is the sound of {}", "{} can be heard"],
    "sound_category": ["a {} sound", "some {} noise", "a sound from the category {}"],
    "sample_category": ["a {} sample", "a {} sound from a sample pack", "music production sample: {}"],
}

# Combined templates, used when all their tasks are present.  Keys are the tasks they need, in order.
COMBINED_TEMPLATES: list[tuple[tuple[str, ...], str]] = [
    (("gender", "keyword", "language"), "a {} voice saying '{}' in {}"),
    (("keyword", "language"), "the word '{}' spoken in {}"),
    (("gender", "digit"), "a {} voice saying the number {}"),
    (("gender", "language"), "a {} voice speaking {}"),
    (("instrument", "pitch"), "a {} playing the note {}"),
    (("velocity", "instrument"), "a {} note on a {}"),
    (("sound_event", "sound_category"), "{}, a {} sound"),
]

# Extra words for label values (lower-case keys).  Kept small and reviewed: a wrong synonym teaches a wrong word.
SYNONYMS: dict[str, list[str]] = {
    "female": ["woman's", "female"],
    "male": ["man's", "male"],
    "kick drum": ["bass drum", "kick"],
    "snare drum": ["snare"],
    "hi-hat": ["hihat", "hi hat cymbal"],
    "dog bark": ["a dog barking", "barking"],
    "cat meow": ["a cat meowing", "meowing"],
    "rain": ["rainfall", "raindrops"],
    "thunder": ["thunderstorm", "a thunderclap"],
    "footsteps": ["walking", "steps"],
    "explosion": ["a blast", "an explosion"],
    "gunshot": ["gunfire", "a gun firing"],
    "applause": ["clapping", "people clapping"],
    "laughter": ["laughing", "someone laughing"],
    "cough": ["coughing", "someone coughing"],
    "water": ["flowing water", "splashing water"],
    "fire": ["crackling fire", "flames"],
    "wind": ["blowing wind", "gusts of wind"],
    "door": ["a door", "door opening or closing"],
    "glass breaking": ["shattering glass", "breaking glass"],
    "white noise": ["hiss", "static noise"],
    "sine tone": ["pure tone", "sine wave", "beep"],
    "soft": ["quietly", "softly", "pianissimo"],
    "loud": ["loudly", "forte", "strongly"],
    "medium": ["moderately", "mezzo forte"],
}


def _rng(clip_id: str, salt: str) -> random.Random:
    digest = hashlib.sha256(f"{salt}:{clip_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def label_phrases(value: Any) -> list[str]:
    """The phrases a label value can appear as: itself, then its synonyms (multi-label: each value)."""
    values = value if isinstance(value, list) else [value]
    out: list[str] = []
    for v in values:
        v = str(v).replace("_", " ").strip()
        if not v:
            continue
        out.append(v)
        out.extend(SYNONYMS.get(v.lower(), []))
    return out


def _pick(rng: random.Random, value: Any) -> str:
    if isinstance(value, list):  # multi-label: name up to three of the labels
        vals = [str(v) for v in value]
        rng.shuffle(vals)
        return ", ".join(rng.choice(label_phrases(v)) for v in vals[:3])
    return rng.choice(label_phrases(value))


def make_captions(clip_id: str, labels: dict[str, Any], texts: list[str], n: int = 8,
                  salt: str = "captions-v1", descriptions: list[str] = ()) -> list[str]:
    """Up to ``n`` distinct captions for one clip, deterministic in (clip_id, labels, texts, salt, descriptions).

    Human texts (transcripts, titles) are kept verbatim first: they are the richest captions available.  Then
    ``descriptions`` (dictionary glosses of the label, ``clapkit.data.glosses``; none by default) verbatim, then
    combined templates, then single-task templates with synonyms, round-robin over tasks so every task is named.
    """
    rng = _rng(clip_id, salt)
    captions: list[str] = []

    def add(c: str) -> None:
        c = " ".join(c.split())
        if c and c not in captions and len(captions) < n:
            captions.append(c)

    for t in texts:
        add(t)
        if t and "keyword" not in labels and "digit" not in labels and len(t.split()) <= 12:
            add(f"someone saying '{t}'")
    for d in descriptions:
        add(d)
    known = {k: v for k, v in labels.items() if k in TASK_TEMPLATES and v not in (None, "", [])}
    for tasks, template in COMBINED_TEMPLATES:
        if all(t in known for t in tasks):
            add(template.format(*(_pick(rng, known[t]) for t in tasks)))
    tasks = sorted(known)
    attempts = 0
    while len(captions) < n and tasks and attempts < 8 * n:
        task = tasks[attempts % len(tasks)]
        add(rng.choice(TASK_TEMPLATES[task]).format(_pick(rng, known[task])))
        attempts += 1
    if not captions:
        add("a sound")  # a clip with no usable label or text; prepare reports how many there are
    return captions
