"""Audio content hashes: the identity of a recording, whatever file, folder or dataset it arrives in.

Zero-shot results need evaluation clips the model never trained on, and the same recording often ships under
several names (a sound-effects pack re-released by two games, a benchmark clip copied into a training mixture).
File names and paths cannot see that; the decoded audio can.

``audio_content_hash`` hashes the *decoded source*, before resampling and cutting, so the shard builder (which
resamples to the preset's rate and cuts to at most N seconds) and an evaluation dataset read at another rate or
length agree on it: channels are averaged (``clapkit.audio.mix_down``), the samples are clipped to [-1, 1] and
rounded to 16-bit integers (so a lossless re-encode, WAV <-> FLAC, hashes alike, and float rounding in a mix-down
does not matter), and SHA-256 is taken over a version tag, the native sample rate and those integers.  The first
32 hex digits (128 bits) are kept: enough to make an accidental collision among billions of clips negligible.

A re-recording, a lossy re-encode, a resampled copy, a trimmed copy or a gain change is *not* caught: this finds
identical audio, not similar audio.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..audio import mix_down, read_audio

__all__ = ["HASH_VERSION", "audio_content_hash", "file_content_hash"]

HASH_VERSION = "clapkit-audio-v1"
_HEX_DIGITS = 32


def audio_content_hash(audio: np.ndarray, sample_rate: int) -> str:
    """Hash of decoded audio, ``(channels, samples)`` or ``(samples,)`` float at its native ``sample_rate``."""
    mono = np.asarray(mix_down(np.asarray(audio, dtype=np.float32)), dtype=np.float32)
    if mono.ndim != 1:
        raise ValueError(f"audio must be (samples,) or (channels, samples), got shape {np.shape(audio)}")
    pcm = np.round(np.clip(mono, -1.0, 1.0) * 32767.0).astype("<i2")
    h = hashlib.sha256()
    h.update(HASH_VERSION.encode())
    h.update(int(sample_rate).to_bytes(8, "little"))
    h.update(pcm.tobytes())
    return h.hexdigest()[:_HEX_DIGITS]


def file_content_hash(path: str | Path) -> str:
    """``audio_content_hash`` of a file as ``clapkit.audio.read_audio`` decodes it (``AudioReadError`` if it cannot)."""
    audio, sr = read_audio(path)
    return audio_content_hash(audio, sr)
