"""The pretrained audio teacher: the aisfx sound-effects embedder, installed offline, verified, frozen.

**Attribution.**  The weights are those of *Representation Learning for the Automatic Indexing of Sound Effects
Libraries*, Alison Bernice Ma and Alexander Lerch, ISMIR 2022 (model X-Sequential-CE), shipped as
``aisfx/models/checkpoint.pth`` in the PyPI wheel ``aisfx==0.1.2`` (https://github.com/alisonbma/aisfx).  The
checkpoint is licensed CC BY 4.0 (Creative Commons Attribution 4.0 International, the wheel's LICENSE file,
copyright (c) 2022 A.B. Ma and A. Lerch; the package metadata says MIT).  clapkit uses it unmodified; only the
embedding network's tensors are loaded (the 9 classification heads are dropped, and reported).

What it is: an 8-convolution CNN (``EmbeddingNet('max', 3, 1, 64)`` of the DCASE cross-task baseline, 4.69M
parameters) trained on commercial sound-effects libraries (UCS categories); a 512-d embedding per block of 100
log-mel frames (~2.3 s).  ``scripts/setup.sh`` installs the wheel ``--no-deps`` from ``requirements-nodeps.lock``
(its metadata pins numpy 1.23 and librosa 0.9.2).  Nothing of the wheel is imported here: the network is rebuilt in
plain PyTorch with the same tensor names (``AisfxNet``; tests/test_aisfx.py checks it against the wheel's own
``cnn2d.EmbeddingNet``), and the front-end is written here, time-major, because the wheel's librosa front-end returns
(bands, frames) while its blocking and network expect (frames, bands), and its default front-end needs essentia.

Front-end (``AisfxFrontend``, the recipe of the paper's Essentia front-end): mono at 44.1 kHz (any rate is
resampled), peak-normalised; STFT n_fft 2048, hop 1024, periodic Hann, frames centred with zero padding (as
Essentia's FrameCutter), power; 96 HTK mel bands over 0-22050 Hz with each filter normalised to sum 1 (L1);
``log10(1e4 * S + 1) / 9.4578`` (the wheel's 'original' min-max normalisation).  Output (frames, 96).

Clip embedding (``AisfxEmbedder.embed``): a clip of at most 100 frames (2.3 s at 44.1 kHz) is one block as it is
(padded with silent frames to the network's minimum of 8 only if shorter); a longer one is cut into 100-frame blocks
every ``block_hop`` frames, the last one aligned with the clip's end so every block is full and every frame is
seen; the block embeddings are max-pooled (``clip_pool``).  Eval mode, no gradients, deterministic.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

from .audio import resample
from .pretrained import PackagedModel, verify_weights

__all__ = ["AISFX", "AisfxConfig", "AisfxEmbedder", "AisfxFrontend", "AisfxNet", "aisfx_checkpoint",
           "aisfx_mel_filterbank", "block_frames", "load_aisfx_embedder", "load_aisfx_state", "read_aisfx_checkpoint"]

AISFX = PackagedModel(
    name="aisfx", architecture="aisfx-cnn", package="aisfx", distribution="aisfx", version="0.1.2",
    folder="models", weights="checkpoint.pth",
    sha256="499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5", size=24_900_277,
    licence="CC BY 4.0 (checkpoint: Ma & Lerch, ISMIR 2022; the wheel's LICENSE); package metadata MIT",
)
_PREFIX = "embedding_net."  # the embedder inside the checkpoint's CrossNet; its heads are "fc.<i>.*"


@dataclass(frozen=True)
class AisfxConfig:
    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 1024
    n_mels: int = 96
    f_min: float = 0.0
    f_max: float = 22050.0
    log_scale: float = 1e4  # log10(log_scale * S + 1)
    log_max: float = 9.457798957824707  # ... / log_max: the wheel's 'original' normalisation (min 0)
    width: int = 64  # channels of the first conv block; doubled by each of the next three (512 out)
    kernel: int = 3
    conv_pool: str = "max"  # pooling inside the network (EmbeddingNet's pool_type)
    block_frames: int = 100
    block_hop: int = 100
    clip_pool: str = "max"  # over a clip's blocks: "max" or "mean"

    @property
    def dim(self) -> int:
        return self.width * 8

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "AisfxConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown aisfx config fields {unknown}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the network ---------------------------------------------------------------------------------------------------

class _ConvBlock(nn.Module):
    """Two 3x3 convolutions (no bias) with batch norm and ReLU, then pooling; tensor names as in the checkpoint."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, kernel, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int, pool_type: str) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if pool == 1:
            return x
        return F.max_pool2d(x, pool) if pool_type == "max" else F.avg_pool2d(x, pool)


class AisfxNet(nn.Module):
    """(blocks, frames, bands) -> (blocks, 512): four conv blocks (2x2 pooling after the first three), mean over
    the frequency axis, max over time.  Any number of frames >= 8 (three 2x poolings)."""

    MIN_FRAMES = 8

    def __init__(self, cfg: AisfxConfig = AisfxConfig()):
        super().__init__()
        if cfg.conv_pool not in ("max", "avg"):
            raise ValueError(f"conv_pool must be 'max' or 'avg', got {cfg.conv_pool!r}")
        w, self.pool_type = cfg.width, cfg.conv_pool
        self.conv_block1 = _ConvBlock(1, w, cfg.kernel)
        self.conv_block2 = _ConvBlock(w, 2 * w, cfg.kernel)
        self.conv_block3 = _ConvBlock(2 * w, 4 * w, cfg.kernel)
        self.conv_block4 = _ConvBlock(4 * w, 8 * w, cfg.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] < self.MIN_FRAMES:
            raise ValueError(f"expected (blocks, frames >= {self.MIN_FRAMES}, bands), got {tuple(x.shape)}")
        x = x.unsqueeze(1)
        for block, pool in ((self.conv_block1, 2), (self.conv_block2, 2), (self.conv_block3, 2),
                            (self.conv_block4, 1)):
            x = block(x, pool, self.pool_type)
        return x.mean(dim=3).amax(dim=2)


# --- the front-end -------------------------------------------------------------------------------------------------

def aisfx_mel_filterbank(cfg: AisfxConfig = AisfxConfig()) -> torch.Tensor:
    """(n_mels, n_freqs) HTK triangular filters over ``f_min``-``f_max`` on the FFT bins, each row summing to 1
    (librosa's ``mel(htk=True, norm=1)``; Essentia's ``normalize='unit_sum'``)."""
    fb = AF.melscale_fbanks(n_freqs=cfg.n_freqs, f_min=float(cfg.f_min), f_max=float(cfg.f_max),
                            n_mels=cfg.n_mels, sample_rate=cfg.sample_rate, norm=None, mel_scale="htk")
    fb = fb.T.double()
    sums = fb.sum(dim=1, keepdim=True)
    if bool((sums <= 0).any()):
        raise ValueError(f"{int((sums <= 0).sum())} empty mel filters: too many bands for n_fft {cfg.n_fft}")
    return (fb / sums).float()


class AisfxFrontend(nn.Module):
    """(samples,) mono waveform at ``cfg.sample_rate`` -> (frames, n_mels) normalised log-mel, time-major;
    frames = 1 + samples // hop_length."""

    def __init__(self, cfg: AisfxConfig = AisfxConfig()):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)
        self.register_buffer("filterbank", aisfx_mel_filterbank(cfg), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.ndim != 1 or wave.numel() == 0:
            raise ValueError(f"expected a non-empty mono waveform (samples,), got {tuple(wave.shape)}")
        wave = wave.to(self.window.dtype)
        peak = wave.abs().max()
        if peak > 0:
            wave = wave / peak
        spec = torch.stft(wave, self.cfg.n_fft, self.cfg.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (n_freqs, frames)
        mel = self.filterbank @ power  # (n_mels, frames)
        return torch.log10(self.cfg.log_scale * mel.T + 1.0) / self.cfg.log_max


def block_frames(frames: torch.Tensor, cfg: AisfxConfig = AisfxConfig()) -> torch.Tensor:
    """(frames, bands) -> (blocks, length, bands): the clip itself if it has at most ``block_frames`` frames (padded
    with silent frames up to the network's minimum), else ``block_frames``-long blocks every ``block_hop`` frames,
    the last one ending at the clip's end."""
    n, size = frames.shape[0], cfg.block_frames
    if n <= size:
        if n < AisfxNet.MIN_FRAMES:
            frames = F.pad(frames, (0, 0, 0, AisfxNet.MIN_FRAMES - n))
        return frames.unsqueeze(0)
    starts = list(range(0, n - size + 1, cfg.block_hop))
    if starts[-1] + size < n:
        starts.append(n - size)
    return torch.stack([frames[s:s + size] for s in starts])


# --- the checkpoint ------------------------------------------------------------------------------------------------

def aisfx_checkpoint() -> Path:
    """The installed wheel's checkpoint.  Found with ``importlib.util.find_spec``, which locates the package without
    running it (the wheel's ``__init__`` imports its inference module)."""
    spec = importlib.util.find_spec(AISFX.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the aisfx audio teacher needs the {AISFX.distribution} package (its checkpoint "
                                  f"ships in the wheel): run scripts/setup.sh, or `{AISFX.install}`")
    path = Path(list(spec.submodule_search_locations)[0]) / AISFX.folder / AISFX.weights
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the installed {AISFX.distribution}; reinstall it "
                                f"(`{AISFX.install}`)")
    return path


def _numpy_safe_globals() -> list:
    """The numpy globals the checkpoint's pickle names (its head table holds numpy int64 scalars)."""
    core = getattr(np, "_core", None) or np.core
    allowed: list = [(core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtype]
    if hasattr(np, "dtypes"):
        allowed.append(np.dtypes.Int64DType)
    return allowed


def read_aisfx_checkpoint(path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Verify (size, sha256) and load the checkpoint with ``weights_only=True``: (state dict, {head: classes})."""
    path = Path(path) if path is not None else aisfx_checkpoint()
    verify_weights(path, AISFX.sha256, AISFX.size)
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2 and isinstance(obj[0], Mapping)):
        raise ValueError(f"{path}: expected (state dict, head table), got {type(obj).__name__}")
    state, heads = obj
    return dict(state), {str(k): int(v[1]) for k, v in dict(heads).items()}


def load_aisfx_state(net: AisfxNet, state: Mapping[str, torch.Tensor], source: str) -> dict[str, Any]:
    """Load the ``embedding_net.*`` tensors of ``state`` into ``net`` strictly; every other tensor must belong to a
    classification head (``fc.*``) and is dropped, counted in the report.  ``source`` names the file in errors."""
    ours = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    others = sorted(k for k in state if not k.startswith(_PREFIX))
    foreign = [k for k in others if not k.startswith("fc.")]
    wanted = set(net.state_dict())
    missing, unexpected = sorted(wanted - set(ours)), sorted(set(ours) - wanted)
    if foreign or missing or unexpected:
        raise ValueError(f"{source}: does not fit the aisfx embedder: missing {missing[:5]} ({len(missing)}), "
                         f"unexpected {(unexpected + foreign)[:5]} ({len(unexpected) + len(foreign)})")
    try:
        net.load_state_dict(ours, strict=True)
    except RuntimeError as err:  # shapes
        raise ValueError(f"{source}: does not fit the aisfx embedder: {err}") from err
    heads = sorted({k.split(".")[1] for k in others}, key=int)
    return {"tensors": len(ours), "dropped_tensors": len(others), "dropped_heads": len(heads)}


# --- the embedder --------------------------------------------------------------------------------------------------

def _as_clips(waves: torch.Tensor | np.ndarray | Sequence) -> list[torch.Tensor]:
    """(samples,), (clips, samples) or a sequence of 1-D clips of any lengths -> list of float32 1-D tensors."""
    if isinstance(waves, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(waves, dtype=torch.float32)
        if x.ndim not in (1, 2):
            raise ValueError(f"expected (samples,) or (clips, samples), got {tuple(x.shape)}")
        return [x] if x.ndim == 1 else list(x)
    clips = [torch.as_tensor(w, dtype=torch.float32) for w in waves]
    bad = [i for i, c in enumerate(clips) if c.ndim != 1]
    if bad:
        raise ValueError(f"clips {bad[:5]} are not mono 1-D waveforms (mix them down first)")
    return clips


class AisfxEmbedder(nn.Module):
    """The frozen teacher: waveforms at any rate -> (clips, 512) clip embeddings (see the module docstring)."""

    def __init__(self, cfg: AisfxConfig = AisfxConfig()):
        super().__init__()
        if cfg.clip_pool not in ("max", "mean"):
            raise ValueError(f"clip_pool must be 'max' or 'mean', got {cfg.clip_pool!r}")
        self.cfg = cfg
        self.frontend = AisfxFrontend(cfg)
        self.net = AisfxNet(cfg)
        self.report: dict[str, Any] = {}

    def train(self, mode: bool = True) -> "AisfxEmbedder":  # frozen: always in eval mode
        return super().train(False)

    def features(self, wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One mono clip -> its (frames, n_mels) log-mel at the teacher's rate."""
        return self.frontend(resample(wave, sample_rate, self.cfg.sample_rate))

    @torch.no_grad()
    def embed(self, waves, sample_rate: int, batch_blocks: int = 32) -> torch.Tensor:
        """(clips, 512) float32: each clip's blocks embedded (``batch_blocks`` blocks of one length per forward),
        then pooled over the clip's blocks."""
        clips = _as_clips(waves)
        blocks = [block_frames(self.features(c, sample_rate), self.cfg) for c in clips]
        owner = torch.cat([torch.full((len(b),), i) for i, b in enumerate(blocks)])
        flat = [blk for b in blocks for blk in b]
        out = torch.empty(len(flat), self.cfg.dim)
        by_length: dict[int, list[int]] = {}
        for j, blk in enumerate(flat):
            by_length.setdefault(blk.shape[0], []).append(j)
        for idx in by_length.values():
            for s in range(0, len(idx), batch_blocks):
                chunk = idx[s:s + batch_blocks]
                out[chunk] = self.net(torch.stack([flat[j] for j in chunk])).float()
        pool = (lambda e: e.amax(dim=0)) if self.cfg.clip_pool == "max" else (lambda e: e.mean(dim=0))
        return torch.stack([pool(out[owner == i]) for i in range(len(clips))])


def load_aisfx_embedder(cfg: AisfxConfig | Mapping[str, Any] | None = None,
                        path: str | Path | None = None) -> AisfxEmbedder:
    """The verified, frozen teacher in eval mode; ``.report`` says what was loaded and dropped.

    ``path``: another copy of the checkpoint (tests); default the installed wheel's."""
    cfg = cfg if isinstance(cfg, AisfxConfig) else AisfxConfig.from_dict(cfg)
    where = Path(path) if path is not None else aisfx_checkpoint()
    state, heads = read_aisfx_checkpoint(where)
    model = AisfxEmbedder(cfg)
    report = load_aisfx_state(model.net, state, str(where))
    model.requires_grad_(False).eval()
    # the installed file is named inside its package, so the report is the same on every machine
    name = f"{AISFX.package}/{AISFX.folder}/{AISFX.weights}" if path is None else str(where)
    model.report = {"tower": "audio", "path": name, "packaged": AISFX.name, "sha256": AISFX.sha256,
                    "licence": AISFX.licence, "heads": heads, **report}
    return model
