"""The transfer split: whole sources held out of training, and label wordings kept out of every training caption.

``prepare.transfer_sources`` names sources by the id every clip record carries (``debian:<package>``,
``synth:<tool>``, ``dataset:<name>``).  Their clips go to the ``transfer`` split only: no train, val or test clip
comes from them, whatever their recording identity (``check_split`` raises otherwise).  The evaluate stage scores
them zero-shot (``clapkit.transfer_eval``) with a second wording of each label (``transfer_wordings.yaml`` beside this
module) that no training text uses (``find_leaks``: prepare raises on any).

What the evaluate stage needs is written to ``prepared/transfer.json`` (``transfer_summary``): the held-out
sources, per task its *transfer vocabulary* (the labels with a held-out wording that at least ``min_train_clips``
training clips carry: the zero-shot classes) with the wordings, and per source and task how many clips that
vocabulary covers and which labels fall outside it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import yaml

from .captions import label_phrases

__all__ = ["TRANSFER", "DEFAULT_WORDINGS", "TRAINING_SPLITS", "LEAK_RULE", "normalise", "wording_core",
           "load_wordings", "check_sources", "check_split", "training_texts", "find_leaks", "check_no_leaks",
           "transfer_summary"]  # fmt: skip

TRANSFER = "transfer"  # the split of every clip of a held-out source
TRAINING_SPLITS = ("train", "val")  # what training reads (val: its validation loss and zero-shot numbers)
DEFAULT_WORDINGS = Path(__file__).with_name("transfer_wordings.yaml")
LEAK_RULE = ("exact phrase: no held-out wording, lower-cased with punctuation as spaces and its leading article "
             "dropped, occurs as whole words in any caption, text or label phrase of a train or val clip")
_ARTICLE = re.compile(r"^(?:a|an|the) ")


def normalise(text: Any) -> str:
    """Lower case, every run of characters other than letters, digits and apostrophes one space."""
    return " ".join(re.sub(r"[^\w']+", " ", str(text).lower().replace("_", " ")).split())


def wording_core(wording: str) -> str:
    """What the leak check looks for: the normalised wording without a leading article."""
    return _ARTICLE.sub("", normalise(wording))


def load_wordings(path: str | Path) -> dict[str, dict[str, str]]:
    """``task -> label -> wording`` from a YAML file; any malformed entry is an error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise FileNotFoundError(f"{path}: cannot read the held-out wordings ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping task -> label -> wording, got {type(data).__name__}")
    out: dict[str, dict[str, str]] = {}
    for task, table in data.items():
        if not isinstance(table, dict) or not table:
            raise ValueError(f"{path}: task {task!r}: expected a non-empty mapping label -> wording")
        seen: dict[str, str] = {}
        for label, wording in table.items():
            if not isinstance(label, str):
                raise ValueError(f"{path}: {task}: label {label!r} is not a string (quote it: YAML reads yes, no, "
                                 f"on, off and numbers as other types)")
            if not isinstance(wording, str) or not wording_core(wording):
                raise ValueError(f"{path}: {task} {label!r}: the wording must be a non-empty string, got {wording!r}")
            core = wording_core(wording)
            if core in seen:
                raise ValueError(f"{path}: {task}: {label!r} and {seen[core]!r} share the wording {wording!r}")
            if core == wording_core(str(label)):
                raise ValueError(f"{path}: {task} {label!r}: the wording repeats the label")
            seen[core] = str(label)
        out[str(task)] = {str(label): " ".join(wording.split()) for label, wording in table.items()}
    return out


def check_sources(present: Iterable[str], held_out: Sequence[str], corpus: str) -> None:
    """Every held-out source must be in the corpus (a misspelt id would otherwise hold nothing out)."""
    present = set(present)
    if len(set(held_out)) != len(held_out):
        raise ValueError(f"params.yaml prepare.transfer_sources: listed twice: {sorted(held_out)}")
    missing = [s for s in held_out if s not in present]
    if missing:
        raise ValueError(f"params.yaml prepare.transfer_sources: {missing} not among the sources of {corpus} "
                         f"(clip records' `source`); the corpus has: {', '.join(sorted(present))}")


def check_split(rows: Sequence[Mapping[str, Any]], held_out: Iterable[str]) -> None:
    """Raises unless every clip of a held-out source is in the transfer split and every transfer clip is one."""
    held = set(held_out)
    wrong = [r["id"] for r in rows if (r["source"] in held) != (r["split"] == TRANSFER)]
    if wrong:
        raise AssertionError(f"transfer split violated: {len(wrong)} clip(s) of a held-out source outside the "
                             f"transfer split, or of another source inside it (first: {wrong[:5]})")


def training_texts(rows: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str, str]]:
    """(clip id, text) for every caption, text and label phrase of the train and val clips."""
    for r in rows:
        if r["split"] not in TRAINING_SPLITS:
            continue
        for text in list(r.get("captions", [])) + list(r.get("texts", [])):
            yield r["id"], text
        for value in r.get("labels", {}).values():
            for phrase in label_phrases(value):
                yield r["id"], phrase


def find_leaks(wordings: Mapping[str, Mapping[str, str]], texts: Iterable[tuple[str, str]],
               limit: int = 10) -> list[dict[str, str]]:  # fmt: skip
    """Up to ``limit`` (task, label, wording, clip, text) where a held-out wording occurs in a training text
    (``LEAK_RULE``)."""
    owner = {wording_core(w): (task, label, w) for task, table in wordings.items() for label, w in table.items()}
    if not owner:
        return []
    alternatives = "|".join(re.escape(c) for c in sorted(owner, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\S)(?:{alternatives})(?!\S)")
    leaks, checked = [], set()
    for clip, text in texts:
        norm = normalise(text)
        if norm in checked:
            continue
        checked.add(norm)
        for m in pattern.finditer(norm):
            task, label, wording = owner[m.group(0)]
            leaks.append({"task": task, "label": label, "wording": wording, "clip": clip, "text": text})
            if len(leaks) >= limit:
                return leaks
    return leaks


def check_no_leaks(rows: Sequence[Mapping[str, Any]], wordings: Mapping[str, Mapping[str, str]],
                   wordings_path: str | Path) -> None:  # fmt: skip
    leaks = find_leaks(wordings, training_texts(rows))
    if leaks:
        shown = "; ".join(f"{x['task']} {x['label']!r}: {x['wording']!r} in {x['text']!r} ({x['clip']})"
                          for x in leaks[:5])
        raise ValueError(f"{wordings_path}: held-out wording(s) used by training clips ({LEAK_RULE}): {shown}. "
                         f"Reword them: the transfer test needs label wordings that training never saw")


def _label_counts(rows: Iterable[Mapping[str, Any]], task: str) -> Counter:
    return Counter(r["labels"][task] if isinstance(r["labels"][task], str) else "(multi-label)"
                   for r in rows if task in r.get("labels", {}))


def transfer_summary(rows: Sequence[Mapping[str, Any]], wordings: Mapping[str, Mapping[str, str]],
                     held_out: Sequence[str], min_train_clips: int, wordings_path: str | Path) -> dict[str, Any]:
    """``prepared/transfer.json``: the held-out sources, each task's transfer vocabulary with its wordings, and
    per source and task the clips that vocabulary covers and the labels outside it."""
    train = [r for r in rows if r["split"] == "train"]
    tasks: dict[str, Any] = {}
    for task, table in sorted(wordings.items()):
        counts = _label_counts(train, task)
        classes = sorted(label for label in table if counts[label] >= min_train_clips)
        tasks[task] = {"classes": classes, "wordings": {c: table[c] for c in classes},
                       "train_clips": {c: counts[c] for c in classes},
                       "too_few_train_clips": sorted(set(table) - set(classes))}  # fmt: skip
    by_source: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["split"] == TRANSFER:
            by_source[r["source"]].append(r)
    sources: dict[str, Any] = {}
    for source in held_out:
        per_task = {}
        for task, spec in tasks.items():
            counts = _label_counts(by_source[source], task)
            if counts:
                vocab = set(spec["classes"])
                per_task[task] = {"covered": dict(sorted((k, v) for k, v in counts.items() if k in vocab)),
                                  "outside_vocabulary": dict(sorted((k, v) for k, v in counts.items()
                                                                    if k not in vocab))}  # fmt: skip
        sources[source] = {"clips": len(by_source[source]), "tasks": per_task}
    return {"split": TRANSFER, "sources": sources, "tasks": tasks, "min_train_clips": min_train_clips,
            "wordings_file": str(wordings_path), "leak_rule": LEAK_RULE}
