"""clapkit.evaluate and clapkit.tasks: metrics on hand-made cases, every paper task end to end on a fixture in its
dataset's layout, the stage on a small prepared corpus, the CLI on a real (tiny) CLAP.

End-to-end runs use an *oracle* embedder: each class word has a tone frequency; the oracle hears which tones a clip
contains and reads which class word a prompt or caption names.  A correct pipeline (adapter -> labels -> classes
-> prompts -> scores -> metric) must then score exactly 1.0, so any mix-up of labels, classes, prompts or clips
shows up as a lower number.
"""

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from clapkit.audio import fit_length, mix_down, read_audio, resample
from clapkit.data.adapters import TASK_CLASSES
from clapkit.evaluate import (
    EvaluateConfig, RetrievalMetrics, accuracy, average_precision, caption_positives, confusion_matrix,
    evaluate_dataset_task, f1_micro, mean_average_precision, positive_ranks, run_stage, top_classes, top_k_shares,
)  # fmt: skip
from clapkit.metrics import tie_groups
from clapkit.tasks import CAPTIONING, CLASSIFICATION, PAPER_TASKS, RETRIEVAL, TABLE1_MODELS, embedded_tasks
from dataset_fixtures import write_dataset

SR = 16000

# ---------------------------------------------------------------------------------------------------------------
# Metrics on hand-made cases, and the tie rule against every order of the tied candidates


def test_accuracy_perfect_reversed_and_ties_share_credit():
    targets = torch.tensor([0, 1, 2])
    assert accuracy(torch.eye(3), targets) == 1.0
    assert accuracy(torch.eye(3).flip(1), targets) == pytest.approx(1 / 3)  # only the middle one survives reversal
    # all tied: each row's truth is one of 3 tied classes, 1/3 each (not "class 0 wins")
    assert accuracy(torch.zeros(3, 3), targets) == pytest.approx(1 / 3)
    assert accuracy(torch.zeros(3, 3), torch.tensor([2, 2, 2])) == pytest.approx(1 / 3)
    # constructed ties: truth in a 2-way tie (1/2), truth below a tie (0), truth in a 2-way tie again (1/2)
    scores = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    assert accuracy(scores, torch.tensor([0, 2, 1])) == pytest.approx((1 / 2 + 0 + 1 / 2) / 3)
    # the order the classes are listed in does not matter
    perm = torch.tensor([2, 0, 1])
    assert accuracy(scores[:, perm], torch.tensor([1, 0, 0])) == accuracy(scores, torch.tensor([0, 2, 1]))
    assert top_classes(scores) == [[0, 1], [0, 1], [1, 2]]
    # the confusion matrix shares a tied clip between its classes: each row still sums to its clips
    m = confusion_matrix(top_classes(scores), [0, 2, 1], 3)
    assert m.tolist() == [[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0]]
    assert np.trace(m) / m.sum() == pytest.approx(accuracy(scores, torch.tensor([0, 2, 1])))


def _orders_of_ties(scores):
    """Every ranking of ``scores`` that breaks its ties, each a list of candidate indices, best first."""
    groups = [[i for i in range(len(scores)) if scores[i] == v] for v in sorted(set(scores), reverse=True)]
    for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield [i for part in parts for i in part]


def _ap_of_order(order, positives, cutoff=None):
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if positives[i]:
            hits += 1
            if cutoff is None or rank <= cutoff:
                total += hits / rank
    return total / sum(positives)


def test_tie_rule_is_the_average_over_every_order_of_the_tied_candidates():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(2, 8))
        scores = rng.integers(0, 3, n).astype(float).tolist()  # few distinct values: many ties
        positives = (rng.random(n) < 0.4).tolist()
        if not any(positives):
            positives[int(rng.integers(n))] = True
        orders = list(_orders_of_ties(scores))
        g = tie_groups(np.array(scores), np.array(positives))
        for k in (1, 2, 3):
            assert g.recall_at(k) == pytest.approx(np.mean([any(positives[i] for i in o[:k]) for o in orders]))
        assert g.first_positive_rank() == pytest.approx(
            np.mean([min(r for r, i in enumerate(o, 1) if positives[i]) for o in orders]))
        assert average_precision(torch.tensor(scores), torch.tensor(positives)) == pytest.approx(
            np.mean([_ap_of_order(o, positives) for o in orders]))
        assert g.precision_sum(3) / sum(positives) == pytest.approx(
            np.mean([_ap_of_order(o, positives, 3) for o in orders]))
        for k in (1, 2):
            share = np.mean([[i in o[:k] for i in range(n)] for o in orders], axis=0)
            assert top_k_shares(torch.tensor([scores]), k)[0] == pytest.approx(share)
        mean_ranks = np.mean([[o.index(i) + 1 for i in range(n)] for o in orders], axis=0)
        assert positive_ranks(torch.tensor([scores]), torch.tensor([positives]))[0].tolist() == pytest.approx(
            sorted(mean_ranks[np.array(positives)]))


def test_average_precision_known_values_and_ties():
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1])
    assert average_precision(scores, torch.tensor([1, 0, 1, 0])) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(scores, torch.tensor([1, 1, 0, 0])) == 1.0  # perfect
    assert average_precision(scores, torch.tensor([0, 0, 1, 1])) == pytest.approx((1 / 3 + 2 / 4) / 2)  # reversed
    # all tied, 2 positives of 4: the mean AP of the 6 orders (1, 5/6, 3/4, 7/12, 1/2, 5/12) = 49/72
    assert average_precision(torch.ones(4), torch.tensor([0, 1, 0, 1])) == pytest.approx(49 / 72)
    # a positive tied with a negative: AP 7/12 or 5/6 by the order, 17/24 on average
    assert average_precision(torch.tensor([0.9, 0.9, 0.1]), torch.tensor([0, 1, 1])) == pytest.approx(17 / 24)
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
    top1 = top_k_shares(scores, 1)
    assert top1.tolist() == [[1, 0, 0], [0, 0, 1]]
    assert f1_micro(top1, targets) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))  # tp 2, fp 0, fn 1
    assert f1_micro(top_k_shares(scores, 2), targets) == pytest.approx(2 * 3 / (2 * 3 + 1 + 0))
    # a tie across the cut at k = 1: half of each tied class is predicted
    tied = torch.tensor([[0.9, 0.9, 0.1]])
    assert top_k_shares(tied, 1).tolist() == [[0.5, 0.5, 0.0]]
    assert f1_micro(top_k_shares(tied, 1), torch.tensor([[1, 0, 0]], dtype=torch.bool)) == pytest.approx(
        2 * 0.5 / (2 * 0.5 + 0.5 + 0.5))
    assert confusion_matrix([[0], [2], [2], [1]], [0, 2, 1, 1], 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_retrieval_perfect_reversed_constant_and_random():
    n = 20
    eye = torch.eye(n, dtype=torch.bool)
    perfect = RetrievalMetrics.from_scores(torch.eye(n), eye)
    assert (perfect.r1, perfect.r5, perfect.r10, perfect.map10, perfect.map, perfect.mean_rank) == (1, 1, 1, 1, 1, 1)
    # reversed: every positive is ranked last
    reversed_ = RetrievalMetrics.from_scores(-torch.eye(n), eye)
    assert (reversed_.r1, reversed_.r10, reversed_.map10, reversed_.mean_rank) == (0, 0, 0, n)
    assert reversed_.map == pytest.approx(1 / n)
    # all tied: exactly what a random order scores on average: R@k = k/N, rank (N + 1) / 2
    constant = RetrievalMetrics.from_scores(torch.zeros(n, n), eye)
    assert constant.r1 == pytest.approx(1 / n) and constant.r10 == pytest.approx(10 / n)
    assert constant.mean_rank == pytest.approx((n + 1) / 2) and constant.map10 == pytest.approx(
        sum(1 / r for r in range(1, 11)) / n)
    # random scores: R@k ~ k / N
    g = torch.Generator().manual_seed(0)
    big = 400
    rnd = RetrievalMetrics.from_scores(torch.rand(big, big, generator=g), torch.eye(big, dtype=torch.bool))
    assert abs(rnd.r10 - 10 / big) < 0.02 and abs(rnd.median_rank - big / 2) < big * 0.1


def test_retrieval_map10_with_several_captions_matches_laion_definition():
    # one audio query, 5 positive captions among 20: positives at ranks 1, 3, 12, 13, 14
    scores = -torch.arange(20, dtype=torch.float32)[None]
    positives = torch.zeros(1, 20, dtype=torch.bool)
    positives[0, [0, 2, 11, 12, 13]] = True
    m = RetrievalMetrics.from_scores(scores, positives)
    assert m.map10 == pytest.approx((1 / 1 + 2 / 3) / 5) and m.r1 == 1.0
    assert m.map == pytest.approx((1 / 1 + 2 / 3 + 3 / 12 + 4 / 13 + 5 / 14) / 5)
    assert [r.tolist() for r in positive_ranks(scores, positives)] == [[1, 3, 12, 13, 14]]
    # a negative tied with the best positive: both take the tie group's mean rank, 1.5; R@1 is 1/2
    scores[0, 1] = scores[0, 0]
    assert positive_ranks(scores, positives)[0].tolist() == [1.5, 3, 12, 13, 14]
    assert RetrievalMetrics.from_scores(scores, positives).r1 == pytest.approx(0.5)


def test_repeated_captions_are_positives_of_every_clip_that_has_them():
    captions = [["a dog barks", "a dog"], ["a dog barks", "rain"], ["thunder"]]
    p = caption_positives(captions)
    # flat captions: "a dog barks"(clip 0), "a dog", "a dog barks"(clip 1), "rain", "thunder"
    assert p.tolist() == [[True, True, True, False, False],
                          [True, False, True, True, False],
                          [False, False, False, False, True]]
    # two clips that sound alike share their captions' texts; a perfect model embeds equal texts equally, so every
    # query's positives tie at the top and it scores 1.0 (with positives by owner, as before, clip 1's copy of
    # "a dog barks" was a negative of clip 0 tied with its positive: R@1 0)
    captions = [["a dog barks", "dog barks"], ["a dog barks", "dog barks"], ["thunder", "thunder rumbles"],
                ["rain", "rain falls"]]
    oracle = Oracle(["dog", "barks", "rain", "thunder"])
    audio = oracle.text([caps[0] for caps in captions])  # each clip sounds like what its captions name
    flat = [c for caps in captions for c in caps]
    p = caption_positives(captions)
    logits = oracle.logits(audio, oracle.text(flat))
    for m in (RetrievalMetrics.from_scores(logits, p), RetrievalMetrics.from_scores(logits.T, p.T)):
        assert (m.r1, m.r5, m.map10, m.mean_rank) == (1.0, 1.0, 1.0, 1.0)


def test_probe_training_clips_per_class_and_the_rule_for_unprobed_tasks():
    from clapkit.probe import hash_order, select_per_class, unprobed_reason

    ids = [f"c{i}" for i in range(12)]
    labels = ["a"] * 6 + ["b"] * 2 + ["c"] + [["a", "d"]] * 3  # three multi-label clips: a and d
    picked = select_per_class(ids, labels, 2)
    taken = [ids[i] for i in picked]
    # per class the first 2 in hash order (a multi-label clip counts for both of its classes); c has only 1
    by_hash = sorted(ids, key=hash_order)
    for cls in ("b", "c", "d"):
        have = [c for c in by_hash if cls in (labels[ids.index(c)] if isinstance(labels[ids.index(c)], list)
                                               else [labels[ids.index(c)]])]
        assert set(have[:2]) <= set(taken)
    assert sum(1 for i in picked if labels[i] == "b") == 2 and sum(1 for i in picked if labels[i] == "c") == 1
    assert select_per_class(ids, labels, 2) == picked  # no randomness
    train = [labels[i] for i in picked]
    assert unprobed_reason(train, ["a", "b"]) is None
    assert unprobed_reason(train, ["a", "c", "e"]) == ("not probed: 2 of the 3 classes of the test clips have fewer "
                                                      "than 2 training clips: c (1), e (0)")


# ---------------------------------------------------------------------------------------------------------------
# The registry


def test_registry_matches_the_paper():
    tasks = PAPER_TASKS.values()
    assert len(PAPER_TASKS) == 26  # 20 classification + 2 captioning + 4 retrieval entries
    assert sum(t.kind == CLASSIFICATION for t in tasks) == 20
    assert [t.name for t in tasks if t.kind == CAPTIONING] == ["audiocaps_captioning", "clotho_captioning"]
    assert all(t.supported for t in tasks if t.kind == CAPTIONING)  # with a captioner: tests/test_caption_tasks.py
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


SUPPORTED = [t for t in PAPER_TASKS.values() if t.supported and t.kind != CAPTIONING]  # captioning: test_caption_tasks


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
            assert zs.predictions == [[t] for t in zs.targets] and len(zs.targets) == len(clips)
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
        return EvaluateConfig(model=str(tmp_path / "no-model"),  # no models/clap of the workspace: the guard reads none
                              prepared=str(prepared), results=str(out / "results"), plots=str(out / "plots"),
                              metrics=str(out / "metrics.json"), cache_dir=str(tmp_path / "cache"), timings=None,
                              probe_train_per_class=50, retrieval_examples=2)  # fmt: skip

    metrics = run_stage(cfg(tmp_path / "a"), embedder=oracle, progress=False)
    assert metrics["zero_shot"] == {"colour": 1.0, "shape": 1.0}
    assert metrics["linear_probe"] == {"colour": 1.0, "shape": 1.0}
    assert metrics["embedded_zero_shot_score"] == 1.0 and metrics["paper_tasks_evaluated"] == 0
    # each test clip shares its colour+shape pair, and so its captions' texts, with one other test clip: those
    # captions are positives of both clips, and the oracle scores 1.0 both ways
    for direction in ("a2t", "t2a"):
        r = metrics["retrieval"]["corpus_retrieval"][direction]
        assert (r["R@1"], r["R@10"], r["mAP@10"], r["mAP"], r["mean_rank"]) == (1.0, 1.0, 1.0, 1.0, 1.0), direction
    results = json.loads((tmp_path / "a" / "results" / "results.json").read_text())
    assert {r["task"] for r in results["rows"]} == {"colour", "shape", "corpus_retrieval"}
    # every accuracy carries its Wilson interval and exact test against chance: 12 of 12 at chance 1/3 and 1/2
    colour = next(r for r in results["rows"] if r["task"] == "colour")
    assert colour["chance"] == pytest.approx(1 / 3, abs=1e-4) and colour["clips"] == 12
    assert colour["zero_shot_ci95"] == pytest.approx([12 / (12 + 1.959964 ** 2), 1.0], abs=1e-4)
    assert colour["zero_shot_p_value"] == pytest.approx((1 / 3) ** 12, rel=1e-2)  # P(12 of 12 by chance)
    assert colour["zero_shot_significant"] and colour["linear_probe_significant"]
    shape = next(r for r in results["rows"] if r["task"] == "shape")
    assert shape["zero_shot_p_value"] == pytest.approx(0.5 ** 12, rel=1e-2) and shape["zero_shot_significant"]
    assert metrics["embedded_zero_shot_tasks_above_chance"] == 2 and metrics["significance_alpha"] == 0.00135
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
    with pytest.raises(SystemExit, match="is a CLAP model .*captioning needs a captioner"):
        main(["evaluate", "--model", str(model), "--task", "clotho_captioning", "--data", str(root)])


# ---------------------------------------------------------------------------------------------------------------
# One source for every default: the stage and `clapkit evaluate --task` score a task alike


def test_evaluate_config_defaults_are_params_yaml():
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert EvaluateConfig() == EvaluateConfig.from_params(params)


def test_stage_and_one_task_cli_give_identical_numbers_and_report_unprobed_tasks(tmp_path, capsys):
    import yaml

    from clapkit import CLAP
    from clapkit.cli import main

    words = ["red", "green", "blue", "circle", "square", "yellow"]
    oracle = Oracle(words)
    clips = corpus_clips(words[:5])
    clips.append(("clip99", "test", {"colour": "yellow", "shape": "circle"}, ["a yellow circle"], ["yellow", "circle"]))
    prepared = write_prepared(tmp_path / "prepared", oracle, clips)
    model = CLAP.from_config("clap-tiny-htsat-gpt2", seed=0).save_pretrained(tmp_path / "model")
    block = {"model": str(model), "prepared": str(prepared), "results": str(tmp_path / "results"),
             "plots": str(tmp_path / "plots"), "metrics": str(tmp_path / "metrics.json"), "timings": None,
             "cache_dir": str(tmp_path / "cache"), "probe_train_per_class": 3, "retrieval_examples": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": block}))
    assert main(["evaluate", "--params", str(tmp_path / "params.yaml")]) == 0
    stage = json.loads((tmp_path / "results" / "results.json").read_text())["tasks"]
    assert set(stage) == {"colour", "shape", "corpus_retrieval"}
    # yellow has a test clip and no training clip: colour is not probed, and says why; shape is probed
    assert "probe_value" not in stage["colour"]
    assert stage["colour"]["probe_note"] == ("not probed: 1 of the 4 classes of the test clips have fewer than 2 "
                                             "training clips: yellow (0)")
    assert stage["shape"]["probe_value"] is not None and stage["shape"]["probe_train_clips"] == 6
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["linear_probe"]) == {"shape"} and metrics["embedded_linear_probe_tasks"] == 1
    for task in ("colour", "shape", "corpus_retrieval"):
        out = tmp_path / f"{task}.json"
        assert main(["evaluate", "--params", str(tmp_path / "params.yaml"), "--task", task, "--out", str(out)]) == 0
        assert json.loads(out.read_text()) == stage[task], task  # every number, interval and p-value
    printed = capsys.readouterr().out
    assert "colour: accuracy" in printed and "linear probe not probed: 1 of the 4 classes" in printed


@pytest.mark.slow  # executes a stage notebook (a Jupyter kernel, 2-15 s)
def test_evaluate_notebook_renders_intervals_tests_and_unprobed_tasks(tmp_path):
    from clapkit.notebooks import run_notebook

    words = ["red", "green", "blue", "circle", "square", "yellow"]
    oracle = Oracle(words)
    clips = corpus_clips(words[:5])
    clips.append(("clip99", "test", {"colour": "yellow", "shape": "circle"}, ["a yellow circle"], ["yellow", "circle"]))
    prepared = write_prepared(tmp_path / "prepared", oracle, clips)
    cfg = EvaluateConfig(model=str(tmp_path / "no-model"),  # no models/clap of the workspace: the guard reads none
                         prepared=str(prepared), results=str(tmp_path / "results"), plots=str(tmp_path / "plots"),
                         metrics=str(tmp_path / "metrics.json"), cache_dir=None, timings=None, probe_train_per_class=3)
    run_stage(cfg, embedder=oracle, progress=False)
    out = run_notebook("notebooks/04_evaluate.ipynb", tmp_path / "04.ipynb",
                       {"results_dir": cfg.results, "metrics_path": cfg.metrics, "plots_dir": cfg.plots,
                        "tsne_iterations": 50})
    text = out.read_text()
    assert "Traceback" not in out.with_suffix(".html").read_text()
    lo13 = 13 / (13 + 1.959964 ** 2)  # Wilson lower bound of 13 of 13
    assert f"1.000 [{lo13:.3f}, 1.000]" in text  # colour zero-shot: every test clip right, with its interval
    assert "exact one-sided binomial test" in text and "✓" in text
    assert "colour: linear probe not probed: 1 of the 4 classes" in text
    assert "corpus_retrieval a2t" in text and "(R@1 [" in text
