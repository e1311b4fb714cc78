"""The LiT variant of the embedded default (``clap-small-aisfx-minilm-lit``: model config ``text_projection: none``):
the shared space is all-MiniLM-L6-v2's own, so a caption's embedding is MiniLM's mean-pooled sentence embedding
before and after training, a training step moves only the audio projection and the temperature (and runs no text
transformer), and the saved model reloads with the same embeddings.  The reference is transformers' own
``BertModel`` on the packaged MiniLM files, mean-pooled over the attention mask."""

from __future__ import annotations

import json

import pytest
import torch

from clapkit.models.clap import CLAPModel, load_model_config
from clapkit.pretrained import packaged_model
from tests.test_train import make_prepared, train_config

pytest.importorskip("aisfx", reason="the aisfx wheel (scripts/setup.sh installs it --no-deps)")
torch.set_num_threads(1)

LIT = "clap-small-aisfx-minilm-lit"
TEXTS = ["a cow mooing in a field", "a tank firing its cannon", "rain on a tin roof", "someone says 'apple'"]


def lit_config() -> dict:
    """The shipped LiT config with 1 s clips (the fixture corpus' length); towers and projections as shipped."""
    cfg = load_model_config(LIT)
    cfg["frontend"] = dict(cfg["frontend"], clip_seconds=1.0)
    return cfg


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("corpus"), n=32)


@pytest.fixture(scope="module")
def minilm_mean_pooled():
    """texts, tokenizer -> transformers' BertModel on the packaged MiniLM, mean-pooled (the sentence embedding)."""
    from transformers import BertModel

    ref = BertModel.from_pretrained(str(packaged_model("minilm")[1]), local_files_only=True,
                                    attn_implementation="eager").eval()

    def embed(texts, tokenizer):
        batch = tokenizer(texts)
        with torch.no_grad():
            hidden = ref(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    return embed


def test_the_lit_config_has_no_text_projection_and_the_text_width_as_its_space():
    cfg = load_model_config(LIT)
    default = load_model_config("clap-small-aisfx-minilm")
    assert cfg["text_projection"] == "none" and default["text_projection"] == "mlp"
    assert cfg["embed_dim"] == 384 == cfg["text_encoder"]["hidden_size"]
    # the LiT config differs from the default in the text projection and the space's width only
    assert {k: v for k, v in cfg.items() if k not in ("description", "embed_dim", "text_projection")} == \
           {k: v for k, v in default.items() if k not in ("description", "embed_dim", "text_projection")}
    model = CLAPModel(cfg)
    assert not [k for k in model.state_dict() if k.startswith("text.projection.")]
    assert model.audio.projection.linear1.weight.shape == (384, 512)
    with pytest.raises(ValueError, match="embed_dim must be its width 384, not 256"):
        CLAPModel(dict(cfg, embed_dim=256))
    with pytest.raises(ValueError, match="text_projection must be one of"):
        load_model_config(dict(cfg, text_projection="linear"))


def test_a_training_step_moves_only_the_audio_projection_and_the_temperature(prepared, tmp_path, minilm_mean_pooled):
    from clapkit.api import CLAP
    from clapkit.losses import ClipLoss, clamp_logit_scale
    from clapkit.text_cache import caption_feature_cache
    from clapkit.train import build_model, resolve_freezes, set_train_mode, text_lr_scale
    from clapkit.training import Precision, make_optimizer, param_groups

    cfg = lit_config()
    tc = resolve_freezes(train_config(tmp_path, prepared, warmup_steps=0), cfg)
    assert tc.freeze_audio and tc.freeze_text  # packaged towers: frozen, as in the default
    clap, _ = build_model(tc, cfg, seed=0)
    model = clap.model
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["audio.projection.layer_norm.bias", "audio.projection.layer_norm.weight",
                         "audio.projection.linear1.weight", "audio.projection.linear2.weight", "logit_scale"]
    torch.testing.assert_close(model.eval().encode_text(**clap.tokenizer(TEXTS)),
                               minilm_mean_pooled(TEXTS, clap.tokenizer), atol=1e-5, rtol=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    set_train_mode(model, tc)
    cache, _ = caption_feature_cache(model.text.encoder, clap.tokenizer, TEXTS, tmp_path / "text", torch.device("cpu"))
    model.text.encoder.attach_cache(cache)
    transformer_calls = []
    hook = model.text.encoder.transformer.register_forward_hook(lambda *a: transformer_calls.append(1))
    optimizer = make_optimizer(param_groups(model, tc.weight_decay, text_lr_scale(tc)), "adamw", 1e-2, tc.betas,
                               tc.eps, torch.device("cpu"))
    waves = 0.2 * torch.randn(4, clap.clip_samples, generator=torch.Generator().manual_seed(0))
    fp32 = Precision("fp32", torch.device("cpu"))
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        out = model(waves, **clap.tokenizer(TEXTS))
        loss = ClipLoss()(out["audio_embeds"], out["text_embeds"], out["logit_scale"])
        fp32.backward(loss)
        optimizer.step()
        clamp_logit_scale(model.logit_scale)
    hook.remove()
    model.text.encoder.attach_cache(None)
    assert transformer_calls == [] and cache.hits == 3 * len(TEXTS)  # the cached features, no text transformer

    after = model.state_dict()
    moved = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert moved == ["audio.projection.layer_norm.bias", "audio.projection.layer_norm.weight",
                     "audio.projection.linear1.weight", "audio.projection.linear2.weight", "logit_scale"]

    model.eval()
    tokens = clap.tokenizer(TEXTS)
    with torch.no_grad():
        text, audio = model.encode_text(**tokens), model.encode_audio(waves)
    torch.testing.assert_close(text, minilm_mean_pooled(TEXTS, clap.tokenizer), atol=1e-5, rtol=0)
    clap.save_pretrained(tmp_path / "saved")
    loaded = CLAP.from_pretrained(tmp_path / "saved")
    assert loaded.model.config["text_projection"] == "none" and loaded.model.embed_dim == 384
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encode_text(**loaded.tokenizer(TEXTS)), text, atol=0, rtol=0)
        torch.testing.assert_close(loaded.model.encode_audio(waves), audio, atol=1e-6, rtol=0)
    assert torch.equal(loaded.model.logit_scale, model.logit_scale)


def test_the_train_stage_keeps_minilm_s_space_and_its_saved_model_reloads(prepared, tmp_path, minilm_mean_pooled):
    from clapkit.api import CLAP
    from clapkit.train import train

    tc = train_config(tmp_path, prepared, max_steps=4, batch_size=8, text_cache_dir=str(tmp_path / "text-cache"),
                      audio_cache_dir=str(tmp_path / "audio-cache"), timings=str(tmp_path / "timings.json"))
    metrics = train(tc, lit_config(), seed=0, progress=False)
    assert metrics["step"] == 4 and metrics["temperature"] != pytest.approx(0.07, abs=1e-6)  # the temperature learnt
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert timings["text_cache"]["hits"] >= 4 * 8  # every training caption answered from the cached features
    clap = CLAP.from_pretrained(tmp_path / "clap")
    torch.testing.assert_close(clap.get_text_embeddings(TEXTS),
                               torch.nn.functional.normalize(minilm_mean_pooled(TEXTS, clap.tokenizer), dim=-1),
                               atol=1e-5, rtol=0)
    initial = CLAPModel.from_config(lit_config(), seed=0)  # the run's initial draw (train's seed 0)
    assert not torch.equal(clap.model.audio.projection.linear1.weight, initial.audio.projection.linear1.weight)
