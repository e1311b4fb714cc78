"""Adapters: the public datasets of the MS-CLAP 2023 evaluation, as a user keeps them on disk, as ``ClipRecord``s.

``ADAPTERS[name].load(root)`` reads a dataset where it lies (nothing is copied or converted) and returns one
``ClipRecord`` per audio file, sorted by id, with

* ``id = "<name>/<file id>"``, ``path`` absolute, ``source = "dataset:<name>"``, ``real = True``;
* ``labels`` keyed by the *task names* the evaluation registry uses (table below), values the dataset's own class
  names made readable: underscores become spaces (ESC-50 "chirping_birds" -> "chirping birds", US8K
  "air_conditioner" -> "air conditioner"), coded names are spelled out (RAVDESS "01" -> "neutral", CREMA-D "ANG"
  -> "anger"), otherwise the dataset's wording and capitalisation are kept (AudioSet "Air horn, truck horn");
  multi-label tasks hold a list in the dataset's order;
* ``texts`` = the human captions of captioning datasets (AudioCaps: every caption of the clip; Clotho:
  caption_1..caption_5), and nothing else (transcripts of the emotion corpora go to ``meta["transcript"]``);
* ``split`` = the dataset's own split ("train" / "val" / "test") where it defines one; evaluation-only datasets
  and k-fold datasets without a held-out set are "test" throughout, with the fold in ``meta["fold"]`` (the paper
  scores every fold zero-shot);
* ``group`` = the recording identity where the dataset has one (ESC-50 src_file, US8K fsID, the speaker of Speech
  Commands / CREMA-D / RAVDESS / VocalSound, the NSynth instrument, the YouTube video of AudioCaps / AudioSet /
  DCASE 2017, the FSD50K uploader when its clip metadata is present, the TUT recording location).

Tasks (``labels`` keys) and their value conventions

=====================  ==============================================================================
adapter                task name: value
=====================  ==============================================================================
esc50                  esc50: "dog", "chirping birds", ... (50)
esc50_actions          esc50_actions: list of actions rated >= 2 on the 0-4 scale (20 actions)
us8k                   us8k: "air conditioner", "dog bark", ... (10)
fsd50k                 fsd50k: list, "Electric guitar", "Male speech and man speaking", ... (200)
dcase2017_task4        dcase2017_task4: list, "Train horn", "Ambulance (siren)", ... (17)
audioset               audioset: list of display names, "Speech", "Air horn, truck horn", ... (527)
vocalsound             vocalsound: "laughter", "sigh", "cough", "throat clearing", "sneeze", "sniff"
sesa                   sesa: "casual", "gunshot", "explosion", "siren"
tut2017                tut2017: "beach", "cafe/restaurant", "city center", ... (15)
gtzan_music_speech     gtzan_music_speech: "music" | "speech"
gtzan_genre            gtzan_genre: "blues", ..., "hip hop", ... (10)
nsynth                 nsynth_instrument_family: "bass", ..., "synth lead", "vocal" (11)
                       nsynth_pitch: MIDI pitch as a decimal string, "21" ... "108"
                       nsynth_velocity: MIDI velocity as a decimal string, "25", "50", "75", "100", "127"
                       nsynth_qualities: list, "bright", "fast decay", "tempo-synced", ... (10)
beijing_opera          beijing_opera: "bangu", "naobo", "daluo", "xiaoluo"
crema_d                crema_d: "anger", "disgust", "fear", "happy", "neutral", "sad"
ravdess                ravdess: "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"
speech_commands        speech_commands: the spoken word, "yes", "backward", ... (35)
libricount             libricount: speaker count as a decimal string, "0" ... "10"
audiocaps, clotho      (no labels; captions in texts)
=====================  ==============================================================================

``TASK_CLASSES[task]`` lists the readable class names of every task with a closed vocabulary, in the dataset's own
order (FSD50K and AudioSet read theirs from vocabulary.csv / class_labels_indices.csv; NSynth pitch is open).

Error policy: collect, then raise or hand over
----------------------------------------------
Nothing is ever dropped silently.  Every problem met while reading (an audio file listed in a metadata file but
absent, a malformed row, an unknown label, a file name that breaks the dataset's naming scheme, a duplicate id) is
recorded as a ``Problem(file, line, reason)`` naming the file and, for text metadata, the 1-based line; the clip
concerned is left out and reading goes on, so one call sees every problem at once.  At the end:

* ``load(root)`` (no report) raises ``DatasetError`` listing the problems if there was any, so a default call
  either returns the whole dataset or fails loudly;
* ``load(root, report=LoadReport())`` returns the clips that are fine and appends every problem to the report:
  the caller has asked to skip and owns the list (useful for AudioSet / AudioCaps, where part of the YouTube audio
  is always missing).

Layout errors that leave nothing to read (the root or a required metadata file is absent, a header lacks a
required column, a JSON file does not parse) raise ``DatasetError`` at once in both modes.  Adapters check that
audio files exist, not that they decode: ``clapkit.audio.read_audio`` reports unreadable audio later, per clip.
Files without an audio extension (READMEs, .json side-cars, .DS_Store) inside audio folders are not clips and are
ignored; audio files whose names break the naming scheme are problems.

Where each layout comes from
----------------------------
Confirmed from the dataset's own documentation or its reference loader (``confirmed`` attribute of each adapter):
ESC-50 (karolpiczak/ESC-50 README, meta/esc50.csv), UrbanSound8K (urbansounddataset.weebly.com/urbansound8k.html),
AudioCaps (cdjkim/audiocaps README: CSV columns; audio naming of Labbeti/aac-datasets), Clotho v2.1 (Zenodo 4783391
file list as used by Labbeti/aac-datasets and xieh97/dcase2022-audio-retrieval), NSynth (dataset card: the fields
of examples.json), Speech Commands v0.02 (Warden 2018; HF google/speech_commands card, TFDS catalog), FSD50K
(Zenodo 4060432 README and FSD50K.doc; hear-preprocess fsd50k task), CREMA-D (CheyneyComputerScience/CREMA-D
README: AudioWAV/; the ActorID_Sentence_Emotion_Level naming as every public loader reads it), RAVDESS (its
7-field file-naming convention, as quoted in the dataset's README copies), VocalSound (YuanGongND/vocalsound
data/README.md and src/prep_data.py), ESC50-Actions (bmartin1/Identifying_Actions_for_Sound_Event_Classification
action_vectors_dataset/), TUT Acoustic Scenes 2017 (dcase_util TUTAcousticScenes_2017_{Development,Evaluation}Set),
LibriCount10 (hear-preprocess libricount task, CountNet README: <count>_<id>.wav + .json), DCASE 2017 Task 4
(ankitshah009/Task-4-Large-scale-weakly-supervised-sound-event-detection-for-smart-cars ground-truth files),
AudioSet (the segment CSVs and class_labels_indices.csv of research.google.com/audioset, as parsed by
Labbeti/aac-datasets), GTZAN music/speech (music_speech.tar.gz as unpacked by TFDS gtzan_music_speech and public
download scripts), GTZAN genres (genres.tar.gz from the same marsyas server, genres/<genre>/<genre>.000NN.au),
Beijing Opera (Zenodo 1285212 as read by hear-preprocess; its file names as listed by public mirrors of the
archive).

Best-effort (the dataset ships no audio or documents no naming, so the convention below is ours): the audio folder
naming of AudioCaps, AudioSet and DCASE 2017 Task 4 (YouTube downloads; we accept the common downloader names),
the SESA licence (CC BY 4.0 as secondary sources state it; its <class>_<nnn>.wav naming is seen on a public
mirror, not in the dataset's own readme), the ESC50-Actions positive threshold (the paper does not state it) and
the licences marked "unknown".
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from clapkit.data.records import ClipRecord

__all__ = ["ADAPTERS", "TASK_CLASSES", "DatasetAdapter", "DatasetError", "LoadReport", "Problem"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".au", ".mp3", ".ogg")


# ---------------------------------------------------------------------------------------------------------------
# Problems, the report and the error


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset on disk: the file it is in, the 1-based line (text metadata only), why."""

    file: str
    line: int | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.reason}"


@dataclass
class LoadReport:
    """Problems handed over by ``DatasetAdapter.load(root, report=...)``: the clips they concern were skipped."""

    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.problems)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems) if self.problems else "no problems"


class DatasetError(Exception):
    """A dataset could not be read as laid out, or had problems and the caller did not ask to skip them."""

    def __init__(self, dataset: str, problems: list[Problem]):
        self.dataset = dataset
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:25])
        more = f"\n  ... and {len(self.problems) - 25} more" if len(self.problems) > 25 else ""
        super().__init__(f"{dataset}: {len(self.problems)} problem(s)\n  {shown}{more}")


class _Context:
    """What a reader gets: the dataset root, the problem list and the record factory."""

    def __init__(self, adapter: "DatasetAdapter", root: Path):
        self.adapter = adapter
        self.name = adapter.name
        self.root = root
        self.problems: list[Problem] = []

    def problem(self, file: Path | str, line: int | None, reason: str) -> None:
        self.problems.append(Problem(str(file), line, reason))

    def fatal(self, file: Path | str, reason: str) -> NoReturn:
        raise DatasetError(self.name, [Problem(str(file), None, reason)])

    def require_file(self, path: Path) -> Path:
        if not path.is_file():
            self.fatal(path, "required metadata file is missing")
        return path

    def require_dir(self, path: Path) -> Path:
        if not path.is_dir():
            self.fatal(path, "required folder is missing")
        return path

    def audio(self, path: Path, listed_in: Path, line: int | None) -> Path | None:
        """``path`` if the audio file exists, else a problem pointing at the metadata line that lists it."""
        if path.is_file():
            return path
        self.problem(listed_in, line, f"audio file missing: {path}")
        return None

    def record(self, clip_id: str, path: Path, *, licence: str | None = None, **fields: Any) -> ClipRecord:
        return ClipRecord(
            id=f"{self.name}/{clip_id}",
            path=str(path),
            source=f"dataset:{self.name}",
            licence=licence if licence is not None else self.adapter.licence,
            real=True,
            environmental=self.adapter.environmental,
            **fields,
        )


# ---------------------------------------------------------------------------------------------------------------
# The adapter and its registry


@dataclass(frozen=True)
class DatasetAdapter:
    """One public dataset: its name, licence, tasks, where its layout was confirmed, and how to read it."""

    name: str
    licence: str  # SPDX-like licence given to clips that carry none of their own (see records.py)
    tasks: tuple[str, ...]
    environmental: bool
    confirmed: str  # where the on-disk layout was confirmed, or "best-effort: ..." and why
    reader: Callable[[_Context], list[ClipRecord]] = field(repr=False)

    def load(self, root: str | Path, report: LoadReport | None = None) -> list[ClipRecord]:
        """Read the dataset under ``root``; see the module docstring for the error policy."""
        root = Path(root).expanduser().absolute()
        ctx = _Context(self, root)
        if not root.is_dir():
            ctx.fatal(root, "dataset root is not a directory")
        records: dict[str, ClipRecord] = {}
        for r in self.reader(ctx):
            if r.id in records:
                ctx.problem(r.path, None, f"duplicate clip id {r.id!r} (first: {records[r.id].path})")
                continue
            records[r.id] = r
        if ctx.problems:
            if report is None:
                raise DatasetError(self.name, ctx.problems)
            report.problems.extend(ctx.problems)
        return [records[k] for k in sorted(records)]


ADAPTERS: dict[str, DatasetAdapter] = {}


def _adapter(name: str, *, licence: str, tasks: tuple[str, ...], environmental: bool, confirmed: str):
    def register(reader: Callable[[_Context], list[ClipRecord]]):
        ADAPTERS[name] = DatasetAdapter(name, licence, tasks, environmental, confirmed, reader)
        return reader

    return register


# ---------------------------------------------------------------------------------------------------------------
# Reading helpers


def _readable(name: str) -> str:
    """A dataset class name as text: underscores become spaces, nothing else changes."""
    return name.replace("_", " ").strip()


def _csv_rows(
    ctx: _Context, path: Path, required: tuple[str, ...], *, delimiter: str = ",", encoding: str = "utf-8-sig"
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) for each well-formed row of a CSV with a header; malformed rows become problems."""
    ctx.require_file(path)
    try:
        with open(path, newline="", encoding=encoding) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            missing = [c for c in required if c not in header]
            if missing:
                ctx.fatal(path, f"header {header} lacks column(s) {missing}")
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    got = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                    ctx.problem(path, line, f"malformed row: {got} fields, header has {len(header)}")
                    continue
                yield line, {k: v.strip() for k, v in row.items()}
    except UnicodeDecodeError as e:
        ctx.fatal(path, f"not {encoding} text: {e}")


def _tsv_lines(
    ctx: _Context, path: Path, n_fields: int, *, at_most: int | None = None
) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) for each non-blank line of a tab-separated list without a header.

    A line needs at least ``n_fields`` fields (and at most ``at_most`` when given); others become problems.
    """
    ctx.require_file(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line, content in enumerate(f, start=1):
                if not content.strip():
                    continue
                parts = [p.strip() for p in content.rstrip("\r\n").split("\t")]
                if len(parts) < n_fields or (at_most is not None and len(parts) > at_most):
                    want = f"at least {n_fields}" if at_most is None else f"{n_fields} to {at_most}"
                    if at_most == n_fields:
                        want = str(n_fields)
                    ctx.problem(path, line, f"malformed line: {len(parts)} tab-separated fields, expected {want}")
                    continue
                yield line, parts
    except UnicodeDecodeError as e:
        ctx.fatal(path, f"not utf-8 text: {e}")


def _json(ctx: _Context, path: Path) -> Any:
    ctx.require_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        ctx.fatal(path, f"not valid JSON: {e}")


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _audio_files(folder: Path) -> list[Path]:
    """Audio files directly in ``folder``, sorted; other files are not clips."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _index_audio(folder: Path) -> dict[str, Path]:
    """File name -> path for every audio file under ``folder`` (recursively); empty if the folder is absent."""
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS}


def _cc_licence(url: str) -> str | None:
    """SPDX-like id of a Creative Commons licence URL as Freesound writes it, or None.

    Freesound's licence *names* ("Attribution", "Attribution Noncommercial") carry no version, so they give None
    (the caller keeps the raw text in meta), except "Creative Commons 0", which only exists as CC0 1.0.
    """
    url = url.strip().lower()
    if "publicdomain/zero" in url or url == "creative commons 0":
        return "CC0-1.0"
    m = re.search(r"creativecommons\.org/licenses/([a-z+-]+)/(\d\.\d)", url)
    if not m:
        return None
    kind, version = m.groups()
    if kind == "sampling+":
        return f"LicenseRef-CC-Sampling-Plus-{version}"
    return "CC-" + kind.upper() + "-" + version


# ---------------------------------------------------------------------------------------------------------------
# Sound events: ESC-50, ESC50-Actions, UrbanSound8K, FSD50K, DCASE 2017 Task 4, AudioSet


ESC50_CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind", "pouring_water",
    "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing", "brushing_teeth",
    "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening", "washing_machine",
    "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane", "fireworks",
    "hand_saw",
)  # fmt: skip  (index = the dataset's "target")

_ESC50_NAME = re.compile(r"^(\d)-(\d+)-([A-Z])-(\d+)\.wav$")


def _esc50_row(ctx: _Context, path: Path, line: int, row: dict[str, str]) -> tuple[int, str, str, str] | None:
    """Check an ESC-50 row (shared by esc50 and esc50_actions): (fold, src_file, take, category) or None."""
    m = _ESC50_NAME.match(row["filename"])
    fold, target = _int(row["fold"]), _int(row["target"])
    if not m:
        ctx.problem(path, line, f"file name {row['filename']!r} is not <fold>-<src_file>-<take>-<target>.wav")
        return None
    if fold is None or not 1 <= fold <= 5 or str(fold) != m.group(1):
        ctx.problem(path, line, f"fold {row['fold']!r} is not 1-5 or disagrees with {row['filename']!r}")
        return None
    if target is None or not 0 <= target < len(ESC50_CLASSES) or str(target) != m.group(4):
        ctx.problem(path, line, f"target {row['target']!r} is not 0-49 or disagrees with {row['filename']!r}")
        return None
    if row["category"] not in ESC50_CLASSES:
        ctx.problem(path, line, f"unknown label {row['category']!r}")
        return None
    if row["category"] != ESC50_CLASSES[target]:
        ctx.problem(path, line, f"target {target} is {ESC50_CLASSES[target]!r} but category is {row['category']!r}")
        return None
    return fold, m.group(2), m.group(3), row["category"]


@_adapter(
    "esc50", licence="CC-BY-NC-3.0", tasks=("esc50",), environmental=True,
    confirmed="karolpiczak/ESC-50 README (Repository content) and meta/esc50.csv",
)  # fmt: skip
def _read_esc50(ctx: _Context) -> list[ClipRecord]:
    """ESC-50 (Piczak 2015), the GitHub archive as extracted (ESC-50-master/):

        <root>/meta/esc50.csv    header filename,fold,target,category,esc10,src_file,take
        <root>/audio/<filename>  2000 clips, 5 s, 44.1 kHz mono, named <fold>-<src_file>-<take>-<target>.wav

    Five folds, all "test" (zero-shot scores every fold); fold in meta; group = src_file (the Freesound
    recording the clip was cut from). Licence of the whole dataset: CC BY-NC 3.0.
    """
    meta = ctx.root / "meta" / "esc50.csv"
    required = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
    out = []
    for line, row in _csv_rows(ctx, meta, required):
        checked = _esc50_row(ctx, meta, line, row)
        if checked is None:
            continue
        fold, src_file, take, category = checked
        if row["src_file"] != src_file or row["take"] != take:
            ctx.problem(meta, line, f"src_file/take {row['src_file']}/{row['take']} disagree with the file name")
            continue
        if row["esc10"] not in ("True", "False"):
            ctx.problem(meta, line, f"esc10 is {row['esc10']!r}, not True/False")
            continue
        audio = ctx.audio(ctx.root / "audio" / row["filename"], meta, line)
        if audio is None:
            continue
        out.append(ctx.record(
            Path(row["filename"]).stem, audio, group=src_file, labels={"esc50": _readable(category)},
            split="test", meta={"fold": fold, "esc10": row["esc10"] == "True", "take": take},
        ))  # fmt: skip
    return out


ESC50_ACTIONS = (
    "blowing", "breaking", "calling", "crumpling", "dripping", "exhaling", "exploding", "gasping", "groaning",
    "pouring", "ringing", "rolling", "rotating", "scraping", "singing", "sizzling", "splashing", "tapping",
    "vibrating", "wailing",
)  # fmt: skip
# Ratings are the mean of three listeners on 0 ("very unlikely") .. 4 ("very likely"); the paper scores mAP
# over the 20 actions without saying where an action counts as present.  We call it present from 2 up, the
# middle of the scale; the ratings themselves are kept in meta so an evaluation can pick another threshold.
ESC50_ACTIONS_THRESHOLD = 2.0


@_adapter(
    "esc50_actions", licence="CC-BY-NC-3.0", tasks=("esc50_actions",), environmental=True,
    confirmed="bmartin1/Identifying_Actions_for_Sound_Event_Classification action_vectors_dataset/ "
    "(Elizalde et al., WASPAA 2021, the paper's reference for ESC50-Actions); positive threshold: best-effort",
)  # fmt: skip
def _read_esc50_actions(ctx: _Context) -> list[ClipRecord]:
    """ESC50-Actions: ESC-50 audio with the action ratings of Elizalde et al. (WASPAA 2021):

        <root>/audio/<filename>                                  the ESC-50 clips (see esc50)
        <root>/actionvector_one_per_audiofile.csv                or, as in its repository,
        <root>/action_vectors_dataset/actionvector_one_per_audiofile.csv
            header filename,fold,target,category,blowing,breaking,...,wailing (20 actions, ratings 0-4)

    Label = the actions with mean rating >= 2 (ESC50_ACTIONS_THRESHOLD); all ratings in meta["action_ratings"].
    All "test"; fold in meta; group = the ESC-50 src_file.
    """
    meta = ctx.root / "actionvector_one_per_audiofile.csv"
    if not meta.is_file():
        meta = ctx.root / "action_vectors_dataset" / "actionvector_one_per_audiofile.csv"
    out = []
    for line, row in _csv_rows(ctx, meta, ("filename", "fold", "target", "category") + ESC50_ACTIONS):
        checked = _esc50_row(ctx, meta, line, row)
        if checked is None:
            continue
        fold, src_file, take, category = checked
        try:
            ratings = {a: float(row[a]) for a in ESC50_ACTIONS}
        except ValueError as e:
            ctx.problem(meta, line, f"rating is not a number: {e}")
            continue
        if any(not 0.0 <= r <= 4.0 for r in ratings.values()):
            ctx.problem(meta, line, "rating outside 0-4")
            continue
        audio = ctx.audio(ctx.root / "audio" / row["filename"], meta, line)
        if audio is None:
            continue
        present = [a for a in ESC50_ACTIONS if ratings[a] >= ESC50_ACTIONS_THRESHOLD]
        out.append(ctx.record(
            Path(row["filename"]).stem, audio, group=src_file, labels={"esc50_actions": present}, split="test",
            meta={"fold": fold, "esc50": _readable(category), "action_ratings": ratings},
        ))  # fmt: skip
    return out


US8K_CLASSES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling", "gun_shot",
    "jackhammer", "siren", "street_music",
)  # fmt: skip  (index = classID)
_US8K_NAME = re.compile(r"^(\d+)-(\d+)-(\d+)-(\d+)\.wav$")


@_adapter(
    "us8k", licence="CC-BY-NC-3.0", tasks=("us8k",), environmental=True,
    confirmed="urbansounddataset.weebly.com/urbansound8k.html (UrbanSound8K.csv fields, fold1..fold10)",
)  # fmt: skip
def _read_us8k(ctx: _Context) -> list[ClipRecord]:
    """UrbanSound8K (Salamon et al. 2014), the archive as extracted (UrbanSound8K/):

        <root>/metadata/UrbanSound8K.csv  header slice_file_name,fsID,start,end,salience,fold,classID,class
        <root>/audio/fold<fold>/<slice_file_name>   8732 slices <= 4 s, named <fsID>-<classID>-<occurrence>-<slice>.wav

    Ten folds, all "test"; fold in meta; group = fsID (slices of one Freesound recording share it).
    """
    meta = ctx.root / "metadata" / "UrbanSound8K.csv"
    required = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
    out = []
    for line, row in _csv_rows(ctx, meta, required):
        m = _US8K_NAME.match(row["slice_file_name"])
        fold, class_id, salience = _int(row["fold"]), _int(row["classID"]), _int(row["salience"])
        if not m or m.group(1) != row["fsID"] or m.group(2) != row["classID"]:
            ctx.problem(meta, line, f"file name {row['slice_file_name']!r} disagrees with fsID/classID")
            continue
        if fold is None or not 1 <= fold <= 10:
            ctx.problem(meta, line, f"fold {row['fold']!r} is not 1-10")
            continue
        if row["class"] not in US8K_CLASSES:
            ctx.problem(meta, line, f"unknown label {row['class']!r}")
            continue
        if class_id is None or not 0 <= class_id < 10 or US8K_CLASSES[class_id] != row["class"]:
            ctx.problem(meta, line, f"classID {row['classID']!r} disagrees with class {row['class']!r}")
            continue
        try:
            start, end = float(row["start"]), float(row["end"])
        except ValueError:
            ctx.problem(meta, line, f"start/end {row['start']!r}/{row['end']!r} are not numbers")
            continue
        if salience not in (1, 2):
            ctx.problem(meta, line, f"salience {row['salience']!r} is not 1 (foreground) or 2 (background)")
            continue
        audio = ctx.audio(ctx.root / "audio" / f"fold{fold}" / row["slice_file_name"], meta, line)
        if audio is None:
            continue
        out.append(ctx.record(
            Path(row["slice_file_name"]).stem, audio, group=row["fsID"], labels={"us8k": _readable(row["class"])},
            split="test", meta={"fold": fold, "salience": "foreground" if salience == 1 else "background",
                                "start": start, "end": end},
        ))  # fmt: skip
    return out


@_adapter(
    "fsd50k", licence="unknown", tasks=("fsd50k",), environmental=False,
    confirmed="Zenodo 4060432 README / FSD50K.doc (ground_truth CSVs, headerless vocabulary.csv, clip-info JSON)",
)  # fmt: skip
def _read_fsd50k(ctx: _Context) -> list[ClipRecord]:
    """FSD50K (Fonseca et al. 2022), the Zenodo zips extracted side by side:

        <root>/FSD50K.ground_truth/vocabulary.csv  no header: index,label,mid (200 classes)
        <root>/FSD50K.ground_truth/dev.csv         header fname,labels,mids,split   (split: train | val)
        <root>/FSD50K.ground_truth/eval.csv        header fname,labels,mids         (the test set)
        <root>/FSD50K.dev_audio/<fname>.wav, <root>/FSD50K.eval_audio/<fname>.wav
        <root>/FSD50K.metadata/{dev,eval}_clips_info_FSD50K.json   optional: per-clip licence URL and uploader

    labels/mids are comma-separated lists.  Splits: the dev.csv split column, eval = "test".  With the clip-info
    JSON a clip gets its own licence (CC0 / CC-BY / CC-BY-NC / Sampling+) and group = its uploader (FSD50K's own
    split key); without it, licence "unknown" and no group.  A dev or eval part whose CSV is absent is not loaded.
    """
    gt = ctx.root / "FSD50K.ground_truth"
    vocab_path = ctx.require_file(gt / "vocabulary.csv")
    mid_of: dict[str, str] = {}
    with open(vocab_path, newline="", encoding="utf-8-sig") as f:
        for line, fields in enumerate(csv.reader(f), start=1):
            if len(fields) != 3 or _int(fields[0]) is None:
                ctx.fatal(vocab_path, f"line {line}: expected index,label,mid, got {fields}")
            mid_of[fields[1]] = fields[2]
    parts = [("dev", "FSD50K.dev_audio", ("fname", "labels", "mids", "split")),
             ("eval", "FSD50K.eval_audio", ("fname", "labels", "mids"))]  # fmt: skip
    if not any((gt / f"{part}.csv").is_file() for part, _, _ in parts):
        ctx.fatal(gt, "neither dev.csv nor eval.csv is present")
    out = []
    for part, audio_dir, required in parts:
        meta = gt / f"{part}.csv"
        if not meta.is_file():
            continue
        info_path = ctx.root / "FSD50K.metadata" / f"{part}_clips_info_FSD50K.json"
        info = _json(ctx, info_path) if info_path.is_file() else {}
        for line, row in _csv_rows(ctx, meta, required):
            labels, mids = row["labels"].split(","), row["mids"].split(",")
            unknown = [lab for lab in labels if lab not in mid_of]
            if unknown:
                ctx.problem(meta, line, f"unknown label(s) {unknown}")
                continue
            if sorted(mid_of[lab] for lab in labels) != sorted(mids):
                ctx.problem(meta, line, f"mids {mids} do not match labels {labels}")
                continue
            split = "test" if part == "eval" else row["split"]
            if split not in ("train", "val", "test"):
                ctx.problem(meta, line, f"split {row['split']!r} is not train/val")
                continue
            audio = ctx.audio(ctx.root / audio_dir / f"{row['fname']}.wav", meta, line)
            if audio is None:
                continue
            clip_info = info.get(row["fname"]) if isinstance(info, dict) else None
            clip_info = clip_info if isinstance(clip_info, dict) else {}
            licence = _cc_licence(str(clip_info.get("license", ""))) or "unknown"
            extra = {k: clip_info[k] for k in ("title", "uploader", "license") if k in clip_info}
            out.append(ctx.record(
                row["fname"], audio, licence=licence, group=str(clip_info.get("uploader", "")),
                labels={"fsd50k": [_readable(lab) for lab in labels]}, split=split,
                meta={"part": part, "mids": mids, **extra},
            ))  # fmt: skip
    return out


DCASE2017_TASK4_CLASSES = (
    "Train horn", "Air horn, truck horn", "Car alarm", "Reversing beeps", "Bicycle", "Skateboard",
    "Ambulance (siren)", "Fire engine, fire truck (siren)", "Civil defense siren", "Police car (siren)",
    "Screaming", "Car", "Car passing by", "Bus", "Truck", "Motorcycle", "Train",
)  # fmt: skip  (sound_event_list_17_classes.txt)
_YT_SEGMENT = re.compile(r"^(.+)_(\d+\.\d+)_(\d+\.\d+)\.wav$")


@_adapter(
    "dcase2017_task4", licence="unknown", tasks=("dcase2017_task4",), environmental=True,
    confirmed="ankitshah009/Task-4-Large-scale-weakly-supervised-sound-event-detection-for-smart-cars "
    "(ground-truth files); audio folders: best-effort",
)  # fmt: skip
def _read_dcase2017_task4(ctx: _Context) -> list[ClipRecord]:
    """DCASE 2017 Task 4 (AudioSet subset, 17 warning/vehicle classes), weak labels:

        <root>/groundtruth_weak_label_training_set.csv     one line per (clip, label), tab-separated, no header:
        <root>/groundtruth_weak_label_testing_set.csv        <ytid>_<start>_<end>.wav  <start>  <end>  <label>
        <root>/groundtruth_weak_label_evaluation_set.csv   (also accepted under <root>/groundtruth_release/)
        <root>/audio/{training,testing,evaluation}/<file>  the listed name, or "Y" + it (the task's downloader)

    Splits: training = "train", testing = "val", evaluation = "test"; group = the YouTube id.  Lists that are
    absent are not loaded (at least one must exist).  Audio licence: YouTube, unknown.
    """
    parts = [("training", "train"), ("testing", "val"), ("evaluation", "test")]
    out = []
    found = False
    for part, split in parts:
        meta = ctx.root / f"groundtruth_weak_label_{part}_set.csv"
        if not meta.is_file():
            meta = ctx.root / "groundtruth_release" / meta.name
        if not meta.is_file():
            continue
        found = True
        audio_index = _index_audio(ctx.root / "audio" / part)
        clips: dict[str, dict[str, Any]] = {}
        for line, (name, start, end, label) in _tsv_lines(ctx, meta, 4, at_most=4):
            m = _YT_SEGMENT.match(name)
            if not m or m.group(2) != start or m.group(3) != end:
                ctx.problem(meta, line, f"{name!r} is not <ytid>_<start>_<end>.wav matching {start}/{end}")
                continue
            if label not in DCASE2017_TASK4_CLASSES:
                ctx.problem(meta, line, f"unknown label {label!r}")
                continue
            clip = clips.setdefault(name, {"line": line, "ytid": m.group(1), "start": start, "end": end, "labels": []})
            if label not in clip["labels"]:
                clip["labels"].append(label)
        for name, clip in clips.items():
            audio = audio_index.get(name) or audio_index.get("Y" + name)
            if audio is None:
                ctx.problem(meta, clip["line"], f"audio file missing: {ctx.root / 'audio' / part / name} (or Y{name})")
                continue
            out.append(ctx.record(
                Path(name).stem, audio, group=clip["ytid"], labels={"dcase2017_task4": clip["labels"]}, split=split,
                meta={"part": part, "youtube_id": clip["ytid"], "start": float(clip["start"]),
                      "end": float(clip["end"])},
            ))  # fmt: skip
    if not found:
        ctx.fatal(ctx.root, "no groundtruth_weak_label_{training,testing,evaluation}_set.csv found")
    return out


AUDIOSET_SUBSETS = (("balanced_train_segments", "train"), ("unbalanced_train_segments", "train"),
                    ("eval_segments", "test"))  # fmt: skip


def _audioset_rows(ctx: _Context, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line, [ytid, start, end, labels]) of an AudioSet segments CSV ('#' comment lines, ', ' separators)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, skipinitialspace=True)
            for fields in reader:
                line = reader.line_num
                if not fields or fields[0].startswith("#"):
                    continue
                if len(fields) != 4:
                    ctx.problem(path, line, f"malformed row: {len(fields)} fields, expected 4")
                    continue
                yield line, [x.strip() for x in fields]
    except UnicodeDecodeError as e:
        ctx.fatal(path, f"not utf-8 text: {e}")


@_adapter(
    "audioset", licence="unknown", tasks=("audioset",), environmental=False,
    confirmed="AudioSet segment CSVs and class_labels_indices.csv as parsed by Labbeti/aac-datasets; "
    "audio naming: best-effort (YouTube downloads)",
)  # fmt: skip
def _read_audioset(ctx: _Context) -> list[ClipRecord]:
    """AudioSet (Gemmeke et al. 2017): the official CSVs plus the audio you downloaded:

        <root>/class_labels_indices.csv          header index,mid,display_name (527 classes)
        <root>/balanced_train_segments.csv       3 '#' comment lines, then rows
        <root>/unbalanced_train_segments.csv       YTID, start_seconds, end_seconds, "mid1,mid2,..."
        <root>/eval_segments.csv
        <root>/audio/<subset>/**/<name>           <subset> = the CSV's stem; <name> any of Y<YTID>.wav,
                                                  <YTID>.wav, <YTID>_<start>_<end>.wav, Y<YTID>_<start>_<end>.wav
                                                  (.flac too; sub-folders allowed, e.g. PANNs' unbalanced parts)

    Splits: balanced/unbalanced train = "train", eval = "test"; subset in meta; group = YTID.  Subsets whose CSV
    is absent are not loaded (at least one must exist).  Part of AudioSet is always gone from YouTube: load with a
    LoadReport to skip the missing clips.  Audio licence: YouTube, unknown.
    """
    names: dict[str, str] = {}
    for line, row in _csv_rows(ctx, ctx.root / "class_labels_indices.csv", ("index", "mid", "display_name")):
        names[row["mid"]] = row["display_name"]
    present = [(s, sp) for s, sp in AUDIOSET_SUBSETS if (ctx.root / f"{s}.csv").is_file()]
    if not present:
        ctx.fatal(ctx.root, "none of balanced_train_segments.csv, unbalanced_train_segments.csv, eval_segments.csv")
    out = []
    for subset, split in present:
        meta = ctx.root / f"{subset}.csv"
        audio_index = _index_audio(ctx.root / "audio" / subset)
        for line, (ytid, start, end, labels) in _audioset_rows(ctx, meta):
            mids = [m.strip() for m in labels.split(",") if m.strip()]
            unknown = [m for m in mids if m not in names]
            if not mids or unknown:
                ctx.problem(meta, line, f"unknown label(s) {unknown or labels!r}")
                continue
            try:
                t0, t1 = float(start), float(end)
            except ValueError:
                ctx.problem(meta, line, f"start/end {start!r}/{end!r} are not numbers")
                continue
            stems = (f"Y{ytid}", ytid, f"{ytid}_{start}_{end}", f"Y{ytid}_{start}_{end}")
            audio = next((audio_index[s + e] for s in stems for e in (".wav", ".flac") if s + e in audio_index), None)
            if audio is None:
                ctx.problem(meta, line, f"audio file missing for {ytid} in {ctx.root / 'audio' / subset}")
                continue
            out.append(ctx.record(
                f"{ytid}_{start}", audio, group=ytid, labels={"audioset": [names[m] for m in mids]}, split=split,
                meta={"subset": subset, "youtube_id": ytid, "start": t0, "end": t1, "mids": mids},
            ))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# Vocal sounds, surveillance, acoustic scenes: VocalSound, SESA, TUT Acoustic Scenes 2017


VOCALSOUND_CLASSES = {"laughter": "laughter", "sigh": "sigh", "cough": "cough", "throatclearing": "throat clearing",
                      "sneeze": "sneeze", "sniff": "sniff"}  # fmt: skip
_VOCALSOUND_NAME = re.compile(r"^([mf]\d+)_(\d+)_([a-z]+)\.wav$")


@_adapter(
    "vocalsound", licence="CC-BY-SA-4.0", tasks=("vocalsound",), environmental=False,
    confirmed="YuanGongND/vocalsound data/README.md (layout, licence) and src/prep_data.py (datafiles JSON)",
)  # fmt: skip
def _read_vocalsound(ctx: _Context) -> list[ClipRecord]:
    """VocalSound (Gong et al., ICASSP 2022), a release zip as extracted:

        <root>/audio_44k/ or <root>/audio_16k/   <speaker>_<session>_<label>.wav, e.g. f0003_0_cough.wav
                                                 (audio_44k is used when both are present)
        <root>/datafiles/{tr,val,te}.json        optional: {"data": [{"wav": ".../f0003_0_cough.wav", ...}]}

    Splits from the datafiles (tr = "train", val = "val", te = "test"); without them split is None and `prepare`
    splits by group.  group = speaker id (f0003).  Labels: laughter, sigh, cough, throat clearing, sneeze, sniff.
    """
    audio_dir = ctx.root / "audio_44k"
    if not audio_dir.is_dir():
        audio_dir = ctx.require_dir(ctx.root / "audio_16k")
    split_of: dict[str, str] = {}
    datafiles = ctx.root / "datafiles"
    listed: list[tuple[Path, str]] = []
    if datafiles.is_dir():
        for name, split in (("tr", "train"), ("val", "val"), ("te", "test")):
            path = datafiles / f"{name}.json"
            data = _json(ctx, path)
            entries = data.get("data") if isinstance(data, dict) else None
            if not isinstance(entries, list):
                ctx.fatal(path, 'expected {"data": [{"wav": ...}, ...]}')
            for i, entry in enumerate(entries):
                wav = entry.get("wav") if isinstance(entry, dict) else None
                if not isinstance(wav, str):
                    ctx.problem(path, None, f"entry {i} has no 'wav' path")
                    continue
                base = wav.replace("\\", "/").rsplit("/", 1)[-1]
                if base in split_of and split_of[base] != split:
                    ctx.problem(path, None, f"{base} is listed in two splits ({split_of[base]}, {split})")
                    continue
                split_of[base] = split
                listed.append((path, base))
    out = []
    on_disk = set()
    for audio in _audio_files(audio_dir):
        on_disk.add(audio.name)
        m = _VOCALSOUND_NAME.match(audio.name)
        if not m:
            ctx.problem(audio, None, "file name is not <speaker>_<session>_<label>.wav")
            continue
        speaker, session, label = m.groups()
        if label not in VOCALSOUND_CLASSES:
            ctx.problem(audio, None, f"unknown label {label!r}")
            continue
        if split_of and audio.name not in split_of:
            ctx.problem(audio, None, "not listed in datafiles/{tr,val,te}.json")
            continue
        out.append(ctx.record(
            audio.stem, audio, group=speaker, labels={"vocalsound": VOCALSOUND_CLASSES[label]},
            split=split_of.get(audio.name), meta={"session": int(session), "sample_rate_folder": audio_dir.name},
        ))  # fmt: skip
    for path, base in listed:
        if base not in on_disk:
            ctx.problem(path, None, f"audio file missing: {audio_dir / base}")
    return out


SESA_CLASSES = ("casual", "gunshot", "explosion", "siren")  # the dataset's class 0..3


def _sesa_label(stem: str) -> str:
    """The class a SESA file name starts with: "casual_000" -> casual, "Gun_Shot-12" -> gunshot."""
    return re.sub(r"[\W_]*\d+$", "", stem).replace("_", "").replace("-", "").replace(" ", "").lower()


@_adapter(
    "sesa", licence="CC-BY-4.0", tasks=("sesa",), environmental=True,
    confirmed="Zenodo 3519845 readme (4 classes, train/ and test/ folders, 16 kHz mono wav); file names "
    "<class>_<nnn>.wav as listed by the HF mirror MahiA/SESA; licence: secondary sources (best-effort)",
)  # fmt: skip
def _read_sesa(ctx: _Context) -> list[ClipRecord]:
    """SESA, Sound Events for Surveillance Applications (Spadini 2019), as extracted; root = the folder holding
    train/ and test/ (SESA/SESA/ in the current Zenodo zip):

        <root>/train/<class>_<nnn>.wav   480 files    e.g. casual_138.wav, gunshot_095.wav, explosion_134.wav,
        <root>/test/<class>_<nnn>.wav    105 files         siren_066.wav (siren also holds alarms)

    The class is the file name without its trailing number, case, "_", "-" and spaces ignored (so "Gunshot_12"
    and "gun_shot-7" are gunshot too).  train/test are the dataset's split.
    """
    out = []
    for folder, split in (("train", "train"), ("test", "test")):
        for audio in _audio_files(ctx.require_dir(ctx.root / folder)):
            label = _sesa_label(audio.stem)
            if label not in SESA_CLASSES:
                ctx.problem(audio, None, f"unknown label {label!r} (file name must start with one of {SESA_CLASSES})")
                continue
            out.append(ctx.record(f"{folder}/{audio.stem}", audio, labels={"sesa": label}, split=split))
    return out


TUT2017_SCENES = (
    "beach", "bus", "cafe/restaurant", "car", "city_center", "forest_path", "grocery_store", "home", "library",
    "metro_station", "office", "park", "residential_area", "train", "tram",
)  # fmt: skip


@_adapter(
    "tut2017", licence="LicenseRef-TUT-non-commercial", tasks=("tut2017",), environmental=True,
    confirmed="dcase_util TUTAcousticScenes_2017_DevelopmentSet / _EvaluationSet (meta.txt, evaluation_setup)",
)  # fmt: skip
def _read_tut2017(ctx: _Context) -> list[ClipRecord]:
    """TUT Acoustic Scenes 2017 (DCASE 2017 task 1), the Zenodo packages extracted under one root:

        <root>/TUT-acoustic-scenes-2017-development/meta.txt     tab-separated: audio/<file>.wav  <scene>  <location>
        <root>/TUT-acoustic-scenes-2017-development/evaluation_setup/fold<k>_evaluate.txt   optional: fold k
        <root>/TUT-acoustic-scenes-2017-development/audio/<file>.wav   10 s segments, e.g. b020_90_100.wav
        <root>/TUT-acoustic-scenes-2017-evaluation/meta.txt      tab-separated: audio/<n>.wav  <scene> [...]
            (or, when meta.txt is absent, evaluation_setup/evaluate.txt in the same format, and optionally
             evaluation_setup/map.txt: audio/<n>.wav  <original development-style name> for the location)
        <root>/TUT-acoustic-scenes-2017-evaluation/audio/<n>.wav

    Splits: development = "train" (its 4-fold number in meta["fold"]), evaluation = "test".  group = the
    recording location (a001, b020...).  At least one of the two packages must be present.  Licence: TUT's
    free-for-non-commercial-research terms.
    """
    out = []
    dev = ctx.root / "TUT-acoustic-scenes-2017-development"
    ev = ctx.root / "TUT-acoustic-scenes-2017-evaluation"
    if not dev.is_dir() and not ev.is_dir():
        ctx.fatal(ctx.root, "neither TUT-acoustic-scenes-2017-development/ nor -evaluation/ is present")
    for package, split in ((dev, "train"), (ev, "test")):
        if not package.is_dir():
            continue
        subset = "development" if split == "train" else "evaluation"
        setup = package / "evaluation_setup"
        meta = package / "meta.txt"
        if split == "test" and not meta.is_file() and (setup / "evaluate.txt").is_file():
            meta = setup / "evaluate.txt"
        fold_of: dict[str, int] = {}
        for k in range(1, 5):
            fold_file = setup / f"fold{k}_evaluate.txt"
            if split == "train" and fold_file.is_file():
                for _, fields in _tsv_lines(ctx, fold_file, 1):
                    fold_of[fields[0]] = k
        location_of: dict[str, str] = {}
        if split == "test" and (setup / "map.txt").is_file():
            for _, fields in _tsv_lines(ctx, setup / "map.txt", 2):
                location_of[fields[0]] = fields[1].replace("\\", "/").rsplit("/", 1)[-1].split("_")[0]
        for line, fields in _tsv_lines(ctx, meta, 2):
            rel, scene = fields[0], fields[1]
            if scene not in TUT2017_SCENES:
                ctx.problem(meta, line, f"unknown label {scene!r}")
                continue
            location = fields[2] if len(fields) > 2 and fields[2] else location_of.get(rel, "")
            if split == "train" and not location:
                location = Path(rel).name.split("_")[0]
            audio = ctx.audio(package / rel, meta, line)
            if audio is None:
                continue
            extra = {"fold": fold_of[rel]} if rel in fold_of else {}
            out.append(ctx.record(
                f"{subset}/{Path(rel).stem}", audio, group=location, labels={"tut2017": _readable(scene)},
                split=split, meta={"subset": subset, **extra},
            ))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# Music and instruments: GTZAN music/speech, GTZAN genres, NSynth, Beijing Opera


@_adapter(
    "gtzan_music_speech", licence="unknown", tasks=("gtzan_music_speech",), environmental=False,
    confirmed="marsyas music_speech.tar.gz as unpacked by TFDS gtzan_music_speech and public download scripts",
)  # fmt: skip
def _read_gtzan_music_speech(ctx: _Context) -> list[ClipRecord]:
    """GTZAN Music/Speech (Tzanetakis 1999), music_speech.tar.gz as extracted; root = the music_speech/ folder:

        <root>/music_wav/<name>.wav    64 music tracks, 30 s, 22.05 kHz mono
        <root>/speech_wav/<name>.wav   64 speech tracks

    Evaluation only: all "test".  No licence is stated by the dataset.
    """
    out = []
    for folder, label in (("music_wav", "music"), ("speech_wav", "speech")):
        for audio in _audio_files(ctx.require_dir(ctx.root / folder)):
            out.append(ctx.record(f"{label}/{audio.stem}", audio, labels={"gtzan_music_speech": label}, split="test"))
    return out


GTZAN_GENRES = {"blues": "blues", "classical": "classical", "country": "country", "disco": "disco",
                "hiphop": "hip hop", "jazz": "jazz", "metal": "metal", "pop": "pop", "reggae": "reggae",
                "rock": "rock"}  # fmt: skip


@_adapter(
    "gtzan_genre", licence="unknown", tasks=("gtzan_genre",), environmental=False,
    confirmed="marsyas genres.tar.gz (genres/<genre>/<genre>.000NN.au), data-sources.md section 4",
)  # fmt: skip
def _read_gtzan_genre(ctx: _Context) -> list[ClipRecord]:
    """GTZAN Genre Collection (Tzanetakis & Cook 2002), genres.tar.gz as extracted:

        <root>/genres/<genre>/<genre>.<5 digits>.au    10 genres x 100 tracks, 30 s, 22.05 kHz mono
          (<root>/genres_original/ and .wav files, as in the common Kaggle mirror, are accepted too)

    Evaluation only: all "test".  Label "hiphop" is written "hip hop".  No licence is stated by the dataset.
    """
    top = ctx.root / "genres"
    if not top.is_dir() and (ctx.root / "genres_original").is_dir():
        top = ctx.root / "genres_original"
    ctx.require_dir(top)
    out = []
    for folder in sorted(p for p in top.iterdir() if p.is_dir()):
        for audio in _audio_files(folder):
            if folder.name not in GTZAN_GENRES:
                ctx.problem(audio, None, f"unknown label {folder.name!r}")
                continue
            if not re.fullmatch(rf"{folder.name}\.\d{{5}}\.(au|wav)", audio.name):
                ctx.problem(audio, None, f"file name is not {folder.name}.<5 digits>.au/.wav")
                continue
            out.append(ctx.record(audio.stem, audio, labels={"gtzan_genre": GTZAN_GENRES[folder.name]}, split="test"))
    return out


NSYNTH_FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
                   "synth_lead", "vocal")  # fmt: skip
NSYNTH_QUALITIES = ("bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic", "nonlinear_env",
                    "percussive", "reverb", "tempo-synced")  # fmt: skip


@_adapter(
    "nsynth", licence="CC-BY-4.0", tasks=("nsynth_instrument_family", "nsynth_pitch", "nsynth_velocity",
                                          "nsynth_qualities"),
    environmental=False, confirmed="NSynth dataset card (examples.json fields, nsynth-{train,valid,test} archives)",
)  # fmt: skip
def _read_nsynth(ctx: _Context) -> list[ClipRecord]:
    """NSynth (Engel et al. 2017), the json/wav archives extracted under one root:

        <root>/nsynth-{train,valid,test}/examples.json   {note_str: {note_str, instrument_str, pitch, velocity,
                                                          instrument_family_str, instrument_source_str,
                                                          qualities_str, sample_rate, ...}, ...}
        <root>/nsynth-{train,valid,test}/audio/<note_str>.wav   4 s, 16 kHz mono

    Splits train / val / test as the archives; parts that are absent are not loaded (at least one must exist).
    group = instrument_str (one sampled instrument).  Four tasks: family, pitch, velocity, qualities.
    """
    parts = [("nsynth-train", "train"), ("nsynth-valid", "val"), ("nsynth-test", "test")]
    present = [(d, s) for d, s in parts if (ctx.root / d).is_dir()]
    if not present:
        ctx.fatal(ctx.root, "none of nsynth-train/, nsynth-valid/, nsynth-test/ is present")
    out = []
    for folder, split in present:
        meta = ctx.root / folder / "examples.json"
        examples = _json(ctx, meta)
        if not isinstance(examples, dict):
            ctx.fatal(meta, "expected an object keyed by note_str")
        for key in sorted(examples):
            ex = examples[key]
            try:
                family, pitch, velocity = ex["instrument_family_str"], int(ex["pitch"]), int(ex["velocity"])
                qualities, instrument = list(ex["qualities_str"]), str(ex["instrument_str"])
                source = str(ex["instrument_source_str"])
            except (KeyError, TypeError, ValueError) as e:
                ctx.problem(meta, None, f"example {key!r}: missing or malformed field {e}")
                continue
            if ex.get("note_str", key) != key:
                ctx.problem(meta, None, f"example {key!r}: note_str is {ex.get('note_str')!r}")
                continue
            if family not in NSYNTH_FAMILIES:
                ctx.problem(meta, None, f"example {key!r}: unknown label {family!r}")
                continue
            bad = [q for q in qualities if q not in NSYNTH_QUALITIES]
            if bad:
                ctx.problem(meta, None, f"example {key!r}: unknown label(s) {bad}")
                continue
            if not (0 <= pitch <= 127 and 0 <= velocity <= 127):
                ctx.problem(meta, None, f"example {key!r}: pitch {pitch} / velocity {velocity} outside MIDI 0-127")
                continue
            audio = ctx.audio(ctx.root / folder / "audio" / f"{key}.wav", meta, None)
            if audio is None:
                continue
            out.append(ctx.record(
                key, audio, group=instrument, split=split,
                labels={"nsynth_instrument_family": _readable(family), "nsynth_pitch": str(pitch),
                        "nsynth_velocity": str(velocity), "nsynth_qualities": [_readable(q) for q in qualities]},
                meta={"instrument": instrument, "instrument_source": source, "pitch": pitch, "velocity": velocity},
            ))  # fmt: skip
    return out


BEIJING_OPERA_CLASSES = ("bangu", "naobo", "daluo", "xiaoluo")
_BEIJING_OPERA_NAME = re.compile(r"^(\d+)__(.+)__([a-z]+)-(\d+)\.wav$")


@_adapter(
    "beijing_opera", licence="unknown", tasks=("beijing_opera",), environmental=False,
    confirmed="Zenodo 1285212 archive name (hear-preprocess beijing_opera task, whose label rule this follows); "
    "file names as listed by the HF mirrors MahiA/Beijing-Opera and DynamicSuperb (e.g. 222146__ajaysm__bangu-16.wav)",
)  # fmt: skip
def _read_beijing_opera(ctx: _Context) -> list[ClipRecord]:
    """Beijing Opera Percussion Instrument dataset (Tian et al. 2014), Zenodo 1285212, extracted; root = the
    beijing_opera_percussion_instrument_1.0/ folder:

        <root>/<freesound id>__<uploader>__<instrument>-<n>.wav   236 single strokes, e.g. 222146__ajaysm__bangu-16.wav
            instrument: bangu (clapper-drum), naobo (cymbals), daluo (large gong), xiaoluo (small gong)

    Evaluation only: all "test"; the Freesound id and uploader are in meta.  The dataset states no licence here.
    """
    out = []
    for audio in _audio_files(ctx.root):
        m = _BEIJING_OPERA_NAME.match(audio.name)
        if not m:
            ctx.problem(audio, None, "file name is not <freesound id>__<uploader>__<instrument>-<n>.wav")
            continue
        freesound_id, uploader, label, _ = m.groups()
        if label not in BEIJING_OPERA_CLASSES:
            ctx.problem(audio, None, f"unknown label {label!r}")
            continue
        out.append(ctx.record(
            audio.stem, audio, labels={"beijing_opera": label}, split="test",
            meta={"freesound_id": freesound_id, "uploader": uploader},
        ))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# Speech: CREMA-D, RAVDESS, Speech Commands, LibriCount


CREMA_D_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
CREMA_D_SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before", "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}  # fmt: skip
CREMA_D_LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
_CREMA_D_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})\.wav$")


@_adapter(
    "crema_d", licence="ODbL-1.0", tasks=("crema_d",), environmental=False,
    confirmed="CheyneyComputerScience/CREMA-D README (AudioWAV/); ActorID_Sentence_Emotion_Level naming",
)  # fmt: skip
def _read_crema_d(ctx: _Context) -> list[ClipRecord]:
    """CREMA-D (Cao et al. 2014), the GitHub repository (git-lfs) or its AudioWAV folder:

        <root>/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav   e.g. 1001_DFA_ANG_XX.wav, 7442 files
            actor 1001-1091; sentence one of 12 codes (IEO, TIE, ...); emotion ANG, DIS, FEA, HAP, NEU, SAD;
            level LO, MD, HI, XX (unspecified)

    Evaluation only: all "test".  group = actor; the spoken sentence is meta["transcript"].
    """
    out = []
    for audio in _audio_files(ctx.require_dir(ctx.root / "AudioWAV")):
        m = _CREMA_D_NAME.match(audio.name)
        if not m:
            ctx.problem(audio, None, "file name is not <actor>_<sentence>_<emotion>_<level>.wav")
            continue
        actor, sentence, emotion, level = m.groups()
        if emotion not in CREMA_D_EMOTIONS:
            ctx.problem(audio, None, f"unknown label {emotion!r}")
            continue
        if sentence not in CREMA_D_SENTENCES or level not in CREMA_D_LEVELS:
            ctx.problem(audio, None, f"unknown sentence {sentence!r} or level {level!r}")
            continue
        out.append(ctx.record(
            audio.stem, audio, group=actor, labels={"crema_d": CREMA_D_EMOTIONS[emotion]}, split="test",
            meta={"sentence": sentence, "transcript": CREMA_D_SENTENCES[sentence], "level": CREMA_D_LEVELS[level]},
        ))  # fmt: skip
    return out


RAVDESS_EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                    "07": "disgust", "08": "surprised"}  # fmt: skip
RAVDESS_STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$")


@_adapter(
    "ravdess", licence="CC-BY-NC-SA-4.0", tasks=("ravdess",), environmental=False,
    confirmed="RAVDESS file-naming convention (7 two-digit fields) and Actor_XX folders of its audio zips",
)  # fmt: skip
def _read_ravdess(ctx: _Context) -> list[ClipRecord]:
    """RAVDESS (Livingstone & Russo 2018), Audio_Speech_Actors_01-24.zip and/or Audio_Song_Actors_01-24.zip
    extracted into root (or each into its own sub-folder of root):

        <root>/Actor_<NN>/<modality>-<channel>-<emotion>-<intensity>-<statement>-<repetition>-<actor>.wav
        <root>/<any>/Actor_<NN>/...            e.g. 03-01-06-01-02-01-12.wav
            modality 03 (audio-only); channel 01 speech, 02 song; emotion 01 neutral, 02 calm, 03 happy, 04 sad,
            05 angry, 06 fearful, 07 disgust, 08 surprised; intensity 01 normal, 02 strong; statement 01/02;
            repetition 01/02; actor 01-24 (odd male, even female)

    Evaluation only: all "test".  group = actor; speech/song, intensity, sex and the statement are in meta.
    """
    actors = sorted(p for p in ctx.root.glob("Actor_*") if p.is_dir())
    actors += sorted(p for p in ctx.root.glob("*/Actor_*") if p.is_dir())
    if not actors:
        ctx.fatal(ctx.root, "no Actor_<NN>/ folder found")
    out = []
    for folder in actors:
        for audio in _audio_files(folder):
            m = _RAVDESS_NAME.match(audio.name)
            if not m:
                ctx.problem(audio, None, "file name is not 7 two-digit fields")
                continue
            modality, channel, emotion, intensity, statement, repetition, actor = m.groups()
            if emotion not in RAVDESS_EMOTIONS:
                ctx.problem(audio, None, f"unknown label {emotion!r}")
                continue
            if (modality != "03" or channel not in ("01", "02") or intensity not in ("01", "02")
                    or statement not in RAVDESS_STATEMENTS or repetition not in ("01", "02")
                    or not 1 <= int(actor) <= 24 or folder.name != f"Actor_{actor}"):  # fmt: skip
                ctx.problem(audio, None, f"fields break the convention (audio-only 03, actor {folder.name})")
                continue
            out.append(ctx.record(
                audio.stem, audio, group=f"actor_{actor}", labels={"ravdess": RAVDESS_EMOTIONS[emotion]},
                split="test",
                meta={"vocal_channel": "speech" if channel == "01" else "song",
                      "intensity": "normal" if intensity == "01" else "strong",
                      "transcript": RAVDESS_STATEMENTS[statement], "repetition": int(repetition),
                      "sex": "male" if int(actor) % 2 else "female"},
            ))  # fmt: skip
    return out


SPEECH_COMMANDS_WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
    "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
_SPEECH_COMMANDS_NAME = re.compile(r"^([0-9a-f]{8})_nohash_(\d+)\.wav$")


@_adapter(
    "speech_commands", licence="CC-BY-4.0", tasks=("speech_commands",), environmental=False,
    confirmed="Warden 2018 (arXiv 1804.03209); HF google/speech_commands card and TFDS catalog",
)  # fmt: skip
def _read_speech_commands(ctx: _Context) -> list[ClipRecord]:
    """Speech Commands v0.02 (Warden 2018), speech_commands_v0.02.tar.gz as extracted:

        <root>/<word>/<speaker>_nohash_<n>.wav    35 words, 1 s, 16 kHz mono; speaker = 8 hex digits
        <root>/validation_list.txt                 one <word>/<file>.wav per line
        <root>/testing_list.txt
        <root>/_background_noise_/                 long noise recordings: not clips of any word, not loaded

    Splits: listed in validation_list = "val", in testing_list = "test", others "train".  group = speaker.
    (The separate speech_commands_test_set_v0.02 archive with _silence_/_unknown_ is not this layout.)
    """
    split_of: dict[str, str] = {}
    for list_name, split in (("validation_list.txt", "val"), ("testing_list.txt", "test")):
        path = ctx.root / list_name
        for line, (rel,) in _tsv_lines(ctx, path, 1, at_most=1):
            rel = rel.replace("\\", "/")
            if rel in split_of:
                ctx.problem(path, line, f"{rel} is also in the {split_of[rel]} list")
                continue
            if not (ctx.root / rel).is_file():
                ctx.problem(path, line, f"audio file missing: {ctx.root / rel}")
            split_of[rel] = split
    out = []
    for folder in sorted(p for p in ctx.root.iterdir() if p.is_dir() and p.name != "_background_noise_"):
        for audio in _audio_files(folder):
            m = _SPEECH_COMMANDS_NAME.match(audio.name)
            if folder.name not in SPEECH_COMMANDS_WORDS:
                ctx.problem(audio, None, f"unknown label {folder.name!r}")
                continue
            if not m:
                ctx.problem(audio, None, "file name is not <speaker>_nohash_<n>.wav")
                continue
            rel = f"{folder.name}/{audio.name}"
            out.append(ctx.record(
                f"{folder.name}/{audio.stem}", audio, group=m.group(1), labels={"speech_commands": folder.name},
                split=split_of.get(rel, "train"), meta={"utterance": int(m.group(2))},
            ))  # fmt: skip
    return out


_LIBRICOUNT_NAME = re.compile(r"^(\d+)_([^/]+)\.wav$")


@_adapter(
    "libricount", licence="unknown", tasks=("libricount",), environmental=False,
    confirmed="Zenodo 1216072 LibriCount10-0dB.zip as read by hear-preprocess libricount and TFDS "
    "(test/<count>_<id>.wav + <count>_<id>.json)",
)  # fmt: skip
def _read_libricount(ctx: _Context) -> list[ClipRecord]:
    """LibriCount10 0 dB (Stöter et al. 2018), LibriCount10-0dB.zip as extracted:

        <root>/test/<count>_<id>.wav    5720 mixtures of 0-10 concurrent LibriSpeech speakers, 5 s, 16 kHz
        <root>/test/<count>_<id>.json   optional side-car: [{"sex", "activity", "speaker_id"}, ...], one per speaker

    Label = the count ("0".."10").  When the side-car is present its number of speakers must equal the count.
    Evaluation only: all "test".
    """
    out = []
    for audio in _audio_files(ctx.require_dir(ctx.root / "test")):
        m = _LIBRICOUNT_NAME.match(audio.name)
        count = int(m.group(1)) if m else -1
        if not 0 <= count <= 10:
            ctx.problem(audio, None, "file name is not <count 0-10>_<id>.wav")
            continue
        meta: dict[str, Any] = {}
        sidecar = audio.with_suffix(".json")
        if sidecar.is_file():
            try:
                speakers = json.loads(sidecar.read_text(encoding="utf-8"))
                ids = [s["speaker_id"] for s in speakers]
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                ctx.problem(sidecar, None, f"not a list of speakers with speaker_id: {e}")
                continue
            if len(ids) != count:
                ctx.problem(sidecar, None, f"{len(ids)} speakers listed, file name says {count}")
                continue
            meta = {"speaker_ids": ids, "sexes": [s.get("sex") for s in speakers]}
        out.append(ctx.record(audio.stem, audio, labels={"libricount": str(count)}, split="test", meta=meta))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Captioning and retrieval: AudioCaps, Clotho v2.1


@_adapter(
    "audiocaps", licence="unknown", tasks=(), environmental=False,
    confirmed="cdjkim/audiocaps README (CSV columns); audio naming: Labbeti/aac-datasets ({youtube_id}_{start_time})",
)  # fmt: skip
def _read_audiocaps(ctx: _Context) -> list[ClipRecord]:
    """AudioCaps (Kim et al. 2019): the official CSVs plus the audio you downloaded from YouTube:

        <root>/{train,val,test}.csv     header audiocap_id,youtube_id,start_time,caption (one caption per row;
                                        1 per train clip, 5 per val/test clip)
        <root>/audio/{train,val,test}/<youtube_id>_<start_time>.{wav,flac}   (aac-datasets naming; a leading
                                        "Y" is accepted too; sub-folders allowed)

    One record per (youtube_id, start_time) with every caption in texts (CSV order) and the audiocap_ids in meta.
    Splits as the CSVs; CSVs that are absent are not loaded (at least one must exist).  group = youtube_id.
    Captions: MIT (cdjkim/audiocaps); audio licence: YouTube, unknown.
    """
    present = [s for s in ("train", "val", "test") if (ctx.root / f"{s}.csv").is_file()]
    if not present:
        ctx.fatal(ctx.root, "none of train.csv, val.csv, test.csv is present")
    out = []
    for split in present:
        meta = ctx.root / f"{split}.csv"
        audio_index = _index_audio(ctx.root / "audio" / split)
        clips: dict[tuple[str, int], dict[str, Any]] = {}
        for line, row in _csv_rows(ctx, meta, ("audiocap_id", "youtube_id", "start_time", "caption")):
            start = _int(row["start_time"])
            if start is None or not row["youtube_id"] or not row["caption"]:
                ctx.problem(meta, line, "malformed row: empty youtube_id/caption or non-integer start_time")
                continue
            clip = clips.setdefault((row["youtube_id"], start), {"line": line, "ids": [], "captions": []})
            clip["ids"].append(row["audiocap_id"])
            clip["captions"].append(row["caption"])
        for (ytid, start), clip in clips.items():
            stems = (f"{ytid}_{start}", f"Y{ytid}_{start}")
            audio = next((audio_index[s + e] for s in stems for e in (".wav", ".flac") if s + e in audio_index), None)
            if audio is None:
                ctx.problem(meta, clip["line"], f"audio file missing: {ctx.root / 'audio' / split / stems[0]}.wav")
                continue
            out.append(ctx.record(
                f"{ytid}_{start}", audio, group=ytid, texts=clip["captions"], split=split,
                meta={"youtube_id": ytid, "start_time": start, "audiocap_ids": clip["ids"]},
            ))  # fmt: skip
    return out


@_adapter(
    "clotho", licence="unknown", tasks=(), environmental=False,
    confirmed="Clotho v2.1 Zenodo 4783391 file list (captions/metadata CSVs, clotho_audio_<split>.7z -> <split>/)",
)  # fmt: skip
def _read_clotho(ctx: _Context) -> list[ClipRecord]:
    """Clotho v2.1 (Drossos et al. 2020), the Zenodo files side by side with the 7z archives extracted:

        <root>/clotho_captions_{development,validation,evaluation}.csv   header file_name,caption_1..caption_5
        <root>/{development,validation,evaluation}/<file_name>           15-30 s, 44.1 kHz
        <root>/clotho_metadata_{development,validation,evaluation}.csv   optional, ISO-8859-1: file_name,
                                  keywords,sound_id,sound_link,start_end_samples,manufacturer,license

    Splits: development = "train", validation = "val", evaluation = "test"; splits whose captions CSV is absent
    are not loaded (at least one must exist).  texts = caption_1..caption_5.  With the metadata CSV a clip gets its
    own Freesound licence and its keywords / sound_id in meta; without it, licence "unknown".  Captions are under
    Tampere University's licence.
    """
    parts = [("development", "train"), ("validation", "val"), ("evaluation", "test")]
    present = [(n, s) for n, s in parts if (ctx.root / f"clotho_captions_{n}.csv").is_file()]
    if not present:
        ctx.fatal(ctx.root, "no clotho_captions_{development,validation,evaluation}.csv present")
    caption_columns = tuple(f"caption_{i}" for i in range(1, 6))
    out = []
    for name, split in present:
        info: dict[str, dict[str, str]] = {}
        meta_path = ctx.root / f"clotho_metadata_{name}.csv"
        if meta_path.is_file():
            for _, row in _csv_rows(ctx, meta_path, ("file_name", "license"), encoding="iso-8859-1"):
                info[row["file_name"]] = row
        captions_path = ctx.root / f"clotho_captions_{name}.csv"
        for line, row in _csv_rows(ctx, captions_path, ("file_name",) + caption_columns):
            captions = [row[c] for c in caption_columns]
            if not row["file_name"] or not all(captions):
                ctx.problem(captions_path, line, "malformed row: empty file_name or caption")
                continue
            audio = ctx.audio(ctx.root / name / row["file_name"], captions_path, line)
            if audio is None:
                continue
            clip_info = info.get(row["file_name"], {})
            extra: dict[str, Any] = {}
            if clip_info:
                extra = {"sound_id": clip_info.get("sound_id", ""), "license": clip_info["license"],
                         "keywords": [k for k in clip_info.get("keywords", "").split(";") if k]}  # fmt: skip
            out.append(ctx.record(
                f"{name}/{Path(row['file_name']).stem}", audio, licence=_cc_licence(clip_info.get("license", "")),
                texts=captions, split=split, meta={"subset": name, **extra},
            ))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# Closed vocabularies, readable, in the dataset's own order (its class index where it has one): what a zero-shot
# evaluation builds its prompts from.  Every label an adapter emits for these tasks is one of these names.

TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "esc50": tuple(_readable(c) for c in ESC50_CLASSES),
    "esc50_actions": ESC50_ACTIONS,
    "us8k": tuple(_readable(c) for c in US8K_CLASSES),
    "dcase2017_task4": DCASE2017_TASK4_CLASSES,
    "vocalsound": tuple(VOCALSOUND_CLASSES.values()),
    "sesa": SESA_CLASSES,
    "tut2017": tuple(_readable(s) for s in TUT2017_SCENES),
    "gtzan_music_speech": ("music", "speech"),
    "gtzan_genre": tuple(GTZAN_GENRES.values()),
    "nsynth_instrument_family": tuple(_readable(f) for f in NSYNTH_FAMILIES),
    "nsynth_velocity": ("25", "50", "75", "100", "127"),  # the five velocities NSynth was rendered at
    "nsynth_qualities": tuple(_readable(q) for q in NSYNTH_QUALITIES),
    "beijing_opera": BEIJING_OPERA_CLASSES,
    "crema_d": tuple(CREMA_D_EMOTIONS.values()),
    "ravdess": tuple(RAVDESS_EMOTIONS.values()),
    "speech_commands": SPEECH_COMMANDS_WORDS,
    "libricount": tuple(str(n) for n in range(11)),
}
