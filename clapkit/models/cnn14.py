"""CNN14 (PANNs, Kong et al. 2020): the audio encoder of MS-CLAP 2022.

A VGG-like stack of conv blocks over the log-mel image, global pooling, one 2048-wide ReLU layer whose output
is the clip embedding.  Same structure and parameter names as PANNs/msclap ``Cnn14`` (``conv_block1`` ...,
``fc1``, ``fc_audioset``) so their checkpoints map by prefix; the STFT and filterbank live in
``clapkit.audio.LogMelFrontend``, not here.

log-mel (B, T, n_mels) -> bn0 over mel bins -> [SpecAugment, train only, off by default as in msclap's copy]
-> conv blocks (two 3x3 conv + BN + ReLU each, then 2x2 average pooling; no pooling after the last block;
dropout 0.2 after each block in training) -> mean over frequency -> max + mean over time -> dropout 0.5 ->
fc1 + ReLU -> dropout 0.5 = embedding (out_dim = fc1 width, 2048).  ``tag`` gives the AudioSet probabilities
of the ``fc_audioset`` head.  A standalone CNN14 builds it by default (527 classes, as msclap's); the encoder
inside a CLAP model never has it (the contrastive loss never reaches it), and ``load_msclap`` verifies and drops
its weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..strict import strict_from_dict
from .htsat import SpecAugment

__all__ = ["CNN14", "CNN14Config"]


@dataclass(frozen=True)
class CNN14Config:
    """Every size of the encoder.  Defaults = msclap 2022 (PANNs Cnn14)."""

    n_mels: int = 64
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)  # output channels of each conv block
    embed_dim: int = 2048  # fc1 width = embedding size
    num_classes: int = 527  # fc_audioset (AudioSet) head; 0 = none (always so inside a CLAP model)
    block_dropout: float = 0.2  # after every conv block (train only)
    embed_dropout: float = 0.5  # before and after fc1 (train only)
    # SpecAugment (train only).  PANNs trained CNN14 with (64, 2, 8, 2); msclap's copy removed it, so off here.
    time_mask_width: int = 0
    time_mask_stripes: int = 0
    freq_mask_width: int = 0
    freq_mask_stripes: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or min(self.channels) <= 0:
            raise ValueError(f"invalid CNN14 config: channels must be positive, got {self.channels}")
        if self.n_mels < self.min_frames:
            raise ValueError(f"invalid CNN14 config: n_mels {self.n_mels} < {self.min_frames} (pooled away)")

    @property
    def min_frames(self) -> int:
        """Fewest input frames (and mel bins) the pooling stack accepts."""
        return 2 ** (len(self.channels) - 1)

    def head_shapes(self, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
        """State-dict shapes of the ``fc_audioset`` head with ``num_classes`` classes (default: this config's;
        ``{}`` for none), without building it."""
        n = self.num_classes if num_classes is None else int(num_classes)
        return {"fc_audioset.weight": (n, self.embed_dim), "fc_audioset.bias": (n,)} if n > 0 else {}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CNN14Config":
        return strict_from_dict(cls, d, "CNN14 config")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class ConvBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU -> average pooling (1 = none)."""

    def __init__(self, c_in: int, c_out: int, pool: int):
        super().__init__()
        self.pool = pool
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        for conv in (self.conv1, self.conv2):
            nn.init.xavier_uniform_(conv.weight)  # PANNs' init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, self.pool) if self.pool > 1 else x


class CNN14(nn.Module):
    """log-mel (batch, frames, n_mels) -> clip embedding (batch, out_dim = embed_dim)."""

    def __init__(self, cfg: CNN14Config | None = None):
        super().__init__()
        self.config = cfg = cfg or CNN14Config()
        self.out_dim = cfg.embed_dim
        self.bn0 = nn.BatchNorm1d(cfg.n_mels)  # per-mel-bin normalisation (PANNs: BatchNorm2d on (B, mel, T, 1))
        self.spec_augment = SpecAugment(cfg.time_mask_width, cfg.time_mask_stripes, cfg.freq_mask_width,
                                        cfg.freq_mask_stripes)
        c_in = 1
        for i, c_out in enumerate(cfg.channels, start=1):
            # PANNs' names (conv_block1, conv_block2, ...) so its checkpoints load by prefix.
            self.add_module(f"conv_block{i}", ConvBlock(c_in, c_out, pool=2 if i < len(cfg.channels) else 1))
            c_in = c_out
        self.fc1 = nn.Linear(c_in, cfg.embed_dim)
        self.fc_audioset = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        for fc in (self.fc1, self.fc_audioset):
            if fc is not None:
                nn.init.xavier_uniform_(fc.weight)
                nn.init.zeros_(fc.bias)

    @property
    def conv_blocks(self) -> list[ConvBlock]:
        return [getattr(self, f"conv_block{i}") for i in range(1, len(self.config.channels) + 1)]

    def hidden(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels) -> ReLU(fc1(pooled features)) (B, embed_dim), before the embedding dropout."""
        cfg = self.config
        if logmel.ndim != 3 or logmel.shape[-1] != cfg.n_mels:
            raise ValueError(f"CNN14 expects log-mel of shape (batch, frames, {cfg.n_mels}), got {tuple(logmel.shape)}")
        if logmel.shape[1] < cfg.min_frames:
            raise ValueError(f"CNN14 needs at least {cfg.min_frames} frames, got {logmel.shape[1]}")
        x = self.bn0(logmel.transpose(1, 2)).transpose(1, 2)
        x = self.spec_augment(x).unsqueeze(1)  # B, 1, T, F
        for block in self.conv_blocks:
            x = F.dropout(block(x), cfg.block_dropout, self.training)
        x = x.mean(dim=3)  # over frequency -> (B, C, T')
        x = x.amax(dim=2) + x.mean(dim=2)  # over time: max + mean
        x = F.dropout(x, cfg.embed_dropout, self.training)
        return F.relu(self.fc1(x))

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.hidden(logmel), self.config.embed_dropout, self.training)

    def tag(self, logmel: torch.Tensor) -> torch.Tensor:
        """AudioSet clip probabilities (B, num_classes) (msclap's ``clipwise_output``)."""
        if self.fc_audioset is None:
            raise RuntimeError("this CNN14 was built without an AudioSet head (num_classes = 0)")
        return torch.sigmoid(self.fc_audioset(self.hidden(logmel)))
