"""The evaluate stage's transfer test (clapkit/transfer_eval.py) on a tiny prepared corpus with known models: an oracle
that knows the held-out wordings scores 1.0 with both wordings; one that knows only the training words scores 1.0
with those and exactly chance with the held-out ones (every prompt embeds alike, so every class ties), which is
only possible if the held-out wordings are what it was given."""

import json
import math
import re
from pathlib import Path

import pytest

from clapkit.data.prepare import summarise_tasks
from clapkit.data.holdout import TRANSFER, transfer_summary
from clapkit.evaluate import EvaluateConfig, run_stage
from clapkit.transfer_eval import evaluate_transfer, transfer_metrics
from test_evaluate import Oracle

WORDINGS = {"sound_event": {"dog bark": "a canine yelping", "rain": "a downpour", "thunder": "a storm's booming peal",
                            "owl hoot": "a nocturnal bird of prey calling"},
            "gender": {"female": "lady's", "male": "gentleman's"}}  # fmt: skip
WORDS = ["dog bark", "rain", "thunder", "owl hoot", "female", "male"]
Z = 1.959964  # the normal quantile of the Wilson 95% interval


class AliasOracle(Oracle):
    """The oracle, reading each held-out wording as the label it stands for."""

    def text(self, texts):
        alias = {w: label for table in WORDINGS.values() for label, w in table.items()}
        for wording, label in alias.items():
            wording = re.sub(r"^(a|an|the) ", "", wording)
            texts = [t.replace(wording, label) for t in texts]
        return super().text(texts)


def clips():
    """(id, split, source, labels, heard): training clips of every label but owl hoot; held-out source env (12
    covered clips, 2 outside the vocabulary), source voice (10 gender clips), source tiny (3 clips), source mono
    (10 clips of one speaker: one gender)."""
    out = []
    for i in range(12):
        label = ["dog bark", "rain", "thunder"][i % 3]
        out.append((f"seen/e{i:02d}", "train" if i < 9 else "test", "debian:seen", {"sound_event": label}, [label]))
    for i in range(4):
        g = ["female", "male"][i % 2]
        out.append((f"seen/v{i}", "train" if i < 2 else "test", "synth:seen", {"gender": g}, [g]))
    for i in range(14):
        label = ["dog bark", "rain", "thunder"][i % 3] if i < 12 else "owl hoot"
        heard = [label] if label != "owl hoot" else ["owl hoot"]
        out.append((f"env/h{i:02d}", TRANSFER, "debian:env", {"sound_event": label}, heard))
    for i in range(10):
        g = ["female", "male"][i % 2]
        out.append((f"voice/h{i}", TRANSFER, "synth:voice", {"gender": g}, [g]))
    for i in range(3):
        out.append((f"tiny/h{i}", TRANSFER, "debian:tiny", {"sound_event": "rain"}, ["rain"]))
    for i in range(10):
        out.append((f"mono/h{i}", TRANSFER, "synth:mono", {"gender": "male"}, ["male"]))
    return out


def write_prepared(root: Path, oracle: Oracle, rows_in,
                   held=("debian:env", "synth:voice", "debian:tiny", "synth:mono")) -> Path:
    import numpy as np

    root.mkdir(parents=True)
    rows, waves, offset = [], [], 0
    for cid, split, source, labels, heard in rows_in:
        x = oracle.wave(heard).astype(np.float16)
        captions = [f"the sound of {v}" for v in labels.values()]
        rows.append({"id": cid, "split": split, "source": source, "labels": labels, "captions": captions,
                     "texts": [], "group": cid, "offset": offset, "length": len(x)})  # fmt: skip
        waves.append(x)
        offset += len(x)
    np.concatenate(waves).tofile(root / "waveforms.f16")
    (root / "arrays.json").write_text(json.dumps({"waveforms": "waveforms.f16", "dtype": "float16",
                                                  "sample_rate": 16000, "samples": offset}))  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks.json").write_text(json.dumps(summarise_tasks([r for r in rows if r["split"] != TRANSFER])))
    spec = transfer_summary(rows, WORDINGS, list(held), 1, "fixture.yaml")
    (root / "transfer.json").write_text(json.dumps(spec))
    return root


def config(tmp_path: Path, prepared: Path, **kw) -> EvaluateConfig:
    return EvaluateConfig(model=str(tmp_path / "no-model"),  # no models/clap of the workspace: the guard reads none
                          prepared=str(prepared), results=str(tmp_path / "results"), plots=str(tmp_path / "plots"),
                          metrics=str(tmp_path / "metrics.json"), cache_dir=None, timings=None,
                          probe_train_per_class=2, **kw)  # fmt: skip


def exact_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_an_oracle_of_both_wordings_is_perfect_and_one_of_training_words_is_at_chance(tmp_path):
    words = AliasOracle(WORDS)
    prepared = write_prepared(tmp_path / "prepared", words, clips())
    result = evaluate_transfer(words, config(tmp_path, prepared))
    got = {(e["source"], e["task"]): e for e in result["entries"]}
    assert set(got) == {("debian:env", "sound_event"), ("synth:voice", "gender")}
    env = got["debian:env", "sound_event"]
    # owl hoot has no training clip: not in the vocabulary, its 2 clips counted, not scored
    assert (env["clips"], env["classes"], env["outside_vocabulary"]) == (12, 3, {"owl hoot": 2})
    assert env["labels"] == {"dog bark": 4, "rain": 4, "thunder": 4} and env["chance"] == pytest.approx(1 / 3)
    assert env["example"] == {"heldout_wordings": "the sound of a canine yelping",
                              "training_wordings": "the sound of dog bark"}
    for key in ("heldout_wordings", "training_wordings"):
        assert env[key]["accuracy"] == 1.0 and env[key]["significant"]
        assert env[key]["ci95"] == pytest.approx([12 / (12 + Z**2), 1.0], abs=1e-4)
        assert env[key]["p_value"] == pytest.approx((1 / 3) ** 12, rel=1e-2)
    assert got["synth:voice", "gender"]["heldout_wordings"]["accuracy"] == 1.0
    assert got["synth:voice", "gender"]["example"]["heldout_wordings"] == "a lady's voice"
    # too few clips; one label only (a constant "male" would score 1.0 there): listed, not scored
    assert [(e["source"], e["task"], e["reason"]) for e in result["skipped"]] == [
        ("debian:tiny", "sound_event", "3 covered clip(s) < transfer_min_clips 10"),
        ("synth:mono", "gender", "every clip is 'male': a constant answer would score 1")]

    # the same clips and prompts, a model that has never read the held-out wordings
    blind = Oracle(WORDS)
    entries = {(e["source"], e["task"]): e for e in evaluate_transfer(blind, config(tmp_path, prepared))["entries"]}
    env = entries["debian:env", "sound_event"]
    assert env["training_wordings"]["accuracy"] == 1.0
    assert env["heldout_wordings"]["accuracy"] == pytest.approx(1 / 3, abs=1e-12)  # 3 tied classes: 1/3 each
    assert env["heldout_wordings"]["p_value"] == pytest.approx(exact_tail(4, 12, 1 / 3), rel=1e-2)
    assert not env["heldout_wordings"]["significant"]
    voice = entries["synth:voice", "gender"]
    assert voice["heldout_wordings"]["accuracy"] == pytest.approx(0.5) and voice["training_wordings"]["accuracy"] == 1.0


def test_known_mistakes_give_the_known_accuracy_and_interval(tmp_path):
    """Two of the 12 covered env clips sound like another class: 10 of 12 right with either wording."""
    rows = clips()
    wrong = {"env/h00": ["rain"], "env/h01": ["thunder"]}  # a dog bark heard as rain, a rain heard as thunder
    rows = [(cid, s, src, lab, wrong.get(cid, heard)) for cid, s, src, lab, heard in rows]
    oracle = AliasOracle(WORDS)
    prepared = write_prepared(tmp_path / "prepared", oracle, rows)
    (env,) = [e for e in evaluate_transfer(oracle, config(tmp_path, prepared))["entries"] if e["task"] == "sound_event"]
    phat, n = 10 / 12, 12
    centre = (phat + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z * math.sqrt(phat * (1 - phat) / n + Z**2 / (4 * n * n)) / (1 + Z**2 / n)
    for key in ("heldout_wordings", "training_wordings"):
        assert env[key]["accuracy"] == pytest.approx(10 / 12)
        assert env[key]["ci95"] == pytest.approx([centre - half, centre + half], abs=1e-4)
        assert env[key]["p_value"] == pytest.approx(exact_tail(10, 12, 1 / 3), rel=1e-2)


def test_stage_metrics_lead_with_the_transfer_test(tmp_path):
    oracle = Oracle(WORDS)  # training words only: the headline is at chance, the training-wording score perfect
    prepared = write_prepared(tmp_path / "prepared", oracle, clips())
    metrics = run_stage(config(tmp_path, prepared), embedder=oracle, progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics and list(on_disk)[:6] == [
        "transfer_zero_shot_score", "transfer_zero_shot_score_training_wordings", "transfer_chance",
        "transfer_entries", "transfer_entries_above_chance", "transfer"]
    assert metrics["transfer_zero_shot_score"] == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-4)
    assert metrics["transfer_zero_shot_score_training_wordings"] == 1.0
    assert metrics["transfer_chance"] == pytest.approx((1 / 3 + 1 / 2) / 2, abs=1e-4)
    assert (metrics["transfer_entries"], metrics["transfer_entries_above_chance"]) == (2, 0)
    env = metrics["transfer"]["debian:env"]["sound_event"]
    assert (env["clips"], env["classes"], env["accuracy"], env["training_wordings_accuracy"]) == (12, 3, 0.3333, 1.0)
    assert env["training_wordings_ci95_low"] == pytest.approx(12 / (12 + Z**2), abs=1e-4)
    assert env["ci95_high"] > env["accuracy"] > env["ci95_low"] > 0 and env["training_wordings_significant"]
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["transfer"]["skipped"][0]["source"] == "debian:tiny"
    assert results["transfer"]["wordings"]["sound_event"]["rain"] == "a downpour"
    # the in-domain tasks are the non-transfer clips only
    assert set(metrics["zero_shot"]) == {"sound_event", "gender"}
    assert results["tasks"]["sound_event"]["clips"] == 3


def test_without_a_transfer_split_the_stage_says_so(tmp_path):
    oracle = Oracle(WORDS)
    rows = [r for r in clips() if r[1] != TRANSFER]
    prepared = write_prepared(tmp_path / "prepared", oracle, rows, held=())
    assert evaluate_transfer(oracle, config(tmp_path, prepared))["note"] == \
        "no transfer test: prepare.transfer_sources is empty"
    (prepared / "transfer.json").unlink()
    metrics = run_stage(config(tmp_path, prepared), embedder=oracle, progress=False)
    assert metrics["transfer_zero_shot_score"] is None and metrics["transfer_entries"] == 0
    assert transfer_metrics({"entries": []})["transfer"] == {}
    (prepared / "transfer.json").write_text("{")
    with pytest.raises(ValueError, match=r"transfer.json: not valid JSON"):
        evaluate_transfer(oracle, config(tmp_path, prepared))


def test_transfer_scores_go_through_the_one_zero_shot_function(tmp_path, monkeypatch):
    """Both wordings reach clapkit.zeroshot.zero_shot_logits, in the task's prompt."""
    import clapkit.scoring as scoring

    seen = []
    real = scoring.zero_shot_logits

    def spy(embedder, audio, classes, template):
        seen.append((template, tuple(classes)))
        return real(embedder, audio, classes, template)

    monkeypatch.setattr(scoring, "zero_shot_logits", spy)
    oracle = AliasOracle(WORDS)
    prepared = write_prepared(tmp_path / "prepared", oracle, clips())
    evaluate_transfer(oracle, config(tmp_path, prepared))
    assert ("the sound of {}", ("a canine yelping", "a downpour", "a storm's booming peal")) in seen
    assert ("the sound of {}", ("dog bark", "rain", "thunder")) in seen
    assert ("a {} voice", ("lady's", "gentleman's")) in seen and ("a {} voice", ("female", "male")) in seen
    assert len(seen) == 4


@pytest.mark.slow  # executes a stage notebook (a Jupyter kernel, 2-15 s)
def test_evaluate_notebook_shows_the_transfer_test_first(tmp_path):
    from clapkit.notebooks import run_notebook

    oracle = AliasOracle(WORDS)
    prepared = write_prepared(tmp_path / "prepared", oracle, clips())
    cfg = config(tmp_path, prepared)
    run_stage(cfg, embedder=oracle, progress=False)
    out = run_notebook("notebooks/04_evaluate.ipynb", tmp_path / "04.ipynb",
                       {"results_dir": cfg.results, "metrics_path": cfg.metrics, "plots_dir": cfg.plots,
                        "tsne_iterations": 50})
    html = out.with_suffix(".html").read_text()
    assert "Traceback" not in html
    text = out.read_text()
    lo12 = round(12 / (12 + Z**2), 4)  # Wilson lower bound of 12 of 12, as results.json rounds it
    assert "transfer zero-shot score 1.000 with the held-out wordings, 1.000 with the training wordings" in text
    assert f"1.000 [{lo12:.3f}, 1.000]" in text and "the sound of a canine yelping / the sound of dog bark" in text
    assert "not scored: debian:tiny sound_event: 3 covered clip(s) < transfer_min_clips 10" in text
    assert html.index("Transfer test (the headline)") < html.index("Results table")
