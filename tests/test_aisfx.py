"""The pretrained audio teacher: the aisfx checkpoint (CC BY 4.0, Ma & Lerch, ISMIR 2022) found in the installed wheel,
sha256-verified, loaded strictly into clapkit's own network and front-end (clapkit.aisfx_teacher).

The wheel is part of the set-up (scripts/setup.sh, requirements-nodeps.lock): these tests fail, not skip, without it.
The network's reference is the wheel's own torch module (``aisfx.models.cnn2d``: importing it needs numpy and tqdm,
not librosa or essentia); the front-end's are an independent numpy construction of librosa's HTK mel filters and a
hand-computed spectrum of a bin-centred cosine.
"""

from __future__ import annotations

import importlib.util
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clapkit import aisfx_teacher
from clapkit.aisfx_teacher import (AISFX, AisfxConfig, AisfxNet, aisfx_checkpoint, aisfx_mel_filterbank,
                                   block_frames, load_aisfx_embedder, load_aisfx_state, read_aisfx_checkpoint)
from clapkit.errors import WeightsError

torch.set_num_threads(1)
SR = 44100
CFG = AisfxConfig()


@pytest.fixture(scope="module")
def checkpoint():
    return read_aisfx_checkpoint()


@pytest.fixture(scope="module")
def embedder():
    return load_aisfx_embedder()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the package and its checkpoint ------------------------------------------------------------------------------

def test_the_wheel_is_installed_with_the_expected_checkpoint():
    path = aisfx_checkpoint()
    assert path.parts[-3:] == ("aisfx", "models", "checkpoint.pth")
    assert path.stat().st_size == AISFX.size == 24_900_277
    assert AISFX.sha256 == "499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5"
    assert AISFX.install == "pip install --no-deps aisfx==0.1.2"
    assert "CC BY 4.0" in AISFX.licence


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps aisfx==0\.1\.2"):
        aisfx_checkpoint()


def test_a_modified_checkpoint_is_refused_naming_the_file(tmp_path):
    copy = tmp_path / "checkpoint.pth"
    shutil.copyfile(aisfx_checkpoint(), copy)
    with open(copy, "r+b") as f:  # same size, one byte changed
        f.seek(AISFX.size // 2)
        byte = f.read(1)
        f.seek(AISFX.size // 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(WeightsError, match=rf"{copy}: sha256 .* expected {AISFX.sha256}"):
        load_aisfx_embedder(path=copy)
    with open(copy, "ab") as f:
        f.write(b"\0")
    with pytest.raises(WeightsError, match=rf"{copy}: {AISFX.size + 1} bytes"):
        read_aisfx_checkpoint(copy)


def test_loading_is_strict_and_reports_the_dropped_heads(checkpoint, embedder):
    state, heads = checkpoint
    assert len(heads) == 9 and heads["prosfx"] == 78 and sum(heads.values()) == 378
    report = embedder.report
    assert report["tensors"] == 48 and report["dropped_heads"] == 9 and report["dropped_tensors"] == 54
    assert report["path"] == "aisfx/models/checkpoint.pth" and report["sha256"] == AISFX.sha256
    assert sum(p.numel() for p in embedder.net.parameters()) == 4_686_144
    assert sum(t.numel() for t in embedder.net.state_dict().values()) == 4_689_992  # + batch-norm statistics
    assert not embedder.training and not any(p.requires_grad for p in embedder.parameters())
    short = {k: v for k, v in state.items() if k != "embedding_net.conv_block4.bn2.running_var"}
    with pytest.raises(ValueError, match=r"src: .*missing \['conv_block4.bn2.running_var'\]"):
        load_aisfx_state(AisfxNet(), short, "src")
    with pytest.raises(ValueError, match=r"src: .*unexpected \['extra.weight'\]"):
        load_aisfx_state(AisfxNet(), {**state, "extra.weight": torch.zeros(1)}, "src")
    narrow = AisfxNet(AisfxConfig(width=32))
    with pytest.raises(ValueError, match="src: does not fit"):
        load_aisfx_state(narrow, state, "src")


# --- the network against the wheel's own module ------------------------------------------------------------------

def test_the_network_matches_the_wheels_embedding_net(checkpoint, embedder):
    from aisfx.inference import load_bestModel  # the wheel's own CrossNet(EmbeddingNet('max', 3, 1, 64), ...)

    state, heads = checkpoint
    table = {name: (i, n) for i, (name, n) in enumerate(heads.items())}
    wheel = load_bestModel(state, table, "cpu")
    assert not wheel.training
    with torch.no_grad():
        for shape in ((3, 100, 96), (1, 37, 96), (2, 8, 96)):
            x = torch.rand(shape, generator=_gen(sum(shape)))
            ours, theirs = embedder.net(x), wheel.get_embedding(x)
            assert ours.shape == (shape[0], 512)
            assert (ours - theirs).abs().max().item() < 1e-5


def test_blocks_match_the_wheels_blocking_on_our_time_major_features(checkpoint, embedder):
    from aisfx.inference import load_bestModel, model_get_embedding

    state, heads = checkpoint
    wheel = load_bestModel(state, {n: (i, c) for i, (n, c) in enumerate(heads.items())}, "cpu")
    wave = torch.randn(5 * SR, generator=_gen(1)) * torch.linspace(0, 1, 5 * SR)
    feats = embedder.features(wave, SR)
    assert feats.shape == (1 + 5 * SR // 1024, 96)  # (frames, bands): 216 frames
    theirs = model_get_embedding(feats.numpy(), 1.0, False, wheel, "cpu")  # blocks at 0, 100, 200 (zero-padded)
    blocks = block_frames(feats, CFG)  # at 0, 100, then the last 100 frames (116)
    assert blocks.shape == (3, 100, 96)
    with torch.no_grad():
        ours = embedder.net(blocks)
    assert (ours[:2] - theirs[:2]).abs().max().item() < 1e-5


# --- the front-end -----------------------------------------------------------------------------------------------

def _librosa_htk_mel_l1(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """librosa.filters.mel(htk=True, norm=1), written out independently in numpy."""
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)  # noqa: E731
    fftfreqs = np.linspace(0, sr / 2, 1 + n_fft // 2)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff, ramps = np.diff(mel_f), np.subtract.outer(mel_f, fftfreqs)
    weights = np.stack([np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
                        for i in range(n_mels)])
    return weights / weights.sum(axis=1, keepdims=True)


def test_the_filterbank_is_htk_with_l1_rows():
    fb = aisfx_mel_filterbank(CFG)
    assert fb.shape == (96, 1025) and bool((fb >= 0).all())
    assert torch.allclose(fb.sum(dim=1).double(), torch.ones(96, dtype=torch.float64), atol=1e-6)
    ref = _librosa_htk_mel_l1(SR, 2048, 96, 0.0, 22050.0)
    assert np.abs(fb.numpy() - ref).max() < 5e-6  # torchaudio builds them in float32
    # band 39 (0-based) peaks at the FFT bin next to its centre, by hand: point 40 of 0..97 equally spaced on the
    # HTK mel scale, mel = 2595 log10(1 + f / 700), up to 22050 Hz: about 2241 Hz, between bins 104 and 105
    centre = 700 * (10 ** (40 * math.log10(1 + 22050 / 700) / 97) - 1)
    assert 2241 < centre < 2242
    assert int(fb[39].argmax()) in (math.floor(centre * 2048 / SR), math.ceil(centre * 2048 / SR))


def test_a_bin_centred_cosine_gives_the_hand_computed_log_mel(embedder):
    k0 = 100  # FFT bin 100 of 2048 at 44.1 kHz: 2153.3 Hz; peak amplitude exactly 1 at n = 0
    n = torch.arange(20 * 2048, dtype=torch.float64)
    wave = 0.25 * torch.cos(2 * math.pi * k0 * n / 2048)  # peak normalisation scales it back to 1
    feats = embedder.features(wave.float(), SR)
    assert feats.shape == (1 + 20 * 2048 // 1024, 96)
    # periodic Hann, N = 2048: |X[k0]| = N/4 = 512, |X[k0 +- 1]| = N/8 = 256, every other bin 0
    power = torch.zeros(1025, dtype=torch.float64)
    power[k0], power[k0 - 1], power[k0 + 1] = 512.0 ** 2, 256.0 ** 2, 256.0 ** 2
    mel = aisfx_mel_filterbank(CFG).double() @ power
    expected = torch.log10(1e4 * mel + 1) / 9.457798957824707
    middle = feats[10].double()
    assert (middle - expected).abs().max().item() < 1e-4
    band = int(expected.argmax())
    assert int(middle.argmax()) == band and middle[band] > 0.9  # log10(1e4 * ~1e5) / 9.46
    assert middle[(np.abs(np.arange(96) - band) > 2)].abs().max() < 1e-3  # other bands (almost) silent


def test_the_features_are_time_major_peak_normalised_and_resampled(embedder):
    t = torch.arange(2 * SR) / SR
    half = torch.where(t >= 1.0, torch.sin(2 * math.pi * 1000 * t), torch.zeros_like(t))
    feats = embedder.features(half, SR)  # silence for 1 s, then a tone: rows are frames
    assert feats.shape == (87, 96)
    assert feats[:40].abs().max() == 0 and feats[50:].max(dim=1).values.min() > 0.5
    assert torch.allclose(embedder.features(0.01 * half, SR), feats, atol=1e-4)
    t16 = torch.arange(2 * 16000) / 16000
    low = embedder.features(torch.sin(2 * math.pi * 1000 * t16), 16000)  # resampled to 44.1 kHz first
    assert low.shape == (1 + 2 * SR // 1024, 96)
    assert int(low[40].argmax()) == int(feats[70].argmax())


def test_blocking():
    frames = torch.arange(250 * 2, dtype=torch.float32).reshape(250, 2)
    blocks = block_frames(frames, CFG)
    assert blocks.shape == (3, 100, 2)
    assert blocks[:, 0, 0].tolist() == [0.0, 200.0, 300.0]  # starts 0, 100, 150 (end-aligned)
    assert block_frames(frames[:100], CFG).shape == (1, 100, 2)
    assert block_frames(frames[:60], CFG).shape == (1, 60, 2)  # a short clip is one block, unpadded
    tiny = block_frames(frames[:5], CFG)
    assert tiny.shape == (1, 8, 2) and tiny[0, 5:].abs().max() == 0
    assert block_frames(frames, AisfxConfig(block_hop=50)).shape == (4, 100, 2)  # 0, 50, 100, 150


# --- clip embeddings ---------------------------------------------------------------------------------------------

def _harmonic(f0: float, seconds: float, seed: int) -> torch.Tensor:
    t = torch.arange(int(seconds * 16000)) / 16000
    phase = torch.rand(4, generator=_gen(seed)) * 2 * math.pi
    tone = sum(torch.sin(2 * math.pi * f0 * (h + 1) * t + phase[h]) / (h + 1) for h in range(4))
    return tone * (1 + 0.3 * torch.sin(2 * math.pi * 3 * t))


def test_embeddings_are_deterministic_and_pool_over_blocks(embedder):
    clips = [torch.randn(int(3.5 * 16000), generator=_gen(2)), _harmonic(440, 1.2, 0), torch.randn(300)]
    first, second = embedder.embed(clips, 16000), embedder.embed(clips, 16000)
    assert first.shape == (3, 512) and first.dtype == torch.float32 and torch.equal(first, second)
    alone = embedder.embed(clips[1], 16000)  # batch composition does not matter
    assert (alone[0] - first[1]).abs().max() < 1e-5
    feats = embedder.features(clips[0], 16000)
    with torch.no_grad():
        per_block = embedder.net(block_frames(feats, CFG))
    assert per_block.shape[0] == 2 and torch.allclose(first[0], per_block.amax(dim=0), atol=1e-6)
    mean = load_aisfx_embedder({"clip_pool": "mean"}).embed(clips[:1], 16000)
    assert torch.allclose(mean[0], per_block.mean(dim=0), atol=1e-5)
    equal_length = torch.stack([clips[0], clips[0].flip(0)])
    assert embedder.embed(equal_length, 16000).shape == (2, 512)


def test_the_same_sound_embeds_closer_than_a_different_one(embedder):
    noise = [torch.randn(2 * 16000, generator=_gen(s)) for s in (10, 11)]
    tones = [_harmonic(330, 2.0, 0), _harmonic(330, 2.0, 1)]
    e = F.normalize(embedder.embed(noise + tones, 16000), dim=-1)
    sim = e @ e.T
    assert sim[0, 1] > max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3]) + 0.1
    assert sim[2, 3] > max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3]) + 0.1


def test_config_round_trip_and_unknown_fields():
    cfg = AisfxConfig.from_dict({"block_hop": 50})
    assert AisfxConfig.from_dict(cfg.to_dict()) == cfg and cfg.dim == 512
    with pytest.raises(ValueError, match="unknown aisfx config fields"):
        AisfxConfig.from_dict({"hop": 1})
    assert aisfx_teacher.__doc__ and "CC BY 4.0" in aisfx_teacher.__doc__
