"""The ``aisfx`` audio tower (clapkit.models.aisfx_encoder) and its feature store (clapkit.audio_feature_cache).

The tower must embed exactly as the verified teacher does; the store must serve what it holds, compute and keep the
rest, and merge with what another process saved; a frozen tower must train from the store, leave its weights as
packaged, and a run that reads the store must end with the same model as the run that filled it."""
import json

import pytest
import torch

from clapkit.audio_feature_cache import WaveformFeatureStore, attach_feature_store, store_key, waveform_digest
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


def test_store_serves_what_it_holds_computes_the_rest_and_merges_on_save(tmp_path):
    enc = AisfxAudioEncoder(AisfxEncoderConfig(pretrained=None, precision="fp32")).eval()
    waves = 0.2 * torch.randn(6, 16000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fresh = enc.compute(waves)
    key = store_key(enc)
    first = WaveformFeatureStore(tmp_path / "s.safetensors", key)
    first.rows[waveform_digest(waves[0])] = fresh[0] + 100.0  # a held row is served as held, not recomputed
    with torch.no_grad():
        out = first.lookup(waves[:3], enc.compute)
    torch.testing.assert_close(out[0], fresh[0] + 100.0)
    torch.testing.assert_close(out[1:], fresh[1:3])
    assert (first.hits, first.misses) == (1, 2)
    second = WaveformFeatureStore(tmp_path / "s.safetensors", key)  # another process, before the first saved
    with torch.no_grad():
        second.lookup(waves[3:], enc.compute)
    first.save()
    second.save()  # merges with the first's rows instead of replacing them
    third = WaveformFeatureStore(tmp_path / "s.safetensors", key)
    assert len(third) == 5  # rows 1..5 computed and saved (row 0 was put in by hand, never "added")
    with torch.no_grad():
        torch.testing.assert_close(third.lookup(waves[1:], enc.compute), fresh[1:])
    assert third.misses == 0
    other = WaveformFeatureStore(tmp_path / "s.safetensors", key="another-encoder")
    assert len(other) == 0  # another key never reads these rows


def test_a_frozen_aisfx_tower_trains_from_its_store_and_reruns_identically(tmp_path_factory):
    from clapkit.api import CLAP
    from clapkit.train import train

    prepared = make_prepared(tmp_path_factory.mktemp("corpus"), n=32)
    cache_dir = tmp_path_factory.mktemp("audio-features")
    models, reports = [], []
    for run in ("fills", "reads"):
        tmp = tmp_path_factory.mktemp(run)
        cfg = train_config(tmp, prepared, max_steps=3, freeze_audio=True, audio_cache_dir=str(cache_dir),
                           timings=str(tmp / "timings.json"))
        metrics = train(cfg, _aisfx_tiny_config(), seed=0, progress=False)
        assert metrics["init"][0]["packaged"] == "aisfx"
        reports.append(json.loads((tmp / "timings.json").read_text())["audio_cache"])
        models.append(CLAP.from_pretrained(tmp / "clap").model)
    assert reports[0]["rows_read"] == 0 and reports[0]["misses"] > 0
    assert reports[1]["rows_read"] > 0 and reports[1]["misses"] == 0  # same seed: the same windows, all stored
    packaged = AisfxAudioEncoder(AisfxEncoderConfig(precision="fp32"))
    load_packaged_audio_encoder(packaged)
    for k, v in packaged.state_dict().items():
        assert torch.equal(models[0].audio.encoder.state_dict()[k], v), k  # frozen: weights and BN statistics
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), k
    assert len(list(cache_dir.glob("aisfx-*.safetensors"))) == 1
    assert attach_feature_store(models[0].text.encoder, cache_dir) is None  # not a waveform encoder
