"""Stage pretrain: tasks from a corpus, prefix-LM loss and greedy generation, exact match, loss falling on a tiny
fixture, resume after an interruption ending with the same weights, the encoder weights the train stage loads."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from clapkit.audio import FrontendConfig
from clapkit.data.prepare import PrepareConfig, PreparedCorpus, prepare
from clapkit.data.records import ClipRecord, write_jsonl
from clapkit.models import build_audio_encoder
from clapkit.models.mapper import PrefixLM
from clapkit.pretrain import PretrainConfig, load_pretrained_audio_encoder, pretrain
from clapkit.pretrain_tasks import build_tasks, exact_match, normalize_answer

FRONTEND = FrontendConfig(sample_rate=16000, clip_seconds=1.0, n_fft=512, win_length=512, hop_length=320, n_mels=16)
ENCODER = {"name": "htsat", "n_mels": 16, "spec_size": 32, "patch_size": 4, "patch_stride": 4, "embed_dim": 16,
           "depths": [1, 1], "num_heads": [2, 4], "window_size": 4, "mlp_ratio": 2.0, "drop_path_rate": 0.0,
           "time_mask_width": 4, "time_mask_stripes": 1, "freq_mask_width": 2, "freq_mask_stripes": 1,
           "num_classes": 0}
MODEL_CONFIG = {"audio_encoder": ENCODER}
LM = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 48}
# One thread, as the stage runs: on a busy 2-core machine two OpenMP threads can be many times slower.
torch.set_num_threads(1)
TONES = {"sine tone": "sine", "white noise": "noise", "square wave": "square"}


def signal(kind, f, seconds=0.6, sr=16000, seed=0):
    t = np.arange(int(sr * seconds)) / sr
    if kind == "sine":
        x = np.sin(2 * np.pi * f * t)
    elif kind == "square":
        x = np.sign(np.sin(2 * np.pi * f * t))
    else:
        x = np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x).astype(np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared corpus of 36 clips: three signal types (task ``tone``), two loudness-free pitch groups
    (task ``register``), one caption text each; 6 groups per tone so that every split has every class."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "fx").mkdir()
    records = []
    for i in range(36):
        label, kind = list(TONES.items())[i % 3]
        register = "low" if (i // 3) % 2 == 0 else "high"
        f = (220.0 if register == "low" else 1760.0) * (1 + 0.05 * (i % 5))
        rel = f"fx/{i:02d}.wav"
        sf.write(root / rel, signal(kind, f, seed=i), 16000)
        records.append(ClipRecord(id=f"fx/{i:02d}", path=rel, source="synth:fx", licence="CC0-1.0", real=i % 2 == 0,
                                  group=f"g{i % 12:02d}", labels={"tone": label, "register": register}))
    write_jsonl(root / "fx" / "clips.jsonl", records)
    (root / "corpus.json").write_text(json.dumps({"sources": {"fx": {"clips": len(records)}}}))
    out = tmp_path_factory.mktemp("prepared")
    cfg = PrepareConfig(corpus=str(root), out=str(out / "prepared"), metrics=str(out / "data.json"), cache_seconds=1.0,
                        workers=1, test_fraction=0.25, val_fraction=0.0, captions_per_clip=3)
    prepare(cfg, FRONTEND, progress=False)
    return out / "prepared"


def config(tmp_path, prepared, **kw):
    base = dict(prepared=str(prepared), out=str(tmp_path / "out"), metrics=str(tmp_path / "metrics.json"),
                loss_log=str(tmp_path / "loss.csv"), checkpoint_dir=str(tmp_path / "ckpt"), timings="",
                steps=30, batch_size=8, tasks_per_clip=3, lr=3e-3, warmup_steps=3, prefix_length=2, mapper_layers=0,
                mapper_heads=2, lm=LM, max_answer_tokens=12, precision="fp32", threads=1, checkpoint_every=10,
                log_every=5, eval_clips_per_task=20, eval_batch_size=16, examples_per_task=2)
    base.update(kw)
    return PretrainConfig(**base)


# --- tasks and answers ---------------------------------------------------------------------------------------------

def test_tasks_cover_every_label_task_and_the_text_tasks(prepared):
    corpus = PreparedCorpus(prepared)
    tasks = {t.name: t for t in build_tasks(corpus.rows, corpus.tasks, "all", 12)}
    assert {"tone", "register", "caption", "recording", "yes_no"} <= set(tasks)
    assert tasks["tone"].prompt == "question: what kind of tone or noise is this? answer:"
    assert tasks["register"].prompt == "question: what is the register? answer:"  # a task without a stock question
    assert tasks["tone"].classes == 3 and tasks["recording"].classes == 2 and tasks["yes_no"].classes == 2
    row = next(i for i, r in enumerate(corpus.rows) if r["labels"]["tone"] == "white noise")
    assert tasks["tone"].answers[row] == ["white noise"]
    assert [t.name for t in build_tasks(corpus.rows, corpus.tasks, ["tone"], 12)] == ["tone"]
    assert build_tasks(corpus.rows, corpus.tasks, "none", 12) == []
    with pytest.raises(ValueError, match="sound_event"):
        build_tasks(corpus.rows, corpus.tasks, "sound_events", 12)  # this corpus has no sound events


def test_exact_match_normalises_case_space_and_final_punctuation():
    assert normalize_answer("  A   Frog. ") == "a frog"
    assert exact_match("a frog", ["A frog."]) and exact_match("Sine  tone", ["square wave", "sine tone"])
    assert not exact_match("a frog croaking", ["a frog"]) and not exact_match("", ["a frog"])


# --- the prefix LM -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("position,mapper_layers", [("start", 1), ("after_prompt", 1), ("after_prompt", 0)])
def test_prefix_lm_learns_known_answers_and_greedy_generation_returns_them(position, mapper_layers):
    """Four fixed 'clip embeddings', four answers of different lengths: after training, greedy decoding must give
    back exactly the answer of each embedding (known answers), through the KV-cached decoder."""
    from clapkit.text import GPT2_EOT_ID, gpt2_bpe

    tok = gpt2_bpe()
    answers = ["sine tone", "white noise", "a dog barking in the rain", "c4"]
    prompt = tok.encode("question: what is it? answer:").ids
    targets = [tok.encode(" " + a).ids + [GPT2_EOT_ID] for a in answers]
    vocab = sorted({i for t in targets for i in t})
    torch.manual_seed(0)
    model = PrefixLM(8, LM, prefix_length=2, mapper_layers=mapper_layers, mapper_heads=2, output_vocab=vocab,
                     prefix_position=position)
    model.lm.config.resid_pdrop = model.lm.config.embd_pdrop = model.lm.config.attn_pdrop = 0.0
    emb = torch.randn(4, 8)
    length = max(len(prompt) + len(t) for t in targets)
    ids = torch.full((4, length), GPT2_EOT_ID)
    mask = torch.zeros(4, length, dtype=torch.bool)
    for i, t in enumerate(targets):
        ids[i, : len(prompt) + len(t)] = torch.tensor(prompt + t)
        mask[i, len(prompt) : len(prompt) + len(t)] = True
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.eval()  # no dropout: the point is the arithmetic, not regularisation
    first = None
    for _ in range(150):
        loss = model.loss(emb, ids, mask).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first
    out = model.generate(emb, [prompt] * 4, max_new_tokens=12, eos_id=GPT2_EOT_ID)
    assert [tok.decode(o).strip() for o in out] == answers
    # rows with prompts of different lengths are decoded in their own groups, same answers
    out2 = model.generate(emb[[3, 0]], [prompt, tok.encode("question: what is it? answer:").ids], 12, GPT2_EOT_ID)
    assert [tok.decode(o).strip() for o in out2] == [answers[3], answers[0]]
    # constrained decoding: a trie holding only "white noise" forces that answer whatever the clip says
    from clapkit.pretrain_tasks import answer_trie
    forced = model.generate(emb, [prompt] * 4, 12, GPT2_EOT_ID, tries=[answer_trie([targets[1]])] * 4)
    assert [tok.decode(o).strip() for o in forced] == ["white noise"] * 4
    # a trie of two answers: each row picks the one it was trained on among them
    both = answer_trie([targets[0], targets[3]])
    picked = model.generate(emb[[0, 3]], [prompt] * 2, 12, GPT2_EOT_ID, tries=[both, both])
    assert [tok.decode(o).strip() for o in picked] == [answers[0], answers[3]]


def _layout(model, prefix, tokens):
    """The sequence the LM reads: [prefix] [tokens] (start) or [prompt] [prefix] [answer] (after_prompt)."""
    if model.prefix_position == "start":
        return torch.cat([prefix, tokens], dim=0)
    return torch.cat([tokens[:PROMPT_LEN], prefix, tokens[PROMPT_LEN:]], dim=0)


PROMPT_LEN = 3


@pytest.mark.parametrize("position", ["start", "after_prompt"])
def test_cached_greedy_decoding_equals_full_recomputation(position):
    """Each generated token must be the argmax of a full (uncached) forward over everything before it."""
    torch.manual_seed(1)
    model = PrefixLM(8, LM, prefix_length=3, mapper_layers=1, mapper_heads=2, output_vocab=range(0, 500),
                     prefix_position=position).eval()
    emb, prompt = torch.randn(2, 8), [11, 12, 13]
    out = model.generate(emb, [prompt, prompt], max_new_tokens=6, eos_id=499)
    for row, answer in enumerate(out):
        seq = list(prompt)
        for token in answer:
            with torch.no_grad():
                prefix = model.mapper(emb[row : row + 1])[0]
                embeds = _layout(model, prefix, model.lm.transformer.wte(torch.tensor(seq)))[None]
                hidden = model.lm.transformer(inputs_embeds=embeds).last_hidden_state[:, -1]
                assert int(model.output_vocab[model._logits(hidden).argmax()]) == token
            seq.append(token)


@pytest.mark.parametrize("position", ["start", "after_prompt"])
def test_batched_loss_equals_each_row_scored_alone(position):
    """Right-padded rows with prompts of different lengths: the batched loss (which places the prefix per row)
    equals the cross-entropy of each row's own unpadded sequence."""
    torch.manual_seed(2)
    model = PrefixLM(8, LM, prefix_length=3, mapper_layers=1, mapper_heads=2, output_vocab=range(0, 500),
                     prefix_position=position).eval()
    emb = torch.randn(2, 8)
    rows = [([5, 6, 7], [10, 11, 499]), ([8, 9], [20, 499])]  # (prompt, answer + end token)
    length = max(len(p) + len(a) for p, a in rows)
    ids = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.bool)
    for i, (p, a) in enumerate(rows):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, len(p) : len(p) + len(a)] = True
    with torch.no_grad():
        batched = model.loss(emb, ids, mask)
        prefix = model.mapper(emb)
        for i, (p, a) in enumerate(rows):
            wte = model.lm.transformer.wte
            seq = torch.cat([prefix[i], wte(torch.tensor(p)), wte(torch.tensor(a))]) if position == "start" else \
                torch.cat([wte(torch.tensor(p)), prefix[i], wte(torch.tensor(a))])
            hidden = model.lm.transformer(inputs_embeds=seq[None]).last_hidden_state[0]
            first = len(p) + 3 - 1  # the state before the first answer token, in both layouts
            expected = torch.nn.functional.cross_entropy(model._logits(hidden[first : first + len(a)]), torch.tensor(a))
            torch.testing.assert_close(batched[i], expected)


def test_linear_mapper_prefix_depends_on_the_audio():
    """mapper_layers=0 (ClipCap's linear mapping): the prefix is a function of the clip embedding, not constants."""
    torch.manual_seed(3)
    model = PrefixLM(8, LM, prefix_length=2, mapper_layers=0, output_vocab=range(0, 500)).eval()
    a, b = model.mapper(torch.randn(1, 8)), model.mapper(torch.randn(1, 8))
    assert a.shape == (1, 2, LM["n_embd"]) and not torch.allclose(a, b)


# --- the stage -----------------------------------------------------------------------------------------------------

def test_loss_falls_and_held_out_tone_is_learned(prepared, tmp_path):
    cfg = config(tmp_path, prepared, steps=60)
    metrics = pretrain(cfg, FRONTEND, "test-htsat", MODEL_CONFIG, seed=0, progress=False)
    rows = [line.split(",") for line in (tmp_path / "loss.csv").read_text().splitlines()]
    header, values = rows[0], rows[1:]
    loss = [float(r[header.index("loss")]) for r in values]
    assert loss[-1] < 0.6 * loss[0], loss
    assert metrics["num_tasks"] == 5 and set(metrics["tasks"]) >= {"tone", "caption", "yes_no"}
    assert metrics["tasks"]["tone"]["chance"] == pytest.approx(1 / 3, abs=1e-3)
    # sine / square / noise are separable from the log-mel: the held-out clips are answered from the audio
    assert metrics["tasks"]["tone"]["accuracy"] >= 0.8 > metrics["tasks"]["tone"]["audio_blind"]
    tone = metrics["tasks"]["tone"]  # exact tests: a few held-out clips carry less than 3 sigma, but clearly some
    assert tone["p_value_audio_blind"] < 0.05 and tone["ci95"][0] > tone["audio_blind"]
    assert tone["above_audio_blind"] == (tone["p_value_audio_blind"] < tone["alpha"])
    # the audio-blind baseline: always the commonest training answer, scored on the same test clips
    from collections import Counter

    from clapkit.data.prepare import PreparedCorpus
    rows = PreparedCorpus(prepared).rows
    counts = Counter(r["labels"]["tone"] for r in rows if r["split"] == "train" and "tone" in r["labels"])
    commonest = min(counts, key=lambda a: (-counts[a], a))
    test = [r["labels"]["tone"] for r in rows if r["split"] == "test" and "tone" in r["labels"]]
    assert len(test) <= 20  # eval_clips_per_task: every test clip is scored
    assert metrics["tasks"]["tone"]["audio_blind"] == pytest.approx(test.count(commonest) / len(test), abs=1e-4)
    assert metrics["tasks"]["yes_no"]["audio_blind"] >= 0.5  # the majority of the questions asked
    assert metrics["tasks_above_audio_blind"] == sum(m["above_audio_blind"] for m in metrics["tasks"].values())
    # outputs: the encoder the train stage loads, the prefix LM, config, generations
    out = tmp_path / "out"
    info = json.loads((out / "config.json").read_text())
    assert info["tasks"] == [t for t in header[3:]] and info["audio_encoder"] == ENCODER
    gens = json.loads((out / "generations.json").read_text())
    assert gens and all({"task", "prompt", "generated", "answer", "correct"} <= set(g) for g in gens)
    encoder = build_audio_encoder(ENCODER)
    report = load_pretrained_audio_encoder(out, encoder)
    assert report["missing"] == [] and report["unexpected"] == []
    from safetensors.torch import load_file
    saved = load_file(str(out / "audio_encoder.safetensors"))
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in saved.items())


def test_resume_after_interruption_ends_with_the_same_weights(prepared, tmp_path):
    from safetensors.torch import load_file

    straight = config(tmp_path / "a", prepared, steps=12, checkpoint_every=4)
    pretrain(straight, FRONTEND, "test-htsat", MODEL_CONFIG, seed=3, progress=False)
    # also without keeping log-mels: every log-mel is computed on its own, so what is kept never changes a value
    resumed = config(tmp_path / "b", prepared, steps=12, checkpoint_every=4, logmel_memory_gib=0.0)
    assert pretrain(resumed, FRONTEND, "test-htsat", MODEL_CONFIG, seed=3, progress=False, stop_after=6) == \
        {"stopped_after": 6}
    assert not (tmp_path / "b" / "out").exists()
    pretrain(resumed, FRONTEND, "test-htsat", MODEL_CONFIG, seed=3, progress=False)  # resumes from step 6
    for name in ("audio_encoder.safetensors", "prefix_lm.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "out" / name)), load_file(str(tmp_path / "b" / "out" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "a" / "loss.csv").read_text() == (tmp_path / "b" / "loss.csv").read_text()
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()


def test_clip_logmels_keep_whole_clips_within_the_budget_and_match_the_frontend(prepared):
    from clapkit.audio import LogMelFrontend, fit_length
    from clapkit.data.prepare import PreparedCorpus
    from clapkit.pretrain import ClipLogMels

    corpus = PreparedCorpus(prepared)
    frontend = LogMelFrontend(FRONTEND)
    n = FRONTEND.clip_samples
    one = frontend(fit_length(torch.from_numpy(corpus.waveform(0)), n).unsqueeze(0))[0]
    logmels = ClipLogMels(frontend, corpus, n, memory_gib=one.numel() * 4 * 1.5 / 2**30)  # room for one clip
    first = logmels(0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(first, one, rtol=0, atol=1e-4)
    assert logmels(0, torch.Generator().manual_seed(1)) is first  # kept: not computed again
    batch = torch.stack([fit_length(torch.from_numpy(corpus.waveform(r)), n) for r in (1, 2)])
    torch.testing.assert_close(logmels(1, None), frontend(batch)[0], rtol=0, atol=1e-3)
    assert list(logmels.kept) == [0]  # the budget held one clip


def test_a_task_without_training_clips_is_left_out(prepared, tmp_path):
    """A tiny slice can leave a task with clips only outside the train split: the stage goes on without it."""
    import shutil

    sliced = tmp_path / "prepared"
    shutil.copytree(prepared, sliced)
    rows = [json.loads(line) for line in (sliced / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        if r["split"] == "train":
            r["labels"].pop("register", None)
    (sliced / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = pretrain(config(tmp_path, sliced, steps=2, eval_clips_per_task=4), FRONTEND, "test-htsat", MODEL_CONFIG,
                       progress=False)
    assert "register" not in metrics["tasks"] and "tone" in metrics["tasks"]


def test_no_pretraining_writes_the_seeded_random_encoder(prepared, tmp_path):
    cfg = config(tmp_path, prepared, tasks="none")
    metrics = pretrain(cfg, FRONTEND, "test-htsat", MODEL_CONFIG, seed=5, progress=False)
    assert metrics["num_tasks"] == 0 and metrics["steps"] == 0 and metrics["tasks"] == {}
    assert (tmp_path / "ckpt").is_dir()  # the stage's declared output exists though nothing was trained
    torch.manual_seed(5)
    fresh = build_audio_encoder(ENCODER)  # what the stage builds first after seeding
    encoder = build_audio_encoder(ENCODER)
    load_pretrained_audio_encoder(tmp_path / "out", encoder)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in encoder.state_dict().items())


@pytest.mark.parametrize("scale", [0.0, 0.25])
def test_encoder_lr_scale_sizes_the_encoders_first_adam_step(prepared, tmp_path, scale):
    """AdamW's first step moves every weight by at most lr (exactly lr where the gradient is far above eps): the
    audio encoder's weights move by at most lr * encoder_lr_scale, and not at all with 0 (a frozen encoder)."""
    from safetensors.torch import load_file

    lr = 1e-3
    cfg = config(tmp_path, prepared, steps=1, lr=lr, warmup_steps=1, weight_decay=0.0, encoder_lr_scale=scale,
                 eval_clips_per_task=2)
    pretrain(cfg, FRONTEND, "test-htsat", MODEL_CONFIG, seed=5, progress=False)
    torch.manual_seed(5)
    fresh = dict(build_audio_encoder(ENCODER).named_parameters())
    trained = load_file(str(tmp_path / "out" / "audio_encoder.safetensors"))
    moved = max(float((trained[k] - p.detach()).abs().max()) for k, p in fresh.items())
    if scale == 0:
        assert moved == 0.0
    else:
        assert 0.9 * lr * scale < moved <= lr * scale * (1 + 1e-4)


def test_loading_into_another_encoder_config_names_the_mismatches(prepared, tmp_path):
    cfg = config(tmp_path, prepared, tasks="none")
    pretrain(cfg, FRONTEND, "test-htsat", MODEL_CONFIG, seed=0, progress=False)
    other = build_audio_encoder({**ENCODER, "embed_dim": 24, "depths": [1, 1, 1], "num_heads": [2, 2, 4],
                                 "spec_size": 64})
    with pytest.raises(ValueError, match="missing|unexpected|shape"):
        load_pretrained_audio_encoder(tmp_path / "out", other)
    report = load_pretrained_audio_encoder(tmp_path / "out", other, strict=False)
    assert report["unexpected"] == [] and report["missing"] and report["shape_mismatch"]
    with pytest.raises(FileNotFoundError, match="pretrain"):
        load_pretrained_audio_encoder(tmp_path / "nowhere", other)


def test_encoder_probe_compares_pretrained_initial_and_mean_logmel(prepared, tmp_path):
    from clapkit.encoder_probe import probe_encoder

    # tasks: none writes the seeded initial encoder, so "pretrained" and "initial" are the same weights
    pretrain(config(tmp_path, prepared, tasks="none"), FRONTEND, "test-htsat", MODEL_CONFIG, seed=4, progress=False)
    results = probe_encoder(prepared, FRONTEND, ENCODER, tmp_path / "out", seed=4)
    assert set(results) == {"tone", "register"}
    for task, r in results.items():
        assert r["pretrained"] == r["initial"], task
        assert r["test_clips"] > 0 and r["chance"] == pytest.approx(1 / r["classes"], abs=1e-4)
    # a sine, white noise and a square wave have unmistakable spectra: the time-averaged log-mel separates them
    assert results["tone"]["mean_logmel"] == 1.0
    # the evaluate stage's probe and its training clips per class (params.yaml evaluate.probe_train_per_class)
    from collections import Counter

    from clapkit.evaluate import EvaluateConfig

    few = probe_encoder(prepared, FRONTEND, ENCODER, tmp_path / "out", seed=4,
                        probe=EvaluateConfig(probe_train_per_class=2))
    assert few["tone"]["train_clips"] == 3 * 2 and few["register"]["train_clips"] == 2 * 2
    per_class = Counter(r["labels"]["tone"] for r in PreparedCorpus(prepared).rows if r["split"] == "train")
    assert results["tone"]["train_clips"] == sum(min(n, EvaluateConfig().probe_train_per_class)
                                                 for n in per_class.values())
    # "pretrained" is the saved file whatever the seed; "initial" follows the seed (same seed, same numbers)
    again = probe_encoder(prepared, FRONTEND, ENCODER, tmp_path / "out", seed=4, tasks=["tone"])
    assert again["tone"] == results["tone"]
    with pytest.raises(ValueError, match="no label task"):
        probe_encoder(prepared, FRONTEND, ENCODER, tmp_path / "out", tasks=["gender"])
