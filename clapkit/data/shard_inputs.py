"""What ``clapkit shards build`` reads: dataset adapters, generic manifests and the clapkit corpus, as plain items.

Every input becomes a list of *items* (one per audio file, nothing decoded yet) plus a list of *problems* (an
input line or file that cannot become an item, with the reason); the builder (``clapkit.data.shard_build``)
decodes the items and quarantines the bad audio.  An item is a dict::

    {"key":      tar-safe unique sample key ("<dataset>_<file id>"),
     "id":       "<dataset>/<file id>" (the clip id, as the adapters and the corpus name clips),
     "dataset":  the input's name,
     "split":    "train" | "val" | "test" | ...,
     "path":     the audio path as the input gives it (relative to the manifest / dataset / corpus root),
     "file":     the path to open (absolute; not part of what is written, so a moved input builds the same shards),
     "captions": [str, ...]  (at least one),
     "labels":   {task: label}}

Generic manifest (``--manifest [name[:split]=]path``), JSONL or CSV (by the file suffix); audio paths relative to
the manifest's folder (absolute ones are kept):

* JSONL, one object a line: ``{"audio": "clips/a.wav", "captions": ["a dog barks", ...], "labels": {"event":
  "dog"}, "split": "train"}``; ``"caption": "..."`` stands for one caption; ``labels`` and ``split`` optional.
* CSV with a header: ``audio``; ``caption`` and/or ``caption_1``, ``caption_2``, ... (empty cells ignored);
  optional ``split``; optional ``label_<task>`` columns (a label per task).

A line whose audio file is missing, with no caption, or malformed is a problem reported with its 1-based line
number (CSV: the header is line 1).  ``name`` defaults to the manifest's file stem, ``split`` forces every line's
split (default: the line's own, else ``train``).

Adapters (``--dataset name[:split]=root``): ``clapkit.data.adapters.ADAPTERS[name]``; the human captions of
captioning datasets (AudioCaps, Clotho) are the captions, labels become captions through
``clapkit.data.captions.make_captions`` (the adapter's task read as a template task: ``ADAPTER_CAPTION_TASKS``);
the dataset's own split unless forced
(evaluation-only datasets are ``test`` throughout: force ``:train`` to train on one).  Adapter problems (a listed
file missing, a malformed row) are reported with the adapter's file and line.

The clapkit corpus (``--corpus [split=]root``, ``clapkit data build``'s ``data/``): every source's clips.jsonl,
captions and splits exactly as ``prepare`` makes them (``prepare.*`` of params.yaml: split salt and fractions,
captions per clip, ``limit_per_source`` slices; transfer sources form the ``transfer`` split).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["InputSpec", "parse_input_spec", "read_adapter", "read_corpus", "read_manifest", "sample_key"]

InputSpec = tuple[str, str, str | None, str]  # (kind, name, forced split or None, path)


def sample_key(clip_id: str) -> str:
    """A tar-safe WebDataset key: no dots (WebDataset splits member names at the first one), no slashes."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", clip_id)


def parse_input_spec(kind: str, spec: str) -> InputSpec:
    """``name[:split]=path`` (``--dataset``; ``name=`` optional for ``--manifest`` and ``--corpus``)."""
    head, sep, path = spec.partition("=")
    if not sep:
        if kind == "dataset":
            raise ValueError(f"--dataset {spec!r}: expected name[:split]=path, e.g. esc50=/data/ESC-50-master")
        head, path = "", spec
    name, _, split = head.partition(":")
    if kind == "manifest" and not name:
        name = Path(path).stem
    if kind == "corpus" and not name:
        name = "corpus"
    if not name or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"--{kind} {spec!r}: the name must be letters, digits, _ or - (got {name!r})")
    return kind, name, split or None, path


def _problem(source: str, line: int | None, reason: str, path: str = "") -> dict[str, Any]:
    return {"input": source, "line": line, "path": path, "reason": reason}


def _item(dataset: str, file_id: str, split: str, path: str, file: Path, captions: list[str],
          labels: dict[str, Any]) -> dict[str, Any]:
    clip_id = f"{dataset}/{file_id}"
    return {"key": sample_key(clip_id), "id": clip_id, "dataset": dataset, "split": split, "path": path,
            "file": str(file), "captions": captions, "labels": labels}


def _manifest_rows(path: Path, problems: list[dict[str, Any]]):
    """(line number, row dict) of a JSONL or CSV manifest; malformed lines become problems."""
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    problems.append(_problem(str(path), n, f"not a JSON object: {err}"))
                    continue
                if not isinstance(row, dict):
                    problems.append(_problem(str(path), n, f"not a JSON object: {type(row).__name__}"))
                    continue
                yield n, row
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            if not reader.fieldnames or "audio" not in reader.fieldnames:
                raise ValueError(f"{path}: a CSV manifest needs a header with an 'audio' column "
                                 f"(got {reader.fieldnames})")
            for row in reader:
                captions = [row[c] for c in reader.fieldnames if re.fullmatch(r"caption(_\d+)?", c) and row[c]]
                labels = {c[len("label_"):]: row[c] for c in reader.fieldnames if c.startswith("label_") and row[c]}
                yield reader.line_num, {"audio": row["audio"], "captions": captions, "labels": labels,
                                        "split": row.get("split") or None}
    else:
        raise ValueError(f"{path}: a manifest is .jsonl or .csv (.tsv), not {path.suffix!r}")


def read_manifest(name: str, path: str | Path, split: str | None = None) -> tuple[list[dict], list[dict]]:
    """(items, problems) of a generic manifest; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    items, problems = [], []
    for n, row in _manifest_rows(path, problems):
        audio = row.get("audio")
        captions = row.get("captions", [row["caption"]] if "caption" in row else [])
        if isinstance(captions, str):
            captions = [captions]
        labels = row.get("labels") or {}
        if not isinstance(audio, str) or not audio:
            problems.append(_problem(str(path), n, "no audio path (field 'audio')"))
            continue
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions) or \
                not [c for c in captions if c.strip()]:
            problems.append(_problem(str(path), n, "no caption", audio))
            continue
        if not isinstance(labels, dict):
            problems.append(_problem(str(path), n, f"labels must be an object, got {labels!r}", audio))
            continue
        file = (path.parent / audio).absolute()
        if not file.is_file():
            problems.append(_problem(str(path), n, f"audio file missing: {file}", audio))
            continue
        row_split = split or row.get("split") or "train"
        items.append(_item(name, str(Path(audio).with_suffix("")), row_split, audio, file,
                           [" ".join(c.split()) for c in captions if c.strip()], labels))
    return items, problems


def _captions_of(clip_id: str, labels: dict[str, Any], texts: list[str], n: int = 8, glosses=None) -> list[str]:
    """Human captions verbatim when the record has them, else captions made from the labels (as ``prepare``)."""
    from .captions import make_captions
    from .glosses import glosses_for

    descriptions = glosses_for(labels, glosses) if glosses else []
    return make_captions(clip_id, labels, texts, n=n, descriptions=descriptions)


# The adapters' tasks (clapkit.data.adapters) as the caption templates' tasks (clapkit.data.captions): a label
# "dog" of task esc50 is a sound event ("the sound of dog", "a recording of dog", ...), an NSynth pitch is a pitch.
# Tasks not listed (libricount's speaker count, NSynth's qualities) make no caption of their own.
ADAPTER_CAPTION_TASKS = {
    "esc50": "sound_event", "esc50_actions": "sound_event", "us8k": "sound_event", "fsd50k": "sound_event",
    "dcase2017_task4": "sound_event", "audioset": "sound_event", "vocalsound": "sound_event", "sesa": "sound_event",
    "tut2017": "sound_event", "gtzan_music_speech": "sound_event", "gtzan_genre": "sound_category",
    "nsynth_instrument_family": "instrument_family", "nsynth_pitch": "pitch", "nsynth_velocity": "velocity",
    "beijing_opera": "instrument", "crema_d": "emotion", "ravdess": "emotion", "speech_commands": "keyword",
}


def adapter_captions(clip_id: str, labels: dict[str, Any], texts: list[str]) -> list[str]:
    """A dataset clip's captions: its human captions verbatim (AudioCaps, Clotho: ``make_captions`` would add
    "someone saying '...'" to short texts, meant for transcripts), else captions made from its labels."""
    if texts:
        return list(texts)
    caption_labels: dict[str, Any] = {}
    for task, value in labels.items():
        if task in ADAPTER_CAPTION_TASKS and ADAPTER_CAPTION_TASKS[task] not in caption_labels:
            caption_labels[ADAPTER_CAPTION_TASKS[task]] = value
    return _captions_of(clip_id, caption_labels, [])


def read_adapter(name: str, root: str | Path, split: str | None = None) -> tuple[list[dict], list[dict]]:
    """(items, problems) of a public dataset in its official layout (``clapkit.data.adapters``)."""
    from .adapters import ADAPTERS, LoadReport

    if name not in ADAPTERS:
        raise ValueError(f"--dataset {name}: unknown dataset; known: {', '.join(sorted(ADAPTERS))}")
    root = Path(root).expanduser().absolute()
    report = LoadReport()
    records = ADAPTERS[name].load(root, report)
    problems = [_problem(p.file, p.line, p.reason) for p in report.problems]
    items = []
    for rec in records:
        captions = adapter_captions(rec.id, rec.labels, rec.texts)
        file = Path(rec.path)
        rel = file.relative_to(root).as_posix() if file.is_relative_to(root) else str(file)
        items.append(_item(name, rec.id.split("/", 1)[1], split or rec.split or "train", rel, file, captions,
                           rec.labels))
    return items, problems


def read_corpus(name: str, root: str | Path, split: str | None = None,
                params: dict[str, Any] | None = None) -> tuple[list[dict], list[dict]]:
    """(items, problems) of a clapkit corpus (``data/``), split and captioned as ``prepare`` does."""
    from .glosses import load_glosses
    from .prepare import TRANSFER, PrepareConfig, _hash_order, assign_split
    from .records import read_jsonl

    cfg = PrepareConfig.from_params(params or {})
    root = Path(root).absolute()
    summary = root / "corpus.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: no corpus summary; run `clapkit data build` first")
    glosses = load_glosses(cfg.caption_glosses_exclude) if cfg.caption_glosses else None
    items, problems = [], []
    for source in sorted(json.loads(summary.read_text())["sources"]):
        records = read_jsonl(root / source / "clips.jsonl")
        if cfg.limit_per_source:  # the same tiny slice as prepare's
            records = sorted(records, key=lambda r: _hash_order(r.id))[: cfg.limit_per_source]
        for rec in records:
            file = root / rec.path
            if not file.is_file():
                problems.append(_problem(str(root / source / "clips.jsonl"), None, f"audio file missing: {file}",
                                         rec.path))
                continue
            rec_split = TRANSFER if rec.source in cfg.transfer_sources else rec.split or \
                assign_split(rec.group or rec.id, cfg.split_salt, cfg.test_fraction, cfg.val_fraction)
            captions = _captions_of(rec.id, rec.labels, rec.texts, cfg.captions_per_clip, glosses)
            item = _item(name, rec.id, split or rec_split, rec.path, file, captions, rec.labels)
            item["id"] = rec.id  # the corpus's own clip id, as prepared/ names it
            items.append(item)
    return items, problems
