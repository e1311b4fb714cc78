"""Extractors for the environmental recordings of data-sources §1b: animals, everyday objects, footsteps, weather.

One function per Debian package, registered with ``@debian_source(..., environmental=True)``.  Each walks the
package's sound folder (or the zip inside it), names every file with ``vocabulary.lookup`` and keeps only the
files that map to a reviewed ``sound_event``.  Everything else (speech, music, interface beeps, invented
science-fiction sounds, names the vocabulary does not know) is skipped and counted in ``SKIPPED[source]``, so a
build can report what it left out.

Shared rules, applied by ``_emit``:
- files are visited in sorted order; byte-identical copies inside one package are kept once (triplea ships the
  same recording under several folders; xemacs ships each sound as .au and .wav, the .wav is kept);
- every kept file must be readable by soundfile (its rate goes to ``meta``), otherwise it is skipped as unreadable;
  clips under ``MIN_DURATION_S`` are skipped as too short;
- ``group`` = package + file stem without digits and variant suffixes, so dog1/dog2 of one game share a split;
- the licence is looked up per file in the package's machine-readable copyright file when it has one.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import soundfile as sf

from ..records import ClipRecord
from .fetch import ExtractContext, debian_source
from . import reviewed
from .vocabulary import SoundLabel, event_label, lookup

__all__ = ["SKIPPED", "Dep5Licences", "normalise_licence", "variant_group"]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".ogg", ".oga", ".flac", ".mp3", ".au")
# When one folder holds the same sound in several formats, keep the first of these.
FORMAT_PREFERENCE = {s: i for i, s in enumerate((".wav", ".flac", ".ogg", ".oga", ".mp3", ".au"))}

# Shorter clips are clicks (MegaGlest's 20 ms "build" ticks): padded to a training window they are silence.
MIN_DURATION_S = 0.05

# source -> Counter of skip reasons ("unlabelled", "speech", "music", "duplicate", "unreadable", ...) of the last run.
SKIPPED: dict[str, Counter] = {}


# ----------------------------------------------------------------------------------------------------------------
# Licences from Debian's machine-readable copyright files (DEP-5)

_LICENCE_NAMES = {
    "gpl-2": "GPL-2.0-only", "gpl-2+": "GPL-2.0-or-later", "gpl-2.0+": "GPL-2.0-or-later",
    "gpl-3": "GPL-3.0-only", "gpl-3+": "GPL-3.0-or-later", "gpl-3.0+": "GPL-3.0-or-later",
    "lgpl-2.1+": "LGPL-2.1-or-later", "cc-by-3.0": "CC-BY-3.0", "cc-by-sa-3.0": "CC-BY-SA-3.0",
    "cc-by-sa-3": "CC-BY-SA-3.0", "cc-by-sa-4.0": "CC-BY-SA-4.0", "cc0-1.0": "CC0-1.0", "cc0": "CC0-1.0",
    "public-domain": "public-domain", "mit": "MIT", "expat": "MIT",
}


def normalise_licence(name: str) -> str:
    """Debian licence short name -> SPDX-like id ("GPL-2+" -> "GPL-2.0-or-later"); "A and B" keeps both."""
    parts = [p.strip() for p in re.split(r"\s+and\s+", name.strip(), flags=re.I) if p.strip()]
    return " AND ".join(_LICENCE_NAMES.get(p.lower(), p) for p in parts)


@dataclass
class Dep5Licences:
    """``Files:`` paragraphs of a DEP-5 copyright file, matched like dpkg does: the last matching one wins."""

    paragraphs: list[tuple[list[str], str]] = field(default_factory=list)  # (patterns, licence)

    @classmethod
    def read(cls, path: Path) -> "Dep5Licences":
        if not path.exists():
            return cls()
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.lstrip().startswith("Format:"):
            return cls()  # free-form copyright file: nothing per file
        out = cls()
        files_paragraphs: list[tuple[list[str], str]] = []
        texts: dict[str, str] = {}  # stand-alone "License: NAME" paragraphs: NAME -> text
        for para in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            key = None
            for line in para.splitlines():
                if line[:1] in (" ", "\t") and key:
                    fields[key] += "\n" + line.strip()
                elif ":" in line:
                    key, _, value = line.partition(":")
                    key = key.strip().lower()
                    fields[key] = value.strip()
            if "license" not in fields:
                continue
            name, _, body = fields["license"].partition("\n")
            if "files" in fields:
                patterns = fields["files"].split()
                if patterns and not all(p.startswith("debian/") for p in patterns):
                    files_paragraphs.append((patterns, name.strip()))
            else:
                texts[name.strip()] = body
        for patterns, name in files_paragraphs:
            # Debian writes "GPL-2" for texts that say "version 2 ... or (at your option) any later version".
            if re.fullmatch(r"L?GPL-[\d.]+", name) and "any later version" in " ".join(texts.get(name, "").split()):
                name += "+"
            out.paragraphs.append((patterns, normalise_licence(name)))
        return out

    def licence_for(self, path: str, default: str) -> str:
        """Licence of ``path`` (an upstream-like path, e.g. "base/sound/doors/door1-open.ogg")."""
        found = default
        for patterns, licence in self.paragraphs:
            if any(_pattern_matches(p, path) for p in patterns):
                found = licence
        return found


def _pattern_matches(pattern: str, path: str) -> bool:
    # Installed paths differ from upstream ones by a prefix ("usr/share/games/x/" vs "data/"), so a pattern also
    # matches the end of the path, and a pattern of 4+ components may lose its first one ("mtg/mods/doors/..."
    # for the installed "games/minetest_game/mods/doors/...").
    parts = pattern.split("/")
    for k in (0, 1) if len(parts) >= 4 else (0,):
        sub = "/".join(parts[k:])
        if fnmatch.fnmatchcase(path, sub) or fnmatch.fnmatchcase(path, "*/" + sub):
            return True
    return False


# ----------------------------------------------------------------------------------------------------------------
# Shared emission


def variant_group(package: str, stem: str) -> str:
    """``package:stem`` with numbers and variant suffixes removed: "Dog2" and "dog1" -> "scratch:dog"."""
    s = stem.lower()
    s = re.sub(r"\d+[a-z]?x?(?=$|[-_. ])", "", s)  # "01a", "3x", "2"
    s = re.sub(r"\d+", "", s)
    s = re.sub(r"[-_. ]+", "_", s).strip("_")
    return f"{package}:{s or stem.lower()}"


@dataclass
class Candidate:
    """One audio file a package offers, before it is kept or skipped."""

    rel: str  # path under the source folder of the corpus, with extension (also the id)
    package: str
    original: str  # path inside the unpacked package (or "<zip>!member")
    upstream: str  # path used for the licence lookup
    read: Callable[[], bytes] | Path  # a file to copy, or a reader of bytes (zip members)
    label: SoundLabel | None
    skip_reason: str = "unlabelled"  # why, when label is None
    texts: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    group: str | None = None  # split group; None = variant_group(package, stem)


def _emit(ctx: ExtractContext, candidates: Iterable[Candidate], licences: dict[str, Dep5Licences]) -> list[ClipRecord]:
    name = ctx.source.name
    skipped = SKIPPED[name] = Counter()
    unlabelled: list[str] = []
    seen: set[str] = set()  # sha1 of the kept files
    records = []
    for c in sorted(candidates, key=lambda c: c.rel):
        if c.label is None:
            skipped[c.skip_reason] += 1
            if c.skip_reason == "unlabelled":
                unlabelled.append(c.rel)
            continue
        data = c.read() if callable(c.read) else None
        digest = hashlib.sha1(data if data is not None else c.read.read_bytes()).hexdigest()
        if digest in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(digest)
        path = ctx.write_bytes(data, c.rel) if data is not None else ctx.copy(c.read, c.rel)
        try:
            info = sf.info(str(ctx.out_dir / c.rel))
        except Exception as e:  # libsndfile raises several types; any of them means "cannot use this file"
            log.warning("%s: skipping unreadable %s (%s)", name, c.original, e)
            (ctx.out_dir / c.rel).unlink(missing_ok=True)
            skipped["unreadable"] += 1
            continue
        if info.duration < MIN_DURATION_S:
            (ctx.out_dir / c.rel).unlink(missing_ok=True)
            skipped["too short"] += 1
            continue
        licence = licences[c.package].licence_for(c.upstream, ctx.source.licence)
        stem = Path(c.rel).stem
        records.append(
            ClipRecord(
                id=f"{name}/{Path(c.rel).with_suffix('').as_posix()}",
                path=path,
                source=f"debian:{c.package}",
                licence=licence,
                real=True,
                environmental=True,
                group=f"{c.package}:{c.group}" if c.group else variant_group(c.package, stem),
                labels=c.label.labels(),
                texts=list(c.texts),
                meta={
                    "package": c.package,
                    "version": ctx.versions[c.package],
                    "original_path": c.original,
                    "sample_rate": int(info.samplerate),
                    "duration_s": round(float(info.duration), 3),
                    **c.meta,
                },
            )
        )
    log.info("%s: kept %d clips, skipped %s", name, len(records), dict(skipped))
    if unlabelled:
        log.info("%s: no vocabulary entry for %s", name, ", ".join(unlabelled))
    return records


def _licences(ctx: ExtractContext) -> dict[str, Dep5Licences]:
    return {p: Dep5Licences.read(root / "usr/share/doc" / p / "copyright") for p, root in ctx.roots.items()}


def _audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (sorted), one per stem and folder when a sound ships in several formats."""
    best: dict[tuple[Path, str], Path] = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES:
            key = (f.parent, f.stem.lower())
            if key not in best or FORMAT_PREFERENCE[f.suffix.lower()] < FORMAT_PREFERENCE[best[key].suffix.lower()]:
                best[key] = f
    return sorted(best.values())


def _file_candidate(ctx: ExtractContext, package: str, base: Path, f: Path, label: SoundLabel | None,
                    upstream_prefix: str = "", **kw) -> Candidate:
    rel = f.relative_to(base).as_posix()
    return Candidate(
        rel=rel,
        package=package,
        original=f.relative_to(ctx.roots[package]).as_posix(),
        upstream=upstream_prefix + rel,
        read=f,
        label=label,
        **kw,
    )


def _by_name(ctx: ExtractContext, package: str, sound_dir: str, *, skip_folders: set[str] = frozenset(),
             overrides: dict[str, str | None] | None = None, upstream_prefix: str = "") -> list[ClipRecord]:
    """The common case: label each file from its own name, folders giving the footsteps context.

    ``skip_folders``: folder names whose files are not environmental (music, voices, monsters).
    ``overrides``: reviewed labels for stems of this package the shared vocabulary cannot know ("f16_1" is a jet);
    None skips the stem.
    """
    base = ctx.roots[package] / sound_dir
    overrides = overrides or {}
    cands = []
    for f in _audio_files(base):
        folders = f.relative_to(base).parts[:-1]
        skip = next((d for d in folders if d.lower() in skip_folders), None)
        if skip is not None:
            cands.append(_file_candidate(ctx, package, base, f, None, upstream_prefix, skip_reason=f"folder {skip}"))
            continue
        stem_key = "/".join((*folders, f.stem)).lower()
        key = stem_key if stem_key in overrides else f.stem.lower()
        if key in overrides:
            label = event_label(overrides[key]) if overrides[key] else None
            reason = "reviewed: not environmental or unclear"
        else:
            label, reason = lookup(f.stem, folders), "unlabelled"
        cands.append(_file_candidate(ctx, package, base, f, label, upstream_prefix, skip_reason=reason))
    return _emit(ctx, cands, _licences(ctx))


# ----------------------------------------------------------------------------------------------------------------
# Sources


@debian_source("tuxpaint-stamps", ["tuxpaint-stamps-default"], "GPL-2.0-or-later", environmental=True)
def tuxpaint_stamps(ctx: ExtractContext) -> list[ClipRecord]:
    """Sound of each clip-art stamp: ``<topic>/.../NAME.ogg`` with the English description in ``NAME.txt``.

    ``NAME_desc*.ogg`` files are spoken descriptions and ``symbols/`` are spoken letters and numbers: speech,
    skipped here.  Music instruments (``hobbies/music``) are skipped too.
    """
    pkg = "tuxpaint-stamps-default"
    base = ctx.roots[pkg] / "usr/share/tuxpaint/stamps"
    cands = []
    for f in _audio_files(base):
        rel = f.relative_to(base)
        folders = [p.lower() for p in rel.parts[:-1]]
        texts: list[str] = []
        if "_desc" in f.stem or folders[:1] == ["symbols"]:
            label, reason = None, "speech"
        elif "music" in folders:
            label, reason = None, "music"
        else:
            label, reason = lookup(f.stem), "unlabelled"
            txt = f.with_suffix(".txt")
            if txt.exists():  # first line is the English description ("An owl."); the rest are translations
                first = txt.read_text(encoding="utf-8", errors="replace").strip().splitlines()[:1]
                texts = [first[0].strip()] if first and "=" not in first[0] else []
        cands.append(_file_candidate(ctx, pkg, base, f, label, skip_reason=reason, texts=texts,
                                     meta={"stamp_folder": "/".join(rel.parts[:-1])}))
    return _emit(ctx, cands, _licences(ctx))


UFOAI_FOLDERS = {"ambience", "footsteps", "doors", "impact", "misc", "civilians", "weapons", "soldiers", "seq", "ugv"}


@debian_source("ufoai", ["ufoai-sound"], "GPL-2.0-or-later", environmental=True)
def ufoai_sound(ctx: ExtractContext) -> list[ClipRecord]:
    """Sounds inside the zip ``base/0snd.pk3`` (``sound/<folder>/NAME.ogg``); aliens, UI and geoscape skipped."""
    pkg = "ufoai-sound"
    pk3 = ctx.roots[pkg] / "usr/share/games/ufoai/base/0snd.pk3"
    cands = []
    with zipfile.ZipFile(pk3) as z:
        members = sorted(n for n in z.namelist() if n.lower().endswith(AUDIO_SUFFIXES))
        for m in members:
            parts = m.split("/")
            folder = parts[1] if len(parts) > 2 else ""
            if folder not in UFOAI_FOLDERS:
                label, reason = None, f"folder {folder or '(top)'}"
            else:
                label, reason = lookup(Path(m).stem, parts[1:-1]), "unlabelled"
            rel = "/".join(parts[1:])
            cands.append(Candidate(
                rel=rel, package=pkg, original=f"usr/share/games/ufoai/base/0snd.pk3!{m}", upstream=f"base/{m}",
                read=(lambda m=m: _zip_read(pk3, m)), label=label, skip_reason=reason,
            ))
    return _emit(ctx, cands, _licences(ctx))


def _zip_read(zip_path: Path, member: str) -> bytes:
    with zipfile.ZipFile(zip_path) as z:
        return z.read(member)


# MegaGlest unit sounds are "<unit>_<action>N.wav".  Voice lines (ack/select) are speech; what the rest sounds like
# depends on the unit, so it is decided here from a reviewed list rather than from the words alone.
MEGAGLEST_HUMANS = {
    "archer", "archmage", "axe_thrower", "guard", "horseman", "shaman", "stickfighter", "summoner", "swordman",
    "technician", "worker", "battlemage", "initiate", "princess", "spearman", "valkyrie", "magician", "cudgel",
}
MEGAGLEST_WOMEN = {"princess", "valkyrie", "cudgel"}
MEGAGLEST_ACTIONS = {  # (unit or "*", action) -> event
    ("swordman", "attack"): "sword clash", ("guard", "attack"): "sword clash",
    ("archer", "attack"): "bow and arrow", ("arrow", "hit"): "bow and arrow", ("firearrowhit", ""): "bow and arrow",
    ("horseman", "walk"): "horse galloping", ("worker", "harvest_wood"): "wood chopping",
    ("worker", "mine"): "pickaxe", ("technician", "mine"): "pickaxe", ("worker", "build"): "hammering",
    ("technician", "build"): "hammering", ("anvil", ""): "anvil", ("tech", "building_fall"): "crash",
    ("ele", ""): "elephant trumpet", ("bee", ""): "bee buzz", ("snake", "attack"): "snake hiss",
    ("knife", ""): "knife",
}
MEGAGLEST_ANIMALS = {"cow": "cow moo", "pig": "pig oink", "chicken": "chicken clucking", "bull": "cow moo",
                     "sheep": "sheep bleat"}


def megaglest_label(stem: str) -> tuple[SoundLabel | None, str]:
    """Label of a MegaGlest unit/common sound from its stem ("swordman_attack12" -> sword clash)."""
    s = re.sub(r"\d+[a-z]?$", "", stem.lower()).rstrip("_")
    for (unit, action), event in MEGAGLEST_ACTIONS.items():
        if s == (f"{unit}_{action}" if action else unit):
            return event_label(event), ""
    unit, _, action = s.rpartition("_")
    if unit in MEGAGLEST_ANIMALS or (not unit and action in MEGAGLEST_ANIMALS):  # every sound of an animal unit
        return event_label(MEGAGLEST_ANIMALS.get(unit) or MEGAGLEST_ANIMALS[action]), ""
    if action in ("ack", "select", "sel", "prod"):  # "Yes, sir!" voice lines
        return None, "speech"
    if action == "die" and unit in MEGAGLEST_HUMANS:
        return event_label("woman screaming" if unit in MEGAGLEST_WOMEN else "man screaming"), ""
    return None, "unlabelled"


@debian_source("megaglest", ["megaglest-data"], "CC-BY-SA-3.0", environmental=True)
def megaglest(ctx: ExtractContext) -> list[ClipRecord]:
    """Unit sounds (factions/*/units/*/sounds, commondata/sounds) and tileset ambiences; music and menus skipped."""
    pkg = "megaglest-data"
    base = ctx.roots[pkg] / "usr/share/games/megaglest"
    cands = []
    for f in _audio_files(base):
        parts = [p.lower() for p in f.relative_to(base).parts]
        if "music" in parts or "menu" in parts:
            label, reason = None, "music" if "music" in parts else "folder menu"
        elif "tilesets" in parts or "water_sounds" in parts:
            label, reason = lookup(f.stem), "unlabelled"
        else:
            label, reason = megaglest_label(f.stem)
        cands.append(_file_candidate(ctx, pkg, base, f, label, skip_reason=reason or "unlabelled"))
    return _emit(ctx, cands, _licences(ctx))


@debian_source("qabcs", ["qabcs-data"], "GPL-3.0-or-later", environmental=True)
def qabcs(ctx: ExtractContext) -> list[ClipRecord]:
    """``abcs/all/noises/NAME.ogg``; the alphabet files ``abcs/*/abc*.json`` say which category each noise is in
    ("animals", "misc", "toys", "instrument").  Instrument noises are music and are skipped."""
    pkg = "qabcs-data"
    root = ctx.roots[pkg] / "usr/share/qabcs/abcs"
    categories = qabcs_categories(sorted(root.glob("*/abc*.json")))
    base = root / "all/noises"
    cands = []
    for f in _audio_files(base):
        cats = sorted(categories.get(f.name, ()))
        if "instrument" in cats:
            label, reason = None, "music"
        else:
            label, reason = lookup(f.stem), "unlabelled"
        meta = {"qabcs_category": cats} if cats else {}
        cands.append(_file_candidate(ctx, pkg, base, f, label, "abcs/all/noises/", skip_reason=reason, meta=meta))
    return _emit(ctx, cands, _licences(ctx))


def qabcs_categories(json_files: Iterable[Path]) -> dict[str, set[str]]:
    """noise file name -> categories it is listed under in the alphabet JSON files (bad files are skipped)."""
    out: dict[str, set[str]] = {}

    def walk(node, category):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "noises" and isinstance(value, str):
                    if category:
                        out.setdefault(value, set()).add(category)
                elif isinstance(value, (dict, list)):
                    # letters map to {category: {...}}; one-letter keys are the letters themselves
                    walk(value, key if isinstance(value, dict) and len(key) > 1 and key != "general" else category)
        elif isinstance(node, list):
            for item in node:
                walk(item, category)

    for path in json_files:
        try:
            walk(json.loads(path.read_text(encoding="utf-8")), None)
        except (OSError, ValueError) as e:
            log.warning("qabcs: skipping unreadable %s (%s)", path, e)
    return out


@debian_source("scratch", ["scratch"], "CC-BY-SA-3.0", environmental=True)
def scratch(ctx: ExtractContext) -> list[ClipRecord]:
    """``Media/Sounds/{Animal,Effects,Human}``; music loops, instruments, percussion, vocals, electronic skipped."""
    return _by_name(
        ctx, "scratch", "usr/share/scratch/Media/Sounds", upstream_prefix="Media/Sounds/",
        skip_folders={"music loops", "vocals", "instruments", "percussion", "electronic"},
    )


@debian_source("minetest", ["minetest-data"], "CC-BY-SA-3.0", environmental=True)
def minetest(ctx: ExtractContext) -> list[ClipRecord]:
    """``games/minetest_game/mods/*/sounds``: footsteps on many surfaces, digging, doors, fire, glass, water."""
    return _by_name(ctx, "minetest-data", "usr/share/games/minetest/games", skip_folders={"devtest"})


TRIPLEA_DESCRIPTION = re.compile(r"_\d{2}(?:_(.+))?$")


@debian_source("triplea", ["triplea"], "GPL-2.0-or-later", environmental=True)
def triplea(ctx: ExtractContext) -> list[ClipRecord]:
    """``assets/sounds/<era>/<event>/<event>_NN_<description>.mp3``: the description names the sound and becomes
    the clip's text ("people cheering with bells").  Anthems and fanfares are music and skipped."""
    pkg = "triplea"
    base = ctx.roots[pkg] / "usr/share/games/triplea/assets/sounds"
    cands = []
    for f in _audio_files(base):
        m = TRIPLEA_DESCRIPTION.search(f.stem)
        description = (m.group(1) if m and m.group(1) else (f.stem[: m.start()] if m else f.stem)).replace("_", " ")
        label = lookup(description)
        cands.append(_file_candidate(ctx, pkg, base, f, label, texts=[description] if label else []))
    return _emit(ctx, cands, _licences(ctx))


SCORCHED3D_OVERRIDES = {  # reviewed: Scorched3D sound names the shared vocabulary cannot decide
    "f16_1": "jet aircraft", "f16_2": "jet aircraft", "f18_1": "jet aircraft", "f18_2": "jet aircraft",
    "t38": "jet aircraft", "none/data/wav/explosions/large": "explosion",
    "none/data/wav/explosions/medium": "explosion", "none/data/wav/explosions/small": "explosion",
    "none/data/wav/explosions/xlarge": "explosion", "none/data/wav/explosions/tank": "explosion",
    "apoc/data/wav/explosions/tank": "explosion", "none/data/wav/shoot/large": "cannon fire",
    "none/data/wav/shoot/medium": "cannon fire", "none/data/wav/shoot/small": "cannon fire",
    "none/data/wav/shoot/xlarge": "cannon fire", "camera": None, "launch": None, "rocket": None,
}


@debian_source("scorched3d", ["scorched3d-data"], "GPL-2.0-or-later", environmental=True)
def scorched3d(ctx: ExtractContext) -> list[ClipRecord]:
    """``data/globalmods/{none,apoc}/data/wav/*``: explosions, guns, birds, gulls, thunder, farm animals."""
    return _by_name(
        ctx, "scorched3d-data", "usr/share/games/scorched3d/data/globalmods", upstream_prefix="data/globalmods/",
        skip_folders={"music", "shield", "movement", "battery"}, overrides=SCORCHED3D_OVERRIDES,
    )


@debian_source("ardentryst", ["ardentryst"], "CC-BY-SA-3.0", environmental=True)
def ardentryst(ctx: ExtractContext) -> list[ClipRecord]:
    """``Sounds/``: hero footsteps on concrete/dirt/grass/snow, pain, rain, fire, wind; monsters and music skipped."""
    return _by_name(ctx, "ardentryst", "usr/share/games/ardentryst/Sounds", upstream_prefix="Sounds/",
                    skip_folders={"monstersounds"})


@debian_source("lugaru", ["lugaru-data"], "CC-BY-SA-3.0", environmental=True)
def lugaru(ctx: ExtractContext) -> list[ClipRecord]:
    """``Sounds/``: dog barks and growls, footsteps, fire, wind, knives and swords; music skipped by name."""
    return _by_name(ctx, "lugaru-data", "usr/share/games/lugaru/Sounds", upstream_prefix="Data/Sounds/",
                    overrides={"staffbreak": "wood breaking"})


@debian_source("caveexpress", ["caveexpress-data"], "GPL-3.0-or-later", environmental=True)
def caveexpress(ctx: ExtractContext) -> list[ClipRecord]:
    """``sounds/``: crate and stone hits, water, waterfall, player pain and landing; music skipped by name."""
    return _by_name(ctx, "caveexpress-data", "usr/share/games/caveexpress/sounds",
                    overrides={"npc-cave-walk": "footsteps", "npc-walking-walk": "footsteps"})


ETW_OVERRIDES = {"cannon": None, "fondo": None, "brake": "tire skid", "engine": "engine"}


@debian_source("etw", ["etw-data"], "GPL-2.0-or-later", environmental=True)
def etw(ctx: ExtractContext) -> list[ClipRecord]:
    """Eat The Whistle: stadium crowd, referee whistles, dog; music and the arcade sounds skipped."""
    return _by_name(ctx, "etw-data", "usr/share/games/etw", skip_folders={"music", "arcadesnd"},
                    overrides=ETW_OVERRIDES)


@debian_source("xemacs", ["xemacs21-basesupport"], "GPL-2.0-or-later", environmental=True)
def xemacs_sounds(ctx: ExtractContext) -> list[ClipRecord]:
    """``etc/sounds``: 8 kHz bark, meow, cuckoo, drip, flush, snore, laugh, slap, whip (each as .au and .wav)."""
    return _by_name(ctx, "xemacs21-basesupport", "usr/share/xemacs21/xemacs-packages/etc",
                    skip_folders={"jde"}, overrides={"im_so_happy": None, "readme": None})


# ----------------------------------------------------------------------------------------------------------------
# Sources labelled file by file through a reviewed table (reviewed.py, tables/<source>.tsv)


def from_reviewed_table(ctx: ExtractContext) -> list[ClipRecord]:
    """Label every audio file below the table's base with its reviewed row; skip "-" rows with their reason.

    A file the table does not name (a newer package version added it) is skipped as "not reviewed"; a table row
    the package lacks is logged.  Everything else (duplicates, unreadable, too short, licences) as ``_emit``.
    """
    name = ctx.source.name
    table = reviewed.read_table(name)
    package = table.package
    if ctx.versions.get(package) != table.version:
        log.warning("%s: %s is %s, the table was reviewed for %s: unreviewed files are skipped", name, package,
                    ctx.versions.get(package), table.version)
    rows = table.by_path()
    seen: set[str] = set()
    cands = []
    for rel, original, reader in reviewed.package_files(ctx.roots[package], table.base):
        seen.add(rel)
        row = rows.get(rel)
        if row is None:
            label, reason, group = None, "not reviewed", None
        elif row.label == reviewed.EXCLUDED:
            label, reason, group = None, f"reviewed: {row.note}", None
        else:
            label, reason = event_label(row.label), ""
            group = None if row.group == reviewed.EXCLUDED else row.group
        cands.append(Candidate(rel=rel, package=package, original=original, upstream=original, read=reader,
                               label=label, skip_reason=reason or "unlabelled", group=group))
    absent = sorted(set(rows) - seen)
    if absent:
        log.warning("%s: %d reviewed files are not in %s %s (first: %s)", name, len(absent), package,
                    ctx.versions.get(package), absent[0])
    return _emit(ctx, cands, _licences(ctx))


def _reviewed_source(name: str, package: str, licence: str) -> None:
    debian_source(name, [package], licence, environmental=True)(from_reviewed_table)


# The licence here is the package's; a DEP-5 copyright file can still give a file its own (``_emit``).
_reviewed_source("0ad", "0ad-data", "CC-BY-SA-3.0")
_reviewed_source("widelands", "widelands-data", "GPL-2.0-or-later")
_reviewed_source("bucklespring", "bucklespring-data", "GPL-2.0-or-later")
_reviewed_source("fillets-ng", "fillets-ng-data", "GPL-2.0-only")
_reviewed_source("torcs", "torcs-data", "GPL-2.0-or-later")
_reviewed_source("warzone2100", "warzone2100-data", "GPL-2.0-or-later")
_reviewed_source("supertux", "supertux-data", "GPL-3.0-or-later")
_reviewed_source("frozen-bubble", "frozen-bubble-data", "GPL-2.0-only")
