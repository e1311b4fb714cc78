"""The ``aisfx`` audio tower: the pretrained sound-effects CNN (``clapkit.aisfx_teacher``) as a CLAP audio encoder.

Unlike HTSAT / CNN14 it reads the *waveform*, not the tower's log-mel: it has its own front-end (44.1 kHz, 96 HTK
bands, 100-frame blocks), so ``AudioTower`` skips its ``LogMelFrontend`` for an encoder with ``takes_waveform``.
A batch of clips at the CLAP frontend's rate (``input_sample_rate``, 16 kHz in the embedded preset) is resampled to
44.1 kHz (the teacher's probe scored 16 kHz audio upsampled to 44.1 kHz like native 44.1 kHz audio), each clip
peak-normalised, cut into blocks as ``block_frames`` does, embedded, and max-pooled over its blocks: (B, 512).

The network runs in its own ``precision`` (a field of the tower's config, whatever autocast the caller has on), so a
frozen tower's features are the same in training, validation and evaluation and a feature cache
(``clapkit.audio_feature_cache``) serves every run alike.  ``auto`` = bf16 where the device has native bf16 (CUDA,
CPUs with AMX / AVX512-BF16: 2.3x faster than fp32 on this CPU, clip features within 1.6 % relative), else fp32;
the front-end always runs in fp32 (the log of tiny mel energies).
The weights are not read when the tower is built (``CLAP.from_pretrained`` needs only the saved model): the train
stage loads the packaged, sha256-verified checkpoint (``pretrained = "aisfx"``), as for the ``minilm`` text tower.
Attribution (CC BY 4.0): Ma & Lerch, ISMIR 2022, see ``clapkit.aisfx_teacher``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..aisfx_teacher import AisfxConfig, AisfxFrontend, AisfxNet, block_frames
from ..audio import resample
from ..strict import strict_from_dict

__all__ = ["AisfxAudioEncoder", "AisfxEncoderConfig", "load_packaged_audio_encoder"]


@dataclass(frozen=True)
class AisfxEncoderConfig:
    input_sample_rate: int = 16000  # the CLAP frontend's rate: what the tower is fed
    clip_pool: str = "max"  # over a clip's blocks: max (the teacher's probe: slightly better) | mean
    pretrained: str | None = "aisfx"  # the packaged weights the train stage starts from (None: random, tests)
    precision: str = "auto"  # the network's autocast: auto (bf16 where native, else fp32) | fp32 | bf16
    num_classes: int = 0  # never a head inside CLAP (clapkit.models.clap.headless_audio_encoder_config)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "AisfxEncoderConfig":
        cfg = strict_from_dict(cls, d, "aisfx audio encoder")
        if cfg.clip_pool not in ("max", "mean"):
            raise ValueError(f"aisfx audio encoder: clip_pool must be 'max' or 'mean', got {cfg.clip_pool!r}")
        if cfg.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"aisfx audio encoder: precision must be auto, fp32 or bf16, got {cfg.precision!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AisfxAudioEncoder(nn.Module):
    """(B, samples) waveforms at ``input_sample_rate`` -> (B, 512); tensor names ``net.*`` as the checkpoint's
    ``embedding_net.*`` (``clapkit.aisfx_teacher.load_aisfx_state`` loads them)."""

    takes_waveform = True

    def __init__(self, cfg: AisfxEncoderConfig = AisfxEncoderConfig()):
        super().__init__()
        self.config = cfg
        self.aisfx = AisfxConfig(clip_pool=cfg.clip_pool)
        self.frontend = AisfxFrontend(self.aisfx)
        self.net = AisfxNet(self.aisfx)
        self.out_dim = self.aisfx.dim
        self.pretrained = cfg.pretrained
        self.config_name = "aisfx"  # names its feature store file
        self.feature_cache = None  # a clapkit.audio_feature_cache.WaveformFeatureStore when attached

    def attach_cache(self, cache) -> None:
        self.feature_cache = cache

    def blocks(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, blocks, 100, 96): every clip of a batch has the same length, hence the same blocks."""
        x = resample(wave.float(), self.config.input_sample_rate, self.aisfx.sample_rate)
        return torch.stack([block_frames(self.frontend(clip), self.aisfx) for clip in x])

    def _embed(self, wave: torch.Tensor) -> torch.Tensor:
        from ..training import resolve_precision

        dtype = resolve_precision(self.config.precision, wave.device)
        with torch.autocast(wave.device.type, enabled=False):
            blocks = self.blocks(wave)
        b, n = blocks.shape[:2]
        with torch.autocast(wave.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            emb = self.net(blocks.flatten(0, 1)).float().view(b, n, -1)
        return emb.amax(dim=1) if self.aisfx.clip_pool == "max" else emb.mean(dim=1)

    def compute(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, samples) -> (B, 512).  In eval mode each clip is computed on its own: its features then do not depend
        on the batch it came in (what makes a feature store exact); in train mode (fine-tuning: BatchNorm batch
        statistics) the batch goes through together."""
        if self.training:
            return self._embed(wave)
        return torch.cat([self._embed(clip.unsqueeze(0)) for clip in wave])

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 2:
            raise ValueError(f"aisfx audio encoder: expected (batch, samples), got {tuple(wave.shape)}")
        if self.feature_cache is not None and not self.training:  # attached only while the weights are fixed
            return self.feature_cache.lookup(wave, self.compute)
        return self.compute(wave)


def load_packaged_audio_encoder(encoder: AisfxAudioEncoder) -> dict[str, Any]:
    """Load the installed wheel's verified checkpoint (size and sha256) into ``encoder.net`` strictly; the report
    names the file, what was dropped (the classification heads) and the licence to attribute."""
    from ..aisfx_teacher import AISFX, aisfx_checkpoint, load_aisfx_state, read_aisfx_checkpoint

    if encoder.pretrained != AISFX.name:
        raise ValueError(f"the audio encoder's pretrained is {encoder.pretrained!r}, not {AISFX.name!r}")
    path = aisfx_checkpoint()
    state, heads = read_aisfx_checkpoint(path)
    report = load_aisfx_state(encoder.net, state, str(path))
    return {"tower": "audio", "packaged": AISFX.name, "path": f"{AISFX.package}/{AISFX.folder}/{AISFX.weights}",
            "sha256": AISFX.sha256, "licence": AISFX.licence, **report}
