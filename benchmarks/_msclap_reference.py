"""msclap 1.3.4's own CLAP (2023 architecture), built offline with random weights, for the side-by-side benchmark.

The reference package is unpacked by ``scripts/install_msclap_reference.sh`` (the same installer the parity tests
use) into ``.cache/msclap_site`` or ``$MSCLAP_SITE``.  It is imported without ``msclap/__init__.py`` (its wrapper
downloads from the hub); ``AutoModel.from_pretrained("gpt2")`` becomes a randomly initialised GPT-2 base, and
``librosa`` (only used to build the Hann window and the Slaney mel filterbank) becomes a numpy transcription of
librosa's formulas (the window is checked against scipy's in tests/test_benchmarks.py).
``tests/test_msclap_parity.py`` checks that clapkit reproduces this model to 1e-4.
"""

from __future__ import annotations

import importlib.machinery
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
MARKER = ".complete-msclap-1.3.4-torchlibrosa-0.1.0"


def site_dir() -> Path:
    return Path(os.environ.get("MSCLAP_SITE", REPO / ".cache" / "msclap_site"))


def ensure_installed(site: Path) -> None:
    """Unpack the msclap + torchlibrosa wheels into ``site`` unless already there (needs PyPI the first time)."""
    if (site / MARKER).is_file():
        return
    script = REPO / "scripts" / "install_msclap_reference.sh"
    done = subprocess.run(["bash", str(script), str(site)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0 or not (site / MARKER).is_file():
        raise RuntimeError(f"could not install the msclap reference into {site}:\n{done.stdout}\n{done.stderr}")


def _slaney_mel(sr, n_fft, n_mels, fmin, fmax, **_):
    """librosa.filters.mel(htk=False, norm='slaney') as (n_mels, 1 + n_fft // 2)."""
    def hz_to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-9) / 1000.0) / (np.log(6.4) / 27.0), f / (200.0 / 3))

    def mel_to_hz(m):
        m = np.asarray(m, dtype=np.float64)
        return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))

    fft_freqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / np.diff(edges)[:-1, None]
    upper = ramps[2:] / np.diff(edges)[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def _get_window(window, n, fftbins=True):
    """scipy.signal.get_window for the only window torchlibrosa asks for here, 'hann' (periodic when
    ``fftbins``); numpy, because importing scipy.signal costs more than a second of the smoke test."""
    if window != "hann":
        raise ValueError(f"librosa stand-in: only the 'hann' window is provided, not {window!r}")
    period = n if fftbins else n - 1
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / period)


def librosa_stand_in() -> types.ModuleType:
    lib = types.ModuleType("librosa")
    lib.__spec__ = importlib.machinery.ModuleSpec("librosa", None)
    lib.filters = types.SimpleNamespace(
        get_window=_get_window,
        mel=_slaney_mel,
    )

    def pad_center(x, size):
        left = (size - len(x)) // 2
        return np.pad(x, (left, size - len(x) - left))

    lib.util = types.SimpleNamespace(pad_center=pad_center)
    return lib


def import_msclap_clap():
    """``msclap.models.clap`` with the hub and librosa replaced (see the module docstring)."""
    # transformers' GPT-2 first: once the librosa stand-in is in sys.modules, transformers believes librosa is
    # installed and its audio utilities then need soxr, which is not.
    from transformers import GPT2Config, GPT2Model

    site = site_dir()
    ensure_installed(site)
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    if "librosa" not in sys.modules:
        sys.modules["librosa"] = librosa_stand_in()
    package = types.ModuleType("msclap")  # skip msclap/__init__.py
    package.__path__ = [str(site / "msclap")]
    sys.modules.setdefault("msclap", package)
    import msclap.models.clap as msclap_clap

    return msclap_clap, GPT2Config, GPT2Model


def build_reference_2023(seed: int = 2023, text_layers: int = 12):
    """msclap's CLAP as its wrapper builds it from config_2023.yml, random weights, eval mode.

    ``text_layers`` < 12 shortens GPT-2 (only for the smoke test; the benchmark itself uses GPT-2 base)."""
    import yaml

    msclap_clap, GPT2Config, GPT2Model = import_msclap_clap()
    msclap_clap.AutoModel = types.SimpleNamespace(
        from_pretrained=lambda name, *a, **k: GPT2Model(GPT2Config(n_layer=text_layers)))
    cfg = yaml.safe_load((site_dir() / "msclap" / "configs" / "config_2023.yml").read_text())
    torch.manual_seed(seed)
    model = msclap_clap.CLAP(
        audioenc_name=cfg["audioenc_name"], sample_rate=cfg["sampling_rate"], window_size=cfg["window_size"],
        hop_size=cfg["hop_size"], mel_bins=cfg["mel_bins"], fmin=cfg["fmin"], fmax=cfg["fmax"],
        classes_num=cfg["num_classes"], out_emb=cfg["out_emb"], text_model=cfg["text_model"],
        transformer_embed_dim=cfg["transformer_embed_dim"], d_proj=cfg["d_proj"],
    )
    # Fresh init leaves norm scales at 1 and biases / BN statistics at 0 / 1: move them, so that the agreement
    # figure compares two models that really use every tensor (as the parity test does).
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or "extractor" in name or "attn_mask" in name:
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                t.normal_(std=3.0 if ".bn0." in name else 0.3)
            elif t.ndim <= 1 and t.numel() > 1:
                t.add_(0.1 * torch.randn_like(t))
    return model.eval()


def save_as_official(model, path: Path) -> None:
    """``{"model": state_dict}`` with only float tensors, as CLAP_weights_2023.pth is stored."""
    sd = {k: (v if v.is_floating_point() else v.float()) for k, v in model.state_dict().items()}
    torch.save({"model": sd}, path)
