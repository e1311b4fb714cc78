"""A CLAPModel's weights written the way an official msclap 2023 file holds them: shared by the checkpoint-import
tests (test_msclap_parity) and the MAEB wrapper tests (test_mteb_model)."""
from __future__ import annotations

import torch

from clapkit.checkpoints import AUDIO_PREFIX, hann_dft_kernels
from clapkit.models import build_audio_encoder
from clapkit.models.clap import CLAPModel

# clapkit's module prefixes -> msclap 2023's (the audio encoder's own prefix comes from AUDIO_PREFIX)
_RENAMES = {"audio.projection.": "audio_encoder.projection.",
            "text.encoder.transformer.": "caption_encoder.base.",
            "text.projection.": "caption_encoder.projection."}


def tiny_as_msclap(model: CLAPModel) -> dict[str, torch.Tensor]:
    """msclap 2023's key names, with the STFT kernels, the derived HTSAT buffers and a 527-class AudioSet head
    (taken from a standalone HTSAT of the same geometry built with one, seed 3), all float32 as the official file."""
    prefix = AUDIO_PREFIX["2023"]
    renames = {"audio.encoder.": prefix, **_RENAMES}
    sd = {}
    for key, t in model.state_dict().items():
        if key == "audio.frontend.mel_fb":
            sd[prefix + "logmel_extractor.melW"] = t
            continue
        old = next((o for o in renames if key.startswith(o)), None)
        sd[renames[old] + key[len(old):] if old else key] = t
    for name, b in model.audio.encoder.named_buffers():
        if name.endswith(("attn_mask", "relative_position_index")):
            sd[prefix + name] = b
    cfg = model.audio.frontend.cfg
    real, imag = hann_dft_kernels(cfg.n_fft, cfg.win_length)
    sd[prefix + "spectrogram_extractor.stft.conv_real.weight"] = real
    sd[prefix + "spectrogram_extractor.stft.conv_imag.weight"] = imag
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        headed = build_audio_encoder({**model.config["audio_encoder"], "num_classes": 527}).state_dict()
    for k in ("tscam_conv.weight", "tscam_conv.bias", "head.weight", "head.bias"):  # HTSAT's AudioSet head
        sd[prefix + k] = headed[k]
    return {k: v.float() for k, v in sd.items()}  # the 2023 file holds only FloatStorage
