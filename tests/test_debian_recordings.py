"""Extractors for the real recordings of data-sources §1, on fixtures in tmp_path that copy each package's layout.

Nothing is decoded by the extractors, so fixture "audio" is a few distinct bytes per file; what is checked is the
parsing (transcripts, soundtheme XML, drumkit.xml, Qt rcc bundles, DEP-5 copyright) and the labels that result.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest

from clapkit.data.debian import SOURCES
from clapkit.data.debian import recordings as rec
from clapkit.data.debian.fetch import ExtractContext
from clapkit.data.records import ClipRecord

OUR_SOURCES = {
    "asterisk", "ktuberling", "klettres", "hedgewars", "wesnoth", "hydrogen", "sonic-pi", "lmms", "gcompris",
    "freedesktop-sounds",
}


def _put(root: Path, rel: str, data: bytes | str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _run(name: str, tmp_path: Path, roots: dict[str, Path]) -> dict[str, ClipRecord]:
    ctx = ExtractContext(SOURCES[name], roots, {p: "1.0-1" for p in roots}, tmp_path / "corpus" / name)
    records = SOURCES[name].extract(ctx)
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids))
    for r in records:
        assert r.real and r.path.startswith(f"{name}/") and r.id.startswith(f"{name}/")
        assert (tmp_path / "corpus" / r.path).is_file()
        assert r.meta["package"] in roots and r.meta["package_version"] == "1.0-1" and r.meta["original_path"]
    return {r.id: r for r in records}


# ---------------------------------------------------------------------------------------------------------------
# registry


def test_registry_holds_every_source_with_licence_and_packages():
    ours = {n for n, s in SOURCES.items() if s.extract.__module__ == rec.__name__}
    assert ours == OUR_SOURCES
    for name in OUR_SOURCES:
        src = SOURCES[name]
        assert src.packages and src.licence and src.licence != "unknown"
        assert not src.environmental  # §1 sources; environmental clips are flagged per record
    assert SOURCES["asterisk"].packages == tuple(
        p for lang in ("en", "es", "fr", "it", "ru")
        for p in (f"asterisk-core-sounds-{lang}-wav", f"asterisk-core-sounds-{lang}"))
    assert SOURCES["gcompris"].packages == ("gcompris-qt-data",)
    assert SOURCES["hedgewars"].licence == "GFDL-1.3"


# ---------------------------------------------------------------------------------------------------------------
# small helpers with known answers


@pytest.mark.parametrize("name, labels", [
    ('Kick (Tama Superstar 22")', {"drum": "kick drum"}),
    ("c3 - bass drum 1", {"drum": "kick drum"}),
    ("BassDrum", {"drum": "kick drum"}),
    ("Snare Rimshot (Pearl Free Floating Maple 14x3.5)", {"drum": "snare drum"}),
    ('Hi-Hat Closed (Paiste Alpha Metal edge 14")', {"drum": "hi-hat"}),
    ("Closed HH 1", {"drum": "hi-hat"}),
    ("Sabian Hat Semi-Open", {"drum": "hi-hat"}),
    ('Ride (Custom, Zagrebin 22")', {"drum": "cymbal"}),  # "Custom" must not read as a tom
    ("Crash/Ride Bell (Paiste Rude Crash/Ride 18\")", {"drum": "cymbal"}),
    ("tomhi2", {"drum": "tom"}),
    ("Pearl Tom Floor", {"drum": "tom"}),
    ("Hand Clap", {"drum": "clap"}),
    ("Cowbell", {"drum": "cowbell"}),
    ("Djembe1 Bass", {"instrument": "djembe", "instrument_family": "percussive"}),
    ("Tambourine Pedal (Pearl PTM-10GH)", {"instrument": "tambourine", "instrument_family": "percussive"}),
    ("Stick", {}), ("Zap 1", {}), ("17", {}), ("Sample: beats_01-10.flac", {}),
])
def test_drum_labels(name, labels):
    assert rec.drum_labels(name) == labels


@pytest.mark.parametrize("concept, keyword", [
    ("moon_rocket", "moon rocket"), ("pizzeria_olive3", "pizzeria olive"), ("whitch-tux", "witch tux"),
    ("tux-letter-love", "tux letter love"), ("egypt_sphynx", "egypt sphinx"), ("ball", "ball"),
])
def test_ktuberling_keyword(concept, keyword):
    assert rec.ktuberling_keyword(concept) == keyword


def test_language_names():
    assert rec.language_name("pt_BR") == "portuguese"
    assert rec.language_name("sr@ijekavianlatin") == "serbian"
    assert rec.language_name("en_GB") == "english"
    assert rec.language_name("icons") is None


def test_dep5_last_matching_stanza_wins():
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: someone\nLicense: MIT\n\n"
        "Files: etc/samples/bd_*.flac\n etc/samples/sn_dub.flac\nCopyright: x\nLicense: CC0\n\n"
        "Files: etc/samples/bd_808.flac\nCopyright: y\nLicense: GPL-2+ with composition exception\n text\n"
    )
    stanzas = rec.parse_dep5(text)
    assert [s[1] for s in stanzas] == ["MIT", "CC0", "GPL-2+ with composition exception"]
    assert rec.dep5_licence(stanzas, "etc/samples/bd_fat.flac", "x") == "CC0-1.0"
    assert rec.dep5_licence(stanzas, "etc/samples/sn_dub.flac", "x") == "CC0-1.0"
    assert rec.dep5_licence(stanzas, "etc/samples/bd_808.flac", "x") == "GPL-2.0-or-later"
    assert rec.dep5_licence(stanzas, "etc/samples/loop_amen.flac", "x") == "MIT"
    assert rec.dep5_licence([], "a", "fallback") == "fallback"


# ---------------------------------------------------------------------------------------------------------------
# Qt resource bundles


def build_rcc(files: dict[str, bytes], version: int = 3, compress: tuple[str, ...] = ()) -> bytes:
    """Write a Qt rcc bundle the way Qt's rcc lays it out: breadth-first tree, children consecutive."""
    tree_nodes = {"": {}}
    for path in files:
        node = tree_nodes[""]
        parts = path.strip("/").split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = path
    names, name_off = bytearray(), {}

    def name_offset(name: str) -> int:
        if name not in name_off:
            name_off[name] = len(names)
            names.extend(struct.pack(">HI", len(name), 0) + name.encode("utf-16-be"))
        return name_off[name]

    data = bytearray()
    # Nodes as (name, flags, a, b), laid out breadth-first: the root, then each directory's children as one
    # consecutive run.  For a directory a, b = child count, first child index; for a file a = payload offset.
    nodes = [("", 2, 0, 0)]
    pending = [(0, tree_nodes[""])]
    while pending:
        index, children = pending.pop(0)
        first = len(nodes)
        nodes[index] = (nodes[index][0], 2, len(children), first)
        for child_name in sorted(children):
            value = children[child_name]
            if isinstance(value, dict):
                nodes.append((child_name, 2, 0, 0))
                pending.append((len(nodes) - 1, value))
            else:
                payload = files[value]
                flags = 0
                if value in compress:
                    payload = struct.pack(">I", len(payload)) + zlib.compress(payload)
                    flags = 1
                nodes.append((child_name, flags, len(data), 0))
                data.extend(struct.pack(">I", len(payload)) + payload)
    tree = bytearray()
    for name, flags, a, b in nodes:
        entry = struct.pack(">IH", name_offset(name) if name else 0, flags)
        entry += struct.pack(">II", a, b) if flags & 2 else struct.pack(">HHI", 0, 0, a)
        if version >= 2:
            entry += struct.pack(">Q", 0)
        tree.extend(entry)
    header_size = 20 if version < 3 else 24
    tree_off = header_size
    data_off = tree_off + len(tree)
    names_off = data_off + len(data)
    header = struct.pack(">4sIIII", b"qres", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(tree) + bytes(data) + bytes(names)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_read_rcc_roundtrip(version):
    files = {
        "/gcompris/src/activities/a/resource/x.ogg": b"OggS-plain",
        "/gcompris/src/activities/a/resource/sub/y.wav": b"RIFF" + bytes(range(200)),
        "/gcompris/src/activities/b/z.qml": "Ünïcode qml".encode(),
    }
    blob = build_rcc(files, version, compress=("/gcompris/src/activities/a/resource/sub/y.wav",))
    assert rec.read_rcc(blob) == files


def test_read_rcc_errors_name_the_file():
    with pytest.raises(rec.RccError, match="bad.rcc: not a Qt resource bundle"):
        rec.read_rcc(b"nope" + bytes(20), "bad.rcc")
    with pytest.raises(rec.RccError, match="short.rcc"):
        rec.read_rcc(b"qres", "short.rcc")
    blob = bytearray(build_rcc({"/a/x.ogg": b"abc"}, 3, compress=("/a/x.ogg",)))
    blob[-40:-30] = b"\xff" * 10  # corrupt the zlib stream, which sits before the names block
    with pytest.raises(rec.RccError):
        rec.read_rcc(bytes(blob), "corrupt.rcc")


def test_gcompris_reads_bundles(tmp_path):
    root = tmp_path / "gcompris-qt-data"
    act = "/gcompris/src/activities/"
    rcc = "usr/share/gcompris-qt/rcc/"
    board = (
        '    property var tab : [\n        {\n'
        '            "title": qsTr("Australia"),\n'
        '            "text": qsTr("Aboriginals play the didgeridoo."),\n'
        '            "audio": GCompris.ApplicationInfo.getAudioFilePath("qrc:/gcompris/src/activities/'
        'explore_world_music/resource/music/australia.$CA"),\n        },\n    ]\n'
    )
    _put(root, rcc + "instruments.rcc", build_rcc({
        act + "instruments/resource/violin.ogg": b"violin-audio",
        act + "instruments/resource/snare_drum.ogg": b"snare-audio",
        act + "instruments/resource/violin.svg": b"<svg/>",
    }, compress=(act + "instruments/resource/violin.ogg",)))
    _put(root, rcc + "explore_farm_animals.rcc", build_rcc({
        act + "explore_farm_animals/resource/animals/cow.ogg": b"moo",
    }))
    _put(root, rcc + "explore_world_music.rcc", build_rcc({
        act + "explore_world_music/resource/music/australia.ogg": b"didgeridoo",
        act + "explore_world_music/resource/board/board1.qml": board.encode(),
    }, compress=(act + "explore_world_music/resource/board/board1.qml",)))
    _put(root, rcc + "memory-sound.rcc", build_rcc({
        act + "memory-sound/resource/LRRain_in_garden_01_LA_cut.ogg": b"rain",
        act + "memory-sound/resource/LRWeird_1_LA.ogg": b"weird",
        act + "memory-sound/resource/guitar_son1.ogg": b"pluck",
    }))
    _put(root, rcc + "railroad.rcc", build_rcc({act + "railroad/resource/sounds/train.wav": b"choo",
                                               act + "railroad/resource/sounds/whistle.wav": b"unlisted"}))
    _put(root, "usr/share/doc/gcompris-qt-data/copyright",
         "Files: *\nCopyright: x\nLicense: GPL-3+\n\n"
         "Files: src/activities/memory-sound/resource/*_LA_cut.ogg\nCopyright: y\nLicense: free-art\n")
    out = _run("gcompris", tmp_path, {"gcompris-qt-data": root})

    violin = out["gcompris/instruments/gcompris/src/activities/instruments/resource/violin"]
    assert violin.labels == {"instrument": "violin", "instrument_family": "strings"} and not violin.environmental
    assert (tmp_path / "corpus" / violin.path).read_bytes() == b"violin-audio"  # decompressed
    assert out["gcompris/instruments/gcompris/src/activities/instruments/resource/snare_drum"].labels["drum"] \
        == "snare drum"
    cow = out["gcompris/explore_farm_animals/gcompris/src/activities/explore_farm_animals/resource/animals/cow"]
    assert cow.labels["sound_event"] == "cow moo" and cow.environmental and cow.licence == "GPL-3.0-or-later"
    music = out["gcompris/explore_world_music/gcompris/src/activities/explore_world_music/resource/music/australia"]
    assert music.texts == ["Music from Australia: Aboriginals play the didgeridoo."]
    assert music.meta["music_region"] == "australia" and not music.environmental
    rain = out["gcompris/memory-sound/gcompris/src/activities/memory-sound/resource/LRRain_in_garden_01_LA_cut"]
    assert rain.labels == {"sound_event": "rain", "sound_category": "weather"} and rain.environmental
    assert rain.licence == "LAL-1.3"  # the per-file stanza beats "Files: *"
    guitar = out["gcompris/memory-sound/gcompris/src/activities/memory-sound/resource/guitar_son1"]
    assert guitar.labels["instrument"] == "acoustic guitar"
    assert not any("LRWeird" in i for i in out)  # synthetic oddities have no honest label
    train = out["gcompris/railroad/gcompris/src/activities/railroad/resource/sounds/train"]
    assert train.labels["sound_event"] == "train" and train.environmental
    assert len(out) == 7  # the unlisted railroad sound is skipped


# ---------------------------------------------------------------------------------------------------------------
# asterisk


def _asterisk_tree(tmp_path: Path) -> dict[str, Path]:
    roots = {}
    transcripts = {
        "en": "; Core Asterisk Sounds in English\n\nactivated: Activated.\ndigits/5: five\nletters/a: a\n"
              "beep: [this is a simple beep tone]\nsilence/1: (1 second of silence)\n"
              "vm-intro: Please leave your message after the tone. (simple tone sound plays)\n",
        "fr": "\ufeff; Core Asterisk Sounds in French\nactivated: activé\ndigits/5: cinq\n"
              "vm-intro: Veuillez laisser votre message.\n",
        "it": "activated: Attivato.\ndigits/1: uno\n",
    }
    voices = {"en": "en_US_f_Allison", "fr": "fr_CA_f_June", "it": "it_IT_m_Carlo"}
    for lang, text in transcripts.items():
        doc = tmp_path / f"asterisk-core-sounds-{lang}"
        (doc / f"usr/share/doc/asterisk-core-sounds-{lang}").mkdir(parents=True)
        with gzip.open(doc / f"usr/share/doc/asterisk-core-sounds-{lang}/core-sounds-{lang}.txt.gz", "wt",
                       encoding="utf-8") as f:
            f.write(text)
        roots[f"asterisk-core-sounds-{lang}"] = doc
        wav = tmp_path / f"asterisk-core-sounds-{lang}-wav"
        roots[f"asterisk-core-sounds-{lang}-wav"] = wav
        base = f"usr/share/asterisk/sounds/{voices[lang]}/"
        keys = {"en": ["activated", "digits/5", "letters/a", "beep", "silence/1", "vm-intro"],
                "fr": ["activated", "digits/5", "vm-intro", "digits/1F"],
                "it": ["activated", "digits/1"]}[lang]
        for key in keys:
            _put(wav, base + key + ".wav", f"{lang}:{key}")
    return roots


def test_asterisk_labels_and_transcripts(tmp_path):
    out = _run("asterisk", tmp_path, _asterisk_tree(tmp_path))
    five = out["asterisk/en_US_f_Allison/digits/5"]
    assert five.labels == {"language": "english", "speaker": "asterisk allison", "gender": "female",
                           "digit": "five", "keyword": "five"}
    assert five.texts == ["five"] and five.group == "digits/5" and five.licence == "CC-BY-SA-3.0"
    assert five.source == "debian:asterisk-core-sounds-en-wav"
    assert five.path == "asterisk/en_US_f_Allison/digits/5.wav"
    cinq = out["asterisk/fr_CA_f_June/digits/5"]
    # Same prompt key, same group: a sentence and its translations share a split.  The keyword is the English
    # meaning, the text what was said.
    assert cinq.group == five.group and cinq.labels["keyword"] == "five" and cinq.texts == ["cinq"]
    assert out["asterisk/en_US_f_Allison/letters/a"].labels["keyword"] == "letter a"
    assert out["asterisk/fr_CA_f_June/activated"].texts == ["activé"]  # BOM line skipped, accents kept
    assert out["asterisk/fr_CA_f_June/digits/1F"].labels["digit"] == "one"  # gendered "une", no transcript
    assert out["asterisk/fr_CA_f_June/digits/1F"].texts == []
    uno = out["asterisk/it_IT_m_Carlo/digits/1"]
    assert uno.labels["gender"] == "male" and uno.licence == "CC-BY-3.0" and "keyword" not in uno.labels
    intro = out["asterisk/en_US_f_Allison/vm-intro"]
    assert intro.texts == ["Please leave your message after the tone."] and "keyword" not in intro.labels
    beep = out["asterisk/en_US_f_Allison/beep"]
    assert beep.labels["sound_event"] == "beep" and "language" not in beep.labels
    assert "asterisk/en_US_f_Allison/silence/1" not in out
    assert len(out) == 11


def test_asterisk_transcript_parser(tmp_path):
    f = _put(tmp_path, "t.txt", "; comment\n\nkey-a: Hello: world.\nkey-a: duplicate\nnot a line\n")
    assert rec.asterisk_transcripts(f) == {"key-a": "Hello: world."}


# ---------------------------------------------------------------------------------------------------------------
# ktuberling / klettres


def test_ktuberling_soundthemes(tmp_path):
    root = tmp_path / "ktuberling-data"
    base = "usr/share/ktuberling/sounds/"
    _put(root, base + "fr.soundtheme",
         '<language code="fr">\n  <sound name="moon_rocket" file="fr/fusee.wav" />\n'
         '  <sound name="pizzeria_olive2" file="fr/olive.ogg" />\n'
         '  <sound name="tux-letter-love" file="fr/olive.ogg" />\n</language>\n')
    _put(root, base + "id.soundtheme", '<language code="id"><sound name="ball" file="id/bola.wav"/></language>')
    for code in ("sr", "sr@latin"):  # the Serbian themes ship byte-identical copies of each recording
        _put(root, base + f"{code}.soundtheme",
             f'<language code="{code}"><sound name="badge" file="{code}/znacka.ogg"/></language>')
        _put(root, base + f"{code}/znacka.ogg", b"same serbian audio")
    _put(root, base + "fr/fusee.wav", b"fusee")
    _put(root, base + "fr/olive.ogg", b"olive")
    _put(root, base + "fr/unreferenced.wav", b"no concept")
    out = _run("ktuberling", tmp_path, {"ktuberling-data": root})
    assert set(out) == {"ktuberling/fr/fusee", "ktuberling/fr/olive", "ktuberling/sr/znacka"}
    assert out["ktuberling/fr/fusee"].labels == {"keyword": "moon rocket", "language": "french"}
    assert out["ktuberling/fr/fusee"].group == "moon_rocket"
    assert out["ktuberling/fr/olive"].labels["keyword"] == "pizzeria olive"  # first concept naming the file
    assert out["ktuberling/sr/znacka"].labels == {"keyword": "badge", "language": "serbian"}


def test_klettres_letters_and_syllables(tmp_path):
    root = tmp_path / "klettres-data"
    base = "usr/share/klettres/"
    _put(root, base + "fr/sounds.xml",
         "<!-- c -->\n<klettres><language code=\"fr\"><menuitem><label>&amp;French</label></menuitem>"
         "<alphabet><sound name=\"A\" file=\"fr/alpha/a-0.ogg\" /></alphabet>"
         "<syllables><sound name=\"ba\" file=\"fr/syllab/ad-0.ogg\" /></syllables></language></klettres>")
    _put(root, base + "fr/alpha/a-0.ogg", b"A fr")
    _put(root, base + "fr/syllab/ad-0.ogg", b"ba fr")
    _put(root, base + "en/alpha/A.ogg", b"A en")  # no sounds.xml: the file name names the letter
    _put(root, base + "ar/sounds.xml", '<klettres><language code="ar"><alphabet>'
         '<sound name="ب" file="ar/alpha/a-02.ogg" /></alphabet></language></klettres>')
    _put(root, base + "ar/alpha/a-02.ogg", b"ba ar")
    _put(root, base + "pics/x/alpha/skip.ogg", b"not a language")
    out = _run("klettres", tmp_path, {"klettres-data": root})
    assert set(out) == {"klettres/fr/alpha/a-0", "klettres/fr/syllab/ad-0", "klettres/en/alpha/A",
                        "klettres/ar/alpha/a-02"}
    a_fr, a_en = out["klettres/fr/alpha/a-0"], out["klettres/en/alpha/A"]
    assert a_fr.labels == {"language": "french", "keyword": "letter a"} and a_fr.texts == ["A"]
    assert a_fr.group == a_en.group == "a"
    ba = out["klettres/fr/syllab/ad-0"]
    assert ba.labels == {"language": "french"} and ba.texts == ["ba"] and ba.meta["kind"] == "syllable"
    assert out["klettres/ar/alpha/a-02"].labels == {"language": "arabic"}
    assert out["klettres/ar/alpha/a-02"].texts == ["ب"]


# ---------------------------------------------------------------------------------------------------------------
# hedgewars / wesnoth


def test_hedgewars_voice_packs(tmp_path):
    root = tmp_path / "hedgewars-data"
    base = "usr/share/games/hedgewars/Data/Sounds/"
    _put(root, base + "voices/Default_uk/Victory.ogg", b"victory uk")
    _put(root, base + "voices/Default_uk/Ow3.ogg", b"ow")
    _put(root, base + "voices/Default/Ow3.ogg", b"ow")  # byte-identical to Default_uk's: kept once
    _put(root, base + "voices/Pirate/Youllregretthat.ogg", b"arr")
    _put(root, base + "voices/Pirate/Mystery.ogg", b"?")
    _put(root, base + "explosion.ogg", b"boom")  # weapon effects are not part of this source
    out = _run("hedgewars", tmp_path, {"hedgewars-data": root})
    assert set(out) == {"hedgewars/voices/Default_uk/Victory", "hedgewars/voices/Default/Ow3",
                        "hedgewars/voices/Pirate/Youllregretthat"}
    assert out["hedgewars/voices/Default_uk/Victory"].labels == {
        "voice_pack": "default uk", "keyword": "victory", "emotion": "happy"}
    ow = out["hedgewars/voices/Default/Ow3"]
    assert ow.labels == {"voice_pack": "default", "emotion": "pain"} and ow.group == "ow" and ow.texts == []
    assert out["hedgewars/voices/Pirate/Youllregretthat"].labels["emotion"] == "angry"


def test_wesnoth_battle_sounds(tmp_path):
    root = tmp_path / "wesnoth-1.16-data"
    base = "usr/share/games/wesnoth/1.16/"
    for name in ("mace.ogg", "mace.wav", "wolf-growl-1.ogg", "human-female-die-2.ogg", "magic-holy-1.ogg",
                 "bow-fire-miss.ogg", "ambient/campfire.ogg", "lich-hit-1.ogg"):
        _put(root, base + "data/core/sounds/" + name, name)
    _put(root, base + "data/campaigns/World_Conquest/sounds/witches-laugh.wav", b"cackle")
    _put(root, base + "sounds/button.wav", b"ui click")
    _put(root, base + "data/core/music/battle.ogg", b"music")
    out = _run("wesnoth", tmp_path, {"wesnoth-1.16-data": root})
    core = "wesnoth/data/core/sounds/"
    # mace.ogg and mace.wav would share an id without the extension: both keep it.
    assert {core + "mace.ogg", core + "mace.wav"} <= set(out)
    assert out[core + "mace.ogg"].labels["sound_event"] == "mace strike"
    assert out[core + "wolf-growl-1"].labels["sound_event"] == "growl" and out[core + "wolf-growl-1"].environmental
    scream = out[core + "human-female-die-2"]
    # wesnoth's "death scream" is merged into the vocabulary's "screaming" (vocabulary.EVENT_MERGES)
    assert scream.labels["sound_event"] == "screaming" and scream.environmental
    assert out[core + "bow-fire-miss"].meta["missed_attack"] is True and out[core + "bow-fire-miss"].group == "bow-fire"
    assert out[core + "wolf-growl-1"].group == "wolf-growl" and out[core + "mace.wav"].group == "mace"
    assert out[core + "ambient/campfire"].labels["sound_event"] == "fire crackling"
    assert not out[core + "lich-hit-1"].environmental  # a fantasy monster is not an environmental class
    assert out["wesnoth/data/campaigns/World_Conquest/sounds/witches-laugh"].labels["sound_event"] == "laughter"
    assert core + "magic-holy-1" not in out and not any("button" in i or "music" in i for i in out)
    assert len(out) == 8


# ---------------------------------------------------------------------------------------------------------------
# hydrogen / sonic-pi / lmms / freedesktop

_NS_KIT = """<?xml version="1.0" encoding="UTF-8"?>
<drumkit_info xmlns="http://www.hydrogen-music.org/drumkit">
 <name>Stereo Kit</name><author>A. Drummer</author>
 <license>This drumkit is distributed under the GPL version 2 license</license>
 <instrumentList>
  <instrument><id>0</id><name>Kick (Tama 22")</name>
   <layer><filename>kick_soft.wav</filename><min>0</min><max>0.3</max></layer>
   <layer><filename>kick_hard.wav</filename><min>0.7</min><max>1</max></layer>
  </instrument>
  <instrument><id>1</id><name>Zap 1</name><layer><filename>zap.wav</filename></layer></instrument>
  <instrument><id>2</id><name>Tom Hi</name><layer><filename>missing.wav</filename></layer></instrument>
 </instrumentList>
</drumkit_info>
"""
_OLD_KIT = """<drumkit_info><name>Old Kit</name><author>B</author>
 <license>Attribution-Share Alike 3.0 United States</license>
 <instrumentList><instrument><id>0</id><name>Hi Hat Closed</name><filename>hh.flac</filename></instrument>
 </instrumentList></drumkit_info>"""


def test_hydrogen_drumkits(tmp_path):
    root = tmp_path / "hydrogen-drumkits"
    kits = "usr/share/hydrogen/data/drumkits/"
    _put(root, kits + "Stereo Kit 1.0/drumkit.xml", _NS_KIT)
    for f in ("kick_soft.wav", "kick_hard.wav", "zap.wav"):
        _put(root, kits + "Stereo Kit 1.0/" + f, f)
    _put(root, kits + "OldKit v2/drumkit.xml", _OLD_KIT)
    _put(root, kits + "OldKit v2/hh.flac", b"hat")
    _put(root, "usr/share/doc/hydrogen-drumkits/copyright",
         "Files:\n drumkits/Stereo?Kit?1.0.h2drumkit\nCopyright: A\nLicense: GPL-2\n")
    out = _run("hydrogen", tmp_path, {"hydrogen-drumkits": root})
    assert set(out) == {"hydrogen/Stereo Kit 1.0/kick_soft", "hydrogen/Stereo Kit 1.0/kick_hard",
                        "hydrogen/OldKit v2/hh"}
    soft, hard = out["hydrogen/Stereo Kit 1.0/kick_soft"], out["hydrogen/Stereo Kit 1.0/kick_hard"]
    assert soft.labels == {"drum": "kick drum", "velocity": "soft"} and hard.labels["velocity"] == "loud"
    assert soft.group == hard.group == "Stereo Kit 1.0" and soft.licence == "GPL-2.0-only"
    assert soft.meta["kit"] == "Stereo Kit" and soft.meta["layer_velocity"] == [0.0, 0.3]
    hh = out["hydrogen/OldKit v2/hh"]
    assert hh.labels == {"drum": "hi-hat"} and hh.licence == "CC-BY-SA-3.0"  # from drumkit.xml's own text


def test_sonic_pi_prefixes_and_licences(tmp_path):
    root = tmp_path / "sonic-pi-samples"
    for stem in ("bd_808", "drum_tom_lo_soft", "drum_cymbal_closed", "tabla_na", "misc_crow", "mehackit_robot1",
                 "unknownprefix_x"):
        _put(root, f"usr/share/sonic-pi/samples/{stem}.flac", stem)
    _put(root, "usr/share/sonic-pi/samples/README.md", "# Samples")
    _put(root, "usr/share/doc/sonic-pi-samples/copyright",
         "Files: *\nCopyright: S\nLicense: MIT\n\nFiles: etc/samples/bd_808.flac\nCopyright: E\nLicense: CC0\n")
    out = _run("sonic-pi", tmp_path, {"sonic-pi-samples": root})
    assert out["sonic-pi/bd_808"].labels == {"sample_category": "bass drum", "drum": "kick drum"}
    assert out["sonic-pi/bd_808"].licence == "CC0-1.0" and out["sonic-pi/tabla_na"].licence == "MIT"
    assert out["sonic-pi/drum_tom_lo_soft"].labels == {"sample_category": "drum", "drum": "tom", "velocity": "soft"}
    assert out["sonic-pi/drum_cymbal_closed"].labels["drum"] == "hi-hat"
    assert out["sonic-pi/tabla_na"].labels["instrument"] == "tabla"
    crow = out["sonic-pi/misc_crow"]
    assert crow.labels["sound_event"] == "crow caw" and crow.environmental
    assert out["sonic-pi/mehackit_robot1"].labels == {"sample_category": "sound effects"}
    assert "sonic-pi/unknownprefix_x" not in out and len(out) == 6


def test_lmms_keeps_broken_files_unfiltered(tmp_path):
    root = tmp_path / "lmms-common"
    base = "usr/share/lmms/samples/"
    _put(root, base + "drums/kick04.ogg", b"RIFF\x00\x00\x00\x00WAVEbroken")  # a WAV named .ogg, truncated
    _put(root, base + "drums/hihat_opened02.ogg", b"hat")
    _put(root, base + "instruments/violin_pizzicato01.ogg", b"pizz")
    _put(root, base + "misc/applause01.ogg", b"clap clap")
    _put(root, base + "misc/bass!.ogg", b"bass!")
    _put(root, base + "waveforms/10saw.flac", b"synthetic")
    _put(root, base + "drumsynth/tr808/kick.ds", b"preset")
    out = _run("lmms", tmp_path, {"lmms-common": root})
    kick = out["lmms/drums/kick04"]
    assert kick.labels == {"sample_category": "drums", "drum": "kick drum"}
    assert (tmp_path / "corpus" / kick.path).read_bytes() == b"RIFF\x00\x00\x00\x00WAVEbroken"
    assert out["lmms/drums/hihat_opened02"].labels["drum"] == "hi-hat"
    assert out["lmms/instruments/violin_pizzicato01"].labels["instrument_family"] == "strings"
    applause = out["lmms/misc/applause01"]
    assert applause.labels["sound_event"] == "applause" and applause.environmental
    assert out["lmms/misc/bass!"].labels == {"sample_category": "misc"}
    assert len(out) == 5  # waveforms/ and drumsynth presets are not recordings


def test_freedesktop_skips_symlinks(tmp_path):
    root = tmp_path / "sound-theme-freedesktop"
    base = root / "usr/share/sounds/freedesktop/stereo"
    _put(base, "camera-shutter.oga", b"click")
    (base / "screen-capture.oga").symlink_to("camera-shutter.oga")
    _put(base, "audio-channel-front-left.oga", b"front left")
    _put(base, "audio-test-signal.oga", b"noise")
    _put(root, "usr/share/doc/sound-theme-freedesktop/copyright",
         "Files: stereo/camera-shutter.oga stereo/screen-capture.oga\nCopyright: x\nLicense: CC-BY-SA-3.0\n\n"
         "Files: stereo/audio-channel-front-left.oga\nCopyright: y\nLicense: GPL-2+\n")
    out = _run("freedesktop-sounds", tmp_path, {"sound-theme-freedesktop": root})
    assert set(out) == {"freedesktop-sounds/stereo/camera-shutter",
                        "freedesktop-sounds/stereo/audio-channel-front-left"}
    shutter = out["freedesktop-sounds/stereo/camera-shutter"]
    assert shutter.labels["sound_event"] == "camera shutter" and shutter.environmental
    assert shutter.licence == "CC-BY-SA-3.0"
    speech = out["freedesktop-sounds/stereo/audio-channel-front-left"]
    assert speech.labels == {"language": "english", "keyword": "front left"} and speech.licence == "GPL-2.0-or-later"


def test_extraction_is_deterministic(tmp_path):
    roots = _asterisk_tree(tmp_path / "pkgs")
    a = [r.to_json() for r in SOURCES["asterisk"].extract(
        ExtractContext(SOURCES["asterisk"], roots, {p: "1" for p in roots}, tmp_path / "c1" / "asterisk"))]
    b = [r.to_json() for r in SOURCES["asterisk"].extract(
        ExtractContext(SOURCES["asterisk"], roots, {p: "1" for p in roots}, tmp_path / "c2" / "asterisk"))]
    assert a == b and json.loads(a[0])["id"].startswith("asterisk/")
