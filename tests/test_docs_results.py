"""The result tables and figures of README.md and docs/ are generated from the committed metrics
(scripts/docs_results.py): they match them, every block has one home, and the generator computes what it says
(intervals, tests, figure digests) on known inputs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("docs_results", REPO / "scripts" / "docs_results.py")
docs_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_results)


def test_documents_match_the_committed_metrics():
    assert docs_results.main(["--check"]) == 0, "run: make docs (python scripts/docs_results.py) after dvc repro"


def test_every_block_lives_in_exactly_one_document():
    homes: dict[str, list[str]] = {}
    for document in docs_results.documents(REPO):
        for m in docs_results.BLOCK.finditer((REPO / document).read_text()):
            homes.setdefault(m["name"], []).append(str(document))
    assert set(homes) == set(docs_results.GENERATORS) | set(docs_results.FIGURES)
    assert {name: where for name, where in homes.items() if len(where) != 1} == {}
    assert homes["headline"] == ["README.md"] and homes["figure_grid"] == ["README.md"]


def _write(root: Path, rel: str, data: dict) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(data))


def test_train_block_computes_wilson_intervals_and_exact_tests(tmp_path):
    # 30 of 100 against chance 0.1: Wilson 95% [0.219, 0.396]; P(X >= 30 | 100, 0.1) = 2.4e-08 (above 3 sigma).
    # 12 of 100 against 0.1: p ~ 0.30 (not above).
    _write(tmp_path, "metrics/train.json", {
        "step": 5, "clips_seen": 320, "epochs": 0.5, "val_loss": 3.5, "temperature": 0.07, "val_mean_accuracy": 0.21,
        "val_zeroshot": {"a": {"accuracy": 0.30, "chance": 0.1, "classes": 10, "clips": 100},
                         "b": {"accuracy": 0.12, "chance": 0.1, "classes": 10, "clips": 100}}})
    readme = "x\n<!-- results:train -->\nold\n<!-- /results:train -->\ny\n"
    out = docs_results.render(readme, tmp_path)
    assert out.startswith("x\n<!-- results:train -->\n| task |") and out.endswith("<!-- /results:train -->\ny\n")
    assert "| a | 10 | 100 | 0.300 [0.22, 0.40] | 0.100 | 2.4e-08 |" in out
    assert "| b | 10 | 100 | 0.120 [0.07, 0.20] | 0.100 | 0.3 |" in out
    assert "above chance (exact one-sided binomial, p < 0.00135): a (" in out
    assert docs_results.render(out, tmp_path) == out  # idempotent


def _evaluate_metrics(zero_shot_a: float) -> dict:
    return {"zero_shot": {"a": zero_shot_a, "b": 0.5}, "linear_probe": {"a": 0.6},
            "tasks": {"a": {"chance": 0.1}, "b": {"chance": 0.5}}}


def test_a_figure_is_drawn_linked_from_its_document_and_its_digest_follows_the_numbers(tmp_path):
    _write(tmp_path, "metrics/evaluate.json", _evaluate_metrics(0.3))
    doc = "<!-- results:figure_evaluate -->\n<!-- /results:figure_evaluate -->\n"
    with pytest.raises(FileNotFoundError, match="evaluate-tasks.png: missing"):
        docs_results.render(doc, tmp_path, Path("docs/evaluation.md"), draw=False)  # --check never draws
    drawn = docs_results.render(doc, tmp_path, Path("docs/evaluation.md"), draw=True)
    png = tmp_path / "docs" / "figures" / "evaluate-tasks.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](figures/evaluate-tasks.png)" in drawn  # relative to docs/
    assert "](docs/figures/evaluate-tasks.png)" in docs_results.render(doc, tmp_path, Path("README.md"))
    assert docs_results.render(drawn, tmp_path, Path("docs/evaluation.md")) == drawn  # same numbers: same block
    _write(tmp_path, "metrics/evaluate.json", _evaluate_metrics(0.31))  # one number moves: the block changes
    assert docs_results.render(drawn, tmp_path, Path("docs/evaluation.md")) != drawn


def test_check_fails_on_a_stale_document_and_names_it(tmp_path, capsys):
    _write(tmp_path, "metrics/evaluate.json", _evaluate_metrics(0.3))
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("no blocks\n")
    (tmp_path / "docs" / "evaluation.md").write_text(
        "<!-- results:figure_evaluate -->\nstale\n<!-- /results:figure_evaluate -->\n")
    assert docs_results.main(["--root", str(tmp_path)]) == 0  # draws and rewrites
    assert docs_results.main(["--root", str(tmp_path), "--check"]) == 0
    _write(tmp_path, "metrics/evaluate.json", _evaluate_metrics(0.9))
    assert docs_results.main(["--root", str(tmp_path), "--check"]) == 1
    assert "docs/evaluation.md" in capsys.readouterr().err


def test_unknown_block_and_missing_metrics_are_errors(tmp_path):
    with pytest.raises(KeyError, match="results:nonsense"):
        docs_results.render("<!-- results:nonsense -->\n<!-- /results:nonsense -->", tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics/pretrain.json"):
        docs_results.render("<!-- results:pretrain -->\n<!-- /results:pretrain -->", tmp_path)
