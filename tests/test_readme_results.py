"""README's result tables are generated from the committed metrics (scripts/readme_results.py): they match them, and
the generator computes what it says (intervals, tests) on a known input."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_results", REPO / "scripts" / "readme_results.py")
readme_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_results)


def test_readme_tables_match_the_committed_metrics():
    assert readme_results.main(["--check"]) == 0, "run: python scripts/readme_results.py (after dvc repro)"


def test_readme_has_every_generated_block():
    names = {m["name"] for m in readme_results.BLOCK.finditer((REPO / "README.md").read_text())}
    assert names == set(readme_results.GENERATORS)


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
    out = readme_results.render(readme, tmp_path)
    assert out.startswith("x\n<!-- results:train -->\n| task |") and out.endswith("<!-- /results:train -->\ny\n")
    assert "| a | 10 | 100 | 0.300 [0.22, 0.40] | 0.100 | 2.4e-08 |" in out
    assert "| b | 10 | 100 | 0.120 [0.07, 0.20] | 0.100 | 0.3 |" in out
    assert "above chance (exact one-sided binomial, p < 0.00135): a (" in out
    assert readme_results.render(out, tmp_path) == out  # idempotent


def test_unknown_block_and_missing_metrics_are_errors(tmp_path):
    with pytest.raises(KeyError, match="results:nonsense"):
        readme_results.render("<!-- results:nonsense -->\n<!-- /results:nonsense -->", tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics/pretrain.json"):
        readme_results.render("<!-- results:pretrain -->\n<!-- /results:pretrain -->", tmp_path)
