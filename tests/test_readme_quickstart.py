"""README's quickstart runs as written: its Python block and its CLI line, extracted from README.md, against a tiny
model saved in the official msclap 2023 file format (tests/msclap_fixtures.tiny_as_msclap).

The only thing swapped is the architecture the shipped ``msclap-2023`` config describes (HTSAT 96-768 + GPT-2 base,
about 600 MB of random weights), for a tiny config of the same kinds, so that the file loads through the same
strict msclap import in CI time."""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import clapkit.api
from clapkit.cli import main as cli_main
from clapkit.models.clap import CLAPModel, load_model_config
from msclap_fixtures import tiny_as_msclap

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Zero-shot with the official weights"


def quickstart() -> tuple[str, str]:
    """The section's Python block and its ``clapkit ...`` shell line."""
    text = README.read_text()
    assert SECTION in text, f"README has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    shell = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(python) == 1 and len(shell) == 1, "the quickstart is one Python block and one shell block"
    lines = [line for line in shell[0].splitlines() if line.startswith("clapkit ")]
    assert len(lines) == 1
    return python[0], lines[0]


@pytest.fixture
def official_layout(tmp_path, monkeypatch):
    """A tiny CLAP saved as ``CLAP_weights_2023.pth`` (msclap's container, keys and AudioSet head) in the working
    folder, with the clips the quickstart names; ``msclap-2023`` resolves to the tiny architecture."""
    tiny = load_model_config("clap-tiny-htsat-gpt2")
    tiny["audio_encoder"] = {**tiny["audio_encoder"], "depths": [2, 2]}
    torch.save({"model": tiny_as_msclap(CLAPModel.from_config(tiny, seed=1))}, tmp_path / "CLAP_weights_2023.pth")
    real = clapkit.api.load_model_config
    monkeypatch.setattr(clapkit.api, "load_model_config",
                        lambda name: copy.deepcopy(tiny) if name == "msclap-2023" else real(name))
    rate = tiny["frontend"]["sample_rate"]
    t = np.arange(int(1.5 * rate)) / rate
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "dog.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    sf.write(tmp_path / "rain.wav", (0.1 * rng.standard_normal(t.size)).astype(np.float32), rate)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_python_quickstart_runs(official_layout, capsys):
    python, _ = quickstart()
    assert len([line for line in python.splitlines() if line.strip()]) <= 3
    exec(compile(python, "README.md quickstart", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    labels = re.findall(r"\('([^']+)', ([0-9.e-]+)\)", printed)
    assert len(labels) == 2, printed  # top(1) of each of the two clips
    assert {label for label, _ in labels} <= {"dog barking", "rain", "a siren"}
    assert all(0.0 < float(p) <= 1.0 for _, p in labels)


def test_readme_cli_quickstart_runs(official_layout, capsys):
    _, line = quickstart()
    argv = shlex.split(line)[1:]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "dog.wav" in out and any(label in out for label in ("dog barking", "rain", "a siren")), out
