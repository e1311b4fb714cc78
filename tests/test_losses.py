"""clapkit.losses' caption positives (MultiPositiveClipLoss) and how often captions repeat in training batches
(clapkit.data.loader.caption_repeats); the 2-process equivalence is in tests/test_ddp.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clapkit.losses import ClipLoss, MultiPositiveClipLoss, make_loss
from clapkit.training import Precision
from tests.test_train import _batch, assert_same_gradients, deterministic_tiny_config, prepared  # noqa: F401 (prepared: a fixture)

CPU_FP32 = Precision("fp32", torch.device("cpu"))


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _reference(a: torch.Tensor, t: torch.Tensor, scale: float, groups: list[int]) -> float:
    """The definition, loop by loop in float64: per row, the mean over its positives of -log softmax, audio->text
    and text->audio averaged."""
    logits = scale * a.double().numpy() @ t.double().numpy().T

    def direction(m):
        rows = []
        for i in range(len(m)):
            log_p = m[i] - m[i].max() - np.log(np.exp(m[i] - m[i].max()).sum())
            positives = [j for j in range(len(m)) if groups[j] == groups[i]]
            rows.append(-np.mean([log_p[j] for j in positives]))
        return float(np.mean(rows))

    return (direction(logits) + direction(logits.T)) / 2


def test_without_repeated_captions_it_is_the_plain_loss():
    a, t = _unit(8, 5, 0), _unit(8, 5, 1)
    groups = torch.tensor([7, -3, 0, 11, 2**62, 5, 6, 1])  # any distinct integers
    for local in (False, True):
        scale = torch.tensor(9.0, requires_grad=True)
        a1, t1 = a.clone().requires_grad_(), t.clone().requires_grad_()
        plain = ClipLoss(local_loss=local)(a1, t1, scale)
        plain.backward()
        a2, t2 = a.clone().requires_grad_(), t.clone().requires_grad_()
        scale2 = torch.tensor(9.0, requires_grad=True)
        multi = MultiPositiveClipLoss(local_loss=local)(a2, t2, scale2, groups)
        multi.backward()
        assert abs(multi.item() - plain.item()) < 1e-6
        for g1, g2 in ((a1.grad, a2.grad), (t1.grad, t2.grad), (scale.grad, scale2.grad)):
            torch.testing.assert_close(g2, g1, rtol=0, atol=1e-6)


def test_one_repeated_caption_by_hand():
    # Three orthonormal clips, each aligned with its own caption; clips 0 and 1 share a caption.  With scale
    # s = ln 2 every row's logits are (s, 0, 0) up to order, log Z = ln(2 + 2) = 2 ln 2, and
    #   rows 0, 1: -(1/2)(s - log Z) - (1/2)(0 - log Z) = log Z - s/2 = (3/2) ln 2
    #   row 2:      log Z - s                             = ln 2
    # mean (4/3) ln 2 per direction, the same both ways.  The plain loss on the same batch: log Z - s = ln 2.
    eye = torch.eye(3)
    s = torch.tensor(math.log(2.0))
    groups = torch.tensor([4, 4, 9])
    assert MultiPositiveClipLoss()(eye, eye, s, groups).item() == pytest.approx(4 / 3 * math.log(2.0), abs=1e-6)
    assert MultiPositiveClipLoss(local_loss=True)(eye, eye, s, groups).item() == pytest.approx(
        4 / 3 * math.log(2.0), abs=1e-6)
    assert ClipLoss()(eye, eye, s).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_one_repeat_in_four_against_the_definition():
    # audio and text differ, so the two directions differ and a transposed target would show
    a, t = _unit(4, 3, 2), _unit(4, 3, 3)
    groups = [1, 0, 1, 2]
    got = MultiPositiveClipLoss()(a, t, torch.tensor(5.0), torch.tensor(groups)).item()
    assert got == pytest.approx(_reference(a, t, 5.0, groups), abs=1e-6)
    assert got != pytest.approx(ClipLoss()(a, t, torch.tensor(5.0)).item(), abs=1e-3)
    # the floor: perfect, sharp embeddings of 2 + 1 + 1 clips leave (ln 2 + ln 2 + 0 + 0) / 4 per direction
    e = torch.eye(4)[[0, 0, 1, 2]]
    floor = MultiPositiveClipLoss()(e, e, torch.tensor(100.0), torch.tensor([3, 3, 5, 6])).item()
    assert floor == pytest.approx(math.log(2.0) / 2, abs=1e-6)


def test_identical_caption_embeddings_make_it_the_plain_loss():
    """Repeated captions that embed identically (a deterministic text tower): the multi-positive loss equals plain
    InfoNCE in value and in every gradient; copies that embed differently (dropout) make them differ."""
    a0 = _unit(6, 4, 4)
    captions = torch.tensor([0, 1, 0, 2, 1, 0])  # caption texts 0 and 1 repeat
    t0 = _unit(3, 4, 5)  # one embedding per caption text, shared by its copies
    results = []
    for loss_fn, extra in ((ClipLoss(), ()), (MultiPositiveClipLoss(), (captions,))):
        a, t, scale = a0.clone().requires_grad_(), t0.clone().requires_grad_(), torch.tensor(6.0, requires_grad=True)
        loss = loss_fn(a, t[captions], scale, *extra)
        loss.backward()
        results.append((loss.item(), a.grad, t.grad, scale.grad))
    (plain, *plain_grads), (multi, *multi_grads) = results
    assert multi == pytest.approx(plain, abs=1e-6)
    for g_plain, g_multi in zip(plain_grads, multi_grads):
        torch.testing.assert_close(g_multi, g_plain, rtol=0, atol=1e-6)
    noisy = t0[captions] + 0.3 * _unit(6, 4, 6)  # each copy with its own noise, as dropout gives it
    assert abs(MultiPositiveClipLoss()(a0, noisy, torch.tensor(6.0), captions).item()
               - ClipLoss()(a0, noisy, torch.tensor(6.0)).item()) > 1e-3


def test_bad_groups_and_knob_values_are_refused():
    a = _unit(3, 2, 0)
    with pytest.raises(ValueError, match="integer ids"):
        MultiPositiveClipLoss()(a, a, torch.tensor(1.0), torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="integer ids"):
        MultiPositiveClipLoss()(a, a, torch.tensor(1.0), torch.tensor([0, 1]))
    assert type(make_loss("pair")) is ClipLoss and type(make_loss("caption", local_loss=True)) is MultiPositiveClipLoss
    assert make_loss("caption", local_loss=True).local_loss
    with pytest.raises(ValueError, match="positives"):
        make_loss("clip")


def test_caption_group_ids_are_equal_exactly_for_equal_texts():
    from clapkit.data.loader import caption_group_ids

    ids = caption_group_ids(["a dog barking", "a dog barking", "a dog barking ", "A dog barking", "rain"])
    assert ids.dtype == torch.long and ids.tolist()[0] == ids.tolist()[1]
    assert len(set(ids.tolist()[1:])) == 4 and bool((ids >= 0).all())
    # a fixed hash of the text, not Python's salted hash(): every rank and every run gives the same id
    assert ids.tolist()[4] == caption_group_ids(["rain"]).item() == 3636860104744008105


def test_accumulation_keeps_positives_across_micro_batches():
    """Repeats that straddle the two micro-batches are positives in both passes: accumulated == one big batch."""
    from clapkit.api import CLAP
    from clapkit.train import train_step

    clap = CLAP.from_config(deterministic_tiny_config(), seed=0)
    model = clap.model.train()
    model.audio.encoder.bn0.eval()  # batch statistics would differ between micro-batches by construction
    # 0 and 1 cross the cut at 4; the ids are assigned to 8 distinct texts, so the copies embed differently (as
    # under dropout) and the targets matter
    batch = {**_batch(clap), "caption_ids": torch.tensor([0, 1, 2, 0, 3, 1, 4, 0])}
    losses, grads = [], []
    for accum in (1, 2):
        model.zero_grad()
        losses.append(train_step(model, batch, MultiPositiveClipLoss(), accum, CPU_FP32))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert_same_gradients(grads[1], grads[0], "2 micro-batches")
    # the ids were used: the step's loss is the definition's on the same features (no dropout here)
    with torch.no_grad():
        out = model(batch["wave"], batch["input_ids"], batch["attention_mask"])
    reference = _reference(out["audio_embeds"], out["text_embeds"], float(out["logit_scale"]),
                           batch["caption_ids"].tolist())
    assert losses[0] == pytest.approx(reference, abs=1e-5)
    assert abs(ClipLoss()(out["audio_embeds"], out["text_embeds"], out["logit_scale"]).item() - reference) > 1e-4


# --- how often captions repeat -----------------------------------------------------------------------------------------

class _Rows:
    """A corpus stand-in: rows with one caption each, so the captions of a batch are known."""

    def __init__(self, captions):
        self.rows = [{"id": f"c{i}", "length": 100, "captions": [c]} for i, c in enumerate(captions)]


def test_caption_repeats_counts_by_hand():
    from clapkit.data.loader import caption_repeats

    corpus = _Rows(["a", "a", "b", "c", "d", "d", "d", "e"])
    got = caption_repeats(corpus, list(range(8)), batch_size=8, seed=0, clip_samples=100, steps=3)
    # every batch holds all 8 clips: a x2, d x3 -> 2 + 6 ordered identical pairs of 8 x 7; 5 clips have a twin
    assert got == {"batches": 3, "batch_size": 8, "batches_with_repeat": 3, "batches_with_repeat_fraction": 1.0,
                   "false_negative_fraction": 8 / 56, "false_negatives_per_clip": 1.0,
                   "clips_with_twin_fraction": 5 / 8, "max_same_caption": 3}
    none = caption_repeats(_Rows(list("abcdefgh")), list(range(8)), batch_size=4, seed=0, clip_samples=100, steps=5)
    assert none["batches"] == 5 and none["batches_with_repeat"] == 0 and none["false_negative_fraction"] == 0.0
    with pytest.raises(ValueError, match="at least one batch"):
        caption_repeats(corpus, list(range(8)), batch_size=16, seed=0, clip_samples=100, steps=1)


def test_caption_repeats_replays_the_training_loader(prepared):  # noqa: F811
    """The replay from the rows equals counting the captions of the batches the training loader yields, over an
    epoch boundary (crops drawn before captions on the long clips, none on the short ones)."""
    from clapkit.data.loader import ClipCaptionDataset, EpochBatches, caption_repeats, make_loader
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.text import TextTokenizer

    corpus = PreparedCorpus(prepared)
    idx = corpus.split("train")
    dataset = ClipCaptionDataset(corpus, idx, 16000, train=True, seed=3)
    tok = TextTokenizer.from_spec({"kind": "gpt2", "max_length": 32})
    per_epoch, steps = len(idx) // 8, len(idx) // 8 + 2
    pairs = fn = clips = twins = repeated = 0
    for step in range(steps):
        epoch, b = divmod(step, per_epoch)
        dataset.set_epoch(epoch)
        batch = next(iter(make_loader(dataset, EpochBatches(len(idx), 8, 3, epoch, start=b), tok)))
        same = batch["caption_ids"][:, None] == batch["caption_ids"][None, :]
        fn += int(same.sum()) - 8
        pairs += 8 * 7
        clips += 8
        twins += int((same.sum(1) > 1).sum())
        repeated += bool(same.sum() > 8)
    got = caption_repeats(corpus, idx, 8, 3, 16000, steps)
    assert got["batches"] == steps and got["batches_with_repeat"] == repeated > 0
    assert got["false_negative_fraction"] == fn / pairs and got["clips_with_twin_fraction"] == twins / clips
    assert got["false_negatives_per_clip"] == fn / clips


# --- the train stage's knob ------------------------------------------------------------------------------------------

def test_positives_knob_is_checked_and_part_of_the_run_identity(tmp_path):
    from clapkit.config import load_params
    from clapkit.train import TrainConfig

    assert TrainConfig().positives == "pair"
    assert TrainConfig.from_params(load_params("params.yaml")).positives == "pair"  # decided by the transfer test
    with pytest.raises(ValueError, match="positives must be one of"):
        TrainConfig(positives="clip")
    pair, caption = TrainConfig().identity_params(), TrainConfig(positives="caption").identity_params()
    assert {k for k in pair if pair[k] != caption[k]} == {"positives"}


def test_training_with_caption_positives(prepared, tmp_path, monkeypatch):  # noqa: F811
    """``positives: caption`` trains on the multi-positive loss with the batch's caption ids (the first step's
    logged loss is that loss of the first batch, recomputed here) and metrics/train.json reports how often the run's
    batches repeated a caption."""
    import clapkit.train
    from clapkit.data.loader import ClipCaptionDataset, EpochBatches, caption_repeats, make_loader
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.train import build_model, train
    from tests.test_train import _tsv_values, train_config

    made = []
    monkeypatch.setattr(clapkit.train, "make_loss", lambda *a, **k: made.append(make_loss(*a, **k)) or made[-1])
    cfg = train_config(tmp_path, prepared, max_steps=5, positives="caption")
    model_cfg = deterministic_tiny_config()
    metrics = train(cfg, model_cfg, seed=3, progress=False)
    assert [type(m) for m in made] == [MultiPositiveClipLoss]
    corpus = PreparedCorpus(prepared)
    idx = corpus.split("train")
    assert metrics["caption_repeats"] == caption_repeats(corpus, idx, 8, 3, 16000, 5)
    assert metrics["caption_repeats"]["batches"] == 5 and metrics["caption_repeats"]["batches_with_repeat"] > 0

    clap, _ = build_model(cfg, model_cfg, seed=3)  # the run's initial weights
    dataset = ClipCaptionDataset(corpus, idx, clap.clip_samples, train=True, seed=3)
    batch = next(iter(make_loader(dataset, EpochBatches(len(idx), 8, 3, 0), clap.tokenizer)))
    assert len(set(batch["captions"])) < 8  # the first batch repeats a caption: the two losses differ on it
    with torch.no_grad():
        out = clap.model.train()(batch["wave"], batch["input_ids"], batch["attention_mask"])
    features = out["audio_embeds"], out["text_embeds"], out["logit_scale"]
    multi = MultiPositiveClipLoss()(*features, batch["caption_ids"]).item()
    (step, logged), *_ = _tsv_values(tmp_path / "live", "train/loss.tsv")
    assert step == "1" and float(logged) == pytest.approx(multi, abs=1e-5)
    # without dropout, identical captions embed identically: the plain loss is the same (module docstring)
    assert ClipLoss()(*features).item() == pytest.approx(multi, abs=1e-6)


def test_caption_repeats_command_reads_params(prepared, tmp_path, capsys):  # noqa: F811
    """``clapkit caption-repeats`` replays the batches params.yaml's train block would train on."""
    import json

    import yaml

    from clapkit.cli import main
    from clapkit.data.loader import caption_repeats
    from clapkit.data.prepare import PreparedCorpus

    params = {"preset": "embedded", "seed": 3, "frontend": {"embedded": {"sample_rate": 16000, "clip_seconds": 1.0}},
              "train": {"prepared": str(prepared), "batch_size": 8, "max_steps": 6}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["caption-repeats", "--params", str(tmp_path / "params.yaml")]) == 0
    corpus = PreparedCorpus(prepared)
    assert json.loads(capsys.readouterr().out) == caption_repeats(corpus, corpus.split("train"), 8, 3, 16000, 6)
