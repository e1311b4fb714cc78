"""HTS-AT: the hierarchical token-semantic audio transformer, the audio encoder of MS-CLAP 2023.

A Swin transformer over a log-mel spectrogram that has been folded into a square image.  This module follows
msclap's ``HTSAT_Swin_Transformer`` (Ke Chen's HTS-AT, itself built on Swin-T) operation for operation, so that
the official checkpoint loads strictly and gives the same numbers; the differences are in *how* it is written:

- input is the log-mel (batch, frames, n_mels) from ``clapkit.audio.LogMelFrontend``; the STFT and filterbank
  live in the frontend, not in the encoder;
- window attention runs through ``F.scaled_dot_product_attention`` with the relative-position bias (and, for
  shifted windows, the region mask) passed as one additive mask;
- the relative-position index and the shifted-window mask are derived from the config, so they are
  *non-persistent* buffers (msclap stores them in its checkpoint; ``clapkit.msclap_weights`` verifies them there);
- every size is a config field, so tiny models for tests are the same code.

Pipeline (msclap 2023 sizes): log-mel (B, 965, 64) -> bn0 over mel bins -> SpecAugment (train only) ->
bicubic time-resize to freq_ratio*spec_size = 1024 frames -> fold the 4 time chunks of 256 frames on top of each
other along frequency -> image (B, 1, 256, 256) -> 4x4 patches (64x64 tokens, 96-d) -> Swin stages (depths
2/2/6/2, widths 96/192/384/768, patch merging between stages) -> LayerNorm -> mean over the 8x8 final tokens =
the 768-d clip embedding.  The optional TSCAM head (``tag``) gives AudioSet clip probabilities.  A standalone
HTSAT builds it by default (``num_classes`` 527, as msclap's); the encoder inside a CLAP model never has it (its
contrastive loss never reaches the head: under DDP those would be parameters without gradients), and
``clapkit.msclap_weights.load_msclap`` verifies and drops the head's weights of an official checkpoint.

Inputs longer than freq_ratio*spec_size frames raise ``ValueError``.  msclap crops them at random in training
and, at inference, averages the outputs of windows whose size and hop are hard-coded (689 and 344 frames, i.e.
tuned to 10 s at 44.1 kHz, whatever the config).  clapkit always feeds fixed-length clips (``fit_length`` to the
model's clip length, 7 s = 965 frames for msclap-2023), so that branch is never reached there and is not
reproduced; a longer clip is a configuration error, reported as such.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..strict import strict_from_dict

__all__ = ["HTSAT", "HTSATConfig", "SpecAugment"]


@dataclass(frozen=True)
class HTSATConfig:
    """Every size of the encoder.  Defaults = msclap 2023 (HTS-AT's AudioSet config)."""

    n_mels: int = 64  # mel bins of the input log-mel
    spec_size: int = 256  # side of the square image the spectrogram is folded into
    patch_size: int = 4  # patch-embedding conv kernel
    patch_stride: int = 4  # and its stride (padding = (patch_size - patch_stride) // 2)
    embed_dim: int = 96  # width of stage 0; doubles at every stage
    depths: tuple[int, ...] = (2, 2, 6, 2)  # Swin blocks per stage
    num_heads: tuple[int, ...] = (4, 8, 16, 32)  # attention heads per stage
    window_size: int = 8  # attention window side (in tokens)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # dropout after patch embedding, in the MLPs and after attention projections
    attn_drop_rate: float = 0.0  # dropout on attention weights
    drop_path_rate: float = 0.1  # stochastic depth, rising linearly from 0 over the blocks
    # SpecAugment (train only), in input frames / mel bins: `stripes` bands of random width < `width`.
    time_mask_width: int = 64
    time_mask_stripes: int = 2
    freq_mask_width: int = 8
    freq_mask_stripes: int = 2
    # Token-semantic (TSCAM) AudioSet head.  0 = no head (always so inside a CLAP model).  msclap's checkpoint
    # has a 527-class one.
    num_classes: int = 527

    def __post_init__(self):
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "num_heads", tuple(int(h) for h in self.num_heads))
        problems = []
        if len(self.depths) != len(self.num_heads) or not self.depths:
            problems.append(f"depths {self.depths} and num_heads {self.num_heads} must be non-empty, same length")
        if self.spec_size < self.n_mels:
            problems.append(f"spec_size {self.spec_size} must be >= n_mels {self.n_mels}")
        if self.spec_size % self.patch_stride:
            problems.append(f"spec_size {self.spec_size} must be a multiple of patch_stride {self.patch_stride}")
        else:
            grid = self.spec_size // self.patch_stride
            for i in range(len(self.depths)):
                side = grid // 2**i
                if side * 2**i != grid or (i < len(self.depths) - 1 and side % 2):
                    problems.append(f"token grid {grid} cannot be halved {len(self.depths) - 1} times")
                    break
                if side > self.window_size and side % self.window_size:
                    problems.append(f"stage {i}: token grid {side} is not a multiple of window_size {self.window_size}")
            if self.num_classes > 0 and self.freq_ratio > 0 and self.final_grid % self.freq_ratio:
                problems.append(f"TSCAM head: final grid {self.final_grid} not divisible by freq_ratio "
                                f"{self.freq_ratio}")
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**i) % heads:
                problems.append(f"stage {i}: width {self.embed_dim * 2**i} not divisible by {heads} heads")
        if problems:
            raise ValueError("invalid HTSAT config: " + "; ".join(problems))

    @property
    def freq_ratio(self) -> int:
        """How many time chunks are stacked along frequency (msclap: spec_size // mel_bins = 4)."""
        return self.spec_size // self.n_mels

    @property
    def max_frames(self) -> int:
        """Input frames the image holds; shorter inputs are stretched to this by bicubic interpolation."""
        return self.spec_size * self.freq_ratio

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def final_grid(self) -> int:
        """Side of the last stage's token grid (msclap: 64 / 2**3 = 8)."""
        return self.spec_size // self.patch_stride // 2 ** (len(self.depths) - 1)

    def head_shapes(self, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
        """State-dict shapes of the TSCAM head with ``num_classes`` classes (default: this config's; ``{}`` for
        none), without building it.  Raises ``ValueError`` if this geometry cannot carry the head."""
        cfg = self if num_classes is None else replace(self, num_classes=num_classes)  # validates the geometry
        n = cfg.num_classes
        if n <= 0:
            return {}
        return {"tscam_conv.weight": (n, cfg.num_features, cfg.final_grid // cfg.freq_ratio, 3),
                "tscam_conv.bias": (n,), "head.weight": (n, n), "head.bias": (n,)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HTSATConfig":
        return strict_from_dict(cls, d, "HTSAT config")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        return d


class SpecAugment(nn.Module):
    """Zero random time and frequency stripes of a (batch, frames, bins) tensor; identity in eval mode.

    Per example, ``stripes`` bands of width uniform in [0, width) starting uniformly where they fit, as
    torchlibrosa's ``SpecAugmentation`` (which msclap uses).  Draws from torch's global generator, so a
    training run is reproducible from its seed.
    """

    def __init__(self, time_width: int, time_stripes: int, freq_width: int, freq_stripes: int):
        super().__init__()
        self.time_width, self.time_stripes = time_width, time_stripes
        self.freq_width, self.freq_stripes = freq_width, freq_stripes

    @staticmethod
    def _keep_mask(batch: int, length: int, width: int, stripes: int, device) -> torch.Tensor:
        """(batch, length) bool, False inside the dropped stripes."""
        keep = torch.ones(batch, length, dtype=torch.bool, device=device)
        if width <= 0 or stripes <= 0:
            return keep
        pos = torch.arange(length, device=device)
        for _ in range(stripes):
            w = torch.randint(0, width, (batch, 1), device=device).clamp(max=length)
            start = (torch.rand(batch, 1, device=device) * (length - w)).floor().long()  # randint(0, length - w)
            keep &= ~((pos >= start) & (pos < start + w))
        return keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, t, f = x.shape
        keep_t = self._keep_mask(b, t, self.time_width, self.time_stripes, x.device)
        keep_f = self._keep_mask(b, f, self.freq_width, self.freq_stripes, x.device)
        return x * (keep_t[:, :, None] & keep_f[:, None, :]).to(x.dtype)


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of some examples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, num_windows, ws*ws, C); windows in row-major order over the window grid."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_merge(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B, num_windows, ws*ws, C) -> (B, H, W, C)."""
    b, c = windows.shape[0], windows.shape[-1]
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) long: index into the ((2ws-1)^2, heads) bias table for each (query, key) token pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # 2, N
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # N, N, 2 in [0, 2ws-2]
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """(num_windows, ws*ws, ws*ws) additive mask for shifted windows: 0 within a region, -100 across.

    After the cyclic shift, a window at the border holds tokens from up to four regions that were not
    neighbours in the image; they must not attend to each other.  -100 (not -inf) as in Swin/HTS-AT: after
    softmax it is exactly as good as -inf in float32, and it is what the checkpoint was trained with.
    """
    region = torch.zeros(1, h, w, 1)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, hs in enumerate(bands):
        for j, wsl in enumerate(bands):
            region[:, hs, wsl, :] = i * 3 + j
    ids = window_partition(region, ws).squeeze(0).squeeze(-1)  # num_windows, N
    differs = ids[:, None, :] != ids[:, :, None]
    return torch.zeros(differs.shape).masked_fill(differs, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative-position bias per head."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool, attn_drop: float, proj_drop: float):
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, num_windows, N, C); mask (num_windows, N, N) additive or None -> (B, num_windows, N, C)."""
        b, nw, n, c = x.shape
        h = self.num_heads
        # Windows and heads share one axis, so the per-window mask broadcasts over the batch and the call stays
        # 4-D (what the fused SDPA kernels want).
        qkv = self.qkv(x).view(b, nw, n, 3, h, c // h).permute(3, 0, 1, 4, 2, 5).reshape(3, b, nw * h, n, c // h)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, h).permute(2, 0, 1)  # heads, N, N
        additive = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1)
        additive = additive.expand(nw, h, n, n).reshape(1, nw * h, n, n).to(qkv.dtype)
        out = F.scaled_dot_product_attention(
            qkv[0], qkv[1], qkv[2], attn_mask=additive,
            dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale,
        )
        out = out.view(b, nw, h, n, c // h).permute(0, 1, 3, 2, 4).reshape(b, nw, n, c)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class SwinBlock(nn.Module):
    """Pre-norm transformer block whose attention is restricted to (optionally shifted) windows."""

    def __init__(self, cfg: HTSATConfig, dim: int, resolution: tuple[int, int], num_heads: int, shift: int,
                 drop_path: float):
        super().__init__()
        self.resolution = resolution
        window = cfg.window_size
        if min(resolution) <= window:  # the whole grid fits in one window: no partition, no shift
            window, shift = min(resolution), 0
        self.window_size, self.shift = window, shift
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, cfg.qkv_bias, cfg.attn_drop_rate, cfg.drop_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.drop_rate)
        mask = shifted_window_mask(*resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window_size), self.attn_mask)
        y = window_merge(y, self.window_size, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + drop_path(y.reshape(b, h * w, c), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """Halve the token grid: concatenate each 2x2 neighbourhood (4C), LayerNorm, project to 2C."""

    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        # Order (even row, even col), (odd, even), (even, odd), (odd, odd): the checkpoint's weights expect it.
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class Stage(nn.Module):
    """Swin blocks alternating plain / shifted windows, then (except for the last stage) patch merging."""

    def __init__(self, cfg: HTSATConfig, index: int, resolution: tuple[int, int], drop_paths: list[float]):
        super().__init__()
        dim = cfg.embed_dim * 2**index
        self.blocks = nn.ModuleList(
            SwinBlock(cfg, dim, resolution, cfg.num_heads[index], 0 if j % 2 == 0 else cfg.window_size // 2, dp)
            for j, dp in enumerate(drop_paths)
        )
        last = index == len(cfg.depths) - 1
        self.downsample = None if last else PatchMerging(resolution, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: HTSATConfig):
        super().__init__()
        pad = (cfg.patch_size - cfg.patch_stride) // 2
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_stride, padding=pad)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) -> (B, grid*grid, embed_dim), tokens in row-major order."""
        return self.norm(self.proj(image).flatten(2).transpose(1, 2))


class HTSAT(nn.Module):
    """log-mel (batch, frames, n_mels) -> clip embedding (batch, out_dim = embed_dim * 2**(stages-1))."""

    def __init__(self, cfg: HTSATConfig | None = None):
        super().__init__()
        self.config = cfg = cfg or HTSATConfig()
        self.out_dim = cfg.num_features
        self.bn0 = nn.BatchNorm1d(cfg.n_mels)  # per-mel-bin normalisation (msclap: BatchNorm2d on (B, mel, T, 1))
        self.spec_augment = SpecAugment(cfg.time_mask_width, cfg.time_mask_stripes, cfg.freq_mask_width,
                                        cfg.freq_mask_stripes)
        self.patch_embed = PatchEmbed(cfg)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        grid = cfg.spec_size // cfg.patch_stride
        rates = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(cfg.depths):
            side = grid // 2**i
            start = sum(cfg.depths[:i])
            self.layers.append(Stage(cfg, i, (side, side), rates[start:start + depth]))
        self.norm = nn.LayerNorm(cfg.num_features)
        if cfg.num_classes > 0:
            # TSCAM: a conv spanning all frequency rows of one time chunk, 3 tokens wide in time.
            self.tscam_conv = nn.Conv2d(cfg.num_features, cfg.num_classes, (cfg.final_grid // cfg.freq_ratio, 3),
                                        padding=(0, 1))
            # Present in HTS-AT's TSCAM variant but never applied (also not by msclap): kept so that msclap's
            # encoder + head weights load strictly into a standalone HTSAT.
            self.head = nn.Linear(cfg.num_classes, cfg.num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def spectrogram_image(self, logmel: torch.Tensor) -> torch.Tensor:
        """Normalise, augment (train only) and fold (B, frames, n_mels) into the (B, 1, S, S) input image."""
        cfg = self.config
        if logmel.ndim != 3 or logmel.shape[-1] != cfg.n_mels:
            raise ValueError(f"HTSAT expects log-mel of shape (batch, frames, {cfg.n_mels}), got {tuple(logmel.shape)}")
        if logmel.shape[1] > cfg.max_frames:
            raise ValueError(
                f"HTSAT takes at most {cfg.max_frames} frames (spec_size {cfg.spec_size} x freq_ratio "
                f"{cfg.freq_ratio}), got {logmel.shape[1]}: crop the waveform to the model's clip length first"
            )
        x = self.bn0(logmel.transpose(1, 2)).transpose(1, 2)
        x = self.spec_augment(x).unsqueeze(1)  # B, 1, T, F
        target_f = cfg.spec_size // cfg.freq_ratio
        if x.shape[2] < cfg.max_frames:  # stretch time (and, if n_mels does not divide spec_size, frequency)
            x = F.interpolate(x, (cfg.max_frames, x.shape[3]), mode="bicubic", align_corners=True)
        if x.shape[3] < target_f:
            x = F.interpolate(x, (x.shape[2], target_f), mode="bicubic", align_corners=True)
        # (B, 1, T, F) -> (B, 1, F, T) -> split T into freq_ratio chunks -> stack the chunks along frequency:
        # image row r*F + f, column t  <-  frame r*(T/ratio) + t, mel bin f.
        b, _, t, f = x.shape
        x = x.transpose(2, 3).reshape(b, 1, f, cfg.freq_ratio, t // cfg.freq_ratio)
        return x.permute(0, 1, 3, 2, 4).reshape(b, 1, cfg.freq_ratio * f, t // cfg.freq_ratio)

    def forward_tokens(self, logmel: torch.Tensor) -> torch.Tensor:
        """(B, frames, n_mels) -> final normalised tokens (B, final_grid**2, num_features), row-major."""
        x = self.pos_drop(self.patch_embed(self.spectrogram_image(logmel)))
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(logmel).mean(dim=1)

    def tag(self, logmel: torch.Tensor) -> torch.Tensor:
        """AudioSet clip probabilities (B, num_classes) from the TSCAM head (msclap's ``clipwise_output``)."""
        if self.config.num_classes <= 0:
            raise RuntimeError("this HTSAT was built without a TSCAM head (num_classes = 0)")
        tokens = self.forward_tokens(logmel)
        b, n, c = tokens.shape
        side = math.isqrt(n)
        ratio = self.config.freq_ratio
        # Undo the fold: the token grid's rows are ratio groups (time chunks) of side/ratio frequency rows;
        # lay the chunks back side by side in time -> (B, C, side/ratio, ratio*side).
        x = tokens.transpose(1, 2).reshape(b, c, ratio, side // ratio, side)
        x = x.permute(0, 1, 3, 2, 4).reshape(b, c, side // ratio, ratio * side)
        logits = self.tscam_conv(x).flatten(2).mean(dim=2)
        return torch.sigmoid(logits)
