"""One clip in the shard format of ``clapkit shards build``: the checks that quarantine a file, the cut and
resampling, the 16-bit FLAC it is stored as and how it is read back (``clapkit.data.shard_build`` documents the
shards; ``clapkit.data.shards`` reads them).  The rules and reasons are ``prepare``'s (``clapkit.data.prepare``):
a file is quarantined, with the reason, when it is unreadable, empty, truncated, holds NaN or infinite samples,
is all silent, is longer than ``max_file_seconds`` or has a sample rate or channel count out of range.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FORMAT", "PCM_SCALE", "BuildConfig", "ClipRejected", "cut_and_resample", "decode_flac", "encode_clip",
           "flac_bytes", "to_pcm16"]

FORMAT = "clapkit-shards-flac-v1"
PCM_SCALE = 32767.0  # int16 <-> float: round(clip(x, -1, 1) * 32767), and back / 32767


@dataclass(frozen=True)
class BuildConfig:
    """What decides the shards' bytes (the inputs aside).  Defaults of the limits: ``prepare``'s."""

    sample_rate: int
    max_seconds: float
    shard_size: int = 1000
    seed: int = 0
    max_file_seconds: float = 600.0  # longer files are quarantined without decoding them
    min_sample_rate: int = 4000
    max_sample_rate: int = 192000
    max_channels: int = 8
    silence_rms: float = 1e-4  # quieter clips are "all silent"

    def __post_init__(self):
        if self.sample_rate < 1000 or self.max_seconds <= 0 or self.shard_size < 1:
            raise ValueError(f"need sample_rate >= 1000, max_seconds > 0 and shard_size >= 1: {self}")


class ClipRejected(Exception):
    """An audio file that cannot become a sample; ``str(err)`` is the reason."""


def _check_header(file: str, cfg: BuildConfig):
    """The soundfile info of a file that passes the header checks (raises ``ClipRejected`` with the reason)."""
    import soundfile as sf

    from .prepare import wav_truncation

    if not os.path.exists(file):
        raise ClipRejected("unreadable: file does not exist")
    if not os.access(file, os.R_OK):
        raise ClipRejected("unreadable: permission denied")
    if os.path.getsize(file) == 0:
        raise ClipRejected("empty file (0 bytes)")
    try:
        info = sf.info(file)
    except Exception as err:  # libsndfile: unknown format, not audio, corrupt header
        raise ClipRejected(f"unreadable: not audio ({str(err).splitlines()[0][:200]})") from None
    if info.frames <= 0:
        raise ClipRejected("empty: no audio samples")
    truncated = wav_truncation(file)
    if truncated:
        raise ClipRejected(truncated)
    if not cfg.min_sample_rate <= info.samplerate <= cfg.max_sample_rate:
        raise ClipRejected(f"sample rate {info.samplerate} Hz outside [{cfg.min_sample_rate}, "
                           f"{cfg.max_sample_rate}]")
    seconds = info.frames / info.samplerate
    if seconds > cfg.max_file_seconds:
        raise ClipRejected(f"over-long: {seconds:.1f} s > max_file_seconds {cfg.max_file_seconds:g}")
    if info.channels > cfg.max_channels:
        raise ClipRejected(f"{info.channels} channels > max_channels {cfg.max_channels}")
    return info


def cut_and_resample(mono: np.ndarray, source_rate: int, cfg: BuildConfig) -> np.ndarray:
    """The centre ``max_seconds`` of ``mono`` resampled to ``cfg.sample_rate``, float32: the centre window of the
    whole file resampled, computed from a slice of the source when the file is long (resampling a 10-minute file
    to keep 7 s is wasted work).  The slice starts on a whole resampling period (``source_rate / g`` source
    samples for ``sample_rate / g`` output samples, g their gcd), so each kept output sample is computed from the
    same input samples with the same kernel phase as in the whole-file resampling, and has 0.1 s of real
    neighbours on each side (the kernel reaches a few samples)."""
    from ..audio import resample

    keep = int(round(cfg.max_seconds * cfg.sample_rate))
    g = math.gcd(source_rate, cfg.sample_rate)
    orig, new = source_rate // g, cfg.sample_rate // g
    n_out = math.ceil(new * mono.shape[0] / orig)  # torchaudio's output length
    if n_out <= keep:
        return resample(mono, source_rate, cfg.sample_rate).numpy()
    start = (n_out - keep) // 2
    margin = cfg.sample_rate // 10
    period = max(0, start - margin) // new  # whole periods before the slice
    first = period * orig
    last = first + math.ceil((start - period * new + keep + margin) * orig / new)
    wave = resample(mono[first:last], source_rate, cfg.sample_rate).numpy()
    offset = start - period * new
    return wave[offset:offset + keep]


def to_pcm16(wave: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wave, -1.0, 1.0) * PCM_SCALE).astype(np.int16)


def encode_clip(file: str, cfg: BuildConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """(int16 samples at ``cfg.sample_rate``, facts) of one file; ``ClipRejected`` says why a file is unusable."""
    import soundfile as sf

    from ..audio import mix_down
    from .fingerprint import audio_content_hash

    info = _check_header(file, cfg)
    try:
        data, rate = sf.read(file, dtype="float32", always_2d=True)
    except Exception as err:  # decoding failed part-way: a truncated or corrupt stream
        raise ClipRejected(f"unreadable: corrupt stream ({str(err).splitlines()[0][:200]})") from None
    if data.shape[0] == 0:
        raise ClipRejected("empty: no audio samples")
    exact_count = info.format in ("WAV", "WAVEX", "AIFF", "FLAC", "W64", "RF64", "CAF", "AU")
    if exact_count and data.shape[0] < 0.98 * info.frames:
        raise ClipRejected(f"truncated: header says {info.frames} frames, decoded {data.shape[0]}")
    if not np.isfinite(data).all():
        raise ClipRejected("contains NaN or infinite samples")
    audio = np.ascontiguousarray(data.T)
    mono = np.asarray(mix_down(audio), dtype=np.float32)
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    if rms < cfg.silence_rms:
        raise ClipRejected(f"all silent: RMS {rms:.2e} < silence_rms {cfg.silence_rms:g}")
    pcm = to_pcm16(cut_and_resample(mono, int(rate), cfg))
    facts = {"content_hash": audio_content_hash(audio, int(rate)), "seconds": round(pcm.shape[0] / cfg.sample_rate, 4),
             "source_sample_rate": int(rate), "source_channels": int(audio.shape[0])}
    return pcm, facts


def flac_bytes(pcm: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """(float32 mono waveform, sample rate) of a stored sample's FLAC: ``int16 / 32767``."""
    import soundfile as sf

    pcm, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=False)
    if pcm.ndim != 1:
        raise ValueError(f"{pcm.shape[1]} channels, a shard sample is mono")
    return pcm.astype(np.float32) / np.float32(PCM_SCALE), int(rate)
