"""Identical audio inside the corpus stays in one split (issue 17, zero-shot hygiene).

The same recording ships under several names: one sample in two soundfont kits, a sound effect in two games'
data packages, one recording filed under two words.  Splits are drawn per recording identity (``group``), which
file names decide, so two copies of one recording can land in train and test, and the test clip is then one the
model trained on.  ``prepare`` records every clip's ``content_hash`` (``clapkit.data.fingerprint``: the decoded
source, before resampling) and ``settle_duplicates`` moves every copy of a hash into one split.

The rule: the split furthest from training wins, ``transfer`` > ``test`` > ``val`` > ``train``.  A copy moving
*out* of training costs a few training clips; a copy moving *into* training would put a test recording, and a
piece of its test identity, in the training data.  The moved copy keeps its ``group``, so its identity then has
one clip outside the group's split: that clip is scored on a recording no training clip is, while the other way
round every test clip of the group would be scored after training on one of them.  A dataset's own split is
overridden too (hygiene before the dataset's convention).  The transfer split holds exactly the held-out sources
(``clapkit.data.holdout.check_split``), so a copy of held-out audio from another source cannot join it: it leaves
the manifest, listed in ``quarantine.csv`` with the id it duplicates.  Everything else is unchanged.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..atomic_files import replacing
from .holdout import TRANSFER

__all__ = ["SPLIT_PRECEDENCE", "settle_duplicates", "compact_waveforms"]

SPLIT_PRECEDENCE = (TRANSFER, "test", "val", "train")  # first wins: furthest from training


def _rank(split: str) -> int:
    # a split this module does not know (a dataset's own name) ranks after train: any known split wins over it
    return SPLIT_PRECEDENCE.index(split) if split in SPLIT_PRECEDENCE else len(SPLIT_PRECEDENCE)


def settle_duplicates(rows: list[dict[str, Any]], held_out: Iterable[str]
                      ) -> tuple[list[dict[str, Any]], list[dict[str, str]], dict[str, Any]]:  # fmt: skip
    """Put every copy of a ``content_hash`` in one split (the module's rule).

    Returns (the rows kept, in their order, with moved splits set; quarantine-report rows for copies dropped
    because their audio belongs to a held-out source; metrics).  Rows are changed in place.
    """
    held = set(held_out)
    copies: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        copies[row["content_hash"]].append(row)
    dropped_ids: set[str] = set()
    report: list[dict[str, str]] = []
    moved: Counter = Counter()
    straddling = 0
    for group in copies.values():
        if len(group) < 2 or len({r["split"] for r in group}) < 2:
            continue
        straddling += 1
        winner = min((r["split"] for r in group), key=_rank)
        keeper = next(r for r in group if r["split"] == winner)
        for row in group:
            if row["split"] == winner:
                continue
            if winner == TRANSFER and row["source"] not in held:
                dropped_ids.add(row["id"])
                report.append({"id": row["id"], "path": row["path"], "action": "quarantined",
                               "reason": f"duplicate audio: same content_hash as {keeper['id']} of held-out source "
                                         f"{keeper['source']} (transfer split); kept out of training"})
                continue
            moved[f"{row['split']}->{winner}"] += 1
            row["split"] = winner
    kept = [r for r in rows if r["id"] not in dropped_ids]
    duplicated = [g for g in copies.values() if len(g) > 1]
    metrics = {
        "duplicate_audio_hashes": len(duplicated),  # recordings present more than once
        "duplicate_audio_clips": sum(len(g) for g in duplicated),  # clips whose audio another clip also has
        "duplicate_audio_cross_source": sum(1 for g in duplicated if len({r["source"] for r in g}) > 1),
        "duplicate_audio_straddling": straddling,  # of those recordings, in more than one split before this rule
        "duplicates_moved": sum(moved.values()),
        "duplicates_moved_by_split": dict(sorted(moved.items())),
        "duplicates_dropped": len(dropped_ids),
    }
    return kept, report, metrics


def compact_waveforms(path: str | Path, rows: list[dict[str, Any]]) -> int:
    """Rewrite the float16 waveform file with only ``rows``' windows, in their order, and renumber their
    ``offset``s (after ``settle_duplicates`` dropped some); returns the samples written.  Temp file + rename."""
    path = Path(path)
    source = np.memmap(path, dtype=np.float16, mode="r") if path.stat().st_size else np.zeros(0, np.float16)
    offset = 0
    with replacing(path) as tmp:
        with open(tmp, "wb") as out:
            for row in rows:
                out.write(np.asarray(source[row["offset"]: row["offset"] + row["length"]]).tobytes())
                row["offset"] = offset
                offset += row["length"]
        del source
    return offset
