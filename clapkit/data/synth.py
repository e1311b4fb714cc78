"""Synthesised labelled audio: speech (espeak-ng, flite), instrument and drum notes (fluidsynth), tones and noises
(sox).

Four builders, one per tool, each ``build_<tool>(out_root, cfg, seed, progress=True, workers=2)
-> list[ClipRecord]`` (``BUILDERS`` maps the source name to its config class and builder).  They
write 16-bit PCM WAV files under ``out_root/<source>/`` (source = ``espeak``, ``flite``, ``fluidsynth``, ``sox``),
write ``out_root/<source>/clips.jsonl`` and return the records of the clips that exist.

How every builder works, in three steps:

1. **Plan.**  Clip ``i`` draws its parameters (language, voice, word, pitch, velocity, effect ...) from its own RNG,
   seeded by ``(seed, tool, i)``, so a clip never depends on how many threads render or in which order.  The file
   name spells out the parameters that shape the audio, so a file on disk always holds what its name says; a
   changed config gives new names instead of silently reusing stale files.  Two clips that drew exactly the same
   parameters would be the same audio: the later one is dropped (and counted).
2. **Render what is missing.**  A clip whose final file exists is not rendered again (resumable); each new file is
   written to a temporary file beside it and renamed into place (``atomic_files``), so an interrupted run leaves
   no half-written clip.
3. **Check and record.**  Output that is empty or silent counts as a failed clip: reported, skipped, never fatal
   unless most clips fail (then the tool is broken and a ``SynthToolError`` says so).

The audio is deterministic for a seed and the tool versions, which every record keeps in ``meta["tool_version"]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..atomic_files import replacing, write_text
from .records import ClipRecord, write_jsonl

__all__ = [
    "BUILDERS",
    "SynthToolError",
    "EspeakConfig",
    "FliteConfig",
    "FluidsynthConfig",
    "SoxConfig",
    "build_espeak",
    "build_flite",
    "build_fluidsynth",
    "build_sox",
    "clip_rng",
    "midi_file",
    "note_name",
]

log = logging.getLogger(__name__)

# A clip whose loudest 50 ms has an RMS (full scale = 1) below this is treated as silent.
SILENT_RMS = 1e-3
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class SynthToolError(RuntimeError):
    """A generator cannot run: its program or data file is missing, or it fails on most clips."""


# ----------------------------------------------------------------------------------------------------------------
# Shared plumbing
# ----------------------------------------------------------------------------------------------------------------


def clip_rng(seed: int, tool: str, index: int) -> np.random.Generator:
    """The RNG of one clip: depends only on (seed, tool, clip index), never on rendering order or threads."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, zlib.crc32(tool.encode()), index])


def _require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise SynthToolError(
            f"{binary!r} not found on PATH: install the Debian package {package} (scripts/setup.sh installs it)"
        )
    return path


def _tool_version(exe: str, pattern: str, name: str, flag: str = "--version") -> str:
    """``"<name> <version>"`` parsed from ``exe --version`` (``name unknown`` if the output has no version)."""
    res = subprocess.run([exe, flag], capture_output=True, text=True)
    m = re.search(pattern, res.stdout + res.stderr)
    return f"{name} {m.group(1) if m else 'unknown'}"


def _slug(text: str) -> str:
    """A file-name-safe spelling of a label ("acoustic guitar (nylon)" -> "acoustic-guitar-nylon")."""
    return re.sub(r"[^a-z0-9#]+", "-", text.lower()).strip("-").replace("#", "s")


def note_name(midi: int) -> str:
    """MIDI note number -> lowercase note name with octave, MIDI 60 = "c4", 61 = "c#4"."""
    names = ["c", "c#", "d", "d#", "e", "f", "f#", "g", "g#", "a", "a#", "b"]
    return f"{names[midi % 12]}{midi // 12 - 1}"


def _midi_hz(midi: int) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _write_wav_atomic(path: Path, audio: np.ndarray, sr: int) -> None:
    """Float audio in [-1, 1] (clipped) -> 16-bit PCM WAV at ``path`` via a temporary file."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    with replacing(path) as tmp:
        sf.write(tmp, pcm, sr, subtype="PCM_16", format="WAV")


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _loudest_rms(x: np.ndarray, sr: int, window_s: float = 0.05) -> float:
    """RMS of the loudest 50 ms window: a short drum hit in a long clip is audible though its overall RMS is low."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1).mean(axis=1)
    w = max(1, int(window_s * sr))
    n = len(x) // w * w
    if n == 0:
        return _rms(x)
    return float(np.sqrt(np.square(x[:n]).reshape(-1, w).mean(axis=1).max()))


class _ClipFailed(Exception):
    """One clip could not be rendered; the message says why."""


def _run_tool(cmd: list[str], what: str, stdin: bytes | None = None) -> None:
    res = subprocess.run(cmd, input=stdin, capture_output=True)
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip()[-300:]
        raise _ClipFailed(f"{what}: exit code {res.returncode}: {err}")


def _check_not_silent(path: Path) -> None:
    try:
        audio, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for broken files
        raise _ClipFailed(f"unreadable output: {e}") from None
    if audio.shape[0] == 0:
        raise _ClipFailed("empty output")
    level = _loudest_rms(audio, sr)
    if level < SILENT_RMS:
        raise _ClipFailed(f"silent output (loudest 50 ms rms {level:.2e})")


@dataclass
class _Clip:
    index: int
    record: ClipRecord
    params: dict[str, Any]  # what the renderer needs beyond the record


def _dedupe(clips: list[_Clip], tool: str) -> list[_Clip]:
    seen: set[str] = set()
    kept = []
    for c in clips:
        if c.record.id not in seen:
            seen.add(c.record.id)
            kept.append(c)
    if len(kept) < len(clips):
        log.info("%s: %d planned clips drew the same parameters as an earlier clip; kept one of each",
                 tool, len(clips) - len(kept))
    return kept


def _render_missing(out_root: Path, clips: list[_Clip], render: Callable[[_Clip, Path], None], workers: int,
                    progress: bool, desc: str) -> tuple[list[_Clip], list[tuple[_Clip, str]]]:
    """Render every clip whose file is missing, one tool process per clip, ``workers`` at a time.

    Returns (clips whose file now exists, [(clip, reason)] for the ones that failed)."""
    todo = [c for c in clips if not (out_root / c.record.path).exists()]
    failures: list[tuple[_Clip, str]] = []

    def one(c: _Clip) -> str | None:
        final = out_root / c.record.path
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with replacing(final) as tmp:
                render(c, tmp)
                _check_not_silent(tmp)
            return None
        except _ClipFailed as e:
            return str(e)

    with tqdm(total=len(clips), initial=len(clips) - len(todo), desc=desc, disable=not progress) as bar:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = {pool.submit(one, c): c for c in todo}
            for fut in as_completed(futures):
                reason = fut.result()
                if reason is not None:
                    failures.append((futures[fut], reason))
                bar.update(1)
    failures.sort(key=lambda f: f[0].index)
    _raise_if_broken(desc, failures, len(todo))
    failed = {c.record.id for c, _ in failures}
    return [c for c in clips if c.record.id not in failed], failures


def _raise_if_broken(tool: str, failures: list[tuple[_Clip, str]], attempted: int) -> None:
    for c, reason in failures[:5]:
        log.warning("%s: skipped %s: %s", tool, c.record.path, reason)
    if failures and len(failures) * 2 > attempted:
        c, reason = failures[0]
        raise SynthToolError(f"{tool}: {len(failures)} of {attempted} clips failed, e.g. {c.record.path}: {reason}")
    if failures:
        log.warning("%s: %d of %d clips failed and were skipped", tool, len(failures), attempted)


def _finish(out_root: Path, source: str, clips: list[_Clip]) -> list[ClipRecord]:
    records = [c.record for c in clips]
    write_jsonl(out_root / source / "clips.jsonl", records)
    return records


# ----------------------------------------------------------------------------------------------------------------
# espeak-ng: digits and keywords in many languages, many voice variants
# ----------------------------------------------------------------------------------------------------------------

# espeak-ng language code -> language label.  Several codes may share a label (accents of one language).
ESPEAK_LANGUAGES: dict[str, str] = {
    "en-us": "english", "en-gb": "english", "de": "german", "fr-fr": "french", "es": "spanish",
    "es-419": "spanish", "it": "italian", "pt": "portuguese", "pt-br": "portuguese", "nl": "dutch",
    "sv": "swedish", "da": "danish", "nb": "norwegian", "fi": "finnish", "pl": "polish", "cs": "czech",
    "sk": "slovak", "ru": "russian", "uk": "ukrainian", "bg": "bulgarian", "hr": "croatian", "tr": "turkish",
    "id": "indonesian", "hu": "hungarian", "ro": "romanian", "el": "greek", "hi": "hindi", "sw": "swahili",
    "eo": "esperanto", "et": "estonian", "ca": "catalan", "is": "icelandic",
    # Digits only (no keyword spellings below): the tool reads "7" in the language itself.
    "ar": "arabic", "cmn": "mandarin chinese", "yue": "cantonese", "ja": "japanese", "ko": "korean",
    "vi": "vietnamese", "th": "thai", "fa": "persian", "ta": "tamil", "bn": "bengali", "ka": "georgian",
    "hy": "armenian", "lt": "lithuanian", "lv": "latvian", "sl": "slovenian", "sr": "serbian",
    "af": "afrikaans", "cy": "welsh", "ga": "irish", "eu": "basque", "ms": "malay", "ur": "urdu",
    "mr": "marathi", "te": "telugu",
}
# (Hebrew "he" is left out: espeak-ng 1.51 reads digits there as silence.)

# English concept -> spelling per language code.  Order of each row: the concepts in ESPEAK_CONCEPTS.
ESPEAK_CONCEPTS = ["yes", "no", "dog", "cat", "house", "water", "sun", "moon", "tree", "bird", "fish", "book"]
_SPELLINGS = {
    "en-us": "yes no dog cat house water sun moon tree bird fish book",
    "en-gb": "yes no dog cat house water sun moon tree bird fish book",
    "de": "ja nein Hund Katze Haus Wasser Sonne Mond Baum Vogel Fisch Buch",
    "fr-fr": "oui non chien chat maison eau soleil lune arbre oiseau poisson livre",
    "es": "sí no perro gato casa agua sol luna árbol pájaro pez libro",
    "es-419": "sí no perro gato casa agua sol luna árbol pájaro pez libro",
    "it": "sì no cane gatto casa acqua sole luna albero uccello pesce libro",
    "pt": "sim não cão gato casa água sol lua árvore pássaro peixe livro",
    "pt-br": "sim não cachorro gato casa água sol lua árvore pássaro peixe livro",
    "nl": "ja nee hond kat huis water zon maan boom vogel vis boek",
    "sv": "ja nej hund katt hus vatten sol måne träd fågel fisk bok",
    "da": "ja nej hund kat hus vand sol måne træ fugl fisk bog",
    "nb": "ja nei hund katt hus vann sol måne tre fugl fisk bok",
    "fi": "kyllä ei koira kissa talo vesi aurinko kuu puu lintu kala kirja",
    "pl": "tak nie pies kot dom woda słońce księżyc drzewo ptak ryba książka",
    "cs": "ano ne pes kočka dům voda slunce měsíc strom pták ryba kniha",
    "sk": "áno nie pes mačka dom voda slnko mesiac strom vták ryba kniha",
    "ru": "да нет собака кошка дом вода солнце луна дерево птица рыба книга",
    "uk": "так ні собака кіт будинок вода сонце місяць дерево птах риба книга",
    "bg": "да не куче котка къща вода слънце луна дърво птица риба книга",
    "hr": "da ne pas mačka kuća voda sunce mjesec drvo ptica riba knjiga",
    "tr": "evet hayır köpek kedi ev su güneş ay ağaç kuş balık kitap",
    "id": "ya tidak anjing kucing rumah air matahari bulan pohon burung ikan buku",
    "hu": "igen nem kutya macska ház víz nap hold fa madár hal könyv",
    "ro": "da nu câine pisică casă apă soare lună copac pasăre pește carte",
    "el": "ναι όχι σκύλος γάτα σπίτι νερό ήλιος φεγγάρι δέντρο πουλί ψάρι βιβλίο",
    "hi": "हाँ नहीं कुत्ता बिल्ली घर पानी सूरज चाँद पेड़ चिड़िया मछली किताब",
    "sw": "ndiyo hapana mbwa paka nyumba maji jua mwezi mti ndege samaki kitabu",
    "eo": "jes ne hundo kato domo akvo suno luno arbo birdo fiŝo libro",
    "et": "jah ei koer kass maja vesi päike kuu puu lind kala raamat",
    "ca": "sí no gos gat casa aigua sol lluna arbre ocell peix llibre",
    "is": "já nei hundur köttur hús vatn sól tungl tré fugl fiskur bók",
}
ESPEAK_KEYWORDS: dict[str, dict[str, str]] = {
    code: dict(zip(ESPEAK_CONCEPTS, row.split(), strict=True)) for code, row in _SPELLINGS.items()
}


@dataclass
class EspeakConfig:
    n_clips: int = 2000
    # espeak-ng language codes (keys of ESPEAK_LANGUAGES); languages without spellings get digit clips only.
    languages: list[str] = field(default_factory=lambda: list(ESPEAK_LANGUAGES))
    # Voice variants (files in espeak-ng-data/voices/!v).  group = variant, so held-out variants = unseen voices.
    variants: list[str] = field(default_factory=lambda: (
        [f"m{i}" for i in range(1, 8)] + [f"f{i}" for i in range(1, 6)]
        + ["croak", "whisper", "whisperf", "klatt", "klatt2", "klatt3", "Andy", "Annie", "belinda", "michel"]))
    # Concepts spoken as words (keys of the ESPEAK_KEYWORDS rows); the rest of the clips are digits.
    keywords: list[str] = field(default_factory=lambda: list(ESPEAK_CONCEPTS))
    digit_fraction: float = 0.5  # share of clips that speak a digit (in languages with keyword spellings)
    pitch_range: tuple[int, int] = (25, 75)  # espeak -p, 0-99 (50 = the variant's normal pitch)
    speed_range: tuple[int, int] = (130, 210)  # espeak -s, words per minute (175 normal)


def _espeak_data_dir(exe: str) -> Path:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"Data at:\s*(\S+)", out)
    if not m:
        raise SynthToolError(f"cannot find the espeak-ng data folder in `{exe} --version`: {out.strip()!r}")
    return Path(m.group(1))


def _variant_gender(variant_file: Path) -> str | None:
    """"male"/"female" from the variant file's ``gender`` line, None where the file states none."""
    for line in variant_file.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "gender" and parts[1].lower() in ("male", "female"):
            return parts[1].lower()
    return None


def _check_espeak(exe: str, cfg: EspeakConfig) -> dict[str, str | None]:
    """Validate languages/variants/keywords against the installed espeak-ng; returns variant -> gender."""
    unknown = [c for c in cfg.languages if c not in ESPEAK_LANGUAGES]
    if unknown:
        raise ValueError(f"espeak: no language label for codes {unknown}; known: {sorted(ESPEAK_LANGUAGES)}")
    listed = subprocess.run([exe, "--voices"], capture_output=True, text=True).stdout.split("\n")[1:]
    installed = {line.split()[1] for line in listed if len(line.split()) > 1}
    # A few short codes ("de", "pt", "es") are aliases that --voices lists under a longer code; ask the tool.
    for code in cfg.languages:
        if code not in installed and code.split("-")[0] not in {c.split("-")[0] for c in installed}:
            raise ValueError(f"espeak: language {code!r} is not installed in this espeak-ng")
    bad_kw = [k for k in cfg.keywords if k not in ESPEAK_CONCEPTS]
    if bad_kw:
        raise ValueError(f"espeak: no spellings for keywords {bad_kw}; known: {ESPEAK_CONCEPTS}")
    vdir = _espeak_data_dir(exe) / "voices" / "!v"
    genders = {}
    for v in cfg.variants:
        if not (vdir / v).is_file():
            raise ValueError(f"espeak: voice variant {v!r} not found in {vdir}")
        genders[v] = _variant_gender(vdir / v)
    if not cfg.languages or not cfg.variants:
        raise ValueError("espeak: languages and variants must not be empty")
    return genders


def build_espeak(out_root: Path, cfg: EspeakConfig, seed: int, progress: bool = True,
                 workers: int = 2) -> list[ClipRecord]:
    """Spoken digits and keywords in many languages and espeak-ng voice variants, at 22.05 kHz."""
    out_root = Path(out_root)
    exe = _require("espeak-ng", "espeak-ng")
    version = _tool_version(exe, r"text-to-speech:\s*([\d.]+)", "espeak-ng")
    genders = _check_espeak(exe, cfg)

    clips = []
    for i in range(cfg.n_clips):
        rng = clip_rng(seed, "espeak", i)
        code = cfg.languages[rng.integers(len(cfg.languages))]
        variant = cfg.variants[rng.integers(len(cfg.variants))]
        pitch = int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1))
        speed = int(rng.integers(cfg.speed_range[0], cfg.speed_range[1] + 1))
        spellings = ESPEAK_KEYWORDS.get(code)
        is_digit = spellings is None or not cfg.keywords or rng.random() < cfg.digit_fraction
        if is_digit:
            d = int(rng.integers(10))
            task, concept, text = "digit", DIGITS[d], str(d)
        else:
            concept = cfg.keywords[rng.integers(len(cfg.keywords))]
            task, text = "keyword", spellings[concept]
        rel = f"espeak/{code}/{_slug(variant)}/{task}-{_slug(concept)}-p{pitch}-s{speed}.wav"
        labels: dict[str, Any] = {"language": ESPEAK_LANGUAGES[code], task: concept,
                                  "speaker": f"espeak {code} {variant.lower()}"}
        if genders[variant]:
            labels["gender"] = genders[variant]
        rec = ClipRecord(
            id=rel[: -len(".wav")], path=rel, source="synth:espeak",
            # Conservative: espeak-ng and its language data are GPL-3.0-or-later; the speech itself is generated
            # by this project from those rules (no recorded voices involved).
            licence="GPL-3.0-or-later", real=False, group=f"espeak {variant.lower()}", labels=labels,
            texts=[text],
            meta={"tool_version": version, "voice": f"{code}+{variant}", "pitch": pitch, "speed_wpm": speed,
                  "text": text, "language_code": code, "variant": variant, "sample_rate": 22050},
        )
        clips.append(_Clip(i, rec, {"voice": f"{code}+{variant}", "pitch": pitch, "speed": speed, "text": text}))
    clips = _dedupe(clips, "espeak")

    def render(c: _Clip, tmp: Path) -> None:
        p = c.params
        _run_tool([exe, "-v", p["voice"], "-p", str(p["pitch"]), "-s", str(p["speed"]), "-w", str(tmp), p["text"]],
                  f"espeak-ng -v {p['voice']}")

    done, _ = _render_missing(out_root, clips, render, workers, progress, "espeak")
    return _finish(out_root, "espeak", done)


# ----------------------------------------------------------------------------------------------------------------
# flite: four English voices saying keywords and digits
# ----------------------------------------------------------------------------------------------------------------

# voice -> (gender, median f0 in Hz measured on a test sentence with flite 2.2, or None where the voice ignores
# int_f0_target_mean: rms keeps its own pitch whatever the setting).
FLITE_VOICES: dict[str, tuple[str, float | None]] = {
    "kal16": ("male", 90.0), "awb": ("male", 129.0), "rms": ("male", None), "slt": ("female", 170.0),
}
FLITE_KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
                  "dog", "cat", "house", "water", "sun", "moon", "tree", "bird", "fish", "book"]


@dataclass
class FliteConfig:
    n_clips: int = 1000
    voices: list[str] = field(default_factory=lambda: list(FLITE_VOICES))
    keywords: list[str] = field(default_factory=lambda: list(FLITE_KEYWORDS))  # English words; group = the word
    digit_fraction: float = 0.5
    duration_stretch_range: tuple[float, float] = (0.85, 1.2)  # flite duration_stretch (>1 = slower)
    pitch_factor_range: tuple[float, float] = (0.88, 1.14)  # f0 target = voice's own f0 x factor (about +-2 semitones)


def build_flite(out_root: Path, cfg: FliteConfig, seed: int, progress: bool = True,
                workers: int = 2) -> list[ClipRecord]:
    """English keywords and digits by flite's kal16, awb, rms and slt voices, at 16 kHz."""
    out_root = Path(out_root)
    exe = _require("flite", "flite")
    version = _tool_version(exe, r"flite-([\d.]+)", "flite")
    listed = subprocess.run([exe, "-lv"], capture_output=True, text=True).stdout.split()
    for v in cfg.voices:
        if v not in FLITE_VOICES:
            raise ValueError(f"flite: unknown voice {v!r}; known: {list(FLITE_VOICES)}")
        if v not in listed:
            raise ValueError(f"flite: voice {v!r} is not built into {exe} (it lists {listed[2:]})")
    if not cfg.voices:
        raise ValueError("flite: voices must not be empty")

    clips = []
    for i in range(cfg.n_clips):
        rng = clip_rng(seed, "flite", i)
        voice = cfg.voices[rng.integers(len(cfg.voices))]
        if not cfg.keywords or rng.random() < cfg.digit_fraction:
            task, word = "digit", DIGITS[int(rng.integers(10))]
        else:
            task, word = "keyword", cfg.keywords[rng.integers(len(cfg.keywords))]
        stretch = round(float(rng.uniform(*cfg.duration_stretch_range)), 3)
        factor = float(rng.uniform(*cfg.pitch_factor_range))
        gender, base_f0 = FLITE_VOICES[voice]
        f0 = None if base_f0 is None else int(round(base_f0 * factor))
        rel = f"flite/{voice}/{task}-{_slug(word)}-d{stretch:.3f}" + (f"-f{f0}" if f0 else "") + ".wav"
        rec = ClipRecord(
            id=rel[: -len(".wav")], path=rel, source="synth:flite",
            # flite's voices (CMU ARCTIC data) and code carry CMU's BSD-style licence; the clips are made from them.
            licence="LicenseRef-CMU-flite", real=False, group=word,
            labels={"speaker": f"flite {voice}", "gender": gender, task: word},
            texts=[word],
            meta={"tool_version": version, "voice": voice, "duration_stretch": stretch, "f0_target_hz": f0,
                  "text": word, "sample_rate": 16000},
        )
        clips.append(_Clip(i, rec, {"voice": voice, "stretch": stretch, "f0": f0, "text": word}))
    clips = _dedupe(clips, "flite")

    def render(c: _Clip, tmp: Path) -> None:
        p = c.params
        cmd = [exe, "-voice", p["voice"], "--setf", f"duration_stretch={p['stretch']}"]
        if p["f0"]:
            cmd += ["--setf", f"int_f0_target_mean={p['f0']}"]
        _run_tool(cmd + ["-t", p["text"], "-o", str(tmp)], f"flite -voice {p['voice']}")

    done, _ = _render_missing(out_root, clips, render, workers, progress, "flite")
    return _finish(out_root, "flite", done)


# ----------------------------------------------------------------------------------------------------------------
# fluidsynth: General MIDI notes and drum hits, many per process
# ----------------------------------------------------------------------------------------------------------------

GM_FAMILIES = ["piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed",
               "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects"]
# The 128 General MIDI programs, in order, named as a person would search for them (the official names are close;
# "Electric Guitar (jazz)" becomes "jazz electric guitar", "Pad 2 (warm)" becomes "warm synth pad").
GM_PROGRAMS = [
    "acoustic grand piano", "bright acoustic piano", "electric grand piano", "honky-tonk piano",
    "electric piano", "electric piano 2", "harpsichord", "clavinet",
    "celesta", "glockenspiel", "music box", "vibraphone", "marimba", "xylophone", "tubular bells", "dulcimer",
    "drawbar organ", "percussive organ", "rock organ", "church organ", "reed organ", "accordion", "harmonica",
    "tango accordion",
    "nylon acoustic guitar", "steel acoustic guitar", "jazz electric guitar", "clean electric guitar",
    "muted electric guitar", "overdriven guitar", "distortion guitar", "guitar harmonics",
    "acoustic bass", "fingered electric bass", "picked electric bass", "fretless bass", "slap bass", "slap bass 2",
    "synth bass", "synth bass 2",
    "violin", "viola", "cello", "contrabass", "tremolo strings", "pizzicato strings", "orchestral harp", "timpani",
    "string ensemble", "string ensemble 2", "synth strings", "synth strings 2", "choir aahs", "voice oohs",
    "synth choir", "orchestra hit",
    "trumpet", "trombone", "tuba", "muted trumpet", "french horn", "brass section", "synth brass", "synth brass 2",
    "soprano saxophone", "alto saxophone", "tenor saxophone", "baritone saxophone", "oboe", "english horn",
    "bassoon", "clarinet",
    "piccolo", "flute", "recorder", "pan flute", "blown bottle", "shakuhachi", "whistle", "ocarina",
    "square lead synth", "sawtooth lead synth", "calliope lead synth", "chiff lead synth", "charang lead synth",
    "voice lead synth", "fifths lead synth", "bass and lead synth",
    "new age synth pad", "warm synth pad", "polysynth pad", "choir synth pad", "bowed synth pad",
    "metallic synth pad", "halo synth pad", "sweep synth pad",
    "rain synth effect", "soundtrack synth effect", "crystal synth effect", "atmosphere synth effect",
    "brightness synth effect", "goblins synth effect", "echoes synth effect", "sci-fi synth effect",
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipe", "fiddle", "shehnai",
    "tinkle bell", "agogo", "steel drums", "woodblock", "taiko drum", "melodic tom", "synth drum", "reverse cymbal",
    "guitar fret noise", "breath noise", "seashore", "bird tweet", "telephone ring", "helicopter", "applause",
    "gunshot",
]
assert len(GM_PROGRAMS) == 128
# Reverse cymbal (119) and the sound effects (120-127): a note number changes them, but they have no musical pitch
# to label.
UNPITCHED_PROGRAMS = set(range(119, 128))
# General MIDI percussion key -> drum label (keys without a clear label, e.g. side stick or bongos, are not used).
GM_DRUMS: dict[int, tuple[str, str]] = {
    35: ("kick drum", "acoustic bass drum"), 36: ("kick drum", "bass drum 1"),
    38: ("snare drum", "acoustic snare"), 40: ("snare drum", "electric snare"), 39: ("clap", "hand clap"),
    42: ("hi-hat", "closed hi-hat"), 44: ("hi-hat", "pedal hi-hat"), 46: ("hi-hat", "open hi-hat"),
    41: ("tom", "low floor tom"), 43: ("tom", "high floor tom"), 45: ("tom", "low tom"),
    47: ("tom", "low-mid tom"), 48: ("tom", "hi-mid tom"), 50: ("tom", "high tom"),
    49: ("cymbal", "crash cymbal 1"), 51: ("cymbal", "ride cymbal 1"), 52: ("cymbal", "chinese cymbal"),
    53: ("cymbal", "ride bell"), 55: ("cymbal", "splash cymbal"), 57: ("cymbal", "crash cymbal 2"),
    59: ("cymbal", "ride cymbal 2"), 56: ("cowbell", "cowbell"),
}
# Drum kits of FluidR3_GM (bank 128 program -> name).
FLUID_KITS = {0: "standard", 8: "room", 16: "power", 24: "electronic", 25: "tr-808", 32: "jazz", 40: "brush",
              48: "orchestra"}
VELOCITY_BANDS = {"soft": (30, 55), "medium": (65, 90), "loud": (100, 127)}
DRUM_CHANNEL = 9


@dataclass
class FluidsynthConfig:
    n_clips: int = 1500
    soundfont: str = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
    programs: list[int] = field(default_factory=lambda: list(range(128)))  # GM programs (0-127); group = program
    pitch_range: tuple[int, int] = (36, 96)  # MIDI notes, c2 .. c7
    note_duration_range: tuple[float, float] = (0.5, 2.0)  # seconds the key is held (release rings on after it)
    drum_fraction: float = 0.2  # share of clips that are drum-kit hits
    kits: list[int] = field(default_factory=lambda: list(FLUID_KITS))
    slot_s: float = 3.0  # length of each clip: note + release, cut out of the batch render
    sample_rate: int = 32000
    gain: float = 0.8  # fluidsynth master gain (default 0.2); the loudest of 1,400 test notes peaked at 0.87
    notes_per_process: int = 150  # notes per MIDI file / fluidsynth run (speed only: the audio stays the same)


def _vlq(n: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def midi_file(events: list[tuple[int, bytes]], ticks_per_quarter: int = 500, tempo_us: int = 500_000) -> bytes:
    """A format-0 Standard MIDI File from (tick, event bytes) pairs; with the defaults one tick is one millisecond.

    Events at the same tick keep their order (a program change placed before a note-on applies to it)."""
    track = bytearray(b"\x00\xff\x51\x03" + tempo_us.to_bytes(3, "big"))
    now = 0
    for tick, data in sorted(events, key=lambda e: e[0]):  # sorted() is stable
        track += _vlq(tick - now) + data
        now = tick
    track += b"\x00\xff\x2f\x00"  # end of track
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
    return header + ticks_per_quarter.to_bytes(2, "big") + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track)


def _slot_events(slot: int, slot_ms: int, channel: int, program: int, key: int, velocity: int,
                 hold_ms: int) -> list[tuple[int, bytes]]:
    """MIDI events for one note alone in its time slot: reset, program, note on/off, then silence everything."""
    t0 = slot * slot_ms
    return [
        (t0, bytes([0xB0 | channel, 121, 0])),  # reset controllers (pitch bend, modulation ...)
        (t0, bytes([0xB0 | channel, 7, 100])),  # channel volume
        (t0, bytes([0xC0 | channel, program])),
        (t0, bytes([0x90 | channel, key, velocity])),
        (t0 + hold_ms, bytes([0x80 | channel, key, 0])),
        # All sound off just before the next slot: a long release must not ring into the next clip.
        (t0 + slot_ms - 8, bytes([0xB0 | channel, 120, 0])),
    ]


def _fluid_render(exe: str, cfg: FluidsynthConfig, notes: list[dict[str, int]]) -> np.ndarray:
    """Render notes (dicts with channel, program, key, velocity, hold_ms) in one fluidsynth run.

    Returns (n_notes, slot samples) float32 mono.  Reverb and chorus are off so that nothing carries over from one
    slot to the next, and each slot starts on a 64-sample block boundary of the synth (config check)."""
    slot_ms = int(round(cfg.slot_s * 1000))
    slot_n = slot_ms * cfg.sample_rate // 1000
    events = []
    # Slot 0 holds a throwaway note: the first voice fluidsynth starts in a process ramps its first 64-sample block
    # differently from all later ones, so without it the first clip of a batch would differ from the same note
    # elsewhere.  With it, a note renders the same whichever slot of whichever batch it lands in.
    events += _slot_events(0, slot_ms, 15, 0, 60, 64, 100)
    for k, n in enumerate(notes, start=1):
        events += _slot_events(k, slot_ms, n["channel"], n["program"], n["key"], n["velocity"], n["hold_ms"])
    events.append(((len(notes) + 1) * slot_ms, bytes([0xB0, 121, 0])))  # pads the file to the end of the last slot
    with tempfile.TemporaryDirectory(prefix="clapkit-fluid-") as tmp:
        mid, raw = Path(tmp) / "notes.mid", Path(tmp) / "notes.raw"
        mid.write_bytes(midi_file(events))
        cmd = [exe, "-n", "-i", "-q", "-R", "0", "-C", "0", "-g", str(cfg.gain), "-r", str(cfg.sample_rate),
               "-o", "synth.cpu-cores=1", "-o", "synth.polyphony=256",
               "-T", "raw", "-O", "float", "-E", "little", "-F", str(raw), cfg.soundfont, str(mid)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not raw.exists():
            raise SynthToolError(f"fluidsynth failed on {len(notes)} notes: exit {res.returncode}: "
                                 f"{(res.stderr or res.stdout).strip()[-300:]}")
        stereo = np.fromfile(raw, dtype="<f4").reshape(-1, 2)
    mono = stereo.mean(axis=1)[slot_n:]
    want = len(notes) * slot_n
    mono = np.pad(mono[:want], (0, max(0, want - len(mono))))
    out = mono.reshape(len(notes), slot_n).copy()
    # Fade out the last 30 ms: the all-sound-off near the slot end would otherwise cut a ringing note with a click.
    fade = int(0.03 * cfg.sample_rate)
    out[:, -fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out


def _check_fluidsynth(cfg: FluidsynthConfig) -> None:
    if not Path(cfg.soundfont).is_file():
        raise SynthToolError(f"soundfont {cfg.soundfont} not found: install the Debian package fluid-soundfont-gm")
    slot_ms = cfg.slot_s * 1000
    if slot_ms != int(slot_ms) or (int(slot_ms) * cfg.sample_rate) % (64 * 1000):
        raise ValueError(f"fluidsynth: slot_s * sample_rate must be a whole number of 64-sample blocks "
                         f"(got {cfg.slot_s} s at {cfg.sample_rate} Hz); e.g. 3.0 s at 32000 Hz")
    bad = [p for p in cfg.programs if not 0 <= p < 128]
    if bad:
        raise ValueError(f"fluidsynth: programs must be 0-127, got {bad}")
    bad = [k for k in cfg.kits if k not in FLUID_KITS]
    if bad:
        raise ValueError(f"fluidsynth: unknown kits {bad}; FluidR3_GM kits: {FLUID_KITS}")
    if not 0 <= cfg.pitch_range[0] <= cfg.pitch_range[1] <= 127:
        raise ValueError(f"fluidsynth: bad pitch_range {cfg.pitch_range}")
    if max(cfg.note_duration_range) >= cfg.slot_s - 0.1:
        raise ValueError("fluidsynth: note_duration_range must end well before slot_s")
    if (cfg.drum_fraction < 1 and not cfg.programs) or (cfg.drum_fraction > 0 and not cfg.kits):
        raise ValueError("fluidsynth: programs (or kits, when drum_fraction > 0) must not be empty")


def _soundfont_version(path: str) -> str:
    res = subprocess.run(["dpkg-query", "-S", path], capture_output=True, text=True)
    if res.returncode == 0:
        pkg = res.stdout.split(":")[0].strip()
        ver = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True).stdout
        return f"{pkg} {ver}"
    return f"{Path(path).name} ({Path(path).stat().st_size} bytes)"


def build_fluidsynth(out_root: Path, cfg: FluidsynthConfig, seed: int, progress: bool = True,
                     workers: int = 2) -> list[ClipRecord]:
    """General MIDI instrument notes and drum hits rendered with fluidsynth + FluidR3_GM, one clip per note."""
    out_root = Path(out_root)
    exe = _require("fluidsynth", "fluidsynth")
    _check_fluidsynth(cfg)
    version = _tool_version(exe, r"version\s*([\d.]+)", "fluidsynth")
    sf_version = _soundfont_version(cfg.soundfont)

    clips = []
    for i in range(cfg.n_clips):
        rng = clip_rng(seed, "fluidsynth", i)
        vel_name = list(VELOCITY_BANDS)[rng.integers(3)]
        velocity = int(rng.integers(VELOCITY_BANDS[vel_name][0], VELOCITY_BANDS[vel_name][1] + 1))
        hold_lo, hold_hi = (int(t * 1000) for t in cfg.note_duration_range)
        hold_ms = int(rng.integers(hold_lo, hold_hi + 1))
        meta: dict[str, Any] = {"tool_version": version, "soundfont": sf_version, "velocity": velocity,
                                "hold_ms": hold_ms, "sample_rate": cfg.sample_rate}
        if rng.random() < cfg.drum_fraction:
            kit = cfg.kits[rng.integers(len(cfg.kits))]
            key = sorted(GM_DRUMS)[rng.integers(len(GM_DRUMS))]
            drum, gm_drum = GM_DRUMS[key]
            rel = f"fluidsynth/drums/{_slug(FLUID_KITS[kit])}/{_slug(gm_drum)}-v{velocity}-h{hold_ms}.wav"
            labels = {"drum": drum, "velocity": vel_name}
            group = f"fluidsynth {FLUID_KITS[kit]} kit"
            texts = [gm_drum]
            meta.update(kit=FLUID_KITS[kit], kit_program=kit, midi=key, gm_drum=gm_drum)
            note = {"channel": DRUM_CHANNEL, "program": kit, "key": key}
        else:
            program = cfg.programs[rng.integers(len(cfg.programs))]
            key = int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1))
            name = GM_PROGRAMS[program]
            rel = f"fluidsynth/{program:03d}-{_slug(name)}/{_slug(note_name(key))}-v{velocity}-h{hold_ms}.wav"
            labels = {"instrument": name, "instrument_family": GM_FAMILIES[program // 8], "velocity": vel_name}
            if program not in UNPITCHED_PROGRAMS:
                labels["pitch"] = note_name(key)
            group = f"fluidsynth {name}"
            texts = []
            meta.update(program=program, midi=key)
            note = {"channel": 0, "program": program, "key": key}
        rec = ClipRecord(id=rel[: -len(".wav")], path=rel, source="synth:fluidsynth",
                         licence="MIT",  # the FluidR3_GM samples the notes are made of are MIT-licensed
                         real=False, group=group, labels=labels, texts=texts, meta=meta)
        clips.append(_Clip(i, rec, {**note, "velocity": velocity, "hold_ms": hold_ms}))
    clips = _dedupe(clips, "fluidsynth")

    # Batches are fixed runs of consecutive clips.  A batch is rendered again only if one of its kept clips is
    # missing; clips found near-silent are remembered in a marker file so a resumed run does not re-render them.
    marker_dir = out_root / "fluidsynth" / ".batches"
    marker_dir.mkdir(parents=True, exist_ok=True)
    batches = [clips[b: b + cfg.notes_per_process] for b in range(0, len(clips), cfg.notes_per_process)]

    def marker(batch: list[_Clip]) -> Path:
        key = hashlib.sha1("\n".join(c.record.id for c in batch).encode()).hexdigest()[:16]
        return marker_dir / f"{key}.json"

    def silent_of(batch: list[_Clip]) -> dict[str, float] | None:
        m = marker(batch)
        return json.loads(m.read_text())["silent"] if m.exists() else None

    def complete(batch: list[_Clip]) -> bool:
        silent = silent_of(batch)
        return silent is not None and all(
            c.record.id in silent or (out_root / c.record.path).exists() for c in batch)

    def render_batch(batch: list[_Clip]) -> None:
        audio = _fluid_render(exe, cfg, [c.params for c in batch])
        silent = {}
        for c, x in zip(batch, audio):
            level = _loudest_rms(x, cfg.sample_rate)
            if level < SILENT_RMS:
                silent[c.record.id] = level
                continue
            final = out_root / c.record.path
            if not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                _write_wav_atomic(final, x, cfg.sample_rate)
        m = marker(batch)
        write_text(m, json.dumps({"silent": silent}, indent=0, sort_keys=True))

    todo = [b for b in batches if not complete(b)]
    with tqdm(total=len(clips), initial=len(clips) - sum(map(len, todo)), desc="fluidsynth",
              disable=not progress) as bar:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = {pool.submit(render_batch, b): len(b) for b in todo}
            for fut in as_completed(futures):
                fut.result()
                bar.update(futures[fut])

    silent: dict[str, float] = {}
    for b in batches:
        silent.update(silent_of(b) or {})
    if silent:
        log.warning("fluidsynth: dropped %d near-silent notes (loudest 50 ms rms < %g), e.g. %s",
                    len(silent), SILENT_RMS, ", ".join(sorted(silent)[:3]))
    # The dropped notes are listed (with the level found) next to clips.jsonl, for the record.
    write_jsonl(out_root / "fluidsynth" / "dropped.jsonl", [
        ClipRecord(id=c.record.id, path=c.record.path, source=c.record.source, licence=c.record.licence, real=False,
                   group=c.record.group, labels=c.record.labels,
                   meta={**c.record.meta, "dropped": f"near-silent, loudest 50 ms rms {silent[c.record.id]:.2e}"})
        for c in clips if c.record.id in silent])
    return _finish(out_root, "fluidsynth", [c for c in clips if c.record.id not in silent])


# ----------------------------------------------------------------------------------------------------------------
# sox: tones and noises with effects
# ----------------------------------------------------------------------------------------------------------------

SOX_TONES = {"sine tone": "sine", "square wave": "square", "sawtooth wave": "sawtooth", "triangle wave": "triangle"}
SOX_NOISES = ["white noise", "pink noise", "brown noise"]
SOX_EFFECTS = ["none", "tremolo", "reverb", "echo", "fade"]


@dataclass
class SoxConfig:
    n_clips: int = 1500
    tones: list[str] = field(default_factory=lambda: list(SOX_TONES) + SOX_NOISES)
    pitch_range: tuple[int, int] = (36, 96)  # MIDI notes for tones, c2 (65 Hz) .. c7 (2093 Hz)
    duration_range: tuple[float, float] = (1.0, 4.0)  # seconds
    effects: list[str] = field(default_factory=lambda: list(SOX_EFFECTS))
    peak_db_range: tuple[float, float] = (-18.0, -1.0)  # final peak level (sox gain -n)
    sample_rate: int = 32000


def _noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded coloured noise with peak 0.5: white (flat), pink (power ~ 1/f), brown (power ~ 1/f^2).

    Generated here rather than by ``sox synth`` because sox 14.4 cannot seed its noise: without ``-R`` every run
    differs, with it every clip gets the same noise."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(len(spec)), 1.0)  # bin 0 (DC) gets the same weight as bin 1
    exponent = {"white noise": 0.0, "pink noise": 0.5, "brown noise": 1.0}[colour]
    spec[0] = 0.0
    x = np.fft.irfft(spec / f**exponent, n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def _sox_effect(name: str, rng: np.random.Generator, duration: float) -> list[str]:
    if name == "tremolo":
        return ["tremolo", f"{rng.uniform(2, 10):.1f}", f"{rng.uniform(20, 70):.0f}"]
    if name == "reverb":
        # sox's reverb turns mono into stereo; mix back down here, before the gain that sets the peak level.
        return ["reverb", f"{rng.uniform(20, 90):.0f}", "channels", "1"]
    if name == "echo":
        return ["echo", "0.8", "0.7", f"{rng.uniform(60, 300):.0f}", f"{rng.uniform(0.2, 0.5):.2f}"]
    if name == "fade":  # slow swell in and out
        return ["fade", "q", f"{rng.uniform(0.1, duration / 2):.2f}", str(duration),
                f"{rng.uniform(0.1, duration / 2):.2f}"]
    return []


def build_sox(out_root: Path, cfg: SoxConfig, seed: int, progress: bool = True,
              workers: int = 2) -> list[ClipRecord]:
    """Tones (sine, square, sawtooth, triangle at note frequencies) and white/pink/brown noise, with effects."""
    out_root = Path(out_root)
    exe = _require("sox", "sox")
    version = _tool_version(exe, r"SoX v([\d.]+)", "sox")
    bad = [t for t in cfg.tones if t not in SOX_TONES and t not in SOX_NOISES]
    bad += [e for e in cfg.effects if e not in SOX_EFFECTS]
    if bad or not cfg.tones or not cfg.effects:
        raise ValueError(f"sox: unknown or empty tones/effects {bad}; tones: {list(SOX_TONES) + SOX_NOISES}, "
                         f"effects: {SOX_EFFECTS}")

    clips = []
    for i in range(cfg.n_clips):
        rng = clip_rng(seed, "sox", i)
        tone = cfg.tones[rng.integers(len(cfg.tones))]
        duration = round(float(rng.uniform(*cfg.duration_range)), 2)
        effect = cfg.effects[rng.integers(len(cfg.effects))]
        effect_args = _sox_effect(effect, rng, duration)
        peak_db = round(float(rng.uniform(*cfg.peak_db_range)), 1)
        # Short fades at both ends so that no clip starts or stops with a click.
        chain = effect_args + ["fade", "h", "0.01", str(duration), "0.02", "gain", "-n", str(peak_db)]
        labels: dict[str, Any] = {"tone": tone}
        meta: dict[str, Any] = {"tool_version": version, "duration_s": duration, "effect": effect,
                                "sox_effects": " ".join(chain), "peak_db": peak_db, "sample_rate": cfg.sample_rate}
        # Name = readable parameters + a hash of the full effect chain (which holds more numbers than fit a name).
        digest = hashlib.sha1(" ".join(chain).encode()).hexdigest()[:8]
        if tone in SOX_TONES:
            midi = int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1))
            freq = round(_midi_hz(midi), 3)
            labels["pitch"] = note_name(midi)
            meta.update(midi=midi, frequency_hz=freq)
            # Held-out groups = unseen (waveform, octave) pairs.
            group = f"{tone} octave {midi // 12 - 1}"
            params = {"synth": ["synth", str(duration), SOX_TONES[tone], str(freq)]}
            rel = f"sox/{_slug(tone)}/{_slug(note_name(midi))}-{effect}-{digest}.wav"
        else:
            # The noise itself has a seed of its own, kept in the name: it is part of what the file holds.
            noise_seed = int(rng.integers(2**31))
            meta["noise_seed"] = noise_seed
            group = f"{tone} {effect}"
            params = {"noise": (tone, noise_seed)}
            rel = f"sox/{_slug(tone)}/{effect}-{digest}-n{noise_seed}.wav"
        rec = ClipRecord(id=rel[: -len(".wav")], path=rel, source="synth:sox",
                         licence="CC0-1.0",  # made from numbers alone: no third-party material in the audio
                         real=False, group=group, labels=labels, meta=meta)
        clips.append(_Clip(i, rec, {**params, "chain": chain, "duration": duration}))
    clips = _dedupe(clips, "sox")

    sr = cfg.sample_rate
    out_fmt = ["-r", str(sr), "-b", "16", "-e", "signed-integer", "-t", "wav"]

    def render(c: _Clip, tmp: Path) -> None:
        p = c.params
        # -D: no dither (dither is random noise added on output); -R: any other randomness repeatable.
        if "synth" in p:
            # The rate goes before -n as well: otherwise sox synthesises at 48 kHz and resamples.
            _run_tool([exe, "-R", "-D", "-r", str(sr), "-c", "1", "-n", *out_fmt, str(tmp), *p["synth"], *p["chain"]],
                      "sox synth")
        else:
            colour, noise_seed = p["noise"]
            x = _noise(colour, int(round(p["duration"] * sr)), np.random.default_rng(noise_seed))
            _run_tool([exe, "-R", "-D", "-t", "raw", "-r", str(sr), "-e", "floating-point", "-b", "32", "-c", "1",
                       "-L", "-", *out_fmt, str(tmp), *p["chain"]], "sox noise", stdin=x.astype("<f4").tobytes())

    done, _ = _render_missing(out_root, clips, render, workers, progress, "sox")
    return _finish(out_root, "sox", done)


# Source name (the folder under out_root) -> (config class, builder).
BUILDERS: dict[str, tuple[type, Callable[..., list[ClipRecord]]]] = {
    "espeak": (EspeakConfig, build_espeak),
    "flite": (FliteConfig, build_flite),
    "fluidsynth": (FluidsynthConfig, build_fluidsynth),
    "sox": (SoxConfig, build_sox),
}
