"""The one record every corpus builder and dataset adapter emits: a ``ClipRecord`` per audio file.

Builders write ``<corpus>/<source>/clips.jsonl`` (one JSON object per line, ``ClipRecord.to_json``) next to the
audio they extracted or synthesised; adapters for public datasets return the same records for files that stay
where the user keeps them.  The ``prepare`` stage reads only these records: it never needs to know where a clip
came from beyond what a record says.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ClipRecord", "read_jsonl", "write_jsonl"]


@dataclass
class ClipRecord:
    # Stable, unique id: "<source>/<relative path without extension>" for corpus clips, "<dataset>/<file id>" for
    # adapters.  Ids never depend on iteration order, so a rebuilt corpus gets the same ids.
    id: str
    # Path of the audio file: relative to the corpus root for built clips, absolute for adapter clips.
    path: str
    # Where the clip comes from: "debian:<package>" for recordings, "synth:<tool>" for generated audio,
    # "dataset:<name>" for adapters.
    source: str
    # SPDX-like licence of this clip, e.g. "CC-BY-SA-3.0", "GPL-2.0-or-later", "MIT"; "unknown" if the dataset
    # does not state it per clip.
    licence: str
    # True for recordings made by people (Debian packages, public datasets), False for synthesised audio.
    real: bool
    # True for environmental sound events (animals, vehicles, water, impacts...), not speech, music or tones.
    environmental: bool = False
    # The unit that must never straddle train/test: a speaker, a drum kit, a voice pack, a synth program, a
    # recording session.  Splits are assigned per (source, group), never per clip.
    group: str = ""
    # Task name -> label.  A str for single-label tasks, a list of str for multi-label tasks (e.g. fsd50k).
    # Task names are shared across sources: "language", "keyword", "digit", "speaker", "gender", "drum",
    # "instrument", "instrument_family", "pitch", "velocity", "tone", "sound_event", "emotion", ...
    labels: dict[str, Any] = field(default_factory=dict)
    # Free text that describes this very clip (a transcript, a human caption, a file-name title); captions
    # are built from labels *and* these.
    texts: list[str] = field(default_factory=list)
    # A split fixed by the dataset itself ("train", "val", "test"), or None to let `prepare` assign one by group.
    split: str | None = None
    # Anything else worth keeping (package version, original file name, MIDI program, fold...).
    meta: dict[str, Any] = field(default_factory=dict)
    # ``clapkit.data.fingerprint`` hash of the decoded audio: filled where the audio is decoded (prepare writes it
    # into its manifest, the shard index into samples.jsonl); a builder that has not decoded the file leaves None.
    content_hash: str | None = None

    def to_json(self) -> str:
        d = asdict(self)
        if d["content_hash"] is None:  # not decoded here: left out, so a built corpus keeps the bytes data.dvc tracks
            del d["content_hash"]
        return json.dumps(d, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipRecord":
        return cls(**d)


def write_jsonl(path, records) -> None:
    """Write records atomically (temp file then rename), sorted by id so the file is reproducible."""
    from ..atomic_files import replacing

    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in sorted(records, key=lambda r: r.id):
            f.write(r.to_json() + "\n")


def read_jsonl(path) -> list[ClipRecord]:
    with open(path, encoding="utf-8") as f:
        return [ClipRecord.from_dict(json.loads(line)) for line in f if line.strip()]
