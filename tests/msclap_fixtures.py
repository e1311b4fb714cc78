"""A CLAPModel's weights written the way an official msclap 2023 file holds them: shared by the checkpoint-import
tests (test_msclap_parity), the MAEB wrapper tests (test_mteb_model) and the clapcap tests (test_clapcap)."""
from __future__ import annotations

import torch

from clapkit.msclap_weights import AUDIO_PREFIX, hann_dft_kernels
from clapkit.models import build_audio_encoder
from clapkit.models.clap import CLAPModel

# clapkit's module prefixes -> msclap 2023's (the audio encoder's own prefix comes from AUDIO_PREFIX)
_RENAMES = {"audio.projection.": "audio_encoder.projection.",
            "text.encoder.transformer.": "caption_encoder.base.",
            "text.projection.": "caption_encoder.projection."}


def tiny_as_msclap(model: CLAPModel) -> dict[str, torch.Tensor]:
    """msclap 2023's key names, with the STFT kernels, the derived HTSAT buffers and a 527-class AudioSet head
    (taken from a standalone HTSAT of the same geometry built with one, seed 3), all float32 as the official file."""
    sd = audio_tower_as_msclap(model.audio, model.config["audio_encoder"], AUDIO_PREFIX["2023"], "audio_encoder.projection.")
    renames = {k: v for k, v in _RENAMES.items() if not k.startswith("audio.")}
    for key, t in model.state_dict().items():
        if key.startswith("audio."):
            continue
        old = next((o for o in renames if key.startswith(o)), None)
        sd[renames[old] + key[len(old):] if old else key] = t
    return {k: v.float() for k, v in sd.items()}  # the 2023 file holds only FloatStorage


def clapcap_as_msclap(model, legacy_gpt2_buffers: bool = True) -> dict[str, torch.Tensor]:
    """A ClapCapModel's weights as clapcap_weights_2023.pth holds them: the audio tower under ``clap.``, the
    mapper under ``clap_project.``, GPT-2 under ``gpt.`` with the causal-mask buffers older transformers saved."""
    sd = audio_tower_as_msclap(model.audio, model.config["audio_encoder"], AUDIO_PREFIX["clapcap"], "clap.projection.")
    for key, t in model.state_dict().items():
        if key.startswith("mapper."):
            sd["clap_project." + key[len("mapper."):]] = t
        elif key.startswith("gpt."):
            sd[key] = t
    if legacy_gpt2_buffers:
        n = model.gpt.config.n_positions
        for i in range(model.gpt.config.n_layer):
            sd[f"gpt.transformer.h.{i}.attn.bias"] = torch.ones(n, n).tril().view(1, 1, n, n)
            sd[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    return {k: v.float() for k, v in sd.items()}


def audio_tower_as_msclap(audio, encoder_cfg: dict, prefix: str, projection_prefix: str) -> dict[str, torch.Tensor]:
    """An AudioTower under msclap's names (``prefix`` for the HTSAT, ``projection_prefix``), with the STFT kernels,
    the derived buffers and a 527-class AudioSet head (from a standalone HTSAT of that geometry, seed 3)."""
    sd = {}
    for key, t in audio.state_dict().items():
        if key == "frontend.mel_fb":
            sd[prefix + "logmel_extractor.melW"] = t
        elif key.startswith("encoder."):
            sd[prefix + key[len("encoder."):]] = t
        elif key.startswith("projection."):
            sd[projection_prefix + key[len("projection."):]] = t
        else:
            raise AssertionError(f"unexpected audio tower key {key}")
    for name, b in audio.encoder.named_buffers():
        if name.endswith(("attn_mask", "relative_position_index")):
            sd[prefix + name] = b
    cfg = audio.frontend.cfg
    real, imag = hann_dft_kernels(cfg.n_fft, cfg.win_length)
    sd[prefix + "spectrogram_extractor.stft.conv_real.weight"] = real
    sd[prefix + "spectrogram_extractor.stft.conv_imag.weight"] = imag
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        headed = build_audio_encoder({**encoder_cfg, "num_classes": 527}).state_dict()
    for k in ("tscam_conv.weight", "tscam_conv.bias", "head.weight", "head.bias"):  # HTSAT's AudioSet head
        sd[prefix + k] = headed[k]
    return sd
