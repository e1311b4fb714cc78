"""Synthesised corpus: determinism, resumability, labels that agree with the audio, clear errors.

Tiny configs only; espeak-ng, flite, fluidsynth (+ fluid-soundfont-gm) and sox are installed by scripts/setup.sh.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from clapkit.data import synth
from clapkit.data.records import read_jsonl
from clapkit.data.synth import (
    ESPEAK_LANGUAGES,
    EspeakConfig,
    FliteConfig,
    FluidsynthConfig,
    SoxConfig,
    SynthToolError,
    build_espeak,
    build_flite,
    build_fluidsynth,
    build_sox,
    clip_rng,
    midi_file,
    note_name,
)

ESPEAK_TINY = EspeakConfig(n_clips=12, languages=["en-us", "de", "fr-fr", "ja"], variants=["m1", "f2", "croak"])
FLITE_TINY = FliteConfig(n_clips=8)
FLUID_TINY = FluidsynthConfig(n_clips=8, programs=[0, 40, 73], drum_fraction=0.25, notes_per_process=4)
SOX_TINY = SoxConfig(n_clips=12)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.wav"))}


def _f0(x: np.ndarray, sr: int) -> float:
    """Median fundamental frequency over voiced 40 ms frames (autocorrelation), 60-400 Hz."""
    n, hop, found = int(0.04 * sr), int(0.02 * sr), []
    lo, hi = int(sr / 400), int(sr / 60)
    for s in range(0, len(x) - n, hop):
        seg = x[s: s + n] - x[s: s + n].mean()
        if np.sqrt(np.mean(seg**2)) < 0.02:
            continue
        ac = np.correlate(seg, seg, "full")[n - 1:]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            found.append(sr / lag)
    assert found, "no voiced frame"
    return float(np.median(found))


# ---------------------------------------- helpers


def test_note_names_and_midi_bytes():
    assert [note_name(m) for m in (21, 60, 61, 69, 108)] == ["a0", "c4", "c#4", "a4", "c8"]
    # Variable-length quantities: the examples of the Standard MIDI File specification.
    for n, b in [(0, "00"), (0x7F, "7f"), (0x80, "8100"), (0x2000, "c000"), (0x3FFF, "ff7f"),
                 (0x4000, "818000"), (0x0FFFFFFF, "ffffff7f")]:
        assert synth._vlq(n).hex() == b
    data = midi_file([(1000, bytes([0x80, 60, 0])), (0, bytes([0x90, 60, 100]))])
    assert data[:14] == bytes.fromhex("4d546864 00000006 0000 0001 01f4".replace(" ", ""))
    track = data[22:]
    # tempo, note on at 0, note off 1000 ticks later (events sorted by time), end of track
    assert track == bytes.fromhex("00ff510307a120" "00903c64" "8768803c00" "00ff2f00")
    assert int.from_bytes(data[18:22], "big") == len(track)


def test_clip_rng_depends_only_on_seed_tool_index():
    a = clip_rng(3, "sox", 7).random(4)
    assert np.array_equal(a, clip_rng(3, "sox", 7).random(4))
    assert not np.array_equal(a, clip_rng(3, "sox", 8).random(4))
    assert not np.array_equal(a, clip_rng(3, "flite", 7).random(4))
    assert not np.array_equal(a, clip_rng(4, "sox", 7).random(4))
    with pytest.raises(ValueError):
        clip_rng(-1, "sox", 0)


# ---------------------------------------- espeak


def test_espeak_deterministic_and_plausible(tmp_path):
    a = build_espeak(tmp_path / "a", ESPEAK_TINY, seed=5, progress=False, workers=2)
    b = build_espeak(tmp_path / "b", ESPEAK_TINY, seed=5, progress=False, workers=1)
    assert a == b and len(a) == 12
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert read_jsonl(tmp_path / "a" / "espeak" / "clips.jsonl") == sorted(a, key=lambda r: r.id)
    c = build_espeak(tmp_path / "c", ESPEAK_TINY, seed=6, progress=False)
    assert {r.id for r in c} != {r.id for r in a}

    for r in a:
        x, sr = sf.read(tmp_path / "a" / r.path)
        assert sr == 22050 and sf.info(tmp_path / "a" / r.path).subtype == "PCM_16"
        assert 0.2 < len(x) / sr < 3.0, r.path
        assert np.sqrt(np.mean(x**2)) > 0.01, r.path
        assert r.id == r.path[:-4] and r.path.startswith("espeak/") and r.source == "synth:espeak" and not r.real
        code, variant = r.meta["language_code"], r.meta["variant"]
        assert r.labels["language"] == ESPEAK_LANGUAGES[code]
        assert r.group == f"espeak {variant.lower()}" and r.labels["speaker"] == f"espeak {code} {variant.lower()}"
        assert r.labels["gender"] == {"m1": "male", "f2": "female", "croak": "male"}[variant]
        assert ("digit" in r.labels) != ("keyword" in r.labels)
        if "digit" in r.labels:
            assert r.texts == [str(synth.DIGITS.index(r.labels["digit"]))]
        else:
            assert code != "ja"  # no keyword spellings for Japanese: digits only
            assert r.texts == [synth.ESPEAK_KEYWORDS[code][r.labels["keyword"]]]
        assert r.meta["tool_version"].startswith("espeak-ng 1.")


def test_espeak_female_variants_are_higher_pitched(tmp_path):
    cfg = EspeakConfig(n_clips=10, languages=["en-us"], variants=["m1", "f2"], keywords=["water", "house"],
                       digit_fraction=0.0, pitch_range=(50, 50))
    recs = build_espeak(tmp_path, cfg, seed=0, progress=False)
    f0 = {g: [_f0(*sf.read(tmp_path / r.path)) for r in recs if r.labels["gender"] == g] for g in ("male", "female")}
    assert f0["male"] and f0["female"]
    assert max(f0["male"]) < min(f0["female"]), f0


def test_espeak_resumes_without_regenerating(tmp_path):
    recs = build_espeak(tmp_path, ESPEAK_TINY, seed=1, progress=False)
    before = _hashes(tmp_path)
    deleted, tampered = tmp_path / recs[0].path, tmp_path / recs[1].path
    deleted.unlink()
    tampered.write_bytes(b"kept as is")  # an existing file is trusted, never re-rendered
    again = build_espeak(tmp_path, ESPEAK_TINY, seed=1, progress=False)
    assert again == recs
    assert hashlib.sha256(deleted.read_bytes()).hexdigest() == before[recs[0].path]
    assert tampered.read_bytes() == b"kept as is"
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.tmp"))  # no temporary file left


# ---------------------------------------- flite


def test_flite_deterministic_labels_and_gender(tmp_path):
    a = build_flite(tmp_path / "a", FLITE_TINY, seed=2, progress=False)
    b = build_flite(tmp_path / "b", FLITE_TINY, seed=2, progress=False, workers=1)
    assert a == b and len(a) == 8
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    for r in a:
        x, sr = sf.read(tmp_path / "a" / r.path)
        assert sr == 16000 and 0.2 < len(x) / sr < 3.0 and np.sqrt(np.mean(x**2)) > 0.01
        word = r.labels.get("digit", r.labels.get("keyword"))
        assert r.group == word and r.texts == [word]
        voice = r.meta["voice"]
        assert r.labels["speaker"] == f"flite {voice}" and r.labels["gender"] == synth.FLITE_VOICES[voice][0]

    # slt (female) speaks higher than kal16 and rms (male), whatever the pitch jitter.
    cfg = FliteConfig(n_clips=6, voices=["slt", "kal16", "rms"], keywords=["water"], digit_fraction=0.0)
    recs = build_flite(tmp_path / "g", cfg, seed=0, progress=False)
    f0 = {g: [_f0(*sf.read(tmp_path / "g" / r.path)) for r in recs if r.labels["gender"] == g]
          for g in ("male", "female")}
    assert f0["male"] and f0["female"] and max(f0["male"]) < min(f0["female"]), f0


# ---------------------------------------- fluidsynth


def _pitch_class(x: np.ndarray, sr: int) -> int:
    """Strongest pitch class (0 = c) of the first half second: spectral energy folded onto 12 semitones."""
    seg = x[: sr // 2] * np.hanning(sr // 2)
    power = np.abs(np.fft.rfft(seg)) ** 2
    f = np.fft.rfftfreq(len(seg), 1 / sr)
    keep = (f > 50) & (f < 5000)
    pc = np.round(12 * np.log2(f[keep] / 440.0) + 69).astype(int) % 12
    return int(np.argmax(np.bincount(pc, weights=power[keep], minlength=12)))


def test_fluidsynth_piano_pitch_and_velocity_match_audio(tmp_path):
    cfg = FluidsynthConfig(n_clips=8, programs=[0], drum_fraction=0.0, pitch_range=(48, 76), notes_per_process=4)
    recs = build_fluidsynth(tmp_path, cfg, seed=3, progress=False)
    assert len(recs) == 8
    names = ["c", "c#", "d", "d#", "e", "f", "f#", "g", "g#", "a", "a#", "b"]
    for r in recs:
        x, sr = sf.read(tmp_path / r.path)
        assert sr == 32000 and len(x) == 3 * 32000
        assert r.labels["instrument"] == "acoustic grand piano" and r.labels["instrument_family"] == "piano"
        assert r.labels["pitch"] == note_name(r.meta["midi"]) and r.group == "fluidsynth acoustic grand piano"
        assert names[_pitch_class(x, sr)] == r.labels["pitch"].rstrip("0123456789-"), r.path
        lo, hi = synth.VELOCITY_BANDS[r.labels["velocity"]]
        assert lo <= r.meta["velocity"] <= hi


def test_fluidsynth_note_independent_of_slot_and_velocity_is_loudness():
    cfg = FluidsynthConfig()
    exe = synth._require("fluidsynth", "fluidsynth")
    a = {"channel": 0, "program": 0, "key": 60, "velocity": 40, "hold_ms": 800}
    b = {"channel": 9, "program": 0, "key": 38, "velocity": 100, "hold_ms": 500}
    loud = {**a, "velocity": 110}
    out = synth._fluid_render(exe, cfg, [a, b, a, loud])
    # Same note, other slot or other batch: the same samples (so the batch size does not change the corpus).
    assert np.array_equal(out[0], out[2]) and np.abs(out[0]).max() > 0.01
    other = synth._fluid_render(exe, cfg, [loud, b, b, a])
    assert np.array_equal(other[3], out[0]) and np.array_equal(other[0], out[3]) and np.array_equal(other[1], out[1])
    assert synth._rms(out[3]) > 2 * synth._rms(out[0])
    assert np.abs(out[:, -10:]).max() == 0.0  # faded out before the next slot


def test_fluidsynth_deterministic_resumable_and_drops_silent_notes(tmp_path, monkeypatch, caplog):
    a = build_fluidsynth(tmp_path / "a", FLUID_TINY, seed=4, progress=False)
    b = build_fluidsynth(tmp_path / "b", FLUID_TINY, seed=4, progress=False, workers=1)
    assert a == b and _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert {r.source for r in a} == {"synth:fluidsynth"} and {r.licence for r in a} == {"MIT"}
    for r in a:
        if "drum" in r.labels:
            assert r.labels["drum"] == synth.GM_DRUMS[r.meta["midi"]][0] and r.group.endswith(" kit")
        else:
            assert r.labels["instrument"] == synth.GM_PROGRAMS[r.meta["program"]]

    # Nothing is missing: a second build must not start fluidsynth at all.
    def boom(*args, **kwargs):
        raise AssertionError("re-rendered a complete batch")

    monkeypatch.setattr(synth, "_fluid_render", boom)
    assert build_fluidsynth(tmp_path / "a", FLUID_TINY, seed=4, progress=False) == a
    monkeypatch.undo()
    (tmp_path / "a" / a[-1].path).unlink()
    assert build_fluidsynth(tmp_path / "a", FLUID_TINY, seed=4, progress=False) == a
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")

    # The bassoon preset has no samples near the top of the keyboard: those notes come out silent and are dropped.
    cfg = FluidsynthConfig(n_clips=4, programs=[70, 0], drum_fraction=0.0, pitch_range=(100, 100),
                           notes_per_process=4)
    with caplog.at_level(logging.WARNING):
        kept = build_fluidsynth(tmp_path / "s", cfg, seed=0, progress=False)
    dropped = read_jsonl(tmp_path / "s" / "fluidsynth" / "dropped.jsonl")
    assert dropped and {r.meta["program"] for r in dropped} == {70}
    assert len(kept) + len(dropped) == 4 and all(r.meta["program"] == 0 for r in kept)
    assert not any((tmp_path / "s" / r.path).exists() for r in dropped)
    assert "near-silent" in caplog.text
    monkeypatch.setattr(synth, "_fluid_render", boom)  # dropped notes are remembered, not retried
    assert build_fluidsynth(tmp_path / "s", cfg, seed=0, progress=False) == kept


# ---------------------------------------- sox


def test_sox_sine_peak_at_labelled_frequency(tmp_path):
    cfg = SoxConfig(n_clips=10, tones=["sine tone"])
    recs = build_sox(tmp_path, cfg, seed=0, progress=False)
    assert len(recs) == 10 and {r.meta["effect"] for r in recs} >= {"reverb", "tremolo"}
    for r in recs:
        x, sr = sf.read(tmp_path / r.path)
        assert abs(len(x) / sr - r.meta["duration_s"]) < 0.01
        assert 20 * np.log10(np.abs(x).max()) == pytest.approx(r.meta["peak_db"], abs=0.1)
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        peak_hz = np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]
        assert peak_hz == pytest.approx(synth._midi_hz(r.meta["midi"]), rel=0.01), r.path  # < 1/6 semitone
        assert r.labels == {"tone": "sine tone", "pitch": note_name(r.meta["midi"])}
        assert r.group == f"sine tone octave {r.meta['midi'] // 12 - 1}"


def _spectral_slope(x: np.ndarray, sr: int) -> float:
    """dB per octave of the averaged power spectrum between 100 Hz and 8 kHz."""
    n = 2048
    frames = x[: len(x) // n * n].reshape(-1, n) * np.hanning(n)
    power = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
    f = np.fft.rfftfreq(n, 1 / sr)
    keep = (f > 100) & (f < 8000)
    return float(np.polyfit(np.log2(f[keep]), 10 * np.log10(power[keep]), 1)[0])


def test_sox_noise_colours_and_determinism(tmp_path):
    cfg = SoxConfig(n_clips=12, tones=["white noise", "pink noise", "brown noise"], effects=["none"])
    a = build_sox(tmp_path / "a", cfg, seed=7, progress=False)
    b = build_sox(tmp_path / "b", cfg, seed=7, progress=False, workers=1)
    assert a == b and _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    want = {"white noise": 0.0, "pink noise": -3.0, "brown noise": -6.0}
    seen = set()
    for r in a:
        x, sr = sf.read(tmp_path / "a" / r.path)
        assert _spectral_slope(x, sr) == pytest.approx(want[r.labels["tone"]], abs=1.0), r.path
        seen.add(r.labels["tone"])
    assert len(seen) == 3
    # Two clips of one colour hold different noise (sox -R alone would repeat the same samples).
    whites = [sf.read(tmp_path / "a" / r.path)[0] for r in a if r.labels["tone"] == "white noise"]
    n = min(map(len, whites))
    assert abs(np.corrcoef(whites[0][:n], whites[1][:n])[0, 1]) < 0.1

    mixed = build_sox(tmp_path / "m", SOX_TINY, seed=7, progress=False)
    assert len(mixed) == 12 and all(r.licence == "CC0-1.0" and r.meta["tool_version"] == "sox 14.4.2" for r in mixed)


# ---------------------------------------- errors


@pytest.mark.parametrize("build,cfg,binary", [
    (build_espeak, ESPEAK_TINY, "espeak-ng"), (build_flite, FLITE_TINY, "flite"),
    (build_fluidsynth, FLUID_TINY, "fluidsynth"), (build_sox, SOX_TINY, "sox"),
])
def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch, build, cfg, binary):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SynthToolError, match=f"'{binary}' not found on PATH: install the Debian package"):
        build(tmp_path / "out", cfg, seed=0, progress=False)


def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="voice 'nosuch'"):
        build_flite(tmp_path, FliteConfig(voices=["nosuch"]), seed=0, progress=False)
    with pytest.raises(ValueError, match="variant 'nosuch'"):
        build_espeak(tmp_path, EspeakConfig(variants=["nosuch"]), seed=0, progress=False)
    with pytest.raises(ValueError, match="xx-nope"):
        build_espeak(tmp_path, EspeakConfig(languages=["xx-nope"]), seed=0, progress=False)
    with pytest.raises(SynthToolError, match="soundfont /no/such.sf2 not found"):
        build_fluidsynth(tmp_path, FluidsynthConfig(soundfont="/no/such.sf2"), seed=0, progress=False)
    with pytest.raises(ValueError, match="64-sample blocks"):
        build_fluidsynth(tmp_path, FluidsynthConfig(sample_rate=44100), seed=0, progress=False)
    with pytest.raises(ValueError, match="sawtooth"):
        build_sox(tmp_path, SoxConfig(tones=["saw"]), seed=0, progress=False)


def _fake_sox(folder: Path, body: str) -> None:
    folder.mkdir(parents=True)
    script = folder / "sox"
    script.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'sox: SoX v14.4.2'; exit 0; }}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_failing_clips_are_skipped_and_a_broken_tool_raises(tmp_path, monkeypatch, caplog):
    real_sox = synth._require("sox", "sox")
    # A sox that fails on the tremolo effect only: those clips are skipped and reported, the rest are kept.
    _fake_sox(tmp_path / "bin1", f'case "$*" in *tremolo*) echo "tremolo broke" >&2; exit 2;; esac\n'
                                 f'exec {real_sox} "$@"')
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin1'}{os.pathsep}{os.environ['PATH']}")
    cfg = SoxConfig(n_clips=12, effects=["none", "none", "reverb", "tremolo"])
    with caplog.at_level(logging.WARNING):
        recs = build_sox(tmp_path / "out", cfg, seed=0, progress=False)
    assert recs and all(r.meta["effect"] != "tremolo" for r in recs) and len(recs) < 12
    assert "tremolo broke" in caplog.text
    assert {r.id for r in read_jsonl(tmp_path / "out" / "sox" / "clips.jsonl")} == {r.id for r in recs}

    # A sox that fails on everything: a clear error instead of an empty corpus.
    _fake_sox(tmp_path / "bin2", 'echo "cannot open output" >&2; exit 2')
    monkeypatch.setenv("PATH", str(tmp_path / "bin2"))
    with pytest.raises(SynthToolError, match="12 of 12 clips failed.*cannot open output"):
        build_sox(tmp_path / "out2", cfg, seed=0, progress=False)
