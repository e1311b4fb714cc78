"""Environmental extractors (data-sources §1b) and their keyword vocabulary, on fixtures built in tmp_path."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.data.debian import SOURCES
from clapkit.data.debian import environmental as env
from clapkit.data.debian.fetch import ExtractContext
from clapkit.data.debian.vocabulary import CATEGORIES, EVENTS, TERMS, lookup, tokens


# ---------------------------------------------------------------------------------------------------------------
# vocabulary


@pytest.mark.parametrize(
    "name, context, event",
    [
        ("BarkGrowl", (), "dog bark"),
        ("bark", (), "dog bark"),
        ("catmeow", (), "cat meow"),
        ("step_gravel", (), "footsteps on gravel"),
        ("default_gravel_footstep.2", (), "footsteps on gravel"),
        ("NYX_STEP_CONCRETE1", (), "footsteps on concrete"),
        ("FootStepSnow2", (), "footsteps on snow"),
        ("default_water_footstep.1", (), "footsteps in water"),
        ("gravel1", ("footsteps",), "footsteps on gravel"),
        ("splash3", ("footsteps",), "footsteps in water"),
        ("Footsteps-1", (), "footsteps"),
        ("breakglass03", (), "glass breaking"),
        ("default_break_glass.1", (), "glass breaking"),
        ("door1-close", (), "door closing"),
        ("doors_glass_door_open", (), "door opening"),
        ("HorseGallop", (), "horse galloping"),
        ("horses galloping", (), "horse galloping"),
        ("WaterDrop", (), "water drip"),
        ("SeaLion", (), "sea lion bark"),
        ("BabyCry", (), "baby crying"),
        ("people cheering with bells", (), "crowd cheering"),
        ("air raid alarm", (), "siren"),
        ("hawk scream", (), "hawk screech"),
        ("bullet-chaingun-10x", (), "machine gun"),
        ("bullet-bodyimpact", (), "bullet impact"),
        ("eagle-owl", (), "owl hoot"),
        ("Scream-female", (), "woman screaming"),
        ("Scream-male1", (), "man screaming"),
        ("scream3", (), "screaming"),
        ("civfemdeath01a", (), "woman screaming"),
        ("malehurt03", (), "man grunting in pain"),
        ("NYX_PAIN4", (), "grunting in pain"),
        ("Washing-machine", (), "washing machine"),
    ],
)
def test_lookup_known_names(name, context, event):
    label = lookup(name, context)
    assert label is not None and label.event == event
    assert label.category == ("footsteps" if event.startswith("footsteps") else EVENTS[event])


@pytest.mark.parametrize(
    "name, context",
    [
        ("barb1", ()),  # not a bark: whole tokens only
        ("catapult_walk", ()),  # not a cat, and "walk" is not a footstep word
        ("crouch", ("footsteps",)),  # a footsteps folder with no surface in the name
        ("hitground2", ("footsteps",)),
        ("wind_turbine", ()),  # reviewed: not wind
        ("paper_airplane", ()),  # reviewed: not an airplane
        ("rocking_horse", ()),
        ("menu-select", ()),
        ("drum-beep", ()),
        ("Chinese_Communist_Anthem_Intro", ()),
        ("alien_engine", ()),  # invented sounds are skipped
        ("ugv-lasercannon-fire", ()),  # not fire crackling
        ("fire_extinguish_flame.2", ()),
        ("t0", ()),
        ("zebra", ()),  # an animal the vocabulary has no reviewed sound for
    ],
)
def test_lookup_rejects(name, context):
    assert lookup(name, context) is None


def test_tokens_split_camel_case_separators_and_digits():
    assert tokens("BarkGrowl") == ["bark", "growl"]
    assert tokens("NYX_STEP_CONCRETE1") == ["nyx", "step", "concrete"]
    assert tokens("default_gravel_footstep.2") == ["default", "gravel", "footstep"]
    assert tokens("door1-close") == ["door", "close"]
    assert tokens("MotorcyclePassing") == ["motorcycle", "passing"]


def test_vocabulary_tables_are_consistent():
    assert set(EVENTS.values()) <= set(CATEGORIES)
    assert all(event is None or event in EVENTS for event in TERMS.values())
    # every key is already in token form, otherwise it could never match
    assert all(" ".join(tokens(k)) == k for k in TERMS)


# ---------------------------------------------------------------------------------------------------------------
# helpers: variant groups, licences, MegaGlest unit sounds


def test_extractor_tables_name_known_events():
    tables = [env.MEGAGLEST_ACTIONS, env.MEGAGLEST_ANIMALS, env.SCORCHED3D_OVERRIDES, env.ETW_OVERRIDES]
    events = {e for t in tables for e in t.values() if e is not None}
    assert events <= set(EVENTS), events - set(EVENTS)


def test_variant_group_strips_numbers_and_variants():
    g = env.variant_group
    assert g("scratch", "Dog1") == g("scratch", "dog2") == "scratch:dog"
    assert g("ufoai-sound", "door1-close") == g("ufoai-sound", "door3-close") == "ufoai-sound:door_close"
    assert g("ufoai-sound", "civfemdeath01a") == "ufoai-sound:civfemdeath"
    assert g("ufoai-sound", "bullet-rifle-3x") == g("ufoai-sound", "bullet-rifle") == "ufoai-sound:bullet_rifle"
    assert g("minetest-data", "default_dig_choppy.1") == "minetest-data:default_dig_choppy"
    assert g("x", "dog") != g("x", "cat")


COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: test

Files: *
Copyright: someone
License: GPL-2

Files: *.ogg
Copyright: someone
License: CC-BY-SA-3.0

Files: mtg/mods/doors/sounds/*
 base/sound/misc/breakglass01.ogg
Copyright: someone else
License: CC-BY-3.0

Files: debian/*
Copyright: packager
License: GPL-3+

License: GPL-2
 This program is free software; you can redistribute it and/or modify it under the terms of the GNU General
 Public License as published by the Free Software Foundation; either version 2 of the License, or (at your
 option) any later version.
"""


def test_dep5_licences_last_match_wins(tmp_path):
    path = tmp_path / "copyright"
    path.write_text(COPYRIGHT)
    lic = env.Dep5Licences.read(path)
    assert lic.licence_for("usr/share/x/readme.wav", "unknown") == "GPL-2.0-or-later"  # "any later version"
    assert lic.licence_for("base/sound/misc/other.ogg", "unknown") == "CC-BY-SA-3.0"
    assert lic.licence_for("base/sound/misc/breakglass01.ogg", "unknown") == "CC-BY-3.0"
    # installed path with another first folder than upstream's "mtg/"
    assert lic.licence_for("minetest_game/mods/doors/sounds/doors_door_open.ogg", "unknown") == "CC-BY-3.0"
    assert lic.licence_for("minetest_game/mods/fire/sounds/fire.ogg", "unknown") == "CC-BY-SA-3.0"


def test_dep5_free_form_file_gives_default(tmp_path):
    path = tmp_path / "copyright"
    path.write_text("This package was debianized by someone.\nAll under the GPL.\n")
    assert env.Dep5Licences.read(path).licence_for("a/b.wav", "GPL-2.0-or-later") == "GPL-2.0-or-later"
    assert env.Dep5Licences.read(tmp_path / "missing").licence_for("a.wav", "MIT") == "MIT"


def test_normalise_licence():
    assert env.normalise_licence("GPL-2+") == "GPL-2.0-or-later"
    assert env.normalise_licence("CC-BY-SA-3") == "CC-BY-SA-3.0"
    assert env.normalise_licence("GPL-3.0+ and CC-BY-SA-3.0") == "GPL-3.0-or-later AND CC-BY-SA-3.0"


@pytest.mark.parametrize(
    "stem, event",
    [
        ("swordman_attack12", "sword clash"),
        ("archer_attack3", "bow and arrow"),
        ("guard_die2", "man screaming"),
        ("cow_select1", "cow moo"),  # an animal unit's "select" sound is the animal, not a voice line
        ("pig_ack2", "pig oink"),
        ("sheep7", "sheep bleat"),
        ("horseman_walk1", "horse galloping"),
        ("worker_harvest_wood2", "wood chopping"),
        ("ele3", "elephant trumpet"),
        ("swordman_ack4", None),  # "Yes, sir!"
        ("archer_select10", None),
        ("princess_die2", "woman screaming"),
        ("daemon_die1", None),  # not a human
        ("catapult_walk3", None),
    ],
)
def test_megaglest_unit_sounds(stem, event):
    label, _ = env.megaglest_label(stem)
    assert (label.event if label else None) == event


# ---------------------------------------------------------------------------------------------------------------
# extractors on fixture packages


def _audio_bytes(tmp_path: Path, fmt: str = "WAV", seed: int = 0, n: int = 1600) -> bytes:
    """A 100 ms clip at 16 kHz; different seeds give different bytes (so they are not duplicates)."""
    x = np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)
    p = tmp_path / f"_tmp_{seed}.{fmt.lower()}"
    sf.write(p, x, 16000, format=fmt)
    data = p.read_bytes()
    p.unlink()
    return data


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _context(tmp_path: Path, source: str, roots: dict[str, Path]) -> ExtractContext:
    src = SOURCES[source]
    return ExtractContext(src, roots, {p: "1.0-1" for p in roots}, tmp_path / "corpus" / source)


def test_ufoai_reads_the_pk3_and_skips_what_it_should(tmp_path):
    root = tmp_path / "ufoai-sound"
    pk3 = root / "usr/share/games/ufoai/base/0snd.pk3"
    pk3.parent.mkdir(parents=True)
    gravel = _audio_bytes(tmp_path, "OGG", 1)
    with zipfile.ZipFile(pk3, "w") as z:
        z.writestr("sound/footsteps/gravel1.ogg", gravel)
        z.writestr("sound/footsteps/gravel2.ogg", gravel)  # same bytes: a duplicate
        z.writestr("sound/footsteps/crouch.ogg", _audio_bytes(tmp_path, "OGG", 2))
        z.writestr("sound/misc/breakglass01.ogg", _audio_bytes(tmp_path, "OGG", 3))
        z.writestr("sound/misc/breakwood01.ogg", b"not audio at all")  # labelled but unreadable
        z.writestr("sound/doors/door1-open.ogg", _audio_bytes(tmp_path, "OGG", 4))
        z.writestr("sound/doors/door2-open.ogg", _audio_bytes(tmp_path, "WAV", 7, n=400))  # 25 ms: too short
        z.writestr("sound/aliens/ortnok/die1.ogg", _audio_bytes(tmp_path, "OGG", 5))
        z.writestr("sound/weapons/laser-small.ogg", _audio_bytes(tmp_path, "OGG", 6))
    _write(root / "usr/share/doc/ufoai-sound/copyright", COPYRIGHT.encode())

    ctx = _context(tmp_path, "ufoai", {"ufoai-sound": root})
    records = SOURCES["ufoai"].extract(ctx)

    by_id = {r.id: r for r in records}
    assert sorted(by_id) == ["ufoai/doors/door1-open", "ufoai/footsteps/gravel1",
                             "ufoai/misc/breakglass01"]
    gravel_rec = by_id["ufoai/footsteps/gravel1"]
    assert gravel_rec.labels == {"sound_event": "footsteps on gravel", "sound_category": "footsteps"}
    assert gravel_rec.real and gravel_rec.environmental
    assert gravel_rec.source == "debian:ufoai-sound"
    assert gravel_rec.group == "ufoai-sound:gravel"
    assert gravel_rec.meta["original_path"] == "usr/share/games/ufoai/base/0snd.pk3!sound/footsteps/gravel1.ogg"
    assert gravel_rec.meta["version"] == "1.0-1" and gravel_rec.meta["sample_rate"] == 16000
    assert (tmp_path / "corpus" / gravel_rec.path).read_bytes() == gravel
    assert gravel_rec.licence == "CC-BY-SA-3.0"
    assert by_id["ufoai/misc/breakglass01"].licence == "CC-BY-3.0"  # per-file paragraph
    assert by_id["ufoai/doors/door1-open"].labels["sound_event"] == "door opening"
    assert not (ctx.out_dir / "misc/breakwood01.ogg").exists()
    assert not (ctx.out_dir / "doors/door2-open.ogg").exists()
    assert env.SKIPPED["ufoai"] == {"duplicate": 1, "unreadable": 1, "too short": 1, "unlabelled": 2,
                                    "folder aliens": 1}

    again = SOURCES["ufoai"].extract(ctx)  # deterministic and idempotent
    assert [r.to_json() for r in again] == [r.to_json() for r in records]


def test_qabcs_uses_json_categories(tmp_path):
    root = tmp_path / "qabcs-data"
    abcs = root / "usr/share/qabcs/abcs"
    letters = {"letters": [
        {"D": {"animals": {"noises": "dog.ogg"}}},
        {"A": {"instrument": {"noises": "accordion.ogg"}, "misc": {"noises": "airplane.ogg"}}},
        {"T": {"animals": {"noises": "turtle.ogg"}}},
    ]}
    _write(abcs / "en/abc1.json", json.dumps(letters).encode())
    _write(abcs / "ru/abc1.json", b"{ broken json")  # reported and ignored
    for i, name in enumerate(["dog", "accordion", "airplane", "turtle"]):
        _write(abcs / f"all/noises/{name}.ogg", _audio_bytes(tmp_path, "OGG", 10 + i))

    records = SOURCES["qabcs"].extract(_context(tmp_path, "qabcs", {"qabcs-data": root}))
    got = {r.id: (r.labels["sound_event"], r.meta.get("qabcs_category")) for r in records}
    assert got == {"qabcs/dog": ("dog bark", ["animals"]), "qabcs/airplane": ("airplane", ["misc"])}
    assert env.SKIPPED["qabcs"] == {"music": 1, "unlabelled": 1}
    assert all(r.licence == "GPL-3.0-or-later" for r in records)


def test_tuxpaint_skips_speech_and_keeps_descriptions(tmp_path):
    root = tmp_path / "tuxpaint-stamps-default"
    stamps = root / "usr/share/tuxpaint/stamps"
    _write(stamps / "animals/birds/owl.ogg", _audio_bytes(tmp_path, "OGG", 20))
    _write(stamps / "animals/birds/owl.txt", "An owl.\nfr.utf8=Un hibou.\n".encode())
    _write(stamps / "animals/birds/owl_desc_fr.ogg", _audio_bytes(tmp_path, "OGG", 21))
    _write(stamps / "symbols/math/1_fr.ogg", _audio_bytes(tmp_path, "OGG", 22))
    _write(stamps / "hobbies/music/string/violin.ogg", _audio_bytes(tmp_path, "OGG", 23))
    _write(stamps / "town/roadsigns/xing_ped.ogg", _audio_bytes(tmp_path, "OGG", 24))

    ctx = _context(tmp_path, "tuxpaint-stamps", {"tuxpaint-stamps-default": root})
    records = SOURCES["tuxpaint-stamps"].extract(ctx)
    assert [(r.id, r.labels["sound_event"], r.texts) for r in records] == [
        ("tuxpaint-stamps/animals/birds/owl", "owl hoot", ["An owl."])]
    assert env.SKIPPED["tuxpaint-stamps"] == {"speech": 2, "music": 1, "unlabelled": 1}


def test_triplea_descriptions_become_texts_and_duplicates_go(tmp_path):
    root = tmp_path / "triplea"
    sounds = root / "usr/share/games/triplea/assets/sounds"
    cheer = _audio_bytes(tmp_path, "WAV", 30)
    _write(sounds / "generic/game_won/game_won_01_people_cheering_with_bells.wav", cheer)
    _write(sounds / "misc/game_won/game_won_01_people_cheering_with_bells.wav", cheer)
    _write(sounds / "generic/chat_slap/chat_slap_01.wav", _audio_bytes(tmp_path, "WAV", 31))
    _write(sounds / "ww2/turn/Germans_Anthem_Intro.wav", _audio_bytes(tmp_path, "WAV", 32))

    records = SOURCES["triplea"].extract(_context(tmp_path, "triplea", {"triplea": root}))
    got = [(r.id, r.labels["sound_event"], r.texts) for r in records]
    assert got == [
        ("triplea/generic/chat_slap/chat_slap_01", "slap", ["chat slap"]),
        ("triplea/generic/game_won/game_won_01_people_cheering_with_bells", "crowd cheering",
         ["people cheering with bells"]),
    ]
    assert env.SKIPPED["triplea"] == {"duplicate": 1, "unlabelled": 1}


def test_by_name_prefers_wav_and_skips_folders(tmp_path):
    root = tmp_path / "xemacs21-basesupport"
    etc = root / "usr/share/xemacs21/xemacs-packages/etc"
    _write(etc / "sounds/bark.au", _audio_bytes(tmp_path, "AU", 40))
    _write(etc / "sounds/bark.wav", _audio_bytes(tmp_path, "WAV", 41))
    _write(etc / "sounds/README.wav", _audio_bytes(tmp_path, "WAV", 42))
    _write(etc / "jde/doc/au/tree.au", _audio_bytes(tmp_path, "AU", 43))

    records = SOURCES["xemacs"].extract(_context(tmp_path, "xemacs", {"xemacs21-basesupport": root}))
    assert [(r.id, r.path, r.labels["sound_event"]) for r in records] == [
        ("xemacs/sounds/bark", "xemacs/sounds/bark.wav", "dog bark")]
    assert records[0].licence == "GPL-2.0-or-later"  # no copyright file: the package licence
    assert env.SKIPPED["xemacs"] == {"reviewed: not environmental or unclear": 1, "folder jde": 1}


def test_all_environmental_sources_are_registered():
    expected = {"tuxpaint-stamps", "ufoai", "megaglest", "qabcs", "scratch", "minetest", "triplea",
                "scorched3d", "ardentryst", "lugaru", "caveexpress", "etw", "xemacs"}
    assert expected <= {name for name, s in SOURCES.items() if s.environmental}
