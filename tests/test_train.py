"""clapkit.train, clapkit.losses, clapkit.training_state, clapkit.data.loader / shards: tiny CPU runs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clapkit.errors import TrainingStateError
from clapkit.training_state import (find_resumable, list_checkpoints, load_checkpoint,
                                   run_directory, save_checkpoint)
from clapkit.training import Precision

CPU_FP32 = Precision("fp32", torch.device("cpu"))


# --- training state ---------------------------------------------------------------------------------------------------

TOY = {"toy": 1}


def _toy_run(steps, ckpt_dir=None, resume=False, stop_after=None):
    """A small noisy optimisation with Adam + a scheduler + dropout: every RNG and state matters for the result."""
    torch.manual_seed(0); np.random.seed(0); random.seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    start = 0
    if resume:
        info = load_checkpoint(find_resumable(ckpt_dir, TOY), model, opt, sched, identity=TOY)
        start = info["step"]
    for step in range(start, steps):
        x = torch.randn(16, 4) + float(np.random.rand()) + random.random()
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if ckpt_dir is not None:
            save_checkpoint(run_directory(ckpt_dir, TOY), step + 1, model, TOY, opt, sched, extra={"epoch": 0},
                            finished=step + 1 == steps)
        if stop_after is not None and step + 1 == stop_after:
            return None
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_checkpoint_resume_is_exact(tmp_path):
    straight = _toy_run(6)
    assert _toy_run(6, tmp_path / "a", stop_after=3) is None
    resumed = _toy_run(6, tmp_path / "a", resume=True)
    assert torch.equal(straight, resumed)
    # keep=2: only the two newest survive, each with its sidecar
    run = run_directory(tmp_path / "a", TOY)
    assert [s for s, _ in list_checkpoints(run)] == [5, 6]
    assert sorted(p.name for p in run.iterdir()) == ["step_00000005.json", "step_00000005.pt",
                                                     "step_00000006.json", "step_00000006.pt"]
    # the run is finished: rerunning it trains afresh (and clears the finished run's folder)
    assert find_resumable(tmp_path / "a", TOY) is None and not run.exists()


def test_find_resumable_reads_sidecars_per_identity_and_skips_incomplete_files(tmp_path):
    model = torch.nn.Linear(2, 2)
    for lr in (1, 2):
        save_checkpoint(run_directory(tmp_path, {"lr": lr}), lr, model, {"lr": lr}, keep=None)
    assert find_resumable(tmp_path, {"lr": 1}).name == "step_00000001.pt"
    assert find_resumable(tmp_path, {"lr": 2}).name == "step_00000002.pt"
    said = []
    assert find_resumable(tmp_path, {"lr": 3}, log=said.append) is None
    assert any("differs in lr" in line for line in said)  # the other runs are listed with what differs
    run = run_directory(tmp_path, {"lr": 1})
    # a .pt without its sidecar (killed between the two renames) and a temp file are not checkpoints
    (run / "step_00000003.pt").write_bytes(b"PK\x03\x04 truncated")
    (run / ".step_00000004.pt.tmp123").write_bytes(b"half written")
    assert find_resumable(tmp_path, {"lr": 1}).name == "step_00000001.pt"
    # a damaged .pt behind a valid sidecar is refused with its name
    (run / "step_00000001.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(TrainingStateError, match="step_00000001.pt"):
        load_checkpoint(run / "step_00000001.pt", model, identity={"lr": 1})
    # the identity is checked from the sidecar alone (the weights are never read to find a run)
    good = save_checkpoint(run_directory(tmp_path, {"lr": 2}), 5, model, {"lr": 2})
    with pytest.raises(TrainingStateError, match="another run identity"):
        load_checkpoint(good, model, identity={"lr": 3})
    with pytest.warns(UserWarning, match="ANOTHER run identity"):
        assert load_checkpoint(good, model, identity={"lr": 3}, allow_other_identity=True)["step"] == 5


def test_checkpoint_restores_rng_and_refuses_missing_state(tmp_path):
    model = torch.nn.Linear(2, 2)
    torch.manual_seed(5); np.random.seed(5); random.seed(5)
    path = save_checkpoint(tmp_path, 7, model, {"x": 1}, extra={"epoch": 3, "batch": 11})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99); np.random.seed(99); random.seed(99)
    info = load_checkpoint(path, model)
    assert info["step"] == 7 and info["extra"] == {"epoch": 3, "batch": 11}
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(TrainingStateError, match="no optimizer state"):
        load_checkpoint(path, model, opt)


# --- fixtures: a tiny prepared corpus and a tiny model -------------------------------------------------------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import soundfile as sf  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from clapkit.models.clap import load_model_config  # noqa: E402

TONE_KINDS = ["sine tone", "square wave", "white noise", "chirp"]


PREPARE_FRACTIONS = {"test_fraction": 0.2, "val_fraction": 0.2}  # make_prepared's splits


def make_prepared(root: Path, n: int = 64, sample_rate: int = 16000) -> Path:
    """``n`` short clips of 4 signal kinds (task ``tone``), written at 16 kHz, prepared at ``sample_rate``, 1 s
    clips cached 1.5 s."""
    from clapkit.audio import FrontendConfig
    from clapkit.data.prepare import PrepareConfig, prepare
    from clapkit.data.records import ClipRecord, write_jsonl

    sr = 16000
    (root / "fixture").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        t = np.arange(int(sr * (0.8 + 0.1 * (i % 5)))) / sr  # 0.8-1.2 s: padded and cropped clips both occur
        f = 300 + 40 * (i % 7)
        x = [np.sin(2 * np.pi * f * t), np.sign(np.sin(2 * np.pi * f * t)), rng.standard_normal(len(t)),
             np.sin(2 * np.pi * (f + 800 * t) * t)][i % 4]
        rel = f"fixture/c{i:03d}.wav"
        sf.write(root / rel, (0.3 * x).astype(np.float32), sr)
        records.append(ClipRecord(id=f"fixture/c{i:03d}", path=rel, source="synth:fixture", licence="CC0-1.0",
                                  real=False, group=f"g{i}", labels={"tone": TONE_KINDS[i % 4]}))
    write_jsonl(root / "fixture" / "clips.jsonl", records)
    (root / "corpus.json").write_text(json.dumps({"sources": {"fixture": {"clips": n}}}))
    cfg = PrepareConfig(corpus=str(root), out=str(root / "prepared"), metrics=str(root / "data.json"),
                        cache_seconds=1.5, workers=1, **PREPARE_FRACTIONS)
    prepare(cfg, FrontendConfig(sample_rate=sample_rate, clip_seconds=1.0), progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("corpus"))


def deterministic_tiny_config() -> dict:
    """The tiny HTSAT + GPT-2 config with every dropout / SpecAugment off (for exact-equivalence tests)."""
    cfg = load_model_config("clap-tiny-htsat-gpt2")
    cfg["projection_dropout"] = 0.0
    cfg["audio_encoder"].update(drop_path_rate=0.0, time_mask_stripes=0, freq_mask_stripes=0)
    cfg["text_encoder"].update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return cfg


def train_config(tmp: Path, prepared: Path, **kw):
    from clapkit.train import TrainConfig

    base = dict(prepared=str(prepared), out=str(tmp / "clap"), checkpoint_dir=str(tmp / "ckpt"),
                metrics=str(tmp / "metrics.json"), live_dir=str(tmp / "live"), timings=None, max_steps=10, batch_size=8,
                warmup_steps=2, checkpoint_every=3, keep_checkpoints=100, audio_init="none", log_every=1, threads=1,
                precision="fp32")
    base.update(kw)
    return TrainConfig(**base)


# --- loss ----------------------------------------------------------------------------------------------------------

def test_clip_loss_equals_symmetric_cross_entropy_by_hand():
    from clapkit.losses import ClipLoss, clamp_logit_scale

    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 3, generator=g), dim=-1)
    t = F.normalize(torch.randn(5, 3, generator=g), dim=-1)
    scale = torch.tensor(7.0)
    logits = (scale * a @ t.T).double().numpy()

    def ce(m):  # mean over rows of -log softmax at the diagonal
        m = m - m.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(m).sum(1)) - np.diag(m)))

    expected = (ce(logits) + ce(logits.T)) / 2
    assert ClipLoss()(a, t, scale).item() == pytest.approx(expected, rel=1e-6)
    # single process: the local loss is the global loss
    assert ClipLoss(local_loss=True)(a, t, scale).item() == pytest.approx(expected, rel=1e-6)
    # orthogonal, perfectly aligned pairs with a large scale: loss -> 0
    eye = torch.eye(4)
    assert ClipLoss()(eye, eye, torch.tensor(100.0)).item() < 1e-6
    p = torch.nn.Parameter(torch.tensor(9.0))
    clamp_logit_scale(p)
    assert p.item() == pytest.approx(np.log(100.0))
    p.data.fill_(-1.0)
    clamp_logit_scale(p)
    assert p.item() == 0.0


# --- data ----------------------------------------------------------------------------------------------------------

def test_epoch_batches_shard_the_global_batch_and_resume_mid_epoch():
    from clapkit.data.loader import EpochBatches

    single = list(EpochBatches(50, 8, seed=3, epoch=1))
    assert len(single) == 6 and all(len(b) == 8 for b in single)  # 50 // 8 batches, tail dropped
    assert len({i for b in single for i in b}) == 48
    ranks = [list(EpochBatches(50, 8, seed=3, epoch=1, rank=r, world=2)) for r in range(2)]
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == single  # rank slices concatenate to the global batch
    assert list(EpochBatches(50, 8, seed=3, epoch=1, start=4)) == single[4:]
    assert list(EpochBatches(50, 8, seed=3, epoch=2)) != single  # a new order each epoch
    with pytest.raises(ValueError, match="divisible"):
        EpochBatches(50, 9, seed=0, world=2)


def test_dataset_crops_and_captions_are_seeded_per_epoch(prepared):
    from clapkit.audio import fit_length
    from clapkit.data.loader import ClipCaptionDataset, make_collate
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.text import TextTokenizer

    corpus = PreparedCorpus(prepared)
    idx = corpus.split("train")
    ds = ClipCaptionDataset(corpus, idx, 16000, train=True, seed=0)
    long_items = [k for k, i in enumerate(idx) if corpus.rows[i]["length"] > 16000]
    assert long_items
    k = long_items[0]
    first = ds[k]
    assert torch.equal(first["wave"], ds[k]["wave"]) and first["caption"] == ds[k]["caption"]  # same epoch: same
    draws = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[k]
        draws.add((item["caption"], float(item["wave"][0])))
        assert item["wave"].shape == (16000,) and item["caption"] in corpus.rows[idx[k]]["captions"]
    assert len(draws) > 4  # crops / captions vary across epochs
    ev = ClipCaptionDataset(corpus, idx, 16000, train=False)
    wave = torch.from_numpy(corpus.waveform(idx[k]))
    assert torch.equal(ev[k]["wave"], fit_length(wave, 16000, crop="center"))
    assert ev[k]["caption"] == corpus.rows[idx[k]]["captions"][0]
    tok = TextTokenizer.from_spec({"kind": "gpt2", "max_length": 32})
    batch = make_collate(tok)([ds[0], ds[1], ds[2]])
    lengths = batch["attention_mask"].sum(1)
    assert batch["input_ids"].shape[1] == int(lengths.max())  # padded to the longest caption only
    assert batch["wave"].shape == (3, 16000)


# --- schedule ------------------------------------------------------------------------------------------------------

def test_schedule_warmup_cosine_and_plateau():
    from clapkit.training import LRSchedule as Schedule
    from clapkit.training import ScheduleConfig

    def TrainConfig(lr, warmup_steps, schedule, max_steps=100, **kw):
        return ScheduleConfig(lr=lr, total_steps=max_steps, warmup_steps=warmup_steps, kind=schedule, **kw)

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    s = Schedule(opt, TrainConfig(lr=1.0, warmup_steps=4, max_steps=14, schedule="cosine", min_lr_ratio=0.0))
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        s.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[9] == pytest.approx(0.5)  # halfway through the cosine
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    opt = torch.optim.Adam([p], lr=1.0)
    s = Schedule(opt, TrainConfig(lr=1.0, warmup_steps=0, schedule="plateau", plateau_patience=1, plateau_factor=0.1))
    for loss in (3.0, 2.0, 2.5, 2.5):  # best at 2.0, then two bad epochs > patience 1
        s.validation(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    state = s.state_dict()
    s2 = Schedule(torch.optim.Adam([p], lr=1.0), TrainConfig(lr=1.0, warmup_steps=0, schedule="plateau"))
    s2.load_state_dict(state)
    assert s2.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


# --- the training step -----------------------------------------------------------------------------------------------

def _batch(clap, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    captions = [f"a {w} sound number {i}" for i, w in zip(range(n), ["loud", "soft", "short", "long"] * n)]
    tokens = clap.tokenizer(captions)
    return {"wave": 0.1 * torch.randn(n, clap.clip_samples, generator=g), **tokens}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(got: dict, expected: dict, what: str) -> None:
    """Equal up to float32 summation order: noise ~1e-4 of each tensor's largest gradient, elementwise (an entry
    near 0 carries the rounding of the large terms summed into it, not a rounding of its own size; an absolute
    1e-6 failed on near-zero entries of GPT-2's biases); a 1% error still fails."""
    assert got.keys() == expected.keys() and "logit_scale" in expected
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=3e-4 * float(grad.abs().max()),
                                   msg=f"{what}: {name}")


def test_gradient_accumulation_equals_one_big_batch():
    from clapkit.api import CLAP
    from clapkit.losses import ClipLoss
    from clapkit.train import train_step

    clap = CLAP.from_config(deterministic_tiny_config(), seed=0)
    model = clap.model.train()
    model.audio.encoder.bn0.eval()  # batch statistics would differ between micro-batches by construction
    batch = _batch(clap)
    loss1 = train_step(model, batch, ClipLoss(), 1, CPU_FP32)
    g1 = _grads(model)
    model.zero_grad()
    loss2 = train_step(model, batch, ClipLoss(), 2, CPU_FP32)
    g2 = _grads(model)
    assert loss1 == pytest.approx(loss2, rel=1e-5)
    assert len(g1) > 20
    assert_same_gradients(g2, g1, "2 micro-batches")


# --- whole runs ----------------------------------------------------------------------------------------------------

def _tsv_values(live: Path, name: str) -> list[tuple[str, str]]:
    rows = (live / "plots" / "metrics" / name).read_text().splitlines()
    header = rows[0].split("\t")
    keep = [header.index("step"), header.index(Path(name).stem)]
    return [tuple(r.split("\t")[c] for c in keep) for r in rows[1:]]


def test_interrupted_and_resumed_run_equals_uninterrupted(prepared, tmp_path):
    from clapkit.api import CLAP
    from clapkit.training_state import list_checkpoints
    from clapkit.train import train

    model_cfg = load_model_config("clap-tiny-htsat-gpt2")  # dropout and SpecAugment on: the RNG must be restored
    straight = train(train_config(tmp_path / "a", prepared), model_cfg, seed=1, progress=False)
    # Run B the same way, then lose everything after step 6 (mid-epoch: 39 train clips = 4 batches of 8 per
    # epoch) as a kill -9 after the step-6 checkpoint would, and rerun: it resumes at epoch 1, batch 2.
    b = tmp_path / "b"
    train(train_config(b, prepared), model_cfg, seed=1, progress=False)
    (run,) = (b / "ckpt").glob("run-*")
    for step, path in list_checkpoints(run):
        if step > 6:
            path.unlink()
            path.with_suffix(".json").unlink()
    (b / "metrics.json").unlink()
    resumed = train(train_config(b, prepared), model_cfg, seed=1, progress=False)
    assert resumed == straight  # same val metrics, same temperature, bit for bit
    wa = CLAP.from_pretrained(tmp_path / "a" / "clap").model.state_dict()
    wb = CLAP.from_pretrained(b / "clap").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _tsv_values(tmp_path / "a" / "live", "train/loss.tsv") == _tsv_values(b / "live", "train/loss.tsv")
    assert [s for s, _ in _tsv_values(b / "live", "val/loss.tsv")] == ["4", "8", "10"]
    # and it learnt something: the validation loss fell from the first epoch to the end
    vals = [float(v) for _, v in _tsv_values(b / "live", "val/loss.tsv")]
    assert vals[-1] < vals[0]
    assert straight["val_zeroshot"]["tone"]["chance"] == 0.25
    # a different config does not resume someone else's checkpoint: it starts afresh
    other = train(train_config(b, prepared, max_steps=2), model_cfg, seed=1, progress=False)
    assert other["step"] == 2


def test_validation_scores_zero_shot_with_the_evaluate_stage_function_and_tie_rule(prepared):
    """Validation's zero-shot accuracy is clapkit.zeroshot's classifier (the evaluate stage's prompt rule) scored
    by clapkit.metrics.accuracy: a model whose class prompts all embed alike scores exactly chance (ties share
    credit), not the share of the first class."""
    from clapkit.api import CLAP
    from clapkit.data.loader import ClipCaptionDataset
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.metrics import accuracy
    from clapkit.training import Runtime
    from clapkit.validation import validate
    from clapkit.zeroshot import ClapEmbedder, embedded_task_prompt, zero_shot_logits

    corpus = PreparedCorpus(prepared)
    val = corpus.split("val")
    tasks = {k: v for k, v in corpus.tasks.items() if len(v.get("classes", [])) >= 2}
    clap = CLAP.from_config(deterministic_tiny_config(), seed=0)
    runtime = Runtime(0, 1, torch.device("cpu"))
    result = validate(clap, corpus, val, tasks, 4, runtime, CPU_FP32)
    # the same clips through the evaluate stage's zero-shot function (validation permutes them: same accuracy)
    clap.model.eval()
    waves = torch.stack([ClipCaptionDataset(corpus, val, clap.clip_samples, train=False)[i]["wave"]
                         for i in range(len(val))])
    embedder = ClapEmbedder(clap, 4, "fp32")
    audio = embedder.audio(waves)
    classes = list(tasks["tone"]["classes"])
    truth = torch.tensor([classes.index(corpus.rows[i]["labels"]["tone"]) for i in val])
    expected = accuracy(zero_shot_logits(embedder, audio, classes, embedded_task_prompt("tone")), truth)
    assert result["zeroshot"]["tone"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert result["zeroshot"]["tone"]["clips"] == len(val)
    # text tower's output zeroed: every prompt embeds alike, all 4 classes tie for every clip
    with torch.no_grad():
        for p in clap.model.text.projection.parameters():
            p.zero_()
    # (on these clips only one is of the first class: the old rule, class 0 wins ties, would have scored 1/n)
    first = [i for i in val if corpus.rows[i]["labels"]["tone"] == classes[0]]
    unbalanced = [i for i in val if i not in first[1:]]
    tied = validate(clap, corpus, unbalanced, tasks, 4, runtime, CPU_FP32)
    assert tied["zeroshot"]["tone"]["accuracy"] == pytest.approx(1 / 4, abs=1e-12)
    assert 1 / len(unbalanced) < 0.2


def test_new_initial_weights_start_afresh_instead_of_resuming(prepared, tmp_path):
    """``audio_init`` names a path: when the file behind it changes (the pretrain stage reran), the finished run
    of the old weights must not be resumed (and kept as the result)."""
    import json as _json

    from safetensors.torch import save_file

    from clapkit.api import CLAP
    from clapkit.train import train

    model_cfg = load_model_config("clap-tiny-htsat-gpt2")
    init = tmp_path / "init"
    init.mkdir()
    (init / "config.json").write_text(_json.dumps({"audio_encoder": model_cfg["audio_encoder"],
                                                   "frontend": model_cfg["frontend"]}))

    def write_init(seed):
        donor = CLAP.from_config(model_cfg, seed=seed).model.audio.encoder
        save_file({f"audio.encoder.{k}": v for k, v in donor.state_dict().items()},
                  str(init / "audio_encoder.safetensors"))

    def run():
        out = train(train_config(tmp_path / "run", prepared, max_steps=3, audio_init=str(init),
                                 timings=str(tmp_path / "run" / "timings.json")), model_cfg,
                    seed=0, progress=False)
        timings = _json.loads((tmp_path / "run" / "timings.json").read_text())
        return out, timings["resumed_from_step"], CLAP.from_pretrained(tmp_path / "run" / "clap").model.state_dict()

    write_init(1)
    _, _, first = run()
    _, resumed_from, again = run()  # same identity, but a finished run is never resumed: trained afresh, same result
    assert resumed_from == 0 and all(torch.equal(first[k], again[k]) for k in first)
    write_init(2)
    _, resumed_from, fresh = run()
    assert resumed_from == 0 and not torch.equal(first["audio.encoder.patch_embed.proj.weight"],
                                                 fresh["audio.encoder.patch_embed.proj.weight"])


def test_encoder_init_from_file_and_freezing(prepared, tmp_path):
    from safetensors.torch import save_file

    from clapkit.api import CLAP
    from clapkit.train import train

    model_cfg = load_model_config("clap-tiny-htsat-gpt2")
    donor = CLAP.from_config(model_cfg, seed=123).model
    state = {f"audio.encoder.{k}": v for k, v in donor.audio.encoder.state_dict().items()}
    state["text.encoder.unrelated"] = torch.zeros(1)  # another tower's keys are ignored
    save_file(state, str(tmp_path / "audio_encoder.safetensors"))
    # the pretrain stage's config.json beside the weights must name the same encoder and frontend
    info = {"audio_encoder": model_cfg["audio_encoder"], "frontend": model_cfg["frontend"]}
    (tmp_path / "config.json").write_text(json.dumps(dict(info, audio_encoder=dict(model_cfg["audio_encoder"], embed_dim=8))))
    with pytest.raises(ValueError, match="another audio_encoder"):
        train(train_config(tmp_path / "y", prepared, audio_init=str(tmp_path)), model_cfg)
    (tmp_path / "config.json").write_text(json.dumps(info))
    metrics = train(train_config(tmp_path, prepared, max_steps=3, audio_init=str(tmp_path), freeze_audio=True),
                    model_cfg, seed=0, progress=False)
    assert metrics["init"][0]["tensors"] == len(donor.audio.encoder.state_dict())
    trained = CLAP.from_pretrained(tmp_path / "clap").model
    for k, v in donor.audio.encoder.state_dict().items():
        assert torch.equal(trained.audio.encoder.state_dict()[k], v), k  # loaded and frozen (BN stats too)
    fresh = CLAP.from_config(model_cfg, seed=0).model
    assert not torch.equal(trained.audio.projection.linear1.weight, fresh.audio.projection.linear1.weight)
    # a file for another encoder geometry is refused with the file named
    bad = {"encoder.patch_embed.proj.weight": torch.zeros(1)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="bad.safetensors"):
        train(train_config(tmp_path / "x", prepared, audio_init=str(tmp_path / "bad.safetensors")), model_cfg)


# --- WebDataset shards -----------------------------------------------------------------------------------------------

# The reader itself (exact per-rank counts, determinism, resuming, bad samples) is tested in test_shard_stream.py.

def build_corpus_shards(prepared: Path, out: Path, sample_rate: int = 16000, shard_size: int = 16) -> dict:
    """``clapkit shards build --corpus`` of the corpus ``prepared`` was made from, 1.5 s kept per clip."""
    from clapkit.data.shard_build import BuildConfig, build_shards

    return build_shards([("corpus", "corpus", None, str(prepared.parent))], out,
                        BuildConfig(sample_rate, 1.5, shard_size=shard_size), params={"prepare": PREPARE_FRACTIONS},
                        progress=False)


def test_training_streams_shards(prepared, tmp_path):
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.data.shard_build import read_samples
    from clapkit.data.shards import read_index
    from clapkit.train import train

    summary = build_corpus_shards(prepared, tmp_path / "shards")
    corpus = PreparedCorpus(prepared)
    # the corpus input splits as prepare does: the shards' train split is prepared/'s
    assert summary["clips"] == {s: len(corpus.split(s)) for s in ("train", "val", "test")} == \
        {"train": 39, "val": 12, "test": 13}
    built = {s["key"] for s in read_samples(tmp_path / "shards") if s["split"] == "train"}
    assert built == {"corpus_" + corpus.rows[i]["id"].replace("/", "_") for i in corpus.split("train")}
    assert read_index(tmp_path / "shards", "train")["sizes"] == [16, 16, 7]
    metrics = train(train_config(tmp_path, prepared, shards=str(tmp_path / "shards"), max_steps=5,
                                 checkpoint_every=2), load_model_config("clap-tiny-htsat-gpt2"), progress=False)
    assert metrics["step"] == 5 and metrics["epochs"] == 1.25  # 39 clips -> 4 steps per epoch
    assert (tmp_path / "clap" / "model.safetensors").is_file()


def write_manifest_dataset(root: Path, n: int = 6) -> Path:
    """``n`` stereo 22.05 kHz clips of 0.7-1.2 s and a JSONL manifest with two captions each."""
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        t = np.arange(int(22050 * (0.7 + 0.1 * i))) / 22050
        x = np.stack([np.sin(2 * np.pi * (500 + 50 * i) * t), 0.3 * rng.standard_normal(len(t))], axis=1)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio" / f"m{i}.wav", (0.3 * x).astype(np.float32), 22050)
        lines.append(json.dumps({"audio": f"audio/m{i}.wav", "captions": [f"a tone and noise, take {i}",
                                                                          "a tone over hiss"]}))
    (root / "extra.jsonl").write_text("\n".join(lines) + "\n")
    return root / "extra.jsonl"


@pytest.mark.parametrize("preset", ["embedded", "paper"])
def test_training_from_a_weighted_mixture_of_built_shards(preset, prepared, tmp_path):
    """Two shard folders built at the preset's rate (the corpus, weight 1, and a manifest of 6 clips, weight 2)
    train: an epoch is 39 + 2 x 6 = 51 clips, 6 steps of 8.  The tiny model reads the preset's rate; shards of
    another rate are refused."""
    from clapkit.config import load_params
    from clapkit.data.shard_build import BuildConfig, build_shards
    from clapkit.train import train

    frontend = load_params(Path(__file__).resolve().parents[1] / "params.yaml")["frontend"][preset]
    rate = int(frontend["sample_rate"])
    model_cfg = load_model_config("clap-tiny-htsat-gpt2")
    # the preset's rate and STFT; the tiny model's 16 mels, 1 s clips and 20 ms hop (its encoder takes 64 frames)
    model_cfg["frontend"].update(sample_rate=rate, n_fft=frontend["n_fft"], win_length=frontend["win_length"],
                                 f_max=frontend["f_max"], hop_length=rate // 50)
    if rate != 16000:
        prepared = make_prepared(tmp_path / "corpus", sample_rate=rate)
    build_corpus_shards(prepared, tmp_path / "corpus-shards", sample_rate=rate)
    manifest = write_manifest_dataset(tmp_path / "extra")
    summary = build_shards([("manifest", "extra", None, str(manifest))], tmp_path / "extra-shards",
                           BuildConfig(rate, 1.5, shard_size=4), progress=False)
    assert summary["clips"] == {"train": 6} and summary["quarantined"] == 0
    shards = {str(tmp_path / "corpus-shards"): 1, str(tmp_path / "extra-shards"): 2}
    metrics = train(train_config(tmp_path / "run", prepared, shards=shards, max_steps=3), model_cfg, progress=False)
    assert metrics["step"] == 3 and metrics["epochs"] == 0.5  # 3 of 6 steps
    assert (tmp_path / "run" / "clap" / "model.safetensors").is_file()
    other = 16000 if rate != 16000 else 44100
    build_shards([("manifest", "extra", None, str(manifest))], tmp_path / "other-rate",
                 BuildConfig(other, 1.5, shard_size=4), progress=False)
    with pytest.raises(ValueError, match=f"built at {other} Hz, the model reads {rate} Hz"):
        train(train_config(tmp_path / "bad", prepared, shards=[str(tmp_path / "other-rate")], max_steps=1), model_cfg,
              progress=False)


def test_shard_training_with_workers_ends_its_epochs_and_resumes_exactly(prepared, tmp_path):
    """Unequal shards (16, 16, 7 clips) read by 2 DataLoader workers: every epoch ends after its 4 whole batches
    (validation at steps 4 and 8, then the budget's end at 9), and a run cut after step 6 (mid-epoch) and resumed
    ends with the same weights."""
    from clapkit.api import CLAP
    from clapkit.training_state import list_checkpoints
    from clapkit.train import train

    build_corpus_shards(prepared, tmp_path / "shards")
    model_cfg = load_model_config("clap-tiny-htsat-gpt2")

    def run(name):
        cfg = train_config(tmp_path / name, prepared, shards=str(tmp_path / "shards"), max_steps=9, num_workers=2,
                           checkpoint_every=3)
        return train(cfg, model_cfg, seed=0, progress=False)

    straight = run("a")
    assert straight["step"] == 9 and straight["epochs"] == 2.25
    assert [s for s, _ in _tsv_values(tmp_path / "a" / "live", "val/loss.tsv")] == ["4", "8", "9"]
    run("b")
    (ckpt_run,) = (tmp_path / "b" / "ckpt").glob("run-*")
    for step, path in list_checkpoints(ckpt_run):
        if step > 6:
            path.with_suffix(".json").unlink()
            path.unlink()
    assert run("b") == straight
    wa = CLAP.from_pretrained(tmp_path / "a" / "clap").model.state_dict()
    wb = CLAP.from_pretrained(tmp_path / "b" / "clap").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bf16_autocast_step_on_cpu_is_close_to_fp32():
    from clapkit.api import CLAP
    from clapkit.losses import ClipLoss
    from clapkit.train import train_step
    from clapkit.training import resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) is torch.bfloat16 and resolve_precision("fp32", cpu) is None
    assert resolve_precision("auto", cpu) in (None, torch.bfloat16)  # bf16 only where the CPU has it natively
    clap = CLAP.from_config(deterministic_tiny_config(), seed=0)
    model = clap.model.train()
    model.audio.encoder.bn0.eval()
    batch = _batch(clap)
    loss32 = train_step(model, batch, ClipLoss(), 1, CPU_FP32)
    g32 = _grads(model)
    model.zero_grad()
    loss16 = train_step(model, batch, ClipLoss(), 1, Precision("bf16", cpu))
    g16 = _grads(model)
    assert loss16 == pytest.approx(loss32, rel=2e-2)  # the loss itself is computed in float32
    cos = F.cosine_similarity(torch.cat([g.flatten() for g in g16.values()]),
                              torch.cat([g.flatten() for g in g32.values()]), dim=0)
    assert cos > 0.98 and all(g.dtype == torch.float32 for g in g16.values())
