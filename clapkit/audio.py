"""Audio in, log-mel out: read, mix down, resample, crop/pad, and the log-mel frontend.

Every clip a clapkit model sees goes through the same four steps, in this order:

1. ``read_audio``: decode with soundfile (libsndfile: wav, flac, ogg/vorbis, mp3, aiff ...), float32,
   shape (channels, samples).
2. ``mix_down``: average the channels.  msclap instead *concatenates* them (``reshape(-1)``), so a stereo file
   becomes twice as long, and a stereo clip longer than 3.5 s gets randomly cropped.  Averaging keeps the
   duration, treats 1 and 8 channels alike and makes the result independent of the channel count.
3. ``resample``: ``torchaudio.functional.resample`` (windowed sinc) to the model rate.
4. ``fit_length``: repeat-pad short clips (as msclap does) and crop long ones.  At inference the crop is the
   *centre* window, deterministically (msclap crops at random, so its embeddings change from call to call);
   training may ask for a random crop with an explicit generator.

``LogMelFrontend`` turns (batch, samples) into (batch, frames, n_mels) of ``10*log10(max(mel_power, amin))``,
the torchlibrosa/msclap definition.  Its mel filterbank is a buffer, so a checkpoint can carry its own
(msclap's 2023 HTSAT uses a filterbank designed for 32 kHz, 50-14000 Hz while it feeds 44.1 kHz audio: the
``filterbank_sample_rate`` field reproduces that quirk).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from torch import nn

from .strict import strict_from_dict

__all__ = [
    "AudioReadError",
    "FrontendConfig",
    "LogMelFrontend",
    "fit_length",
    "load_clip",
    "mel_filterbank",
    "mix_down",
    "read_audio",
    "resample",
]


class AudioReadError(ValueError):
    """A file that cannot be used as audio; ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 of shape (channels, samples) and its sample rate.

    Raises ``AudioReadError`` (never a bare libsndfile error) for a missing or unreadable file, a format
    libsndfile does not know, an empty or truncated stream.
    """
    path = Path(path)
    if not path.exists():
        raise AudioReadError(path, "file does not exist")
    if not path.is_file():
        raise AudioReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioReadError(path, "empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioReadError(path, f"not decodable as audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioReadError(path, "no audio samples (empty or truncated stream)")
    return np.ascontiguousarray(data.T), int(sr)


def mix_down(audio: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(channels, samples) -> (samples,) by averaging channels; 1-D input is returned unchanged."""
    if audio.ndim == 1:
        return audio
    return audio.mean(axis=0) if isinstance(audio, np.ndarray) else audio.mean(dim=0)


def resample(audio: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Windowed-sinc resampling along the last axis (torchaudio's default kernel); float32 tensor out."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if orig_sr == new_sr:
        return x
    g = math.gcd(int(orig_sr), int(new_sr))  # torchaudio reduces by the gcd too; doing it here keeps kernels small
    return AF.resample(x, int(orig_sr) // g, int(new_sr) // g)


def fit_length(
    audio: torch.Tensor,
    num_samples: int,
    crop: str = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Repeat-pad or crop the last axis to exactly ``num_samples``.

    Shorter clips are tiled (``[a b c] -> [a b c a b c a ...]``), as msclap does, so no silence is invented.
    Longer clips are cropped: ``crop="center"`` takes the middle window (deterministic, used at inference);
    ``crop="random"`` draws the start from ``generator`` (training only).
    """
    n = audio.shape[-1]
    if n == 0:
        raise ValueError("cannot fit an empty clip")
    if n < num_samples:
        reps = math.ceil(num_samples / n)
        return audio.repeat(*([1] * (audio.ndim - 1)), reps)[..., :num_samples]
    if n == num_samples:
        return audio
    if crop == "center":
        start = (n - num_samples) // 2
    elif crop == "random":
        start = int(torch.randint(0, n - num_samples + 1, (1,), generator=generator))
    else:
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    return audio[..., start : start + num_samples]


@dataclass(frozen=True)
class FrontendConfig:
    """Every parameter of the audio path; the two presets live in ``params.yaml`` (``frontend:`` block)."""

    sample_rate: int = 16000  # rate the model sees; files are resampled to it
    clip_seconds: float = 4.0  # clips are repeat-padded / cropped to this length
    n_fft: int = 512
    win_length: int = 512
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    # Rate the mel filterbank is *designed* for.  None = sample_rate.  msclap 2023 builds its HTSAT filterbank
    # for 32 kHz (50-14000 Hz) but feeds it 44.1 kHz audio; set 32000 to reproduce the released model.
    filterbank_sample_rate: int | None = None
    mel_norm: str | None = "slaney"  # librosa/torchlibrosa default (area normalisation)
    mel_scale: str = "slaney"  # librosa htk=False
    amin: float = 1e-10  # log floor: 10*log10(max(power, amin)), as torchlibrosa (ref=1, top_db=None)

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int | None = None) -> int:
        n = self.clip_samples if num_samples is None else num_samples
        return n // self.hop_length + 1  # centred STFT

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FrontendConfig":
        return strict_from_dict(cls, d, "frontend config")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mel_filterbank(cfg: FrontendConfig) -> torch.Tensor:
    """(n_freqs, n_mels) triangular mel filters, librosa-compatible for the Slaney scale and norm."""
    fb_sr = cfg.filterbank_sample_rate or cfg.sample_rate
    return AF.melscale_fbanks(
        n_freqs=cfg.n_freqs,
        f_min=float(cfg.f_min),
        f_max=float(cfg.f_max),
        n_mels=cfg.n_mels,
        sample_rate=int(fb_sr),
        norm=cfg.mel_norm,
        mel_scale=cfg.mel_scale,
    )


class LogMelFrontend(nn.Module):
    """(batch, samples) float waveform -> (batch, frames, n_mels) log-mel power in dB.

    Power spectrogram of a centred, reflect-padded STFT with a periodic Hann window (what torchlibrosa's
    conv-STFT computes), projected on ``mel_fb``, then ``10*log10(max(., amin))``.  Deterministic; no
    normalisation or augmentation here (models own those).

    Always computed in float32, also under autocast or in a model cast to bf16 (``model.to(torch.bfloat16)``):
    the power spectrum spans ~10 decades before the log, which bf16's 8-bit mantissa and FFT kernels (there are
    none for bf16 on most devices) do not serve; the frontend costs ~1% of the model, so nothing is lost.  The
    log-mel is returned in the dtype of the module's buffers, i.e. the dtype the encoder after it expects.
    """

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=True), persistent=False)
        self.register_buffer("mel_fb", mel_filterbank(cfg))

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, n_freqs)."""
        spec = torch.stft(
            wave.float(),
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            win_length=self.cfg.win_length,
            window=self.window.float(),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return (spec.real.square() + spec.imag.square()).transpose(1, 2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim == 1:
            wave = wave.unsqueeze(0)
        with torch.autocast(wave.device.type, enabled=False):
            mel = self.power_spectrogram(wave) @ self.mel_fb.float()
            logmel = 10.0 * torch.log10(torch.clamp(mel, min=self.cfg.amin))
        return logmel.to(self.mel_fb.dtype)


def load_clip(
    path: str | Path,
    cfg: FrontendConfig,
    crop: str = "center",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Read a file and return the mono ``cfg.clip_samples``-long float32 waveform at ``cfg.sample_rate``."""
    audio, sr = read_audio(path)
    wave = resample(mix_down(audio), sr, cfg.sample_rate)
    if not torch.isfinite(wave).all():
        raise AudioReadError(path, "contains NaN or infinite samples")
    return fit_length(wave, cfg.clip_samples, crop=crop, generator=generator)
