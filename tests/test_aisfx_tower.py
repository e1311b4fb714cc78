"""The ``aisfx`` audio tower (clapkit.models.aisfx_encoder) and its frozen feature cache (clapkit.audio_feature_cache).

The tower must embed exactly as the verified teacher does, a frozen tower must train from cached clip features
(looked up for fixed windows, computed for random crops) and leave its weights as packaged, and a run that reads the
cache must end with the same model as the run that built it."""
import json

import numpy as np
import pytest
import torch

from clapkit.audio_feature_cache import WaveformFeatureCache, waveform_digest
from clapkit.models.aisfx_encoder import AisfxAudioEncoder, AisfxEncoderConfig, load_packaged_audio_encoder
from clapkit.models.clap import load_model_config

from tests.test_train import make_prepared, train_config

pytest.importorskip("aisfx", reason="the aisfx wheel (scripts/setup.sh installs it --no-deps)")


def _aisfx_tiny_config() -> dict:
    cfg = load_model_config("clap-tiny-htsat-gpt2")
    cfg["audio_encoder"] = {"name": "aisfx", "input_sample_rate": 16000, "precision": "fp32"}
    return cfg


def test_the_tower_embeds_as_the_verified_teacher():
    from clapkit.aisfx_teacher import load_aisfx_embedder

    enc = AisfxAudioEncoder(AisfxEncoderConfig(precision="fp32")).eval()
    report = load_packaged_audio_encoder(enc)
    assert report["dropped_heads"] == 9 and report["sha256"].startswith("499ea759")
    waves = 0.2 * torch.randn(3, 64000, generator=torch.Generator().manual_seed(0))  # 4 s at 16 kHz: 2 blocks each
    with torch.no_grad():
        got = enc(waves)
    assert got.shape == (3, 512)
    torch.testing.assert_close(got, load_aisfx_embedder().embed(waves, 16000), rtol=0, atol=1e-5)


def test_cache_lookup_serves_known_windows_and_computes_the_rest():
    enc = AisfxAudioEncoder(AisfxEncoderConfig(pretrained=None, precision="fp32")).eval()
    waves = 0.2 * torch.randn(6, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = enc.compute(waves)
        marked = full[:3] + 100.0  # cached rows are recognisable: they cannot come from compute
        cache = WaveformFeatureCache(marked, [waveform_digest(w) for w in waves[:3]], key="k")
        out = cache.lookup(waves, enc.compute)
    torch.testing.assert_close(out[:3], marked)
    torch.testing.assert_close(out[3:], full[3:])
    assert (cache.hits, cache.misses) == (3, 3)


def test_a_frozen_aisfx_tower_trains_from_cached_features_and_reruns_identically(tmp_path_factory):
    from clapkit.api import CLAP
    from clapkit.train import train

    prepared = make_prepared(tmp_path_factory.mktemp("corpus"), n=32)
    cache_dir = tmp_path_factory.mktemp("audio-features")
    models = []
    for run in ("built", "read"):
        tmp = tmp_path_factory.mktemp(run)
        cfg = train_config(tmp, prepared, max_steps=3, freeze_audio=True, audio_cache_dir=str(cache_dir),
                           timings=str(tmp / "timings.json"))
        metrics = train(cfg, _aisfx_tiny_config(), seed=0, progress=False)
        assert metrics["init"][0]["packaged"] == "aisfx"
        cache = json.loads((tmp / "timings.json").read_text())["audio_cache"]
        assert cache["built"] == (run == "built")
        # clips of at most 1 s (the clip) have one window and are looked up; longer ones are cropped at random
        assert cache["hits"] > 0 and cache["misses"] > 0
        models.append(CLAP.from_pretrained(tmp / "clap").model)
    packaged = AisfxAudioEncoder(AisfxEncoderConfig(precision="fp32"))
    load_packaged_audio_encoder(packaged)
    for k, v in packaged.state_dict().items():
        assert torch.equal(models[0].audio.encoder.state_dict()[k], v), k  # frozen: weights and BN statistics
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), k
    assert len(list(cache_dir.glob("clips-*.safetensors"))) == 1
