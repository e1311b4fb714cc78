"""Smoke test of ``benchmarks/run.py --quick``: the whole code path, msclap reference included, on tiny inputs.

The msclap reference is unpacked by the same installer as the parity tests (``scripts/install_msclap_reference.sh``)
when missing.  The prepared corpus is a hand-written one in ``tmp_path`` (eight clips, 16 kHz), so the captions and
the loader figures come from known data.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["a dog barks", "rain on a roof", "a bell rings twice", "wind through trees",
            "a car passes", "birds sing", "a door slams", "water drips"]


def write_prepared(root: Path, sr: int = 16000, clip_seconds: float = 0.5) -> Path:
    """The files ``PreparedCorpus`` reads: eight clips of different lengths, each with one caption."""
    root.mkdir(parents=True)
    lengths = [4000, 8000, 12000, 6000, 9000, 3000, 7000, 5000]
    waves = np.concatenate([0.1 * np.sin(np.arange(n) * (0.01 + 0.01 * i)) for i, n in enumerate(lengths)])
    waves.astype(np.float16).tofile(root / "waveforms.f16")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as f:
        for i, (n, off) in enumerate(zip(lengths, offsets)):
            f.write(json.dumps({"id": f"c{i}", "captions": [CAPTIONS[i]], "offset": int(off), "length": n,
                                "split": "train", "sample_rate": sr}) + "\n")
    (root / "tasks.json").write_text("{}")
    (root / "arrays.json").write_text(json.dumps({
        "waveforms": "waveforms.f16", "dtype": "float16", "sample_rate": sr, "samples": int(sum(lengths)),
        "clips": len(lengths), "frontend": {"sample_rate": sr, "clip_seconds": clip_seconds}}))
    return root


def test_quick_benchmark_runs_both_systems_and_they_agree(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    prepared = write_prepared(tmp_path / "prepared")
    out = tmp_path / "out" / "results.json"

    assert bench.main(["--out", str(out), "--quick", "--prepared", str(prepared), "--precisions", "fp32"]) == 0

    res = json.loads(out.read_text())
    assert res["machine"]["torch"] and res["machine"]["cpu_count"] >= 1
    models = res["models"]
    assert models["load_msclap_tensors_loaded"] > 100
    assert models["text"]["captions"].endswith("manifest.jsonl")  # real captions, not the fallback
    # clapkit pads to the batch's longest caption (at most 6 GPT-2 tokens here), msclap to 77
    assert models["text"]["clapkit_mean_padded_tokens"] < 10 < models["text"]["msclap_tokens_per_caption"]
    for tower in ("audio", "text"):
        fp32 = models[tower]["fp32"]
        assert fp32["msclap_per_s"] > 0 and fp32["clapkit_per_s"] > 0
        assert fp32["ratio_clapkit_over_msclap"] == pytest.approx(fp32["clapkit_per_s"] / fp32["msclap_per_s"], rel=0.01)
        # same weights, same inputs: the same function (the parity test bounds the difference at 1e-4)
        assert fp32["cosine_clapkit_vs_msclap_fp32"]["min"] > 0.9999
    runs = res["loader"]["runs"]
    assert [r["workers"] for r in runs] == [0]
    # 8 clips, batch 4: the first batch (worker start-up) is timed apart, the second is the throughput figure
    assert runs[0]["clips"] == 4 and runs[0]["clips_per_s"] > 0 and runs[0]["first_batch_s"] > 0
