"""The pretrain stage's opt-in distillation of the aisfx teacher (``pretrain.distill_weight``): the teacher's whole-clip
embeddings cached once, a linear head trained towards them by cosine distance next to the prefix-LM tasks, nothing
of it in the stage's outputs, and the default (weight 0) unchanged.  Uses test_pretrain's tiny corpus."""

from __future__ import annotations

import json

import pytest
import torch

from clapkit.pretrain import PretrainConfig, PretrainModel, distill_loss, load_pretrained_audio_encoder, pretrain
from clapkit.models import build_audio_encoder

from tests.test_pretrain import ENCODER, FRONTEND, MODEL_CONFIG, config, prepared  # noqa: F401 (fixture)

torch.set_num_threads(1)


def test_distill_loss_is_the_cosine_distance():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    assert torch.allclose(distill_loss(a, b), torch.tensor([0.0, 2.0, 1 - 2 ** -0.5]), atol=1e-6)


def test_weight_zero_is_the_plain_stage():
    cfg = PretrainConfig()
    assert cfg.distill_weight == 0.0
    assert not {"distill_weight", "distill_cache_dir"} & set(cfg.training_config())  # the run identity as before
    assert PretrainModel(FRONTEND, ENCODER, cfg, None).distill_head is None
    assert "distill_weight" in PretrainConfig(distill_weight=0.5).training_config()
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        PretrainConfig(distill_weight=-1.0)


def test_distillation_trains_a_head_towards_the_teacher(prepared, tmp_path):  # noqa: F811
    cache = tmp_path / "aisfx-cache"
    cfg = config(tmp_path, prepared, steps=30, distill_weight=1.0, distill_cache_dir=str(cache))
    metrics = pretrain(cfg, FRONTEND, "test-htsat", MODEL_CONFIG, seed=0, progress=False)
    assert len(list(cache.glob("aisfx-*.safetensors"))) == 1  # the train split's teacher embeddings, once
    rows = [line.split(",") for line in (tmp_path / "loss.csv").read_text().splitlines()]
    header, values = rows[0], rows[1:]
    distill = [float(r[header.index("distill")]) for r in values]
    assert distill[-1] < 0.5 * distill[0], distill
    assert metrics["final_distill_loss"] == pytest.approx(distill[-1], abs=1e-4)
    assert metrics["tasks"]["tone"]["accuracy"] >= 0  # the prefix-LM tasks are still trained and scored
    info = json.loads((tmp_path / "out" / "config.json").read_text())
    assert info["pretrain"]["distill_weight"] == 1.0 and "distill" not in info["tasks"]
    encoder = build_audio_encoder(ENCODER)
    report = load_pretrained_audio_encoder(tmp_path / "out", encoder)  # the head is not in the encoder's file
    assert report["missing"] == [] and report["unexpected"] == []
