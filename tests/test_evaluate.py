"""clapkit.evaluate and clapkit.tasks: metrics on hand-made cases, every paper task end to end on a fixture in its
dataset's layout, the stage on a small prepared corpus, the CLI on a real (tiny) CLAP.

End-to-end runs use an *oracle* embedder: each class word has a tone frequency; the oracle hears which tones a clip
contains and reads which class word a prompt or caption names.  A correct pipeline (adapter -> labels -> classes
-> prompts -> scores -> metric) must then score exactly 1.0, so any mix-up of labels, classes, prompts or clips
shows up as a lower number.
"""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clapkit.audio import fit_length, mix_down, read_audio, resample
from clapkit.data.adapters import TASK_CLASSES
from clapkit.evaluate import (
    EvaluateConfig, RetrievalMetrics, accuracy, average_precision, confusion_matrix, evaluate_dataset_task, f1_micro,
    linear_probe, mean_average_precision, pca, positive_ranks, run_stage, top_k_multi_hot, tsne,
)  # fmt: skip
from clapkit.tasks import CAPTIONING, CLASSIFICATION, PAPER_TASKS, RETRIEVAL, TABLE1_MODELS, embedded_tasks
from dataset_fixtures import write_dataset

SR = 16000

# ---------------------------------------------------------------------------------------------------------------
# Metrics on hand-made cases


def test_accuracy_perfect_reversed_and_ties():
    targets = torch.tensor([0, 1, 2])
    assert accuracy(torch.eye(3), targets) == 1.0
    assert accuracy(torch.eye(3).flip(1), targets) == pytest.approx(1 / 3)  # only the middle one survives reversal
    assert accuracy(torch.zeros(3, 3), targets) == pytest.approx(1 / 3)  # all tied: class 0 is predicted


def test_average_precision_known_values_and_ties():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    assert average_precision(scores, torch.tensor([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, torch.tensor([1, 1, 0, 0])) == 1.0  # perfect
    assert average_precision(scores, torch.tensor([0, 0, 1, 1])) == pytest.approx((1 / 3 + 2 / 4) / 2)  # reversed
    assert average_precision(torch.ones(4), torch.tensor([0, 1, 0, 1])) == pytest.approx(0.5)  # all tied = prevalence
    # a tie between a positive and a negative counts as one threshold: precision 1/2 at recall 1/2
    assert average_precision(torch.tensor([0.9, 0.9, 0.1]), torch.tensor([0, 1, 1])) == pytest.approx(
        0.5 * 0.5 + 0.5 * (2 / 3))
    assert np.isnan(average_precision(scores, torch.zeros(4)))


def test_mean_average_precision_skips_classes_without_positives():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.7, 0.6]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # class 0: positives ranked 1st and 2nd -> 1; class 1: its positive ranked 1st -> 1; class 2: no positive
    assert mean_average_precision(scores, targets) == 1.0
    targets[2] = torch.tensor([0, 1, 0], dtype=torch.bool)  # class 1 positives at ranks 1 and 2 -> 1; class 0 -> 1
    assert mean_average_precision(scores, targets) == 1.0
    # reversed: class 0's positive ranked 3rd (AP 1/3), class 1's at 2nd and 3rd (AP (1/2 + 2/3) / 2)
    assert mean_average_precision(-scores, targets) == pytest.approx((1 / 3 + (1 / 2 + 2 / 3) / 2) / 2)


def test_f1_top_k_and_confusion():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8]])
    targets = torch.tensor([[1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    top1 = top_k_multi_hot(scores, 1)
    assert top1.tolist() == [[True, False, False], [False, False, True]]
    assert f1_micro(top1, targets) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))  # tp 2, fp 0, fn 1
    assert f1_micro(top_k_multi_hot(scores, 2), targets) == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))
    assert confusion_matrix(torch.tensor([0, 2, 2, 1]), torch.tensor([0, 2, 1, 1]), 3).tolist() == [
        [1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_retrieval_perfect_reversed_constant_and_random():
    n = 20
    eye = torch.eye(n, dtype=torch.bool)
    perfect = RetrievalMetrics.from_scores(torch.eye(n), eye)
    assert (perfect.r1, perfect.r5, perfect.r10, perfect.map10, perfect.mean_rank) == (1, 1, 1, 1, 1)
    # reversed: every positive is ranked last
    reversed_ = RetrievalMetrics.from_scores(-torch.eye(n), eye)
    assert (reversed_.r1, reversed_.r10, reversed_.map10, reversed_.mean_rank) == (0, 0, 0, n)
    # all tied: ties rank the positive last, so a constant model gets nothing
    constant = RetrievalMetrics.from_scores(torch.zeros(n, n), eye)
    assert (constant.r1, constant.r10, constant.mean_rank) == (0, 0, n)
    # random scores: R@k ~ k / N
    g = torch.Generator().manual_seed(0)
    big = 400
    rnd = RetrievalMetrics.from_scores(torch.rand(big, big, generator=g), torch.eye(big, dtype=torch.bool))
    assert abs(rnd.r10 - 10 / big) < 0.02 and abs(rnd.median_rank - big / 2) < big * 0.1


def test_retrieval_map10_with_several_captions_matches_laion_definition():
    # one audio query, 5 positive captions among 20: positives at 0-based ranks 0, 2, 11, 12, 13
    scores = -torch.arange(20, dtype=torch.float32)[None]
    positives = torch.zeros(1, 20, dtype=torch.bool)
    positives[0, [0, 2, 11, 12, 13]] = True
    m = RetrievalMetrics.from_scores(scores, positives)
    assert m.map10 == pytest.approx((1 / 1 + 2 / 3) / 5) and m.r1 == 1.0
    assert [r.tolist() for r in positive_ranks(scores, positives)] == [[0, 2, 11, 12, 13]]
    # a negative tied with the best positive goes first
    scores[0, 1] = scores[0, 0]
    assert positive_ranks(scores, positives)[0].tolist() == [1, 2, 11, 12, 13]


def test_linear_probe_separates_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 4
    y = torch.arange(60) % 3
    x = centers[y] + torch.randn(60, 8, generator=g) * 0.3
    scores = linear_probe(x[:45], y[:45], x[45:], 3, multi_label=False, steps=50)
    assert accuracy(scores, y[45:]) == 1.0
    assert torch.equal(scores, linear_probe(x[:45], y[:45], x[45:], 3, multi_label=False, steps=50))
    multi = torch.nn.functional.one_hot(y, 3).bool() | (torch.arange(60) % 2 == 0)[:, None] & (torch.arange(3) == 0)
    x_multi = x + (torch.arange(60) % 2 == 0)[:, None] * torch.full((8,), 5.0)
    s = linear_probe(x_multi[:45], multi[:45], x_multi[45:], 3, multi_label=True, steps=50)
    assert mean_average_precision(s, multi[45:]) == 1.0


def test_pca_and_tsne():
    x = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [4.0, 0.0, 0.1]])
    p = pca(x, 1)
    assert np.allclose(np.abs(p[:, 0]), [2.0, 0.0, 2.0], atol=0.01) and p[2, 0] > 0
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.1, (25, 6)), rng.normal(3, 0.1, (25, 6))
    y = tsne(np.vstack([a, b]), perplexity=8, iterations=300)
    d = np.square(y[:, None] - y[None]).sum(-1)
    np.fill_diagonal(d, np.inf)
    cluster = np.repeat([0, 1], 25)
    assert (cluster[d.argmin(1)] == cluster).mean() >= 0.9  # a point's nearest neighbour on the map is its own kind
    assert np.array_equal(y, tsne(np.vstack([a, b]), perplexity=8, iterations=300))


# ---------------------------------------------------------------------------------------------------------------
# The registry


def test_registry_matches_the_paper():
    tasks = PAPER_TASKS.values()
    assert len(PAPER_TASKS) == 26  # 20 classification + 2 captioning + 4 retrieval entries
    assert sum(t.kind == CLASSIFICATION for t in tasks) == 20
    assert [t.name for t in tasks if t.kind == CAPTIONING] == ["audiocaps_captioning", "clotho_captioning"]
    assert all(not t.supported for t in tasks if t.kind == CAPTIONING)
    assert {t.name for t in tasks if t.kind == RETRIEVAL} == {"audiocaps_a2t", "audiocaps_t2a", "clotho_a2t",
                                                               "clotho_t2a"}  # fmt: skip
    assert {t.name for t in tasks if t.metric == "mAP"} == {"fsd50k", "audioset", "esc50_actions", "nsynth_qualities"}
    assert PAPER_TASKS["dcase2017_task4"].metric == "F1"
    # Table 2 spot checks and Table 1's printed averages (recomputed over its 16 columns)
    assert PAPER_TASKS["esc50"].paper["accuracy"] == 0.939 and PAPER_TASKS["esc50"].benchmark["accuracy"] == 0.948
    assert PAPER_TASKS["clotho_t2a"].paper == {"R@1": 0.157, "mAP@10": 0.257}
    table1 = [t for t in tasks if t.table1]
    assert len(table1) == 16
    printed = {"CNN14+BERT": 0.428, "HTSAT+GPT2": 0.435, "HTSAT-22+GPT2": 0.480}
    for model, avg in printed.items():
        assert np.mean([t.table1[model] for t in table1]) == pytest.approx(avg, abs=6e-4)
    assert set(table1[0].table1) == set(TABLE1_MODELS)
    from clapkit.data.adapters import ADAPTERS

    for t in tasks:
        assert t.adapter in ADAPTERS and (t.kind != CLASSIFICATION or t.label_key in ADAPTERS[t.adapter].tasks)


# ---------------------------------------------------------------------------------------------------------------
# The oracle embedder


class Oracle:
    """Hears tones, reads class words: a perfect model of a small vocabulary."""

    sample_rate = SR

    def __init__(self, keywords):
        self.keywords = list(dict.fromkeys(keywords))
        self.freqs = 300.0 + 70.0 * np.arange(len(self.keywords))
        self.key = "oracle-" + hashlib.sha256("|".join(self.keywords).encode()).hexdigest()
        self.text_calls = 0

    def wave(self, words) -> np.ndarray:
        words = words if isinstance(words, (list, tuple)) else [words]
        t = np.arange(SR) / SR
        x = sum(np.sin(2 * np.pi * self.freqs[self.keywords.index(w)] * t) for w in words)
        return (0.5 * x / max(len(words), 1)).astype(np.float32) if words else np.full(SR, 1e-3, np.float32)

    def load(self, item, sample_rate=None):
        if isinstance(item, (str, Path)):
            x, sr = read_audio(item)
            x = torch.as_tensor(mix_down(x))
        else:
            x, sr = torch.as_tensor(item), sample_rate or SR
        return fit_length(resample(x, sr, SR), SR)

    def audio(self, waves):
        t = torch.arange(SR, dtype=torch.float64) / SR
        basis = torch.exp(-2j * np.pi * torch.as_tensor(self.freqs)[:, None] * t[None])  # (K, T)
        mags = (waves.double().to(torch.complex128) @ basis.T).abs()  # (B, K)
        on = (mags > 0.25 * mags.max(dim=1, keepdim=True).values.clamp_min(1e-9)).float()
        return torch.nn.functional.normalize(on, dim=1)

    def text(self, texts):
        self.text_calls += 1
        out = torch.zeros(len(texts), len(self.keywords))
        for i, s in enumerate(texts):
            found = [k for k in self.keywords if re.search(rf"(?<![\w]){re.escape(k)}(?![\w])", s)]
            for k in found:  # every word named, except one that is only part of a longer one ("10" in "100")
                if not any(k != other and k in other for other in found):
                    out[i, self.keywords.index(k)] = 1.0
        return torch.nn.functional.normalize(out, dim=1)

    def logits(self, a, t):
        return 10.0 * a @ t.T


# Per task: the labels of the fixture clips (classes of the task's vocabulary, multi-label lists).
MULTI = {"fsd50k": ["Dog", "Bark", "Electric guitar"], "audioset": ["Speech", "Air horn, truck horn", "Car"],
         "esc50_actions": ["calling", "singing", "pouring"],
         "nsynth_qualities": ["bright", "fast decay", "dark"]}  # fmt: skip
SINGLE_OVERRIDES = {"nsynth_pitch": ["21", "60", "100"], "dcase2017_task4": ["Train horn", "Car alarm", "Bus"]}
RETRIEVAL_WORDS = ["alpha", "bravo", "charlie", "delta"]


def task_clips(task, oracle_words):
    """(label, words heard in the audio) per fixture clip: two clips of each of three classes, or label sets."""
    if task.kind == RETRIEVAL:
        return [([f"{w} can be heard", f"a recording of {w}", f"the sound of {w} nearby", f"{w}, loud",
                  f"someone makes {w} happen"], [w]) for w in oracle_words]  # fmt: skip
    if task.name in MULTI:
        a, b, c = MULTI[task.name]
        return [([a], [a]), ([b, c], [b, c]), ([a, c], [a, c]), ([b], [b])]
    return [(c, [c]) for c in oracle_words for _ in range(2)]


def classes_for(task):
    if task.kind == RETRIEVAL:
        return RETRIEVAL_WORDS
    if task.name in MULTI:
        return MULTI[task.name]
    if task.name in SINGLE_OVERRIDES:
        return SINGLE_OVERRIDES[task.name]
    return list(TASK_CLASSES[task.name][:3])


SUPPORTED = [t for t in PAPER_TASKS.values() if t.supported]


@pytest.mark.parametrize("task", SUPPORTED, ids=[t.name for t in SUPPORTED])
def test_every_paper_task_end_to_end_on_its_format_fixture(task, tmp_path):
    words = classes_for(task)
    oracle = Oracle(words)
    clips = [(label, oracle.wave(heard)) for label, heard in task_clips(task, words)]
    extra = {}
    if task.name in ("fsd50k", "audioset"):
        extra["vocabulary"] = ["Cat"] + words  # a class no clip has: scored, never a positive
    if task.adapter == "nsynth":
        extra["task"] = task.name
    root = write_dataset(task.adapter, tmp_path / task.adapter, clips, **extra)
    cfg = EvaluateConfig(cache_dir=None, linear_probe=False, batch_size=3)
    res = evaluate_dataset_task(oracle, task, root, cfg)
    assert res["problems"] == [] and res["clips"] == len(clips)
    assert res["metric"] == task.metric
    assert res["value"] == 1.0, res
    if task.kind == RETRIEVAL:
        assert res["retrieval"]["R@1"] == 1.0 and res["retrieval"]["mAP@10"] == 1.0
    else:
        zs = res["zero_shot"]
        assert set(words) <= set(zs.classes)
        if not task.multi_label:
            assert zs.predictions == zs.targets and len(zs.targets) == len(clips)
    # a wrong model (labels shuffled) scores less: the metric is not trivially 1
    if task.kind == CLASSIFICATION and not task.multi_label:
        wrong = Oracle(words)
        wrong.freqs = np.roll(oracle.freqs, 1)  # hears each class's tone as another class
        assert evaluate_dataset_task(wrong, task, root, cfg)["value"] == 0.0


def test_dataset_task_skips_missing_audio_and_caches(tmp_path):
    task = PAPER_TASKS["esc50"]
    words = ["dog", "rooster", "pig"]
    oracle = Oracle(words)
    root = write_dataset("esc50", tmp_path / "esc", [(w, oracle.wave(w)) for w in words for _ in range(2)])
    (root / "audio" / "1-100000-A-0.wav").unlink()  # listed in esc50.csv, gone from disk
    (root / "audio" / "2-100001-A-0.wav").write_bytes(b"not audio")  # present but unreadable
    cfg = EvaluateConfig(cache_dir=str(tmp_path / "cache"), linear_probe=False)
    res = evaluate_dataset_task(oracle, task, root, cfg)
    assert res["clips"] == 4 and res["value"] == 1.0
    assert any("audio file missing" in p for p in res["problems"])
    assert any("2-100001-A-0.wav" in p for p in res["problems"])
    cached = list((tmp_path / "cache").rglob("*.npz"))
    assert len(cached) == 1

    class NoAudio(Oracle):
        def audio(self, waves):
            raise AssertionError("the cache should have answered")

    again = NoAudio(words)
    again.key = oracle.key
    res2 = evaluate_dataset_task(again, task, root, cfg)
    assert res2["value"] == 1.0 and res2["problems"] == res["problems"]  # the skipped clip is reported again


# ---------------------------------------------------------------------------------------------------------------
# The stage on a small prepared corpus


def write_prepared(root: Path, oracle: Oracle, clips):
    """A PreparedCorpus on disk: clips = (id, split, labels {task: label}, captions, words heard)."""
    from clapkit.data.prepare import summarise_tasks

    root.mkdir(parents=True)
    rows, waves, offset = [], [], 0
    for cid, split, labels, captions, heard in clips:
        x = oracle.wave(heard).astype(np.float16)
        rows.append({"id": cid, "split": split, "labels": labels, "captions": captions, "source": "fixture",
                     "group": cid, "offset": offset, "length": len(x), "texts": []})  # fmt: skip
        waves.append(x)
        offset += len(x)
    np.concatenate(waves).tofile(root / "waveforms.f16")
    (root / "arrays.json").write_text(json.dumps({"waveforms": "waveforms.f16", "dtype": "float16",
                                                  "sample_rate": SR, "samples": offset}))  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps(summarise_tasks(rows)))
    return root


def corpus_clips(oracle_words):
    colours, shapes = oracle_words[:3], oracle_words[3:]
    clips = []
    for i in range(24):
        c, s = colours[i % 3], shapes[i % 2]
        split = "test" if i % 4 == 0 or i % 4 == 1 else "train"
        clips.append((f"clip{i:02d}", split, {"colour": c, "shape": s},
                      [f"a {c} {s}", f"{c} and {s}"], [c, s]))  # fmt: skip
    return clips


def test_stage_on_a_prepared_corpus_is_perfect_with_the_oracle_and_deterministic(tmp_path):
    words = ["red", "green", "blue", "circle", "square"]
    oracle = Oracle(words)
    prepared = write_prepared(tmp_path / "prepared", oracle, corpus_clips(words))
    assert set(embedded_tasks(prepared)) == {"colour", "shape", "corpus_retrieval"}

    def cfg(out):
        return EvaluateConfig(prepared=str(prepared), results=str(out / "results"), plots=str(out / "plots"),
                              metrics=str(out / "metrics.json"), cache_dir=str(tmp_path / "cache"), timings=None,
                              probe_train_per_task=50, retrieval_examples=2)  # fmt: skip

    metrics = run_stage(cfg(tmp_path / "a"), embedder=oracle, progress=False)
    assert metrics["zero_shot"] == {"colour": 1.0, "shape": 1.0}
    assert metrics["linear_probe"] == {"colour": 1.0, "shape": 1.0}
    assert metrics["embedded_zero_shot_score"] == 1.0 and metrics["paper_tasks_evaluated"] == 0
    # each test clip shares its colour+shape pair (and so its captions' words) with one other test clip: its two
    # captions tie with the other clip's two, and ties rank the positives last
    a2t = metrics["retrieval"]["corpus_retrieval"]["a2t"]
    assert a2t["R@10"] == 1.0 and a2t["R@1"] == 0.0
    results = json.loads((tmp_path / "a" / "results" / "results.json").read_text())
    assert {r["task"] for r in results["rows"]} == {"colour", "shape", "corpus_retrieval"}
    confusion = (tmp_path / "a" / "plots" / "confusion_colour.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) == 1 + 12
    assert all(a == p for a, p in (line.split(",") for line in confusion[1:]))
    assert len(np.load(tmp_path / "a" / "results" / "map_embeddings.npy")) == 12

    run_stage(cfg(tmp_path / "b"), embedder=oracle, progress=False)  # from the cache this time
    for rel in ("metrics.json", "results/results.json", "results/confusion.json", "results/map_embeddings.npy",
                "plots/confusion_shape.csv"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_cli_one_task_on_a_users_dataset_with_a_real_tiny_clap(tmp_path, capsys):
    from clapkit import CLAP
    from clapkit.cli import main

    model = CLAP.from_config("clap-tiny-htsat-gpt2", seed=0).save_pretrained(tmp_path / "model")
    oracle = Oracle(["dog", "rooster", "pig"])
    root = write_dataset("esc50", tmp_path / "ESC-50-master", [(w, oracle.wave(w)) for w in oracle.keywords])
    out = tmp_path / "esc50.json"
    args = ["evaluate", "--model", str(model), "--task", "esc50", "--data", str(root), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(args) == 0
    line = capsys.readouterr().out
    assert line.startswith("esc50: accuracy ") and "on 3 clips (zero-shot)" in line and "paper CLAP 2023 0.939" in line
    first = json.loads(out.read_text())
    assert first["clips"] == 3 and 0.0 <= first["value"] <= 1.0 and first["metric"] == "accuracy"
    assert main(args) == 0  # again, from the embedding cache: the same result
    assert json.loads(out.read_text()) == first
    with pytest.raises(SystemExit, match="needs --data"):
        main(["evaluate", "--model", str(model), "--task", "esc50"])
    with pytest.raises(SystemExit, match="unknown task 'esc-50'"):
        main(["evaluate", "--model", str(model), "--task", "esc-50", "--data", str(root)])
    with pytest.raises(SystemExit, match="not supported"):
        main(["evaluate", "--model", str(model), "--task", "clotho_captioning", "--data", str(root)])
