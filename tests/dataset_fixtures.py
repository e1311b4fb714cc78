"""Writers of tiny datasets in each public dataset's exact on-disk layout (the layouts ``clapkit.data.adapters``
documents), shared by the adapter and evaluation tests.

``write_dataset(adapter, root, clips)`` writes the *test* part of a dataset: ``clips`` is a list of
``(label, waveform)`` where ``label`` is the readable label the adapter will report for the task the clip is
written for (a class name, a list of names for multi-label tasks, or the captions of a retrieval clip), and the
waveform is 16 kHz mono float32.  Class names are mapped back to the dataset's own spelling ("chirping birds" ->
"chirping_birds", "anger" -> "ANG", "throat clearing" -> "throatclearing").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import soundfile as sf

from clapkit.data import adapters as A

SR = 16000


def wav(path: Path, x: np.ndarray | None = None, fmt: str | None = None, sr: int = SR) -> Path:
    """Write ``x`` (default: a 10 ms sine, enough to be a real, decodable audio file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if x is None:
        x = 0.1 * np.sin(2 * np.pi * 440 * np.arange(160) / SR).astype(np.float32)
    sf.write(path, x, sr, format=fmt)
    return path


def text(path: Path, content: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding=encoding)
    return path


def nsynth_example(note_str, family, source, pitch, velocity, qualities):
    """One entry of NSynth's examples.json (raw spellings: "synth_lead", "fast_decay")."""
    return {"note": 1, "note_str": note_str, "instrument": 7, "instrument_str": note_str.rsplit("-", 2)[0],
            "pitch": pitch, "velocity": velocity, "sample_rate": 16000,
            "qualities": [int(q in qualities) for q in A.NSYNTH_QUALITIES], "qualities_str": qualities,
            "instrument_family": 0, "instrument_family_str": family, "instrument_source": 2,
            "instrument_source_str": source}  # fmt: skip


def raw_name(readable: str, raw_names: Sequence[str] | dict[str, str]) -> str:
    """The dataset's spelling of a readable class name (a dict maps raw -> readable)."""
    pairs = raw_names.items() if isinstance(raw_names, dict) else ((r, A._readable(r)) for r in raw_names)
    for raw, name in pairs:
        if name == readable:
            return raw
    raise KeyError(readable)


def _as_list(label: Any) -> list[str]:
    return list(label) if isinstance(label, (list, tuple)) else [label]


# ---------------------------------------------------------------------------------------------------------------
# One writer per adapter


def _esc50(root: Path, clips) -> None:
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (label, x) in enumerate(clips):
        raw = raw_name(label, A.ESC50_CLASSES)
        name = f"{1 + i % 5}-{100000 + i}-A-{A.ESC50_CLASSES.index(raw)}.wav"
        lines.append(f"{name},{1 + i % 5},{A.ESC50_CLASSES.index(raw)},{raw},False,{100000 + i},A")
        wav(root / "audio" / name, x)
    text(root / "meta" / "esc50.csv", "\n".join(lines) + "\n")


def _esc50_actions(root: Path, clips) -> None:
    lines = ["filename,fold,target,category," + ",".join(A.ESC50_ACTIONS)]
    for i, (actions, x) in enumerate(clips):
        name = f"1-{200000 + i}-A-0.wav"
        ratings = ",".join("3.0" if a in actions else "0.5" for a in A.ESC50_ACTIONS)
        lines.append(f"{name},1,0,dog,{ratings}")
        wav(root / "audio" / name, x)
    text(root / "action_vectors_dataset" / "actionvector_one_per_audiofile.csv", "\n".join(lines) + "\n")


def _us8k(root: Path, clips) -> None:
    lines = ["slice_file_name,fsID,start,end,salience,fold,classID,class"]
    for i, (label, x) in enumerate(clips):
        raw = raw_name(label, A.US8K_CLASSES)
        cid, fold = A.US8K_CLASSES.index(raw), 1 + i % 10
        name = f"{300000 + i}-{cid}-0-0.wav"
        lines.append(f"{name},{300000 + i},0.0,1.0,1,{fold},{cid},{raw}")
        wav(root / "audio" / f"fold{fold}" / name, x)
    text(root / "metadata" / "UrbanSound8K.csv", "\n".join(lines) + "\n")


def _fsd50k(root: Path, clips, vocabulary: Sequence[str]) -> None:
    gt = root / "FSD50K.ground_truth"
    raw = {c: c.replace(" ", "_") for c in vocabulary}
    text(gt / "vocabulary.csv", "".join(f"{i},{raw[c]},/m/f{i}\n" for i, c in enumerate(vocabulary)))
    lines = ["fname,labels,mids"]
    for i, (labels, x) in enumerate(clips):
        names = [raw[c] for c in labels]
        mids = [f"/m/f{vocabulary.index(c)}" for c in labels]
        lines.append(f'{40000 + i},"{",".join(names)}","{",".join(mids)}"')
        wav(root / "FSD50K.eval_audio" / f"{40000 + i}.wav", x)
    text(gt / "eval.csv", "\n".join(lines) + "\n")


def _dcase2017_task4(root: Path, clips) -> None:
    lines = []
    for i, (labels, x) in enumerate(clips):
        name = f"yt{i:09d}_30.000_40.000.wav"
        lines += [f"{name}\t30.000\t40.000\t{label}" for label in _as_list(labels)]
        wav(root / "audio" / "evaluation" / f"Y{name}", x)
    text(root / "groundtruth_release" / "groundtruth_weak_label_evaluation_set.csv", "\n".join(lines) + "\n")


def _audioset(root: Path, clips, vocabulary: Sequence[str]) -> None:
    text(root / "class_labels_indices.csv", "index,mid,display_name\n" + "".join(
        f'{i},/m/a{i},"{c}"\n' for i, c in enumerate(vocabulary)))
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017", "# num_ytids=1, num_segs=1",
             "# YTID, start_seconds, end_seconds, positive_labels"]  # fmt: skip
    for i, (labels, x) in enumerate(clips):
        ytid = f"as{i:09d}"
        mids = ",".join(f"/m/a{vocabulary.index(c)}" for c in labels)
        lines.append(f'{ytid}, 0.000, 10.000, "{mids}"')
        wav(root / "audio" / "eval_segments" / f"Y{ytid}.wav", x)
    text(root / "eval_segments.csv", "\n".join(lines) + "\n")


def _vocalsound(root: Path, clips) -> None:
    for i, (label, x) in enumerate(clips):  # no datafiles/: the adapter gives no split, all clips are scored
        wav(root / "audio_16k" / f"f{i:04d}_0_{raw_name(label, A.VOCALSOUND_CLASSES)}.wav", x)


def _sesa(root: Path, clips) -> None:
    (root / "train").mkdir(parents=True, exist_ok=True)
    for i, (label, x) in enumerate(clips):
        wav(root / "test" / f"{label}_{i:03d}.wav", x)


def _tut2017(root: Path, clips) -> None:
    ev = root / "TUT-acoustic-scenes-2017-evaluation"
    lines = []
    for i, (label, x) in enumerate(clips):
        lines.append(f"audio/{i + 1}.wav\t{raw_name(label, A.TUT2017_SCENES)}")
        wav(ev / "audio" / f"{i + 1}.wav", x)
    text(ev / "meta.txt", "\n".join(lines) + "\n")


def _gtzan_music_speech(root: Path, clips) -> None:
    for i, (label, x) in enumerate(clips):
        wav(root / f"{label}_wav" / f"clip{i}.wav", x)


def _gtzan_genre(root: Path, clips) -> None:
    for i, (label, x) in enumerate(clips):
        raw = raw_name(label, A.GTZAN_GENRES)
        wav(root / "genres" / raw / f"{raw}.{i:05d}.au", x, fmt="AU")


def _nsynth(root: Path, clips, task: str) -> None:
    """NSynth test part; the clip's label sets ``task``'s field, the other fields get fixed valid values."""
    examples = {}
    for i, (label, x) in enumerate(clips):
        family, pitch, velocity, qualities = "bass", 60, 100, ["dark"]
        if task == "nsynth_instrument_family":
            family = raw_name(label, A.NSYNTH_FAMILIES)
        elif task == "nsynth_pitch":
            pitch = int(label)
        elif task == "nsynth_velocity":
            velocity = int(label)
        elif task == "nsynth_qualities":
            qualities = [raw_name(q, A.NSYNTH_QUALITIES) for q in label]
        key = f"{family}_synthetic_{i:03d}-{pitch:03d}-{velocity:03d}"
        examples[key] = nsynth_example(key, family, "synthetic", pitch, velocity, qualities)
        wav(root / "nsynth-test" / "audio" / f"{key}.wav", x)
    text(root / "nsynth-test" / "examples.json", json.dumps(examples, indent=2))


def _beijing_opera(root: Path, clips) -> None:
    for i, (label, x) in enumerate(clips):
        wav(root / f"{500000 + i}__ajaysm__{label}-{i:02d}.wav", x)


def _crema_d(root: Path, clips) -> None:
    for i, (label, x) in enumerate(clips):
        wav(root / "AudioWAV" / f"{1001 + i}_DFA_{raw_name(label, A.CREMA_D_EMOTIONS)}_XX.wav", x)


def _ravdess(root: Path, clips) -> None:
    for i, (label, x) in enumerate(clips):
        actor = 1 + i % 24
        code = raw_name(label, A.RAVDESS_EMOTIONS)
        wav(root / f"Actor_{actor:02d}" / f"03-01-{code}-01-01-{1 + i // 24:02d}-{actor:02d}.wav", x)


def _speech_commands(root: Path, clips) -> None:
    listed = []
    for i, (label, x) in enumerate(clips):
        rel = f"{label}/{i:08x}_nohash_0.wav"
        wav(root / rel, x)
        listed.append(rel)
    text(root / "validation_list.txt", "")
    text(root / "testing_list.txt", "\n".join(listed) + "\n")


def _libricount(root: Path, clips) -> None:
    for i, (label, x) in enumerate(clips):
        wav(root / "test" / f"{label}_{i:08x}.wav", x)


def _audiocaps(root: Path, clips) -> None:
    lines = ["audiocap_id,youtube_id,start_time,caption"]
    for i, (captions, x) in enumerate(clips):
        lines += [f'{1000 + 10 * i + k},ac{i:09d},30,"{c}"' for k, c in enumerate(captions)]
        wav(root / "audio" / "test" / f"ac{i:09d}_30.wav", x)
    text(root / "test.csv", "\n".join(lines) + "\n")


def _clotho(root: Path, clips) -> None:
    lines = ["file_name,caption_1,caption_2,caption_3,caption_4,caption_5"]
    for i, (captions, x) in enumerate(clips):
        assert len(captions) == 5, "Clotho has five captions per clip"
        lines.append(f"clip {i}.wav," + ",".join(f'"{c}"' for c in captions))
        wav(root / "evaluation" / f"clip {i}.wav", x)
    text(root / "clotho_captions_evaluation.csv", "\n".join(lines) + "\n")


WRITERS: dict[str, Callable[..., None]] = {
    "esc50": _esc50, "esc50_actions": _esc50_actions, "us8k": _us8k, "fsd50k": _fsd50k,
    "dcase2017_task4": _dcase2017_task4, "audioset": _audioset, "vocalsound": _vocalsound, "sesa": _sesa,
    "tut2017": _tut2017, "gtzan_music_speech": _gtzan_music_speech, "gtzan_genre": _gtzan_genre, "nsynth": _nsynth,
    "beijing_opera": _beijing_opera, "crema_d": _crema_d, "ravdess": _ravdess, "speech_commands": _speech_commands,
    "libricount": _libricount, "audiocaps": _audiocaps, "clotho": _clotho,
}  # fmt: skip


def write_dataset(adapter: str, root: Path, clips: list[tuple[Any, np.ndarray]], **extra: Any) -> Path:
    """Write ``clips`` as the test part of ``adapter``'s dataset under ``root`` (see the module docstring).

    ``extra``: ``vocabulary=`` (FSD50K, AudioSet: the class list they ship), ``task=`` (NSynth: which field the
    labels are for).
    """
    root.mkdir(parents=True, exist_ok=True)
    WRITERS[adapter](root, clips, **extra)
    return root
