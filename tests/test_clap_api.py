"""CLAPModel (tiny 2023 architecture on CPU), the CLAP inference API, save/load, determinism, the CLI; no AudioSet
head and no unused parameter in a CLAP model."""

import argparse
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from clapkit.api import CLAP
from clapkit.audio import fit_length, mix_down, read_audio, resample
from clapkit.errors import WeightsError
from clapkit.losses import ClipLoss
from clapkit.models import build_audio_encoder
from clapkit.models.clap import AudioTower, CLAPModel, Projection, TextTower, load_model_config
from clapkit.text import TextTokenizer, train_bytelevel_bpe, train_wordpiece

TINY = "clap-tiny-htsat-gpt2"
HEAD_NAMES = re.compile(r"(^|\.)(tscam_conv|head|fc_audioset)\.")  # HTSAT's TSCAM head, CNN14's AudioSet head
CAPTIONS = ["a dog barks", "rain falls on a roof", "a piano plays", "wind in the trees", "a bell rings"] * 4


@pytest.fixture(scope="module")
def clap():
    return CLAP.from_config(TINY, seed=0)


def _tone(freq: float, seconds: float, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rows = [0.5 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    return np.stack(rows).astype(np.float32)


def test_shipped_configs_resolve():
    for name in ("msclap-2023", "msclap-2022", TINY, "clap-tiny-cnn14-bert"):
        assert {"frontend", "text_encoder"} <= load_model_config(name).keys(), name
    cfg = load_model_config("msclap-2023")
    assert cfg["frontend"]["sample_rate"] == 44100 and cfg["frontend"]["filterbank_sample_rate"] == 32000
    assert cfg["tokenizer"] == {"kind": "gpt2", "max_length": 77} and cfg["embed_dim"] == 1024
    assert math.isclose(math.exp(cfg["logit_scale_init"]), 1 / 0.07)
    with pytest.raises(ValueError, match="unknown key"):
        load_model_config({**cfg, "embed_dims": 3})
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_model_config("no-such-model")


def test_msclap_2023_text_tower_size():
    """GPT-2 base + projection = 126.28 M parameters, as msclap's caption encoder (reference §1.6)."""
    cfg = load_model_config("msclap-2023")
    tower = TextTower(cfg["text_encoder"], cfg["embed_dim"], cfg["projection_dropout"])
    n = sum(p.numel() for p in tower.parameters())
    assert n == 124_439_808 + 768 * 1024 + 1024 * 1024 + 2 * 1024


def test_projection_is_msclap_layout():
    torch.manual_seed(0)
    proj = Projection(6, 4, p=0.5).eval()
    assert {k: tuple(v.shape) for k, v in proj.state_dict().items()} == {
        "linear1.weight": (4, 6), "linear2.weight": (4, 4), "layer_norm.weight": (4,), "layer_norm.bias": (4,)}
    x = torch.randn(3, 6)
    h = x @ proj.linear1.weight.T
    expected = F.layer_norm(h + F.gelu(h) @ proj.linear2.weight.T, (4,), proj.layer_norm.weight, proj.layer_norm.bias)
    torch.testing.assert_close(proj(x), expected)


def test_tiny_2023_architecture_forward_and_backward():
    model = CLAPModel.from_config(TINY, seed=0).train()
    assert type(model.audio.encoder).__name__ == "HTSAT" and type(model.text.encoder).__name__ == "GPT2TextEncoder"
    tok = TextTokenizer.from_spec(model.config["tokenizer"])
    batch = tok(["a dog barks", "rain!", "a piano plays a slow tune"])
    wave = torch.randn(3, model.frontend_config.clip_samples, generator=torch.Generator().manual_seed(1))
    out = model(wave, batch["input_ids"], batch["attention_mask"])
    assert out["logits_per_audio"].shape == (3, 3)
    torch.testing.assert_close(out["logit_scale"], torch.tensor(1 / 0.07))
    torch.testing.assert_close(out["audio_embeds"].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out["logits_per_text"], out["logits_per_audio"].T)
    labels = torch.arange(3)
    loss = 0.5 * (F.cross_entropy(out["logits_per_audio"], labels) + F.cross_entropy(out["logits_per_text"], labels))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    assert model.logit_scale.grad.abs() > 0 and model.audio.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.text.encoder.transformer.wte.weight.grad.abs().sum() > 0
    # same seed, same weights; the global RNG is left alone
    state = torch.random.get_rng_state()
    again = CLAPModel.from_config(TINY, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(CLAPModel.from_config(TINY, seed=0).state_dict().values(),
                                                 again.state_dict().values()))


def test_save_and_load_are_bit_for_bit(clap, tmp_path):
    # train-like state: move a BatchNorm statistic so buffers are checked too
    clap.model.audio.encoder.bn0.running_mean.add_(0.25)
    try:
        out = clap.save_pretrained(tmp_path / "model")
        assert sorted(p.name for p in out.iterdir()) == [
            "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
        loaded = CLAP.from_pretrained(out)
        texts = ["a dog barks", "rain!", "x" * 200]
        wave = torch.from_numpy(_tone(440, 0.7, 16000)[0])
        assert torch.equal(loaded.get_text_embeddings(texts), clap.get_text_embeddings(texts))
        assert torch.equal(loaded.get_audio_embeddings(wave), clap.get_audio_embeddings(wave))
        assert loaded.config == json.loads((out / "config.json").read_text())
        assert torch.equal(loaded.model.logit_scale, clap.model.logit_scale)
    finally:
        clap.model.audio.encoder.bn0.running_mean.sub_(0.25)
    with pytest.raises(WeightsError, match="model.safetensors: missing"):
        (out / "model.safetensors").unlink()
        CLAP.from_pretrained(out)


def test_stereo_long_file_is_deterministic_mono_centre_crop(clap, tmp_path):
    sr = 22050  # not the model rate: resampled
    left, right = _tone(300, 3.3, sr)[0], 0.3 * np.random.default_rng(0).standard_normal(int(3.3 * sr))
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right]).T, sr)
    emb1 = clap.get_audio_embeddings([path])
    emb2 = clap.get_audio_embeddings(str(path))
    assert torch.equal(emb1, emb2)  # identical on repeated calls
    torch.testing.assert_close(emb1.norm(dim=1), torch.ones(1))
    # = channel average, resampled, centre window (what msclap does instead: concatenate + random crop)
    audio, file_sr = read_audio(path)
    mono = fit_length(resample(mix_down(audio), file_sr, 16000), clap.clip_samples, crop="center")
    assert torch.equal(emb1, clap.get_audio_embeddings(mono))
    left_only = fit_length(resample(audio[0], file_sr, 16000), clap.clip_samples, crop="center")
    assert not torch.allclose(emb1, clap.get_audio_embeddings(left_only))
    # a waveform item given as (channels, samples) at its own rate is the same clip
    assert torch.equal(emb1, clap.get_audio_embeddings([audio], sample_rate=file_sr))


def test_batching_and_text_determinism(clap):
    waves = torch.from_numpy(np.concatenate([_tone(f, 1.0, 16000) for f in (220, 440, 880)]))
    full = clap.get_audio_embeddings(waves, batch_size=3)
    assert torch.equal(full, clap.get_audio_embeddings(waves, batch_size=3))
    torch.testing.assert_close(clap.get_audio_embeddings(waves, batch_size=1), full, rtol=0, atol=1e-5)
    texts = ["a dog barks", "wow!", "rain falls on a tin roof in the night"]
    t = clap.get_text_embeddings(texts, batch_size=3)
    assert torch.equal(t, clap.get_text_embeddings(texts, batch_size=3))
    torch.testing.assert_close(clap.get_text_embeddings(texts, batch_size=1), t, rtol=0, atol=1e-5)
    # batched shortest first, returned in the order given: row i is text i, alone or among others
    for i, text in enumerate(texts):
        torch.testing.assert_close(clap.get_text_embeddings(text), t[i : i + 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(clap.get_text_embeddings(texts[::-1], batch_size=2), t.flip(0), rtol=0, atol=1e-5)
    assert not clap.model.training


def test_similarity_is_scaled_cosine(clap):
    a, t = torch.randn(4, 32), torch.randn(3, 32)
    expected = math.exp(clap.model.logit_scale.item()) * (F.normalize(a, dim=1) @ F.normalize(t, dim=1).T)
    torch.testing.assert_close(clap.similarity(a, t), expected)
    torch.testing.assert_close(clap.similarity(5 * a, t), expected)  # scale-free in the inputs


def test_zero_shot_known_answer(tmp_path):
    """Audio tower constructed to output the text embedding of "this is the sound of rain": rain must win,
    with probabilities softmax(exp(scale) * cos(t_rain, t_label)) computed here by hand."""
    clap = CLAP.from_config(TINY, seed=3)
    labels = ["dog", "rain", "piano_note"]
    prompts = ["this is the sound of dog", "this is the sound of rain", "this is the sound of piano note"]
    t_raw = clap.get_text_embeddings(prompts, normalize=False)
    ln = clap.model.audio.projection.layer_norm
    with torch.no_grad():  # LayerNorm(weight 0, bias v) outputs v whatever the input
        ln.weight.zero_()
        ln.bias.copy_(t_raw[1])
    waves = torch.randn(2, clap.clip_samples, generator=torch.Generator().manual_seed(0))
    result = clap.zero_shot_classify(waves, labels)
    assert result.prompts == prompts and result.predictions() == ["rain", "rain"]
    t = F.normalize(t_raw, dim=1)
    expected = (math.exp(clap.model.logit_scale.item()) * (t[1] @ t.T)).softmax(0)
    torch.testing.assert_close(result.probabilities, expected.expand(2, 3))
    assert result.ranking[0].tolist() == torch.argsort(expected, descending=True).tolist()
    assert result.top(1)[0][0][0] == "rain" and abs(sum(p for _, p in result.top()[0]) - 1) < 1e-5
    swapped = clap.zero_shot_classify(waves, labels[::-1])  # label order does not matter
    torch.testing.assert_close(swapped.probabilities, result.probabilities.flip(1))
    multi = clap.zero_shot_classify(waves, labels, multilabel=True)
    torch.testing.assert_close(multi.probabilities, torch.sigmoid(result.logits))


def test_other_text_encoders_with_trained_tokenizers(tmp_path):
    wordpiece = TextTokenizer(train_wordpiece(CAPTIONS, vocab_size=200, min_frequency=1), "wordpiece", 32)
    bert = CLAP.from_config("clap-tiny-cnn14-bert", tokenizer=wordpiece)
    wave = torch.from_numpy(_tone(500, 1.0, 16000)[0])
    emb = bert.get_text_embeddings(CAPTIONS[:3])
    loaded = CLAP.from_pretrained(bert.save_pretrained(tmp_path / "bert"))
    assert torch.equal(loaded.get_text_embeddings(CAPTIONS[:3]), emb)  # the trained vocabulary travels along
    assert torch.equal(loaded.get_audio_embeddings(wave), bert.get_audio_embeddings(wave))
    bpe = TextTokenizer(train_bytelevel_bpe(CAPTIONS, vocab_size=300, min_frequency=1), "bpe", 32)
    roberta = CLAP.from_config("clap-tiny-htsat-roberta", tokenizer=bpe)
    assert roberta.get_text_embeddings(["a dog barks", "rain"]).shape == (2, 32)
    with pytest.raises(ValueError, match="pools the last token"):  # GPT-2 would pool [SEP]'s padding
        CLAP(CLAPModel.from_config(TINY), wordpiece)
    with pytest.raises(ValueError, match="trained or given"):
        CLAP.from_config("clap-tiny-cnn14-bert")


def _msclap_layout(model: CLAPModel, version: str) -> dict:
    """The state dict msclap would save for this architecture (its key names, its STFT kernels and melW)."""
    from clapkit.msclap_weights import hann_dft_kernels

    audio = "audio_encoder.base.htsat." if version == "2023" else "audio_encoder.base."
    front = model.frontend_config
    real, imag = hann_dft_kernels(front.n_fft, front.win_length)
    sd = {"logit_scale": model.logit_scale.detach().clone(),
          audio + "spectrogram_extractor.stft.conv_real.weight": real,
          audio + "spectrogram_extractor.stft.conv_imag.weight": imag,
          audio + "logmel_extractor.melW": model.audio.frontend.mel_fb.clone()}
    renames = {"audio.encoder.": audio, "audio.projection.": "audio_encoder.projection.",
               "text.encoder.transformer.": "caption_encoder.base.", "text.projection.": "caption_encoder.projection."}
    for key, value in model.state_dict().items():
        for ours, theirs in renames.items():
            if key.startswith(ours):
                sd[theirs + key[len(ours):]] = value.clone()
    # the 527-class AudioSet head every official file carries (the CLAP model has none)
    headed = build_audio_encoder({**model.config["audio_encoder"], "num_classes": 527})
    sd.update({audio + k: v for k, v in headed.state_dict().items() if HEAD_NAMES.match(k)})
    return sd


def test_from_msclap_delegates_to_the_checkpoint_loader(tmp_path):
    source = CLAP.from_config(TINY, seed=5)
    with torch.no_grad():
        source.model.logit_scale.fill_(4.0)
    torch.save({"model": _msclap_layout(source.model, "2023")}, tmp_path / "w.pth")
    clap = CLAP.from_msclap(tmp_path / "w.pth", "2023", config=TINY)
    assert clap.msclap_report.loaded > 0 and math.isclose(clap.msclap_report.logit_scale, 4.0)
    assert clap.msclap_report.dropped_audioset_head == [f"audio_encoder.base.htsat.{k}" for k in (
        "tscam_conv.weight", "tscam_conv.bias", "head.weight", "head.bias")]
    texts, wave = ["this is the sound of rain", "dog!"], torch.from_numpy(_tone(330, 1.0, 16000)[0])
    assert torch.equal(clap.get_text_embeddings(texts), source.get_text_embeddings(texts))
    assert torch.equal(clap.get_audio_embeddings(wave), source.get_audio_embeddings(wave))
    reloaded = CLAP.from_pretrained(clap.save_pretrained(tmp_path / "converted"))
    assert torch.equal(reloaded.get_text_embeddings(texts), source.get_text_embeddings(texts))

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "dog", "rain", "the", "sound", "of", "this", "is"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    bert = CLAP.from_config("clap-tiny-cnn14-bert", tokenizer=TextTokenizer.from_spec(
        {"kind": "wordpiece", "max_length": 32, "vocab": str(tmp_path / "vocab.txt")}))
    torch.save({"model": _msclap_layout(bert.model, "2022")}, tmp_path / "w2022.pth")
    with pytest.raises(ValueError, match="bert_vocab"):
        CLAP.from_msclap(tmp_path / "w2022.pth", "2022", config="clap-tiny-cnn14-bert")
    loaded = CLAP.from_msclap(tmp_path / "w2022.pth", "2022", config="clap-tiny-cnn14-bert",
                              bert_vocab=tmp_path / "vocab.txt")
    assert torch.equal(loaded.get_text_embeddings(texts), bert.get_text_embeddings(texts))
    assert torch.equal(loaded.get_audio_embeddings(wave), bert.get_audio_embeddings(wave))
    assert loaded.msclap_report.dropped_audioset_head == ["audio_encoder.base.fc_audioset.weight",
                                                          "audio_encoder.base.fc_audioset.bias"]


# ------------------------------------------------------------------------- no AudioSet head, no unused parameter


@pytest.mark.parametrize("name, encoder, encoder_params", [
    # the standalone encoders' counts (tests/test_audio_encoders.py) less their 527-class heads
    ("msclap-2023", "HTSAT", 30_241_687 - (527 * 768 * 2 * 3 + 527 + 527 * 527 + 527)),
    ("msclap-2022", "CNN14", 80_753_615 - (527 * 2048 + 527)),
])
def test_msclap_configs_build_no_audioset_head(name, encoder, encoder_params):
    """The full msclap architectures as a CLAP model: the audio encoder has no head, whatever an official
    checkpoint carries (load_msclap drops it, tests/test_msclap_parity.py)."""
    cfg = load_model_config(name)
    assert cfg["audio_encoder"]["num_classes"] == 0
    model = CLAPModel(cfg)
    assert type(model.audio.encoder).__name__ == encoder
    assert [n for n in model.state_dict() if HEAD_NAMES.search(n)] == []
    assert sum(p.numel() for p in model.audio.encoder.parameters()) == encoder_params


def test_a_config_asking_for_an_audioset_head_is_refused(tmp_path):
    cfg = load_model_config(TINY)
    with pytest.raises(ValueError, match=r"model config: audio_encoder.num_classes is 527, but the audio encoder of a "
                                         r"CLAP model has no AudioSet head .* set it to 0"):
        load_model_config({**cfg, "audio_encoder": {**cfg["audio_encoder"], "num_classes": 527}})
    path = tmp_path / "with-head.json"
    path.write_text(json.dumps({**cfg, "audio_encoder": {**cfg["audio_encoder"], "num_classes": 10}}))
    with pytest.raises(ValueError, match=f"model config '{re.escape(str(path))}': audio_encoder.num_classes is 10"):
        CLAPModel(path)
    with pytest.raises(ValueError, match="audio tower: audio_encoder.num_classes is 527"):
        AudioTower(CLAPModel(cfg).frontend_config, {**cfg["audio_encoder"], "num_classes": 527}, 8, 0.0)
    # omitted: 0, not the standalone encoders' default of 527
    encoder = {k: v for k, v in cfg["audio_encoder"].items() if k != "num_classes"}
    assert load_model_config({**cfg, "audio_encoder": encoder})["audio_encoder"]["num_classes"] == 0
    assert AudioTower(CLAPModel(cfg).frontend_config, encoder, 8, 0.0).encoder.config.num_classes == 0


def reduced_msclap_2023() -> dict:
    """msclap-2023 as shipped, with its sizes shrunk for the CPU (1 s clips, 2-stage 16-32 HTSAT, 1-layer GPT-2)."""
    cfg = load_model_config("msclap-2023")
    cfg["frontend"]["clip_seconds"] = 1.0
    cfg["audio_encoder"].update(spec_size=128, embed_dim=16, depths=[2, 2], num_heads=[2, 4])
    cfg["text_encoder"].update(n_layer=1, n_embd=32, n_head=2)
    cfg["embed_dim"] = 64
    return cfg


def test_every_parameter_gets_a_gradient_and_ddp_needs_no_unused_parameter_search(tmp_path):
    """One forward/backward of the contrastive loss reaches every parameter of a CLAP model of the msclap-2023
    architecture; so DDP without ``find_unused_parameters`` runs step after step (with a head it raises at step 2,
    which the control below shows a one-process group detects)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = reduced_msclap_2023()
    model = CLAPModel.from_config(cfg, seed=0).train()
    tok = TextTokenizer.from_spec(cfg["tokenizer"])
    text = tok(["a dog barks", "rain falls on a tin roof", "a piano plays a slow tune"])
    wave = 0.1 * torch.randn(3, model.frontend_config.clip_samples, generator=torch.Generator().manual_seed(1))
    loss_fn = ClipLoss()

    def step(net):
        out = net(wave, text["input_ids"], text["attention_mask"])
        loss = loss_fn(out["audio_embeds"], out["text_embeds"], out["logit_scale"])
        loss.backward()
        return loss

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # SpecAugment, dropout, stochastic depth
        assert torch.isfinite(step(model))
    params = dict(model.named_parameters())
    assert len(params) > 50 and not [n for n in params if HEAD_NAMES.search(n)]
    no_grad = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
    assert no_grad == []

    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        ddp = DDP(model)  # find_unused_parameters=False: DDP's default, and the fast path
        losses = [step(ddp).item() for _ in range(2)]  # an unused parameter raises in the second forward
        assert all(math.isfinite(x) for x in losses)
        # control: the same check catches an encoder whose AudioSet head the loss never reaches
        headed = DDP(build_audio_encoder({**cfg["audio_encoder"], "num_classes": 527}))
        logmel = model.audio.frontend(wave)
        headed(logmel).square().mean().backward()
        with pytest.raises(RuntimeError, match="parameters that were not used in producing loss"):
            headed(logmel).square().mean().backward()
    finally:
        dist.destroy_process_group()


def test_cli_embed_and_zeroshot(clap, tmp_path, capsys):
    from clapkit.infer import register

    model_dir = clap.save_pretrained(tmp_path / "model")
    files = []
    for i, freq in enumerate((220, 660)):
        files.append(str(tmp_path / f"tone{i}.wav"))
        sf.write(files[-1], _tone(freq, 1.5, 8000, channels=2).T, 8000)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav")

    parser = argparse.ArgumentParser(prog="clapkit")
    register(parser.add_subparsers(dest="command", required=True))

    def run(*argv):
        args = parser.parse_args([str(a) for a in argv])
        return args.func(args)

    out = tmp_path / "emb" / "emb.npy"
    assert run("embed", "--model", model_dir, *files, "--out", out) == 0
    emb = np.load(out)
    assert emb.shape == (2, 32) and emb.dtype == np.float32
    assert (tmp_path / "emb" / "emb.files.txt").read_text().split() == files
    np.testing.assert_array_equal(emb, clap.get_audio_embeddings(files).numpy())
    assert "2 embeddings of dimension 32" in capsys.readouterr().out
    assert run("embed", "--model", model_dir, *files, "--batch-size", "1") == 0  # printed, one batch per file
    printed = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    assert [row[0] for row in printed] == files
    np.testing.assert_allclose(np.array([row[1:] for row in printed], dtype=np.float32), emb, atol=1e-5)

    assert run("zeroshot", "--model", model_dir, "--labels", "dog, rain,piano", files[0], bad) == 1
    captured = capsys.readouterr()
    assert "broken.wav" in captured.err and "not decodable" in captured.err
    table = captured.out.strip().splitlines()
    assert table[0].split() == ["file", "#1", "#2", "#3"] and table[1].startswith(files[0])
    expected = clap.zero_shot_classify([files[0]], ["dog", "rain", "piano"]).top()[0]
    cells = re.findall(r"(\w+) \((\d\.\d{3})\)", table[1][len(files[0]):])
    assert cells == [(label, f"{p:.3f}") for label, p in expected]
    assert run("zeroshot", "--model", model_dir, "--labels", "dog", bad) == 2
    with pytest.raises(SystemExit, match="msclap-version"):
        run("embed", "--model", out, files[0])


def test_import_clapkit_stays_light():
    subprocess.run([sys.executable, "-c", "import sys, clapkit; assert 'torch' not in sys.modules"], check=True)
    import clapkit

    assert clapkit.CLAP is CLAP  # resolved lazily on first access
