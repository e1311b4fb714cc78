"""Reviewed label tables (clapkit/data/debian/tables) and the merged label vocabulary: checked as data, offline.

The tables are reviewed data: every file they name must be in the pinned listing of the package version they were
reviewed against, every label must be a vocabulary event (no near-duplicate wording left), every file left out
must say why, and together they must bring the corpus to the foundation target (2,000 environmental clips over
40 labels), counted here from the listings exactly as the extractor counts (no build needed).
"""

from __future__ import annotations

import zipfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.data.debian import SOURCES, recordings, reviewed
from clapkit.data.debian import environmental as env
from clapkit.data.debian.fetch import ExtractContext
from clapkit.data.debian.vocabulary import (EVENT_MERGES, EVENTS, FOOTSTEP_EVENTS, TERMS, canonical_event,
                                            event_label, is_event, near_duplicate_key)

# Environmental clips of the corpus before the reviewed tables (metrics/data.json `clips_environmental`, 2026-11-26,
# the definition of README's table: manifest rows with environmental=true after prepare's quarantine).
BASELINE_ENVIRONMENTAL_CLIPS = 1288
TARGET_CLIPS, TARGET_LABELS = 2000, 40

SOURCES_WITH_TABLES = ["0ad", "bucklespring", "fillets-ng", "frozen-bubble", "supertux", "torcs", "warzone2100",
                       "widelands"]


def test_every_table_source_is_registered_and_listed():
    assert reviewed.table_sources() == SOURCES_WITH_TABLES
    for name in SOURCES_WITH_TABLES:
        table = reviewed.read_table(name)
        src = SOURCES[name]
        assert src.environmental and src.packages == (table.package,)
        assert src.extract is env.from_reviewed_table
        assert reviewed.listing_path(name).exists(), name


@pytest.mark.parametrize("name", SOURCES_WITH_TABLES)
def test_table_matches_its_pinned_listing(name):
    table = reviewed.read_table(name)
    header, listing = reviewed.read_listing(name)
    assert (header["package"], header["version"], header["base"]) == (table.package, table.version, table.base)
    assert len(table.header.get("sha256", "")) == 64 and header.get("sha256") == table.header["sha256"]
    paths = [r.path for r in table.rows]
    assert len(paths) == len(set(paths)), "a file is reviewed twice"
    listed = {r.path for r in listing}
    assert not set(paths) - listed, f"mapped files not in the package: {sorted(set(paths) - listed)[:5]}"
    assert not listed - set(paths), f"files of the package nobody reviewed: {sorted(listed - set(paths))[:5]}"


@pytest.mark.parametrize("name", SOURCES_WITH_TABLES)
def test_table_labels_are_vocabulary_events_and_exclusions_say_why(name):
    for row in reviewed.read_table(name).rows:
        if row.label == reviewed.EXCLUDED:
            assert row.note, f"{name}: {row.path} is left out without a reason"
            assert row.group == reviewed.EXCLUDED
        else:
            assert is_event(row.label), f"{name}: {row.path}: {row.label!r} is not a vocabulary event"
            assert row.label not in EVENT_MERGES, f"{name}: {row.path}: {row.label!r} is a merged wording"
            assert row.group == reviewed.EXCLUDED or row.group.isidentifier(), row.group


def _kept_by_table(name: str) -> Counter:
    """label -> clips the extractor keeps from the pinned listing: mapped, first of byte-identical copies,
    readable, at least MIN_DURATION_S (the rules of environmental._emit, in its sorted order)."""
    rows = reviewed.read_table(name).by_path()
    _, listing = reviewed.read_listing(name)
    seen, kept = set(), Counter()
    for item in sorted(listing, key=lambda r: r.path):
        row = rows[item.path]
        if row.label == reviewed.EXCLUDED:
            continue
        if item.sha1 in seen:
            continue
        seen.add(item.sha1)
        if 0 <= item.duration_s and item.duration_s >= env.MIN_DURATION_S:
            kept[row.label] += 1
    return kept


def test_tables_reach_the_environmental_target():
    per_source = {name: _kept_by_table(name) for name in SOURCES_WITH_TABLES}
    clips = sum(sum(c.values()) for c in per_source.values())
    labels = set().union(*per_source.values())
    assert BASELINE_ENVIRONMENTAL_CLIPS + clips >= TARGET_CLIPS, clips
    assert len(labels) >= TARGET_LABELS, sorted(labels)  # the new sources alone cover 40 labels
    # no single source or label carries the target alone
    assert max(sum(c.values()) for c in per_source.values()) < clips * 0.7
    assert max(sum(per_source.values(), Counter()).values()) < clips * 0.3


# ---------------------------------------------------------------------------------------------------------------
# merged vocabulary


def _all_events() -> set[str]:
    tables = {r.label for n in SOURCES_WITH_TABLES for r in reviewed.read_table(n).mapped()}
    terms = {e for e in TERMS.values() if e}
    return set(EVENTS) | FOOTSTEP_EVENTS | terms | tables | recordings.emitted_events()


def test_merge_table_points_at_vocabulary_events():
    for variant, canonical in EVENT_MERGES.items():
        assert canonical in EVENTS and variant not in EVENTS, (variant, canonical)
        assert canonical not in EVENT_MERGES  # one step: no chains
    assert all(e is None or e not in EVENT_MERGES for e in TERMS.values())


def test_no_near_duplicate_labels_after_merging():
    by_key = defaultdict(set)
    for event in _all_events():
        by_key[near_duplicate_key(canonical_event(event))].add(canonical_event(event))
    assert not {k: v for k, v in by_key.items() if len(v) > 1}
    # the variants merged would have been caught (the key is not too strict)
    assert near_duplicate_key("grunt of pain") == near_duplicate_key("grunting in pain")
    assert near_duplicate_key("finger snap") == near_duplicate_key("finger snapping")
    assert near_duplicate_key("frogs croaking") == near_duplicate_key("frog croak")
    assert near_duplicate_key("door") != near_duplicate_key("door opening")


def test_merged_wordings_become_one_class():
    assert event_label("grunt of pain").event == "grunting in pain"
    assert event_label("death scream").labels() == {"sound_event": "screaming", "sound_category": "human"}
    ctx = ExtractContext(SOURCES["wesnoth"], {}, {"wesnoth-1.16-data": "1"}, Path("/nonexistent/wesnoth"))
    rec = recordings._make_record(ctx, "wesnoth-1.16-data", "a/human-hit-1.ogg", "wesnoth/a/human-hit-1.ogg",
                                  "x", labels={"sound_event": "grunt of pain", "sound_category": "human"},
                                  group="g", environmental=True)
    assert rec.labels == {"sound_event": "grunting in pain", "sound_category": "human"}


# ---------------------------------------------------------------------------------------------------------------
# the extractor on a fixture package


def _ogg(tmp_path: Path, seed: int, n: int = 1600) -> bytes:
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)
    p = tmp_path / f"_{seed}.ogg"
    sf.write(p, x, 16000, format="OGG")
    data = p.read_bytes()
    p.unlink()
    return data


TABLE = """# fixture
# package\tfrozen-bubble-data
# version\t1.0-1
# base\tusr/share/games/frozen-bubble/snd
path\tlabel\tgroup\tnote
applause.ogg\tapplause\t-\t
copy.ogg\tapplause\t-\tsame bytes as applause.ogg
snore.ogg\tsnoring\tsleepers\t
cancel.ogg\t-\t-\tinterface sound
tiny.ogg\ttypewriter\t-\t
gone.ogg\tthud\t-\tnot in this version
"""


def test_from_reviewed_table_on_a_fixture(tmp_path, monkeypatch):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "frozen-bubble.tsv").write_text(TABLE)
    monkeypatch.setattr(reviewed, "TABLES_DIR", tables)
    root = tmp_path / "frozen-bubble-data"
    snd = root / "usr/share/games/frozen-bubble/snd"
    snd.mkdir(parents=True)
    applause = _ogg(tmp_path, 1)
    for name, data in {"applause.ogg": applause, "copy.ogg": applause, "snore.ogg": _ogg(tmp_path, 2),
                       "cancel.ogg": _ogg(tmp_path, 3), "tiny.ogg": _ogg(tmp_path, 4, n=400),
                       "new.ogg": _ogg(tmp_path, 5)}.items():
        (snd / name).write_bytes(data)
    doc = root / "usr/share/doc/frozen-bubble-data"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                   "Files: *\nCopyright: x\nLicense: GPL-2\n")
    ctx = ExtractContext(SOURCES["frozen-bubble"], {"frozen-bubble-data": root}, {"frozen-bubble-data": "1.0-1"},
                         tmp_path / "corpus" / "frozen-bubble")
    records = SOURCES["frozen-bubble"].extract(ctx)
    got = [(r.id, r.labels["sound_event"], r.group, r.licence, r.environmental) for r in records]
    assert got == [
        ("frozen-bubble/applause", "applause", "frozen-bubble-data:applause", "GPL-2.0-only", True),
        ("frozen-bubble/snore", "snoring", "frozen-bubble-data:sleepers", "GPL-2.0-only", True),
    ]
    assert records[0].meta["original_path"] == "usr/share/games/frozen-bubble/snd/applause.ogg"
    assert env.SKIPPED["frozen-bubble"] == {"duplicate": 1, "too short": 1, "reviewed: interface sound": 1,
                                           "not reviewed": 1}


def test_package_files_reads_zip_members(tmp_path):
    z = tmp_path / "pkg/usr/share/x/public.zip"
    z.parent.mkdir(parents=True)
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("audio/b/two.ogg", b"2")
        f.writestr("audio/a/one.wav", b"1")
        f.writestr("audio/readme.txt", b"t")
        f.writestr("art/three.ogg", b"3")
    got = [(rel, orig, reader()) for rel, orig, reader in
           reviewed.package_files(tmp_path / "pkg", "usr/share/x/public.zip!audio/")]
    assert got == [("a/one.wav", "usr/share/x/public.zip!audio/a/one.wav", b"1"),
                   ("b/two.ogg", "usr/share/x/public.zip!audio/b/two.ogg", b"2")]
