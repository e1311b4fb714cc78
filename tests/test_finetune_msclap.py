"""``train.init: msclap:<version>:<path>``: fine-tuning the official weights (clapkit.init_weights), with tiny
msclap-format checkpoints (tests/msclap_fixtures.tiny_as_msclap: a tiny CLAPModel's weights under msclap 2023's
key names, with the STFT kernels, derived buffers and a 527-class AudioSet head an official file carries).

Before any step the model equals ``load_msclap`` of the same file (whose parity with msclap 1.3.4 itself is
tests/test_msclap_parity.py); two fine-tuning steps on the tiny corpus change the weights, except a frozen tower's;
the saved model loads with ``CLAP.from_pretrained`` and gives the same embeddings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clapkit.api import CLAP
from clapkit.training_state import model_fingerprint
from clapkit.errors import WeightsError
from clapkit.msclap_weights import AUDIOSET_HEAD_DROPPED, load_msclap
from clapkit.models.clap import CLAPModel, load_model_config
from clapkit.text import TextTokenizer
from clapkit.train import TrainConfig, build_model, train
from msclap_fixtures import tiny_as_msclap
from test_train import make_prepared, train_config

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")

TINY = load_model_config("clap-tiny-htsat-gpt2")  # 16 kHz, 1 s clips: the tiny corpus' frontend
TINY["audio_encoder"] = {**TINY["audio_encoder"], "depths": [2, 2]}  # shifted windows, as the parity tests
CAPTIONS = ["a sine tone", "white noise hissing", "a rising chirp"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("corpus"))


def write_tiny(path, seed: int = 1):
    """A tiny msclap 2023-format file with random weights (and a non-default temperature); returns its path."""
    source = CLAPModel.from_config(TINY, seed=seed)
    with torch.no_grad():
        source.logit_scale.fill_(math.log(20.0 + seed))
    torch.save({"model": tiny_as_msclap(source)}, path)
    return path


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("msclap") / "CLAP_weights_2023.pth")


def embeddings(clap: CLAP) -> tuple[torch.Tensor, torch.Tensor]:
    wave = 0.1 * torch.randn(3, clap.clip_samples, generator=torch.Generator().manual_seed(5))
    wave[1] += 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(clap.clip_samples) / clap.sample_rate)
    clap.model.eval()
    return clap.get_audio_embeddings(list(wave), normalize=False), clap.get_text_embeddings(CAPTIONS, normalize=False)


def reference(path) -> CLAP:
    model, _ = load_msclap(path, version="2023", config=TINY)
    return CLAP(model, TextTokenizer.from_spec(TINY["tokenizer"]))


def init_config(tmp, prepared, path, **kw) -> TrainConfig:
    return train_config(tmp, prepared, init=f"msclap:2023:{path}", **kw)


def test_init_gives_load_msclaps_model_before_any_step_and_round_trips(prepared, tiny_file, tmp_path, capsys):
    # params.yaml's default audio_init (pretrain) is superseded, not an error; pretrain_dir is never read
    cfg = init_config(tmp_path, prepared, tiny_file, audio_init="pretrain", pretrain_dir=str(tmp_path / "absent"))
    clap, report = build_model(cfg, TINY, seed=0)
    ref = reference(tiny_file)
    for key, t in ref.model.state_dict().items():  # every tensor, the temperature included
        assert torch.equal(clap.model.state_dict()[key], t), key
    assert float(clap.model.logit_scale.detach()) == pytest.approx(math.log(21.0))
    audio, text = embeddings(clap)
    ref_audio, ref_text = embeddings(ref)
    assert torch.equal(audio, ref_audio) and torch.equal(text, ref_text)
    assert (audio[0] - audio[1]).abs().max() > 1e-3  # not a vacuous match
    # the load report: printed and the metrics' init entry (JSON), the AudioSet head dropped and named
    (entry,) = report
    assert "tensors loaded" in capsys.readouterr().out
    assert entry["init"] == "msclap" and entry["version"] == "2023" and entry["path"] == str(tiny_file)
    assert entry["tensors"] == len(ref.model.state_dict())
    assert entry["audioset_head_dropped"] == entry["dropped"][AUDIOSET_HEAD_DROPPED] and \
        len(entry["audioset_head_dropped"]) == 4
    assert any(d.startswith("audio_encoder.depths: [2, 2]") for d in entry["config_differs_from_msclap"])
    assert entry["audio_init"].startswith("pretrain: superseded")  # the default audio_init, not used
    json.dumps(report)
    # save_pretrained -> from_pretrained gives the same embeddings
    clap.save_pretrained(tmp_path / "saved")
    again = CLAP.from_pretrained(tmp_path / "saved")
    audio2, text2 = embeddings(again)
    assert torch.equal(audio, audio2) and torch.equal(text, text2)


def test_initial_weights_fingerprint_covers_the_file(prepared, tiny_file, tmp_path):
    def fingerprint(path):
        clap, _ = build_model(init_config(tmp_path, prepared, path), TINY, seed=0)
        return model_fingerprint({}, clap.model.state_dict())

    other = write_tiny(tmp_path / "other.pth", seed=2)
    assert fingerprint(tiny_file) == fingerprint(tiny_file)  # the model's own random init (seed) is overwritten
    assert fingerprint(tiny_file) != fingerprint(other)


@pytest.mark.parametrize("frozen", ["audio", "text"])
def test_two_fine_tuning_steps_change_the_weights_but_not_a_frozen_tower(prepared, tiny_file, tmp_path, frozen):
    cfg = init_config(tmp_path, prepared, tiny_file, max_steps=2, checkpoint_every=100, freeze_audio=frozen == "audio",
                      freeze_text=frozen == "text", text_cache_dir=None)
    metrics = train(cfg, TINY, seed=0, progress=False)
    assert metrics["step"] == 2 and metrics["init"][0]["path"] == str(tiny_file)
    assert json.loads((tmp_path / "metrics.json").read_text())["init"][0]["tensors"] == metrics["init"][0]["tensors"]
    start = reference(tiny_file).model.state_dict()
    tuned = CLAP.from_pretrained(tmp_path / "clap").model.state_dict()  # the saved model loads
    assert tuned.keys() == start.keys()
    trained_tower = "text" if frozen == "audio" else "audio"
    changed = {k for k in start if not torch.equal(tuned[k], start[k])}
    assert not [k for k in changed if k.startswith(f"{frozen}.encoder.")]  # bit-identical, BatchNorm statistics too
    for prefix in (f"{trained_tower}.encoder.", "audio.projection.", "text.projection."):
        assert any(k.startswith(prefix) for k in changed), prefix
    assert not torch.equal(tuned["logit_scale"], start["logit_scale"])  # the temperature is learnt from the file's


def test_bad_specs_missing_files_and_wrong_versions_name_the_file(prepared, tiny_file, tmp_path):
    with pytest.raises(ValueError, match=r"init: 'msclap:/w/CLAP\.pth': name the msclap version before the file "
                                         r"/w/CLAP\.pth: msclap:2023:/w/CLAP\.pth"):
        TrainConfig(init="msclap:/w/CLAP.pth")
    with pytest.raises(ValueError, match=r"msclap version '2024' of /w/CLAP\.pth is not one of"):
        TrainConfig(init="msclap:2024:/w/CLAP.pth")
    with pytest.raises(ValueError, match=r"init: 'laion:/w/x\.pt' is not one of none \| msclap:2023:<path>"):
        TrainConfig(init="laion:/w/x.pt")
    with pytest.raises(ValueError, match="text_init must be none"):
        TrainConfig(init=f"msclap:2023:{tiny_file}", text_init=str(tiny_file))
    missing = tmp_path / "nope" / "CLAP_weights_2023.pth"
    with pytest.raises(WeightsError, match=f"{missing}: file does not exist"):
        build_model(init_config(tmp_path, prepared, missing), TINY, seed=0)
    with pytest.raises(WeightsError, match=rf"{tiny_file}: version '2022' requested, but this is a 2023 checkpoint"):
        build_model(train_config(tmp_path, prepared, init=f"msclap:2022:{tiny_file}"), TINY, seed=0)


def test_a_model_config_that_does_not_fit_the_checkpoint_is_refused_naming_keys(prepared, tiny_file, tmp_path):
    cnn14 = load_model_config("clap-tiny-htsat-gpt2")
    cnn14["audio_encoder"] = {"name": "cnn14"}
    with pytest.raises(WeightsError, match="does not have the msclap 2023 architecture") as err:
        build_model(init_config(tmp_path, prepared, tiny_file), cnn14, seed=0)
    assert str(tiny_file) in str(err.value) and "audio_encoder.name: 'cnn14', msclap 2023 has 'htsat'" in str(err.value)
    shallow = load_model_config("clap-tiny-htsat-gpt2")  # depths [1, 1]: the file's second blocks have no place
    with pytest.raises(WeightsError, match="the model config does not fit this checkpoint") as err:
        build_model(init_config(tmp_path, prepared, tiny_file), shallow, seed=0)
    assert str(tiny_file) in str(err.value)
    assert "audio_encoder.base.htsat.layers.0.blocks.1.norm1.weight" in str(err.value)  # named, not reshaped
    wide = {**TINY, "embed_dim": 16}
    with pytest.raises(WeightsError, match="shape mismatch"):
        build_model(init_config(tmp_path, prepared, tiny_file), wide, seed=0)


# --- msclap 1.3.4 itself, full size (the test: "before any step, msclap's embeddings") ----------------------

from test_msclap_parity import TOL, build_reference, msclap, save_like_official, token_batch  # noqa: E402,F401


@pytest.mark.slow  # full size, ~8 s
def test_init_from_a_full_size_2023_file_gives_msclaps_own_embeddings(msclap, prepared, tmp_path):  # noqa: F811
    """msclap's own CLAP (random weights, GPT-2 base + HTSAT, as its wrapper builds it), saved as the official file
    is, through train.init with the msclap-2023 model config (preset paper's): the train stage's model, before any
    step, embeds clips and captions as msclap does (the parity tests' tolerance)."""
    reference = build_reference(msclap, "2023", seed=11)
    path = tmp_path / "CLAP_weights_2023.pth"
    save_like_official(reference, "2023", path)
    model_cfg = load_model_config("msclap-2023")
    clap, report = build_model(init_config(tmp_path, prepared, path), model_cfg, seed=0)
    assert report[0]["config_differs_from_msclap"] == [] and report[0]["mel_fb_matches_config"]
    samples = clap.clip_samples
    wave = 0.1 * torch.randn(2, samples, generator=torch.Generator().manual_seed(3))
    wave[1] += 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(samples) / 44100.0)
    ids, mask = token_batch("2023")
    model = clap.model.eval()
    with torch.no_grad():
        ref_audio, _ = reference.audio_encoder(wave)
        ref_text = reference.caption_encoder({"input_ids": ids, "attention_mask": mask})
        audio, text = model.encode_audio(wave), model.encode_text(ids, mask)
    assert (audio - ref_audio).abs().max() <= TOL and (text - ref_text).abs().max() <= TOL
    assert float(model.logit_scale.detach()) == pytest.approx(float(reference.logit_scale.detach()))
    assert (ref_audio[0] - ref_audio[1]).abs().max() > 100 * TOL and (ref_text[0] - ref_text[1]).abs().max() > 100 * TOL
