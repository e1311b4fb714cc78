"""Extractors for the real recordings inside Debian packages (data-sources.md §1): speech, music and game sounds.

One function per corpus source, registered with ``@debian_source``.  Each walks an unpacked package, copies the
audio it can label into the corpus (``ctx.copy`` / ``ctx.write_bytes``) and returns one ``ClipRecord`` per file.

Conventions shared by every extractor here
- A clip's corpus path is ``<source>/<path below the package's sound folder>`` (the constant ``usr/share/...``
  prefix is dropped, nothing else), so ids (``<source>/<that path without extension>``) do not depend on
  iteration order and survive a rebuild.  ``meta`` keeps the package, its version and the original path.
- Files are visited in sorted order, symlinks are skipped (they only alias another file), and byte-identical
  duplicates inside a source are kept once (first in sorted order): the same audio under two labels (a voice
  pack reusing another pack's grunts, Serbian themes in four scripts) would leak between splits or add label noise.
- Labels follow the shared vocabulary (.helpers/TASKS.md): short lowercase English words.  Anything we cannot
  label honestly is skipped, never guessed.  ``texts`` holds only what a person wrote about the clip
  (transcripts, the world-music descriptions): captions are built later from labels + texts, and a short text is
  also turned into "someone saying '<text>'", so file-name words of non-speech sounds must not go there.
- Nothing is decoded here: broken files are copied as they are and the prepare stage quarantines them.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Iterable

from ..records import ClipRecord
from .fetch import ExtractContext, debian_source
from .vocabulary import EVENTS as SHARED_EVENTS
from .vocabulary import canonical_event

__all__ = [
    "LANGUAGE_NAMES", "RccError", "asterisk_transcripts", "dep5_licence", "drum_labels", "ktuberling_keyword",
    "language_name", "parse_dep5", "parse_drumkit", "parse_klettres_sounds", "parse_soundtheme", "read_rcc", "spdx",
]

AUDIO_EXTS = (".wav", ".ogg", ".oga", ".opus", ".flac", ".aiff", ".aif", ".mp3")

# Language codes seen in these packages -> the English name used as the `language` label.
LANGUAGE_NAMES = {
    "ar": "arabic", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german", "el": "greek",
    "en": "english", "es": "spanish", "fi": "finnish", "fr": "french", "ga": "irish", "gl": "galician",
    "he": "hebrew", "hu": "hungarian", "id": "indonesian", "it": "italian", "lt": "lithuanian",
    "ml": "malayalam", "nb": "norwegian", "nds": "low german", "nl": "dutch", "nn": "norwegian",
    "pt": "portuguese", "ro": "romanian", "ru": "russian", "sl": "slovenian", "sr": "serbian",
    "sv": "swedish", "tn": "tswana", "uk": "ukrainian", "wa": "walloon",
}


def language_name(code: str) -> str | None:
    """'pt_BR' -> 'portuguese', 'sr@latin' -> 'serbian'; None for a code we do not know."""
    return LANGUAGE_NAMES.get(re.split(r"[_@-]", code)[0].lower())


# --------------------------------------------------------------------------------------------------------------
# Shared helpers


def _audio_files(folder: Path, exts: tuple[str, ...] = AUDIO_EXTS) -> list[Path]:
    """Regular audio files under ``folder``, sorted by path; symlinks are aliases and are left out."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file() and not p.is_symlink())


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


class _Seen:
    """Remembers content hashes so a source keeps each distinct recording once."""

    def __init__(self):
        self.first: dict[str, str] = {}
        self.skipped = 0

    def duplicate(self, data: bytes, rel: str) -> bool:
        digest = hashlib.sha1(data).hexdigest()
        if digest in self.first:
            self.skipped += 1
            return True
        self.first[digest] = rel
        return False


def _clean_label(text: str) -> str:
    """'moon_rocket' / 'Moon-Rocket' -> 'moon rocket'."""
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", text)).strip().lower()


def _make_record(ctx: ExtractContext, package: str, rel: str, path: str, original: str, *, labels: dict,
                 group: str, texts: Iterable[str] = (), licence: str | None = None, environmental: bool = False,
                 meta: dict | None = None) -> ClipRecord:
    stem = rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel
    labels = dict(labels)
    if isinstance(labels.get("sound_event"), str):  # near-duplicate wordings merged (vocabulary.EVENT_MERGES)
        labels["sound_event"] = canonical_event(labels["sound_event"])
    # The environmental sources share one event vocabulary (vocabulary.EVENTS: event -> category); an event we
    # name the same way takes its category from there, so one class never carries two categories in the corpus.
    if labels.get("sound_event") in SHARED_EVENTS:
        labels["sound_category"] = SHARED_EVENTS[labels["sound_event"]]
    return ClipRecord(
        id=f"{ctx.source.name}/{stem}",
        path=path,
        source=f"debian:{package}",
        licence=licence or ctx.source.licence,
        real=True,
        environmental=environmental,
        group=group,
        labels=labels,
        texts=[t for t in texts if t],
        meta={"package": package, "package_version": ctx.versions.get(package, ""), "original_path": original,
              **(meta or {})},
    )


def _unique_ids(records: list[ClipRecord]) -> list[ClipRecord]:
    """Ids drop the extension, so 'mace.ogg' and 'mace.wav' side by side would collide: those (and only those)
    keep their extension in the id ('wesnoth/.../mace.ogg'), which is just as stable."""
    count: dict[str, int] = {}
    for r in records:
        count[r.id] = count.get(r.id, 0) + 1
    for r in records:
        if count[r.id] > 1:
            r.id = f"{r.id}{Path(r.path).suffix}"
    return records


def _copy_record(ctx: ExtractContext, seen: _Seen, package: str, src: Path, rel: str, **kw) -> ClipRecord | None:
    """Copy one file from an unpacked package and describe it; None if it duplicates an earlier file."""
    if seen.duplicate(src.read_bytes(), rel):
        return None
    path = ctx.copy(src, rel)
    original = "/" + str(src.relative_to(ctx.roots[package]))
    return _make_record(ctx, package, rel, path, original, **kw)


# --- Debian machine-readable copyright (DEP-5): per-file licences -----------------------------------------------

_SPDX = {
    "gpl-2+": "GPL-2.0-or-later", "gpl-2": "GPL-2.0-only", "gpl-3+": "GPL-3.0-or-later", "gpl-3": "GPL-3.0-only",
    "cc0": "CC0-1.0", "cc0-1.0": "CC0-1.0", "cc-by-3.0": "CC-BY-3.0", "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-sa-3.0-us": "CC-BY-SA-3.0-US", "cc-by-sa-4.0": "CC-BY-SA-4.0", "cc-by-4.0": "CC-BY-4.0",
    "mit": "MIT", "expat": "MIT", "gfdl-1.3": "GFDL-1.3", "free-art": "LAL-1.3",
}


def spdx(name: str) -> str:
    """Normalise a DEP-5 licence short name ('GPL-2+ with composition exception' -> 'GPL-2.0-or-later')."""
    short = name.strip().split()[0] if name.strip() else "unknown"
    return _SPDX.get(short.lower(), short)


def parse_dep5(text: str) -> list[tuple[list[str], str]]:
    """Stanzas of a DEP-5 copyright file as (file patterns, licence short name), in file order."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            stanzas.append((fields["files"].split(), fields["license"].splitlines()[0].strip()))
    return stanzas


def dep5_licence(stanzas: list[tuple[list[str], str]], rel: str, default: str) -> str:
    """Licence of ``rel`` (a path in the upstream tree): the last matching stanza wins, as DEP-5 specifies."""
    found = None
    for patterns, licence in stanzas:
        if any(fnmatch.fnmatchcase(rel, p) for p in patterns):
            found = licence
    return spdx(found) if found else default


def _read_dep5(root: Path, package: str) -> list[tuple[list[str], str]]:
    f = root / "usr/share/doc" / package / "copyright"
    return parse_dep5(f.read_text(encoding="utf-8", errors="replace")) if f.exists() else []


# --------------------------------------------------------------------------------------------------------------
# Asterisk core sounds: professional telephone prompts, one voice per language.

_ASTERISK_LANGS = ("en", "es", "fr", "it", "ru")
_ASTERISK_LICENCE = {"en": "CC-BY-SA-3.0", "es": "CC-BY-SA-3.0", "fr": "CC-BY-SA-3.0", "it": "CC-BY-3.0",
                     "ru": "CC-BY-3.0"}
_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Prompts that are not speech: tones and one animal recording.  (labels, environmental)
_ASTERISK_NON_SPEECH = {
    "beep": ({"sound_event": "beep", "sound_category": "alarm"}, False),
    "beeperr": ({"sound_event": "error beep", "sound_category": "alarm"}, False),
    "ascending-2tone": ({"sound_event": "beep", "sound_category": "alarm"}, False),
    "descending-2tone": ({"sound_event": "beep", "sound_category": "alarm"}, False),
    "confbridge-join": ({"sound_event": "beep", "sound_category": "alarm"}, False),
    "confbridge-leave": ({"sound_event": "beep", "sound_category": "alarm"}, False),
    "tt-monkeys": ({"sound_event": "monkey", "sound_category": "animal"}, True),
}


def asterisk_transcripts(path: Path) -> dict[str, str]:
    """``core-sounds-XX.txt(.gz)``: 'key: text' lines, ';' comments -> {key: text} (first definition wins)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    out: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            line = line.strip().lstrip("\ufeff")
            if not line or line.startswith(";") or ":" not in line:
                continue
            key, text = line.split(":", 1)
            out.setdefault(key.strip(), text.strip())
    return out


def _strip_annotations(text: str) -> str:
    """Drop stage directions: 'at [@]' -> 'at', 'leave a message. (simple tone sound plays)' -> 'leave a message.'"""
    text = re.sub(r"\s*(\[[^\]]*\]|\([^)]*\)|<[^>]*>)", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _asterisk_keyword(key: str, english: str | None) -> str | None:
    """English meaning of a short prompt (<= 3 words) as a keyword; letters become 'letter x'."""
    if not english:
        return None
    words = re.sub(r"[.!?,;:\"]+", " ", _strip_annotations(english)).lower().split()
    if not words or len(words) > 3:
        return None
    if key.startswith("letters/") and len(words) == 1 and len(words[0]) == 1 and words[0].isalpha():
        return f"letter {words[0]}"
    return " ".join(words)


@debian_source(
    "asterisk",
    [p for lang in _ASTERISK_LANGS for p in (f"asterisk-core-sounds-{lang}-wav", f"asterisk-core-sounds-{lang}")],
    licence="CC-BY-SA-3.0",
)
def extract_asterisk(ctx: ExtractContext) -> list[ClipRecord]:
    """Voice prompts in 5 languages with human transcripts.

    Caveat for every task built from this source: each language is spoken by exactly one voice (en and es by the
    same woman, Allison Smith; fr June Wallack; it Carlo Flora, the only man; ru one woman), so language, speaker
    and gender are confounded here and a "language" classifier may learn the voice.  Audio is 8 kHz telephone band.
    The group is the prompt key, shared by all languages, so a sentence and its translations land in one split.
    """
    transcripts = {}
    for lang in _ASTERISK_LANGS:
        text_root = ctx.roots.get(f"asterisk-core-sounds-{lang}")
        doc = text_root / f"usr/share/doc/asterisk-core-sounds-{lang}" if text_root else None
        found = sorted(doc.glob(f"core-sounds-{lang}.txt*")) if doc else []
        transcripts[lang] = asterisk_transcripts(found[0]) if found else {}
    english = transcripts["en"]
    seen, records = _Seen(), []
    for lang in _ASTERISK_LANGS:
        package = f"asterisk-core-sounds-{lang}-wav"
        if package not in ctx.roots:
            continue
        sounds = ctx.roots[package] / "usr/share/asterisk/sounds"
        for voice_dir in _subdirs(sounds):
            # Folder names say who speaks: en_US_f_Allison = language_region_gender_name.
            m = re.fullmatch(r"([a-z]{2})_([A-Za-z]+)_([fm])_(\w+)", voice_dir.name)
            if not m:
                continue
            gender = {"f": "female", "m": "male"}[m.group(3)]
            speaker = f"asterisk {m.group(4).lower()}"
            for src in _audio_files(voice_dir):
                key = str(src.relative_to(voice_dir).with_suffix(""))
                if key.startswith("silence/"):
                    continue  # pure silence: nothing to label
                text = transcripts[lang].get(key)
                rel = str(src.relative_to(sounds))
                common = dict(group=key, licence=_ASTERISK_LICENCE[lang],
                              meta={"prompt_key": key, "voice": voice_dir.name, "has_transcript": text is not None})
                if key in _ASTERISK_NON_SPEECH:
                    labels, env = _ASTERISK_NON_SPEECH[key]
                    rec = _copy_record(ctx, seen, package, src, rel, labels=labels, environmental=env, **common)
                elif text is not None and re.fullmatch(r"\s*[\[(<].*[\])>]\s*", text):
                    continue  # an unlisted stage direction like "(10 seconds of silence)"
                else:
                    labels = {"language": LANGUAGE_NAMES[lang], "speaker": speaker, "gender": gender}
                    digit = re.fullmatch(r"digits/([0-9])[A-Za-z]?", key)  # 1F/1M/1n: gendered forms of "one"
                    if digit:
                        labels["digit"] = _DIGITS[int(digit.group(1))]
                    keyword = _asterisk_keyword(key, english.get(key))
                    if keyword:
                        labels["keyword"] = keyword
                    texts = [_strip_annotations(text)] if text else []
                    rec = _copy_record(ctx, seen, package, src, rel, labels=labels, texts=texts, **common)
                if rec:
                    records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# KTuberling: object names spoken by native speakers; *.soundtheme maps an English concept to a file.

# Spelling slips in the upstream concept names, fixed so the keyword is a word someone would type.
_KTUBERLING_FIXES = {"whitch": "witch", "sherif": "sheriff", "brocolli": "broccoli", "dowe": "dove",
                     "sphynx": "sphinx", "frier": "friar", "fallingstar": "falling star", "palmtree": "palm tree",
                     "fireengine": "fire engine", "moonwalker": "moon walker"}


def ktuberling_keyword(concept: str) -> str:
    """'moon_rocket' -> 'moon rocket', 'pizzeria_olive3' -> 'pizzeria olive', 'whitch-tux' -> 'witch tux'."""
    words = _clean_label(re.sub(r"\d+$", "", concept)).split()
    return " ".join(_KTUBERLING_FIXES.get(w, w) for w in words)


def parse_soundtheme(path: Path) -> tuple[str, list[tuple[str, str]]]:
    """A ``.soundtheme`` file -> (language code, [(concept, file relative to the sounds folder)])."""
    root = ET.parse(path).getroot()
    lang = root if root.tag == "language" else root.find(".//language")
    code = lang.get("code") if lang is not None and lang.get("code") else path.stem
    return code, [(s.get("name"), s.get("file")) for s in root.iter("sound") if s.get("name") and s.get("file")]


@debian_source("ktuberling", ["ktuberling-data"], licence="GPL-2.0-or-later")
def extract_ktuberling(ctx: ExtractContext) -> list[ClipRecord]:
    package = "ktuberling-data"
    sounds = ctx.roots[package] / "usr/share/ktuberling/sounds"
    seen, records, done = _Seen(), [], set()
    for theme in sorted(sounds.glob("*.soundtheme")):
        code, entries = parse_soundtheme(theme)
        language = language_name(code)
        for concept, file in entries:
            src = sounds / file
            # Some themes name files that the package does not ship (the Indonesian one lists .wav files that
            # are absent); a file named by two concepts keeps the first.
            if file in done or not src.is_file() or src.is_symlink():
                continue
            done.add(file)
            labels = {"keyword": ktuberling_keyword(concept)}
            if language:
                labels["language"] = language
            rec = _copy_record(ctx, seen, package, src, file, labels=labels, group=concept,
                               meta={"concept": concept, "language_code": code})
            if rec:
                records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# KLettres: letters and syllables read by native speakers; LANG/sounds.xml names each file.


def parse_klettres_sounds(path: Path) -> dict[str, tuple[str, str]]:
    """``LANG/sounds.xml`` -> {file: (written letter or syllable, 'alphabet'|'syllables')}."""
    out = {}
    root = ET.parse(path).getroot()
    for section in root.iter():
        if section.tag in ("alphabet", "syllables"):
            for s in section.iter("sound"):
                if s.get("file") and s.get("name"):
                    out.setdefault(s.get("file"), (s.get("name"), section.tag))
    return out


@debian_source("klettres", ["klettres-data"], licence="GPL-2.0-or-later")
def extract_klettres(ctx: ExtractContext) -> list[ClipRecord]:
    package = "klettres-data"
    base = ctx.roots[package] / "usr/share/klettres"
    names: dict[str, tuple[str, str]] = {}
    for xml in sorted(base.glob("*/sounds.xml")):
        try:
            names.update({k: v for k, v in parse_klettres_sounds(xml).items() if k not in names})
        except ET.ParseError:
            pass  # the file name below still gives the letter
    seen, records = _Seen(), []
    for lang_dir in _subdirs(base):
        language = language_name(lang_dir.name)
        if language is None:
            continue  # icons/, pics/
        for kind in ("alpha", "syllab"):
            for src in _audio_files(lang_dir / kind):
                rel = str(src.relative_to(base))
                written, _section = names.get(rel, (src.stem, ""))
                labels = {"language": language}
                # A single Latin letter is something a person can type as a query; other scripts and syllables
                # stay in texts.
                if kind == "alpha" and re.fullmatch(r"[A-Za-z]", written):
                    labels["keyword"] = f"letter {written.lower()}"
                rec = _copy_record(ctx, seen, package, src, rel, labels=labels, group=written.lower(),
                                   texts=[written], meta={"kind": "letter" if kind == "alpha" else "syllable",
                                                          "language_code": lang_dir.name})
                if rec:
                    records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# Hedgewars: ~60 exclamations recorded by each of 15 voice packs.

# File stem (without a trailing number) -> (English words said, emotion).  None where the clip is a grunt or
# where no emotion is implied.  The emotion is a weak proxy (the file name says what the hedgehog exclaims, not
# how the actor performed it): laugh/victory -> happy, ouch -> pain, threats -> angry, warnings -> fear.
_HEDGEWARS_UTTERANCES = {
    "Amazing": ("amazing", "happy"), "Boring": ("boring", "bored"), "Brilliant": ("brilliant", "happy"),
    "Bugger": ("bugger", "angry"), "Byebye": ("bye bye", "sad"), "Comeonthen": ("come on then", "angry"),
    "Coward": ("coward", "angry"), "Cutitout": ("cut it out", "angry"), "Drat": ("drat", "angry"),
    "Enemydown": ("enemy down", "happy"), "Excellent": ("excellent", "happy"), "Fire": ("fire", None),
    "Firepunch": (None, None), "Firstblood": ("first blood", "happy"), "Flawless": ("flawless", "happy"),
    "Flyaway": ("fly away", None), "Gonnagetyou": ("gonna get you", "angry"), "Grenade": ("grenade", None),
    "Hello": ("hello", None), "Hmm": (None, None), "Hurry": ("hurry", "fear"), "Illgetyou": ("i'll get you", "angry"),
    "Incoming": ("incoming", "fear"), "Jump": (None, None), "Justyouwait": ("just you wait", "angry"),
    "Kamikaze": ("kamikaze", None), "Laugh": (None, "happy"), "Leavemealone": ("leave me alone", "angry"),
    "Melon": ("melon", None), "Missed": ("missed", "sad"), "Nooo": ("no", "sad"), "Nutter": ("nutter", "angry"),
    "Ohdear": ("oh dear", "sad"), "Ooff": (None, "pain"), "Oops": ("oops", "surprise"), "Ouch": ("ouch", "pain"),
    "Ow": (None, "pain"), "PoisonCough": (None, "pain"), "PoisonMoan": (None, "pain"),
    "Reinforcements": ("reinforcements", None), "Revenge": ("revenge", "angry"), "Runaway": ("run away", "fear"),
    "Sameteam": ("same team", "angry"), "Solong": ("so long", "sad"), "Stupid": ("stupid", "angry"),
    "Takecover": ("take cover", "fear"), "Thisoneismine": ("this one is mine", None), "Traitor": ("traitor", "angry"),
    "Uh-oh": ("uh oh", "fear"), "Victory": ("victory", "happy"), "Watchit": ("watch it", "angry"),
    "Watchthis": ("watch this", "happy"), "Whatthe": ("what the", "surprise"), "Yessir": ("yes sir", None),
    "Youllregretthat": ("you'll regret that", "angry"),
}


@debian_source("hedgewars", ["hedgewars-data"], licence="GFDL-1.3")
def extract_hedgewars(ctx: ExtractContext) -> list[ClipRecord]:
    """Voice packs only (the game's weapon effects are not labelled here).  Non-English packs (Default_es/pl/ru/uk,
    Russian) say the same thing in their language: the keyword is the English meaning of the file name."""
    package = "hedgewars-data"
    sounds = ctx.roots[package] / "usr/share/games/hedgewars/Data/Sounds"
    seen, records = _Seen(), []
    for pack_dir in _subdirs(sounds / "voices"):
        pack = _clean_label(pack_dir.name)
        for src in _audio_files(pack_dir):
            utterance = re.sub(r"\d+$", "", src.stem)
            if utterance not in _HEDGEWARS_UTTERANCES:
                continue
            words, emotion = _HEDGEWARS_UTTERANCES[utterance]
            labels = {"voice_pack": pack}
            if words:
                labels["keyword"] = words
            if emotion:
                labels["emotion"] = emotion
            rec = _copy_record(ctx, seen, package, src, str(src.relative_to(sounds)), labels=labels,
                               group=utterance.lower(), texts=[words] if words else [],
                               meta={"utterance": src.stem})
            if rec:
                records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# Battle for Wesnoth: battle effects (weapons, creature cries, fire, animals).  UI sounds and music are skipped.

# (regex on the path below data/core/sounds, sound_event, sound_category, environmental).  First match wins.
# Recorded Foley of weapons and impacts, animal and human cries count as environmental (impacts and human
# non-speech sounds do, per TASKS.md); voiced fantasy monsters do not (no real-world class); magic spells,
# fanfares and unclear ambiences (morning, night, ship, war drums) are left out.
_WESNOTH_EVENTS = [
    (r"ambient/birds\d*", "bird call", "animal", True),
    (r"ambient/campfire", "fire crackling", "fire", True),
    (r"axe", "axe strike", "weapon", True),
    (r"bat-flapping", "wings flapping", "animal", True),
    (r"bat-hit-\d+", "bat squeak", "animal", True),
    (r"bite(-small)?", "bite", "animal", True),
    (r"crossbow(-fire)?(-miss)?", "crossbow shot", "weapon", True),
    (r"bow(-puny)?(-fire)?(-miss)?", "bow and arrow", "weapon", True),
    (r"cave-in", "rock impact", "impact", True),
    (r"claws", "claw scratch", "animal", True),
    (r"club(-miss)?", "club hit", "weapon", True),
    (r"dagger-swish", "dagger swish", "weapon", True),
    (r"(throwing-knife|knife)(-miss)?", "knife", "weapon", True),
    (r"explosion", "explosion", "weapon", True),
    (r"fire|melee-fire", "fire whoosh", "fire", True),
    (r"fist", "punch", "impact", True),
    (r"flail(-miss)?", "flail strike", "weapon", True),
    (r"flame-big(-miss)?", "fire whoosh", "fire", True),
    (r"fuse", "burning fuse", "fire", True),
    (r"gold", "coins", "household", True),
    (r"gunshot|thunderstick(-miss)?", "gunshot", "weapon", True),
    (r"hatchet(-miss)?", "axe strike", "weapon", True),
    (r"horn-signals/horn-\d+", "horn call", "alarm", False),
    (r"horse(-elf)?-canter", "horse gallop", "animal", True),
    (r"horse-(die|hit-\d+)", "horse neigh", "animal", True),
    (r"lightning(-miss)?", "thunder", "weather", True),
    (r"mace(-miss)?", "mace strike", "weapon", True),
    (r"miss-\d+", "whoosh", "weapon", True),
    (r"open-chest", "chest opening", "household", True),
    (r"rumble", "rumble", "impact", True),
    (r"sling(-big)?(-miss)?", "sling shot", "weapon", True),
    (r"spear(-miss)?", "spear thrust", "weapon", True),
    (r"squishy-(hit|miss|strike)", "squelch", "impact", True),
    (r"staff(-miss)?", "staff strike", "weapon", True),
    (r"sword-\d+", "sword clash", "weapon", True),
    (r"throw-\d+", "whoosh", "weapon", True),
    (r"torch(-miss)?", "fire whoosh", "fire", True),
    (r"water-blast", "splash", "water", True),
    (r"wolf-growl-\d+", "growl", "animal", True),
    (r"wolf-(die|hit)-\d+", "wolf yelp", "animal", True),
    (r"(dwarf|witches)-laugh", "laughter", "human", True),
    (r"groan|ugg", "groan", "human", True),
    (r"wail(-long|-sml)?", "wail", "human", True),
    (r"(human|human-female|human-old|dwarf|elf|orc|orc-small|goblin)-hit-\d+", "grunt of pain", "human", True),
    (r"(human|human-female|human-old|dwarf|orc|orc-small|goblin)-die-\d+", "death scream", "human", True),
    (r"(drake|gryphon|lich|naga|ogre|troll|mermaid|mermen|skeleton|skeleton-big|wose|yeti|zombie|ghoul|hiss|tusker)"
     r"(-big)?-(hit|die|attack|shriek|charge)(-\d+)?", "monster growl", None, False),
]


@debian_source("wesnoth", ["wesnoth-1.16-data"], licence="GPL-2.0-or-later")
def extract_wesnoth(ctx: ExtractContext) -> list[ClipRecord]:
    package = "wesnoth-1.16-data"
    data = ctx.roots[package] / "usr/share/games/wesnoth/1.16"
    folders = [data / "data/core/sounds", *sorted((data / "data/campaigns").glob("*/sounds"))]
    seen, records = _Seen(), []
    for folder in folders:
        for src in _audio_files(folder):
            key = str(src.relative_to(folder).with_suffix(""))
            for pattern, event, category, env in _WESNOTH_EVENTS:
                if re.fullmatch(pattern, key):
                    break
            else:
                continue
            labels = {"sound_event": event}
            if category:
                labels["sound_category"] = category
            # Numbered takes and the "-miss" variant of one effect come from one session: one group.
            group = re.sub(r"(-miss)?(-\d+)?(-miss)?$", "", key)
            rec = _copy_record(ctx, seen, package, src, str(src.relative_to(data)), labels=labels, group=group,
                               environmental=env,
                               meta={"missed_attack": key.endswith("-miss") or "-miss-" in key})
            if rec:
                records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# Hydrogen drum kits: drumkit.xml names each instrument and its sample layers.

# (regex on the lowercased instrument name, label key, value).  Order matters: cymbals are tested before toms
# ("Crash/Ride Bell"), claps before snares, hats before everything that says "open".
_DRUM_PATTERNS = [
    (r"clap", "drum", "clap"),
    (r"cowbell", "drum", "cowbell"),
    (r"hi-?hat|\bhh\b|\bohh\b|\bhat\b", "drum", "hi-hat"),
    (r"crash|ride|china|splash|cymbal", "drum", "cymbal"),
    (r"kick|bass ?drum|\bbd\b", "drum", "kick drum"),
    (r"snare", "drum", "snare drum"),
    (r"\btom", "drum", "tom"),
    (r"tambourine", "instrument", "tambourine"),
    (r"agogo", "instrument", "agogo"),
    (r"conga", "instrument", "conga"),
    (r"djembe", "instrument", "djembe"),
    (r"sangban|dununba|kenkeni", "instrument", "dunun"),
    (r"cajon", "instrument", "cajon"),
    (r"bongo", "instrument", "bongo"),
    (r"maraca", "instrument", "maracas"),
    (r"clave", "instrument", "claves"),
    (r"woodblock", "instrument", "woodblock"),
    (r"finger snap", "sound_event", "finger snap"),
]


def drum_labels(instrument_name: str) -> dict[str, str]:
    """'Hi-Hat Closed (Paiste 14")' -> {'drum': 'hi-hat'}; {} when the name maps to nothing we know."""
    name = re.sub(r"\([^)]*\)", " ", instrument_name.lower())  # drop maker/size notes like '(Custom, 22")'
    for pattern, key, value in _DRUM_PATTERNS:
        if re.search(pattern, name):
            extra = {"instrument": {"instrument_family": "percussive"}, "sound_event": {"sound_category": "human"}}
            return {key: value, **extra.get(key, {})}
    return {}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # newer kits put everything in the hydrogen-music.org namespace


def parse_drumkit(path: Path) -> tuple[dict[str, str], list[tuple[str, str, float, float, int]]]:
    """drumkit.xml -> ({'name', 'author', 'license'}, [(instrument, sample file, layer min, layer max, n_ranges)]).

    ``n_ranges`` counts the distinct velocity ranges among the instrument's layers: 1 for a single sample or for
    round-robin layers that all cover 0..1, where a layer says nothing about how hard the drum was hit."""
    root = ET.parse(path).getroot()
    info = {_local(c.tag): (c.text or "").strip() for c in root if _local(c.tag) in ("name", "author", "license")}
    samples = []
    for inst in root.iter():
        if _local(inst.tag) != "instrument":
            continue
        name = next((c.text or "" for c in inst if _local(c.tag) == "name"), "")
        layers = []
        for el in inst.iter():
            if _local(el.tag) == "layer" or (_local(el.tag) == "instrument" and el is inst):
                fields = {_local(c.tag): (c.text or "").strip() for c in el}
                if fields.get("filename"):
                    layers.append((fields["filename"], float(fields.get("min") or 0), float(fields.get("max") or 1)))
        n_ranges = len({(lo, hi) for _, lo, hi in layers})
        for filename, lo, hi in layers:
            samples.append((name.strip(), filename, lo, hi, n_ranges))
    return info, samples


def _kit_licence(kit_dir: str, xml_licence: str, stanzas: list[tuple[list[str], str]]) -> str:
    """Per-kit licence: the Debian copyright stanza for drumkits/<kit>.h2drumkit, else drumkit.xml's own text."""
    best, best_len = None, -1
    for patterns, licence in stanzas:
        for p in patterns:
            m = re.fullmatch(r"drumkits/(.+)\.h2drumkit", p)
            # The archive name can be shorter than the unpacked folder ("circAfrique" vs "circAfrique v4").
            if m and (fnmatch.fnmatchcase(kit_dir, m.group(1)) or kit_dir.startswith(m.group(1))) \
                    and len(m.group(1)) > best_len:
                best, best_len = licence, len(m.group(1))
    if best:
        return spdx(best)
    text = xml_licence.lower()
    if "cc0" in text or "creative commons 0" in text:
        return "CC0-1.0"
    if "share" in text and ("cc" in text or "creative" in text or "attribution" in text):
        return "CC-BY-SA-3.0"
    if "cc-by" in text or "attribution" in text:
        return "CC-BY-3.0"
    return "GPL-2.0-or-later"


@debian_source("hydrogen", ["hydrogen-drumkits"], licence="GPL-2.0-or-later")
def extract_hydrogen(ctx: ExtractContext) -> list[ClipRecord]:
    """Each kit is one group: its samples come from one recording session and must not straddle splits."""
    package = "hydrogen-drumkits"
    kits = ctx.roots[package] / "usr/share/hydrogen/data/drumkits"
    stanzas = _read_dep5(ctx.roots[package], package)
    seen, records = _Seen(), []
    for xml in sorted(kits.glob("*/drumkit.xml")):
        kit_dir = xml.parent
        info, samples = parse_drumkit(xml)
        licence = _kit_licence(kit_dir.name, info.get("license", ""), stanzas)
        done = set()
        for instrument, filename, lo, hi, n_ranges in samples:
            src = kit_dir / filename
            labels = drum_labels(instrument)
            if not labels or filename in done or not src.is_file():
                continue
            done.add(filename)
            meta = {"kit": info.get("name") or kit_dir.name, "kit_author": info.get("author", ""),
                    "instrument_name": instrument, "layer_velocity": [lo, hi]}
            if n_ranges > 1:  # one velocity layer of a multi-sampled instrument
                mid = (lo + hi) / 2
                labels["velocity"] = "soft" if mid < 1 / 3 else "medium" if mid < 2 / 3 else "loud"
            rec = _copy_record(ctx, seen, package, src, str(src.relative_to(kits)), labels=labels,
                               group=kit_dir.name, licence=licence, meta=meta)
            if rec:
                records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# Sonic Pi samples: the file-name prefix is the category.

_SONIC_PI_CATEGORIES = {
    "ambi": "ambient", "bass": "bass", "bd": "bass drum", "drum": "drum", "elec": "electronic", "glitch": "glitch",
    "guit": "guitar", "loop": "loop", "mehackit": "sound effects", "misc": "misc", "perc": "percussion",
    "sn": "snare", "tabla": "tabla", "vinyl": "vinyl",
}
# (regex on the stem, extra labels, environmental).  First match wins.
_SONIC_PI_LABELS = [
    (r"bd_.*|drum_(heavy_kick|bass_.*)|elec_(hollow|soft)_kick", {"drum": "kick drum"}, False),
    (r"sn_.*|drum_snare_.*|elec_(hi_|mid_|lo_|filt_)?snare", {"drum": "snare drum"}, False),
    (r"drum_tom_.*|elec_fuzz_tom", {"drum": "tom"}, False),
    (r"drum_cymbal_(closed|open|pedal)", {"drum": "hi-hat"}, False),
    (r"drum_(cymbal|splash)_.*|elec_cymbal", {"drum": "cymbal"}, False),
    (r"drum_cowbell", {"drum": "cowbell"}, False),
    (r"tabla_.*", {"instrument": "tabla", "instrument_family": "ethnic"}, False),
    (r"guit_.*", {"instrument": "electric guitar", "instrument_family": "guitar"}, False),
    (r"ambi_piano", {"instrument": "piano", "instrument_family": "piano"}, False),
    (r"misc_crow", {"sound_event": "crow caw", "sound_category": "animal"}, True),
    (r"misc_burp", {"sound_event": "burp", "sound_category": "human"}, True),
    (r"perc_door", {"sound_event": "door", "sound_category": "household"}, True),
    (r"perc_till", {"sound_event": "cash register", "sound_category": "household"}, True),
    (r"perc_snap\d*", {"sound_event": "finger snap", "sound_category": "human"}, True),
    (r"mehackit_phone\d+", {"sound_event": "telephone", "sound_category": "household"}, False),
    (r"vinyl_(scratch|backspin|rewind)", {"sound_event": "scratching"}, False),
]


@debian_source("sonic-pi", ["sonic-pi-samples"], licence="CC0-1.0")
def extract_sonic_pi(ctx: ExtractContext) -> list[ClipRecord]:
    package = "sonic-pi-samples"
    folder = ctx.roots[package] / "usr/share/sonic-pi/samples"
    stanzas = _read_dep5(ctx.roots[package], package)
    seen, records = _Seen(), []
    for src in _audio_files(folder):
        prefix = src.stem.split("_", 1)[0]
        if prefix not in _SONIC_PI_CATEGORIES:
            continue
        labels, env = {"sample_category": _SONIC_PI_CATEGORIES[prefix]}, False
        for pattern, extra, is_env in _SONIC_PI_LABELS:
            if re.fullmatch(pattern, src.stem):
                labels.update(extra)
                env = is_env
                break
        if src.stem.endswith("_soft") or src.stem.endswith("_hard"):
            labels["velocity"] = "soft" if src.stem.endswith("_soft") else "loud"
        # Upstream keeps the samples in etc/samples/; files the copyright does not list fall under "Files: *".
        licence = dep5_licence(stanzas, f"etc/samples/{src.name}", ctx.source.licence)
        rec = _copy_record(ctx, seen, package, src, src.name, labels=labels, group=src.stem, licence=licence,
                           environmental=env)
        if rec:
            records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# LMMS sample library.  Folder + file name give the labels.  Some ".ogg" files are really WAV and five are
# broken: they are copied unchanged (prepare decodes and quarantines).  drumsynth/ holds synthesis presets, and
# shapes/ and waveforms/ synthetic single-cycle waves, none of them recordings: skipped.

_LMMS_FOLDERS = {"basses": "bass", "bassloops": "bass loop", "beats": "loop", "drums": "drums",
                 "effects": "effects", "instruments": "instrument", "latin": "latin", "misc": "misc",
                 "stringsnpads": "strings and pads"}
# (folder, regex on the stem without its number, extra labels, environmental).  First match wins.
_LMMS_LABELS = [
    ("drums", r"clap", {"drum": "clap"}, False),
    ("drums", r"(bassdrum|kick).*", {"drum": "kick drum"}, False),
    ("drums", r"snare.*", {"drum": "snare drum"}, False),
    ("drums", r"hihat.*", {"drum": "hi-hat"}, False),
    ("drums", r"tom.*", {"drum": "tom"}, False),
    ("drums", r"crash|ride", {"drum": "cymbal"}, False),
    ("drums", r"shaker", {"instrument": "shaker", "instrument_family": "percussive"}, False),
    ("drums", r"clav", {"instrument": "claves", "instrument_family": "percussive"}, False),
    ("drums", r"wood", {"instrument": "woodblock", "instrument_family": "percussive"}, False),
    ("instruments", r"bassslap", {"instrument": "slap bass", "instrument_family": "bass"}, False),
    ("instruments", r"cello", {"instrument": "cello", "instrument_family": "strings"}, False),
    ("instruments", r"church_organ", {"instrument": "church organ", "instrument_family": "organ"}, False),
    ("instruments", r"e_organ", {"instrument": "electric organ", "instrument_family": "organ"}, False),
    ("instruments", r"e_piano_accord", {"instrument": "electric piano", "instrument_family": "piano"}, False),
    ("instruments", r"flute", {"instrument": "flute", "instrument_family": "pipe"}, False),
    ("instruments", r"harpsichord", {"instrument": "harpsichord", "instrument_family": "piano"}, False),
    ("instruments", r"piano", {"instrument": "piano", "instrument_family": "piano"}, False),
    ("instruments", r"steel_guitar_.*distorted",
     {"instrument": "distortion guitar", "instrument_family": "guitar"}, False),
    ("instruments", r"steel_guitar", {"instrument": "steel guitar", "instrument_family": "guitar"}, False),
    ("instruments", r"trumpet", {"instrument": "trumpet", "instrument_family": "brass"}, False),
    ("instruments", r"violin_.*", {"instrument": "violin", "instrument_family": "strings"}, False),
    ("latin", r"latin_brass", {"instrument": "brass section", "instrument_family": "brass"}, False),
    ("latin", r"latin_guitar", {"instrument": "acoustic guitar", "instrument_family": "guitar"}, False),
    ("basses", r".*", {"instrument_family": "bass"}, False),
    ("effects", r"explode", {"sound_event": "explosion", "sound_category": "weapon"}, True),
    ("effects", r"scratch", {"sound_event": "scratching"}, False),
    ("effects", r"wind_chimes", {"sound_event": "wind chime", "sound_category": "household"}, True),
    ("misc", r"applause", {"sound_event": "applause", "sound_category": "human"}, True),
    ("misc", r"breath", {"sound_event": "breathing", "sound_category": "human"}, True),
    ("misc", r"raving_crowd", {"sound_event": "crowd cheering", "sound_category": "human"}, True),
    ("misc", r"metronome", {"sound_event": "metronome", "sound_category": "mechanical"}, False),
    ("misc", r"snaph", {"sound_event": "finger snap", "sound_category": "human"}, True),
]


@debian_source("lmms", ["lmms-common"], licence="GPL-2.0-or-later")
def extract_lmms(ctx: ExtractContext) -> list[ClipRecord]:
    package = "lmms-common"
    samples = ctx.roots[package] / "usr/share/lmms/samples"
    seen, records = _Seen(), []
    for folder, category in sorted(_LMMS_FOLDERS.items()):
        for src in _audio_files(samples / folder):
            name = re.sub(r"\d+$", "", src.stem)
            labels, env = {"sample_category": category}, False
            for f, pattern, extra, is_env in _LMMS_LABELS:
                if f == folder and re.fullmatch(pattern, name):
                    labels.update(extra)
                    env = is_env
                    break
            rel = str(src.relative_to(samples))
            rec = _copy_record(ctx, seen, package, src, rel, labels=labels, group=rel.rsplit(".", 1)[0],
                               environmental=env)
            if rec:
                records.append(rec)
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# GCompris: the sounds sit inside Qt resource bundles (.rcc).


class RccError(ValueError):
    pass


def read_rcc(data: bytes, name: str = "<rcc>") -> dict[str, bytes]:
    """Files inside a Qt binary resource bundle, as {'/path/inside': bytes}.

    Layout (all integers big-endian), as written by Qt's ``rcc``:
      header: b"qres", u32 format version, u32 tree offset, u32 data offset, u32 names offset
              (+ u32 flags from version 3 on).
      tree:   fixed-size nodes, node 0 is the root directory.  Each node starts with u32 name offset, u16 flags.
              A directory (flag 2) then has u32 child count, u32 index of its first child (children are
              consecutive nodes); a file has u16 country, u16 language, u32 offset of its payload in the data
              block.  From version 2 every node ends with a u64 modification time: 14 bytes per node in v1,
              22 from v2.
      names:  at names offset + name offset: u16 length in UTF-16 units, u32 hash, then the UTF-16BE name.
      data:   at data offset + payload offset: u32 size, then the payload.  Flag 1 means zlib (``qCompress``:
              a u32 uncompressed size, then a zlib stream); flag 4 is zstd, which we do not need and refuse.
    """
    try:
        magic, version, tree, data_off, names = struct.unpack_from(">4sIIII", data, 0)
    except struct.error as e:
        raise RccError(f"{name}: too short for a Qt resource header") from e
    if magic != b"qres":
        raise RccError(f"{name}: not a Qt resource bundle (magic {magic!r})")
    if version not in (1, 2, 3):
        raise RccError(f"{name}: unsupported rcc format version {version}")
    node_size = 14 if version == 1 else 22

    def node_name(offset: int) -> str:
        (length,) = struct.unpack_from(">H", data, names + offset)
        start = names + offset + 6
        return data[start:start + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}
    stack = [(0, "")]
    visited = set()
    while stack:
        index, prefix = stack.pop()
        if index in visited:
            raise RccError(f"{name}: resource tree has a cycle at node {index}")
        visited.add(index)
        base = tree + index * node_size
        try:
            name_off, flags = struct.unpack_from(">IH", data, base)
            path = prefix if index == 0 else f"{prefix}/{node_name(name_off)}"
            if flags & 2:
                count, first = struct.unpack_from(">II", data, base + 6)
                stack.extend((child, path) for child in range(first + count - 1, first - 1, -1))
                continue
            (payload_off,) = struct.unpack_from(">I", data, base + 10)
            (size,) = struct.unpack_from(">I", data, data_off + payload_off)
        except struct.error as e:
            raise RccError(f"{name}: node {index} points outside the file") from e
        payload = data[data_off + payload_off + 4:data_off + payload_off + 4 + size]
        if len(payload) != size:
            raise RccError(f"{name}: payload of {path} is truncated")
        if flags & 4:
            raise RccError(f"{name}: {path} is zstd-compressed, which this reader does not support")
        if flags & 1:
            try:
                payload = zlib.decompress(payload[4:])
            except zlib.error as e:
                raise RccError(f"{name}: {path} is not valid zlib data ({e})") from e
        files[path] = payload
    return files


_GCOMPRIS_INSTRUMENTS = {
    "accordion": ("accordion", "reed"), "banjo": ("banjo", "ethnic"), "bongo": ("bongo", "percussive"),
    "castanets": ("castanets", "percussive"), "cello": ("cello", "strings"), "clarinet": ("clarinet", "reed"),
    "cymbal": ("cymbal", "percussive"), "drum_kit": ("drum kit", "percussive"),
    "electric_guitar": ("electric guitar", "guitar"), "flute_traversiere": ("flute", "pipe"),
    "guitar": ("acoustic guitar", "guitar"), "harmonica": ("harmonica", "reed"), "harp": ("harp", "strings"),
    "horn": ("french horn", "brass"), "maracas": ("maracas", "percussive"), "organ": ("organ", "organ"),
    "piano": ("piano", "piano"), "saxophone": ("saxophone", "reed"), "snare_drum": ("snare drum", "percussive"),
    "tambourine": ("tambourine", "percussive"), "timpani": ("timpani", "strings"),
    "triangle": ("triangle", "percussive"), "trombone": ("trombone", "brass"), "trumpet": ("trumpet", "brass"),
    "tuba": ("tuba", "brass"), "violin": ("violin", "strings"),
}
_GCOMPRIS_FARM = {"cat": "cat meow", "chickens": "chicken cluck", "cow": "cow moo", "dog": "dog bark",
                  "duck": "duck quack", "horse": "horse neigh", "owl": "owl hoot", "pig": "pig oink",
                  "sheep": "sheep bleat"}
# memory-sound file stems (LR..._LA) -> (sound_event, sound_category, environmental); "Weird_N" synth sounds and
# the pause are skipped, guitar notes become instrument clips.
_GCOMPRIS_EVERYDAY = [
    (r"LRApplauses.*", "applause", "human", True),
    (r"LRBark.*", "dog bark", "animal", True),
    (r"LRBuddhist_gong.*", "gong", None, False),
    (r"LRDoor_Open.*", "door opening", "household", True),
    (r"LRFactory_noise.*", "machinery", "mechanical", True),
    (r"LRFireballs.*", "fire whoosh", "fire", True),
    (r"LRFrogsInPond.*", "frog croak", "animal", True),
    (r"LRHeart_beat.*", "heartbeat", "human", True),
    (r"LRHits.*", "thud", "impact", True),
    (r"LRObject_falling.*", "object falling", "impact", True),
    (r"LRRain_in_garden.*", "rain", "weather", True),
    (r"LRRing.*", "bell", "alarm", True),
    (r"LRStartAndStopCarEngine.*", "engine", "vehicle", True),
    (r"LRTrain_slowing_down.*", "train", "vehicle", True),
]
# Single sounds of other activities whose file names say plainly what they are: (bundle, stem) -> (labels,
# environmental).  Left out: UI blips, voices, and names that could be several things (canal lock gates, harbor
# ambience, eraser, brush, "eat").
_GCOMPRIS_ACTIVITY_SOUNDS = {
    ("canal_lock", "water_fill"): ({"sound_event": "running water", "sound_category": "water"}, True),
    ("clickgame", "bubble"): ({"sound_event": "bubbling", "sound_category": "water"}, True),
    ("clickgame", "drip"): ({"sound_event": "water drip", "sound_category": "water"}, True),
    ("core", "water"): ({"sound_event": "water", "sound_category": "water"}, True),
    ("core", "crash"): ({"sound_event": "crash", "sound_category": "impact"}, True),
    ("guessnumber", "helicopter"): ({"sound_event": "helicopter", "sound_category": "vehicle"}, True),
    ("melody", "knock"): ({"sound_event": "knock", "sound_category": "impact"}, True),
    ("melody", "xylofon_son1"): ({"instrument": "xylophone", "instrument_family": "chromatic percussion"}, False),
    ("melody", "xylofon_son2"): ({"instrument": "xylophone", "instrument_family": "chromatic percussion"}, False),
    ("melody", "xylofon_son3"): ({"instrument": "xylophone", "instrument_family": "chromatic percussion"}, False),
    ("melody", "xylofon_son4"): ({"instrument": "xylophone", "instrument_family": "chromatic percussion"}, False),
    ("mining", "pickaxe"): ({"sound_event": "pickaxe", "sound_category": "tool"}, True),
    ("money", "money1"): ({"sound_event": "coins", "sound_category": "household"}, True),
    ("money", "money2"): ({"sound_event": "coins", "sound_category": "household"}, True),
    ("morse_code", "dot"): ({"sound_event": "morse code", "sound_category": "alarm"}, False),
    ("morse_code", "dash"): ({"sound_event": "morse code", "sound_category": "alarm"}, False),
    ("railroad", "train"): ({"sound_event": "train", "sound_category": "vehicle"}, True),
    ("reversecount", "icy_walk"): ({"sound_event": "footsteps", "sound_category": "footsteps"}, True),
    ("scalesboard", "metal_hit"): ({"sound_event": "metal clank", "sound_category": "impact"}, True),
    ("target", "arrow"): ({"sound_event": "bow and arrow", "sound_category": "weapon"}, True),
    ("traffic", "car"): ({"sound_event": "engine", "sound_category": "vehicle"}, True),
}
_ACTIVITIES = "/gcompris/src/activities/"


def _world_music_texts(board_qml: str) -> dict[str, tuple[str, str]]:
    """explore_world_music board1.qml -> {audio stem: (title, description)} from its qsTr() strings."""
    out = {}
    pattern = (r'"title":\s*qsTr\("((?:[^"\\]|\\.)*)"\),\s*"text":\s*qsTr\("((?:[^"\\]|\\.)*)"\),\s*'
               r'"audio":[^\n]*/(\w+)\.\$CA')
    for title, text, stem in re.findall(pattern, board_qml):
        out[stem] = (title, text.replace('\\"', '"'))
    return out


@debian_source("gcompris", ["gcompris-qt-data"], licence="GPL-3.0-or-later")
def extract_gcompris(ctx: ExtractContext) -> list[ClipRecord]:
    package = "gcompris-qt-data"
    rcc_dir = ctx.roots[package] / "usr/share/gcompris-qt/rcc"
    stanzas = _read_dep5(ctx.roots[package], package)
    seen, records = _Seen(), []
    bundles = {"explore_farm_animals", "explore_world_music", "instruments", "memory-sound"}
    bundles |= {bundle for bundle, _ in _GCOMPRIS_ACTIVITY_SOUNDS}
    for bundle in sorted(bundles):
        rcc_path = rcc_dir / f"{bundle}.rcc"
        if not rcc_path.is_file():
            continue
        files = read_rcc(rcc_path.read_bytes(), str(rcc_path))
        music_texts = {}
        board = files.get(f"{_ACTIVITIES}explore_world_music/resource/board/board1.qml")
        if board is not None:
            music_texts = _world_music_texts(board.decode("utf-8", errors="replace"))
        for inner in sorted(files):
            if not inner.lower().endswith(AUDIO_EXTS):
                continue
            stem = Path(inner).stem
            labels, env, meta, texts = {}, False, {}, []
            if bundle == "instruments" and stem in _GCOMPRIS_INSTRUMENTS:
                instrument, family = _GCOMPRIS_INSTRUMENTS[stem]
                labels = {"instrument": instrument, "instrument_family": family}
                if stem in ("snare_drum", "cymbal"):
                    labels["drum"] = "snare drum" if stem == "snare_drum" else "cymbal"
            elif bundle == "explore_farm_animals" and stem in _GCOMPRIS_FARM:
                labels, env = {"sound_event": _GCOMPRIS_FARM[stem], "sound_category": "animal"}, True
            elif bundle == "explore_world_music" and stem in music_texts:
                # Region recordings have no label in the shared vocabulary: the region and its description
                # are text, the region name also in meta.
                title, description = music_texts[stem]
                texts = [f"Music from {title}: {description}"]
                meta = {"music_region": title.lower()}
                labels = {"sample_category": "world music"}
            elif bundle == "memory-sound":
                if stem.startswith("guitar_"):
                    labels = {"instrument": "acoustic guitar", "instrument_family": "guitar"}
                for pattern, event, category, is_env in _GCOMPRIS_EVERYDAY:
                    if re.fullmatch(pattern, stem):
                        labels = {"sound_event": event, **({"sound_category": category} if category else {})}
                        env = is_env
                        break
            elif (bundle, stem) in _GCOMPRIS_ACTIVITY_SOUNDS:
                labels, env = _GCOMPRIS_ACTIVITY_SOUNDS[bundle, stem]
            if not labels:
                continue
            data = files[inner]
            rel = f"{bundle}/{inner.lstrip('/')}"
            if seen.duplicate(data, rel):
                continue
            path = ctx.write_bytes(data, rel)
            upstream = inner[len("/gcompris/"):] if inner.startswith("/gcompris/") else inner.lstrip("/")
            licence = dep5_licence(stanzas, upstream, ctx.source.licence)
            records.append(_make_record(
                ctx, package, rel, path, f"/{rcc_path.relative_to(ctx.roots[package])}:{inner}", labels=labels,
                group=stem, texts=texts, licence=licence, environmental=env, meta={"rcc": rcc_path.name, **meta}))
    return _unique_ids(records)


# --------------------------------------------------------------------------------------------------------------
# freedesktop sound theme: desktop event sounds, named after the event.

# stem -> (sound_event, sound_category, environmental).  The audio-channel-* files are a voice naming a
# loudspeaker ("front left"): speech, labelled as such.
_FREEDESKTOP = {
    "alarm-clock-elapsed": ("alarm", "alarm", True),
    "audio-volume-change": ("click", None, False),
    "bell": ("bell", "alarm", False),
    "camera-shutter": ("camera shutter", "household", True),
    "complete": ("notification chime", None, False),
    "device-added": ("notification chime", None, False),
    "device-removed": ("notification chime", None, False),
    "dialog-information": ("notification chime", None, False),
    "dialog-warning": ("warning beep", "alarm", False),
    "message": ("notification chime", None, False),
    "message-new-instant": ("notification chime", None, False),
    "phone-incoming-call": ("telephone ringing", "alarm", True),
    "phone-outgoing-busy": ("busy signal", "alarm", False),
    "phone-outgoing-calling": ("ringback tone", "alarm", False),
    "service-login": ("notification chime", None, False),
    "service-logout": ("notification chime", None, False),
    "suspend-error": ("error beep", "alarm", False),
    "trash-empty": ("paper rustling", "household", True),
}


@debian_source("freedesktop-sounds", ["sound-theme-freedesktop"], licence="CC-BY-SA-3.0")
def extract_freedesktop(ctx: ExtractContext) -> list[ClipRecord]:
    package = "sound-theme-freedesktop"
    theme = ctx.roots[package] / "usr/share/sounds/freedesktop"
    stanzas = _read_dep5(ctx.roots[package], package)
    seen, records = _Seen(), []
    for src in _audio_files(theme):
        rel = str(src.relative_to(theme))
        licence = dep5_licence(stanzas, rel, ctx.source.licence)
        if src.stem.startswith("audio-channel-"):
            words = _clean_label(src.stem[len("audio-channel-"):])
            labels, env, texts = {"language": "english", "keyword": words}, False, [words]
        elif src.stem in _FREEDESKTOP:
            event, category, env = _FREEDESKTOP[src.stem]
            labels = {"sound_event": event, **({"sound_category": category} if category else {})}
            texts = []
        else:
            continue  # audio-test-signal and anything new: no honest label
        rec = _copy_record(ctx, seen, package, src, rel, labels=labels, group=src.stem, licence=licence,
                           environmental=env, texts=texts)
        if rec:
            records.append(rec)
    return _unique_ids(records)


def emitted_events() -> set[str]:
    """Every ``sound_event`` the tables of this module can give a clip, as written in the tables (before merging).

    For the vocabulary tests: after ``canonical_event`` no two of these and ``vocabulary.EVENTS`` may be wordings
    of one sound.  A new table of events belongs here too.
    """
    out: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "sound_event" and isinstance(value, str):
                    out.add(value)
                else:
                    walk(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)

    for table in (_ASTERISK_NON_SPEECH, _SONIC_PI_LABELS, _LMMS_LABELS, _GCOMPRIS_ACTIVITY_SOUNDS):
        walk(table)
    out.update(event for _, event, _, _ in _WESNOTH_EVENTS)
    out.update(event for _, event, _, _ in _GCOMPRIS_EVERYDAY)
    out.update(_GCOMPRIS_FARM.values())
    out.update(event for event, _, _ in _FREEDESKTOP.values())
    out.update(value for _, key, value in _DRUM_PATTERNS if key == "sound_event")
    return out
