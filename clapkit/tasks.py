"""The evaluation registry: every downstream task of the MS-CLAP 2023 paper, and every task of the embedded corpus.

``PAPER_TASKS[name]`` is one ``Task`` per entry of the paper's evaluation (Table 2 and the 16 columns of Table 1):

* 20 classification tasks (accuracy; mAP for the multi-label FSD50K, AudioSet, ESC50-Actions and NSynth
  qualities; F1 for DCASE 2017 Task 4), each read by a dataset adapter of ``clapkit.data.adapters``;
* 4 retrieval entries, audio-to-text and text-to-audio on AudioCaps and Clotho (R@1, R@5, R@10 and mAP@10, the
  LAION-CLAP protocol; the paper reports R@1 and mAP@10);
* 2 captioning entries (AudioCaps, Clotho; SPIDEr): scored with a captioner, not a CLAP (``clapkit.caption_eval``:
  ``clapkit evaluate --task clotho_captioning --data DIR --model clapcap_weights_2023.pth``); the evaluate stage,
  which holds a CLAP, leaves them out (``clap_scored_tasks``).

Each task carries the paper's number for the released 2023 CLAP (``paper``), the best published number it was
compared with (``benchmark``, with its reference or "random"), and, for the 16 tasks of Table 1, the zero-shot
numbers of the seven encoder pairs trained on 119k pairs (``table1``).  Numbers are transcribed from Tables 1 and 2
of the paper (Elizalde, Deshmukh, Wang: Natural Language Supervision for General-Purpose Audio Representations,
ICASSP 2024, arXiv:2309.05767).

``embedded_tasks(prepared_dir)`` turns the prepared corpus' ``tasks.json`` into ``Task`` entries (classification,
eval split "test", prompt = the canonical caption wording of the task) plus one caption-retrieval task over the
test clips.  Those are "in-domain": the model was trained on captions of the same tasks (other clips).

Prompts: the paper gives only msclap's "this is the sound of {}" (what its ESC-50 93.9 % was measured with); we use
it for every paper task except where a bare label would not name a sound (counts, pitches, velocities): those
prompts are ours and say so in ``prompt_note``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .data.adapters import TASK_CLASSES

__all__ = ["Task", "PAPER_TASKS", "TABLE1_MODELS", "embedded_tasks", "get_task", "task_classes", "clap_scored_tasks",
           "CLASSIFICATION", "RETRIEVAL", "CAPTIONING"]  # fmt: skip

CLASSIFICATION, RETRIEVAL, CAPTIONING = "classification", "retrieval", "captioning"
MSCLAP_PROMPT = "this is the sound of {}"
CAPTIONING_NOTE = "no prompt: captions decoded by msclap's beam search (beam 5, 67 tokens)"

# Table 1 rows (encoder pairs trained on 119k pairs), in the paper's order.
TABLE1_MODELS = ("CNN14+BERT", "HTSAT+CLIP", "HTSAT+RoBERTa", "HTSAT+GPT2", "HTSAT-22+RoBERTa", "HTSAT-22+CLIP",
                 "HTSAT-22+GPT2")  # fmt: skip


@dataclass(frozen=True)
class Task:
    """One evaluation task: what it reads, how it is scored, and what the paper reported for it."""

    name: str
    kind: str  # classification | retrieval | captioning
    metric: str  # the headline metric: accuracy | mAP | F1 | R@1 (retrieval: R@1, R@5, R@10 and mAP@10 all computed)
    domain: str
    title: str  # as the paper names it
    adapter: str | None = None  # clapkit.data.adapters name (paper tasks); None for the embedded corpus
    label_key: str | None = None  # the key of ClipRecord.labels / manifest labels holding this task's label
    multi_label: bool = False
    direction: str | None = None  # retrieval: "a2t" (audio query, captions ranked) or "t2a"
    prompt: str = MSCLAP_PROMPT
    prompt_note: str = "msclap's prompt"
    paper: dict[str, float] = field(default_factory=dict)  # CLAP 2023 (Table 2), per metric
    benchmark: dict[str, float] = field(default_factory=dict)  # best published number (Table 2), per metric
    benchmark_ref: str = ""  # where the benchmark number comes from
    table1: dict[str, float] = field(default_factory=dict)  # TABLE1_MODELS -> zero-shot number (Table 1)
    seen_in_training: bool = False  # the paper's 4.6M pairs contain this dataset's audio: not a true zero-shot
    supported: bool = True
    source: str = "paper"  # paper | embedded
    eval_split: str = "test"
    classes: tuple[str, ...] = ()  # embedded tasks: the corpus vocabulary (paper tasks: see task_classes)

    @property
    def protocol(self) -> str:
        """How this task's zero-shot number should be read next to the paper's."""
        if self.source == "embedded":
            return "in-domain"
        if self.kind == CAPTIONING:  # msclap issue #39: clapcap's training data = AudioCaps + Clotho v2.1 train
            return "captioning; the paper's clapcap trained on AudioCaps + Clotho training captions: not zero-shot"
        return "zero-shot (audio seen in training)" if self.seen_in_training else "zero-shot"


def _t1(*values: float) -> dict[str, float]:
    return dict(zip(TABLE1_MODELS, values))


def _cls(name, metric, domain, title, adapter, paper, benchmark, ref, table1=(), multi=False, seen=False,
         prompt=MSCLAP_PROMPT, note="msclap's prompt") -> Task:  # fmt: skip
    return Task(name=name, kind=CLASSIFICATION, metric=metric, domain=domain, title=title, adapter=adapter,
                label_key=name, multi_label=multi, prompt=prompt, prompt_note=note, paper={metric: paper},
                benchmark={metric: benchmark}, benchmark_ref=ref, table1=_t1(*table1) if table1 else {},
                seen_in_training=seen)  # fmt: skip


# Benchmark references of Table 2: [3] CLAP 2022, [4] LAION-CLAP, [6] WavCaps, [35] Kim et al. prefix tuning.
_PAPER_LIST = [
    _cls("esc50", "accuracy", "sound events", "ESC50", "esc50", 0.939, 0.948, "[6] WavCaps",
         (0.826, 0.813, 0.811, 0.819, 0.879, 0.830, 0.882)),
    _cls("fsd50k", "mAP", "sound events", "FSD50K", "fsd50k", 0.485, 0.302, "[3] CLAP 2022",
         (0.302, 0.289, 0.322, 0.336, 0.388, 0.411, 0.403), multi=True, seen=True),
    _cls("us8k", "accuracy", "sound events", "US8K", "us8k", 0.823, 0.806, "[6] WavCaps",
         (0.732, 0.748, 0.757, 0.767, 0.767, 0.791, 0.750)),
    _cls("dcase2017_task4", "F1", "sound events", "DCASE17 Task 4", "dcase2017_task4", 0.466, 0.3, "[3] CLAP 2022",
         (0.300, 0.277, 0.226, 0.242, 0.209, 0.229, 0.337), multi=True),
    _cls("audioset", "mAP", "sound events", "AudioSet", "audioset", 0.102, 0.058, "[3] CLAP 2022", multi=True,
         seen=True),
    _cls("vocalsound", "accuracy", "vocal sounds", "VocalSound", "vocalsound", 0.8, 0.495, "[3] CLAP 2022",
         (0.495, 0.645, 0.610, 0.646, 0.682, 0.692, 0.692)),
    _cls("sesa", "accuracy", "surveillance", "SESA", "sesa", 0.65, 0.25, "random",
         (0.749, 0.761, 0.745, 0.644, 0.656, 0.723, 0.762)),
    _cls("esc50_actions", "mAP", "action", "ESC50-Actions", "esc50_actions", 0.509, 0.045, "random",
         (0.495, 0.442, 0.475, 0.503, 0.481, 0.488, 0.475), multi=True),
    _cls("tut2017", "accuracy", "acoustic scenes", "TUT 2017", "tut2017", 0.538, 0.296, "[3] CLAP 2022",
         (0.296, 0.219, 0.285, 0.286, 0.369, 0.292, 0.317)),
    _cls("gtzan_music_speech", "accuracy", "music", "GTZAN Music-Speech", "gtzan_music_speech", 0.992, 1.0,
         "[3] CLAP 2022", (1.0, 0.992, 0.992, 1.0, 1.0, 1.0, 1.0)),
    _cls("gtzan_genre", "accuracy", "music", "GTZAN Genres", "gtzan_genre", 0.584, 0.25, "[3] CLAP 2022",
         (0.252, 0.156, 0.178, 0.150, 0.209, 0.280, 0.289), prompt="this is the sound of {} music",
         note="ours: the genre name alone reads as a word, not a sound"),
    _cls("nsynth_pitch", "accuracy", "music", "NSynth Pitch", "nsynth", 0.444, 0.015, "random", seen=True,
         prompt="this is the sound of a musical note of MIDI pitch {}", note="ours: the label is a MIDI number"),
    _cls("nsynth_velocity", "accuracy", "music", "NSynth Velocity", "nsynth", 0.222, 0.2, "random", seen=True,
         prompt="this is the sound of a musical note of MIDI velocity {}", note="ours: the label is a MIDI number"),
    _cls("nsynth_qualities", "mAP", "music", "NSynth Qualities", "nsynth", 0.489, 0.1, "random", multi=True,
         seen=True),
    _cls("beijing_opera", "accuracy", "instruments", "Beijing Opera", "beijing_opera", 0.466, 0.4746,
         "[3] CLAP 2022", (0.475, 0.627, 0.436, 0.539, 0.309, 0.517, 0.487)),
    _cls("nsynth_instrument_family", "accuracy", "instruments", "NSynth Instrument family", "nsynth", 0.479, 0.09,
         "random", (0.295, 0.312, 0.352, 0.322, 0.402, 0.462, 0.425), seen=True),
    _cls("crema_d", "accuracy", "speech emotion", "CREMA-D", "crema_d", 0.3, 0.178, "[3] CLAP 2022",
         (0.178, 0.208, 0.263, 0.234, 0.301, 0.275, 0.297)),
    _cls("ravdess", "accuracy", "speech emotion", "RAVDESS", "ravdess", 0.315, 0.159, "[3] CLAP 2022",
         (0.160, 0.169, 0.2, 0.171, 0.278, 0.233, 0.217)),
    _cls("speech_commands", "accuracy", "keyword spotting", "Speech Commands", "speech_commands", 0.164, 0.106,
         "[3] CLAP 2022", (0.106, 0.120, 0.098, 0.139, 0.129, 0.116, 0.089)),
    _cls("libricount", "accuracy", "speaker counting", "LibriCount10", "libricount", 0.246, 0.178, "[3] CLAP 2022",
         (0.179, 0.113, 0.149, 0.155, 0.207, 0.094, 0.254), prompt="this is the sound of {} people speaking",
         note="ours: the label is a count"),
    Task("audiocaps_captioning", CAPTIONING, "SPIDEr", "captioning", "AudioCaps captioning", adapter="audiocaps",
         paper={"SPIDEr": 0.455}, benchmark={"SPIDEr": 0.438}, benchmark_ref="[35] Kim et al.", seen_in_training=True,
         prompt_note=CAPTIONING_NOTE),
    Task("clotho_captioning", CAPTIONING, "SPIDEr", "captioning", "Clotho captioning", adapter="clotho",
         paper={"SPIDEr": 0.271}, benchmark={"SPIDEr": 0.215}, benchmark_ref="[35] Kim et al.", seen_in_training=True,
         prompt_note=CAPTIONING_NOTE),
]
for _dataset, _title, _numbers in (
    ("audiocaps", "AudioCaps", {"a2t": ((0.425, 0.319), (0.517, 0.457)), "t2a": ((0.356, 0.51), (0.397, 0.51))}),
    ("clotho", "Clotho", {"a2t": ((0.229, 0.155), (0.234, 0.138)), "t2a": ((0.157, 0.257), (0.195, 0.204))}),
):
    for _direction, ((_r1, _map), (_br1, _bmap)) in _numbers.items():
        _PAPER_LIST.append(Task(
            f"{_dataset}_{_direction}", RETRIEVAL, "R@1", "retrieval",
            f"{_title} {'A->T' if _direction == 'a2t' else 'T->A'}", adapter=_dataset, direction=_direction,
            paper={"R@1": _r1, "mAP@10": _map}, benchmark={"R@1": _br1, "mAP@10": _bmap},
            benchmark_ref="R@1: [6] WavCaps; mAP@10: [4] LAION-CLAP", seen_in_training=True, prompt="{}",
            prompt_note="captions as written",
        ))  # fmt: skip

PAPER_TASKS: dict[str, Task] = {t.name: t for t in _PAPER_LIST}


def get_task(name: str, prepared_dir: str | Path | None = None) -> Task:
    """A paper task by name, or an embedded task of ``prepared_dir``."""
    if name in PAPER_TASKS:
        return PAPER_TASKS[name]
    tasks = embedded_tasks(prepared_dir) if prepared_dir and (Path(prepared_dir) / "tasks.json").is_file() else {}
    if name in tasks:
        return tasks[name]
    known = sorted(PAPER_TASKS) + sorted(tasks)
    raise KeyError(f"unknown task {name!r}; known: {', '.join(known)}")


def clap_scored_tasks(adapter: str) -> list[Task]:
    """The supported paper tasks a CLAP scores on ``adapter``'s dataset (the evaluate stage's ``datasets``).

    Captioning is left out: it needs a captioner, not a CLAP embedder
    (``clapkit evaluate --task audiocaps_captioning --data DIR --model <captioner>``)."""
    return [t for t in PAPER_TASKS.values() if t.adapter == adapter and t.supported and t.kind != CAPTIONING]


# -------------------------------------------------------------------------------------------------------------
# Embedded corpus tasks


EMBEDDED_RETRIEVAL = "corpus_retrieval"


def embedded_tasks(prepared_dir: str | Path) -> dict[str, Task]:
    """One classification task per entry of ``<prepared_dir>/tasks.json``, plus caption retrieval on its test clips."""
    from .zeroshot import embedded_task_prompt  # the prompt rule train's validation uses too

    tasks_json = json.loads((Path(prepared_dir) / "tasks.json").read_text(encoding="utf-8"))
    out: dict[str, Task] = {}
    for name, info in sorted(tasks_json.items()):
        template = embedded_task_prompt(name)  # the canonical wording the captions start from
        out[name] = Task(name=name, kind=CLASSIFICATION, metric="mAP" if info.get("multi_label") else "accuracy",
                         domain="embedded corpus", title=name, label_key=name,
                         multi_label=bool(info.get("multi_label")),
                         prompt=template, prompt_note="the task's first caption template", source="embedded",
                         eval_split=info.get("eval_split", "test"), classes=tuple(info["classes"]))  # fmt: skip
    out[EMBEDDED_RETRIEVAL] = Task(name=EMBEDDED_RETRIEVAL, kind=RETRIEVAL, metric="R@1", domain="embedded corpus",
                                   title="captions of the test clips (A->T and T->A)", direction="both", prompt="{}",
                                   prompt_note="captions as written", source="embedded")  # fmt: skip
    return out


# -------------------------------------------------------------------------------------------------------------
# Class vocabularies of the paper tasks


def task_classes(task: Task, root: str | Path | None = None, labels_seen: Sequence[Any] = ()) -> tuple[str, ...]:
    """The class names a zero-shot evaluation of ``task`` ranks.

    Closed vocabularies come from ``TASK_CLASSES`` (the dataset's own order).  FSD50K and AudioSet read theirs from
    the dataset (``vocabulary.csv`` / ``class_labels_indices.csv`` under ``root``), as their adapters do.  Open ones
    (NSynth pitch) are the labels present in the data, in numeric order.  Embedded tasks carry their classes.
    """
    if task.classes:
        return task.classes
    if task.name in TASK_CLASSES:
        return TASK_CLASSES[task.name]
    if task.name == "fsd50k" and root is not None:
        with open(Path(root) / "FSD50K.ground_truth" / "vocabulary.csv", newline="", encoding="utf-8") as f:
            return tuple(row[1].replace("_", " ").strip() for row in csv.reader(f) if len(row) >= 2)
    if task.name == "audioset" and root is not None:
        with open(Path(root) / "class_labels_indices.csv", newline="", encoding="utf-8") as f:
            return tuple(row["display_name"] for row in csv.DictReader(f))
    seen: set[str] = set()
    for value in labels_seen:
        seen.update(value if isinstance(value, list) else [value])
    return tuple(sorted(seen, key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s)))
