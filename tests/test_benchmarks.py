"""Smoke test of ``benchmarks/run.py --quick``: the whole code path, msclap reference included, on tiny inputs.

The msclap reference is unpacked by the same installer as the parity tests (``scripts/install_msclap_reference.sh``)
when missing.  The prepared corpus, the audio files and the stage timings are hand-written in ``tmp_path``, so
every figure comes from known data.  The GPU entry's code path (bf16 weights, ``torch.compile``) runs here on the
CPU with Dynamo's ``eager`` backend; the GPU defaults are checked without a GPU.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")

REPO = Path(__file__).resolve().parent.parent
CAPTIONS = ["a dog barks", "rain on a roof", "a bell rings twice", "wind through trees",
            "a car passes", "birds sing", "a door slams", "water drips"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


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


def write_audio(root: Path) -> Path:
    """Two usable mono files at different rates, plus three the benchmark must pass over: stereo, longer than
    the 7 s clip, and not audio."""
    root.mkdir(parents=True)
    t = np.arange(16000 * 2) / 16000
    sf.write(root / "a16k.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 16000)
    t = np.arange(22050 * 3) / 22050
    sf.write(root / "b22k.flac", 0.2 * np.sin(2 * np.pi * 1000 * t) * np.exp(-t), 22050)
    sf.write(root / "stereo.wav", np.zeros((8000, 2)), 8000)
    sf.write(root / "long.wav", np.zeros(8000 * 8), 8000)
    (root / "broken.wav").write_bytes(b"not audio at all")
    return root


def write_timings(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "train.json").write_text(json.dumps({"seconds_this_run": 274.3, "steps_this_run": 200}))
    (root / "evaluate.json").write_text(json.dumps({"seconds": 27.6}))
    (root / "bad.json").write_text("{not json")
    return root


@pytest.mark.slow  # the whole benchmark harness, both systems: 6-10 s
def test_quick_benchmark_runs_every_section_and_both_systems_agree(tmp_path):
    bench = load_bench()
    prepared = write_prepared(tmp_path / "prepared")
    audio = write_audio(tmp_path / "audio")
    timings = write_timings(tmp_path / "timings")
    out = tmp_path / "out" / "results.json"
    threads = torch.get_num_threads()

    assert bench.main(["--out", str(out), "--quick", "--threads", "1", "--prepared", str(prepared),
                       "--audio-dir", str(audio), "--timings-dir", str(timings),
                       "--precisions", "fp32,bf16-weights"]) == 0
    assert torch.get_num_threads() == threads  # --threads is undone on return

    res = json.loads(out.read_text())
    assert res["machine"]["torch"] and res["machine"]["cpu_count"] >= 1
    assert set(res["section_s"]) == {"systems", "models", "files", "train", "loader", "pipeline"}
    assert res["systems"]["load_msclap_tensors_loaded"] > 100

    # (a) towers, fp32: same weights, same inputs, the same function (the parity test bounds it at 1e-4)
    models = res["models"]
    assert models["text"]["captions"].endswith("manifest.jsonl")  # real captions, not the fallback
    # clapkit pads to the batch's longest caption (at most 6 GPT-2 tokens here), msclap to 77
    assert models["text"]["clapkit_mean_padded_tokens"] < 10 < models["text"]["msclap_tokens_per_caption"]
    for tower in ("audio", "text"):
        fp32 = models[tower]["fp32"]
        assert fp32["msclap_per_s"] > 0 and fp32["clapkit_per_s"] > 0
        ratio = fp32["clapkit_per_s"] / fp32["msclap_per_s"]
        assert fp32["ratio_clapkit_over_msclap"] == pytest.approx(ratio, rel=0.01)
        assert fp32["cosine_clapkit_vs_msclap_fp32"]["min"] > 0.9999
    # the GPU entry's bf16 weights: emulated bf16 is far too slow for a smoke test on a CPU without it (the cast
    # and its exact undoing are tested below, torch.compile too); where the CPU has it, close to fp32
    for tower in ("audio", "text"):
        bf16 = models[tower]["bf16-weights"]
        if res["machine"]["cpu_native_bf16"]:
            assert 0.99 < bf16["cosine_clapkit_vs_msclap_fp32"]["min"] < 1.0  # bf16 rounding is visible, and small
        else:
            assert bf16 == {"skipped": "--quick on a CPU without native bf16"}

    # (b) files: only the two mono files <= 7 s qualify; msclap's own wrapper code and clapkit's API agree
    files = res["files"]
    assert files["files"] == 2 and files["sample_rates"] == [16000, 22050]
    assert files["msclap_per_s"] > 0 and files["clapkit_per_s"] > 0
    assert files["cosine_clapkit_vs_msclap"]["min"] > 0.9999

    # (c) training step (encoders frozen in --quick), with memory figures that are real byte counts
    train = res["train"]["fp32"]
    assert train["msclap_pairs_per_s"] > 0 and train["clapkit_pairs_per_s"] > 0
    resident = train["resident_params_grads_optimiser_gib"]
    assert resident["msclap"] > 0.1 and resident["clapkit"] > 0.1  # GPT-2's 38.6M-entry embedding alone: 0.14 GiB
    assert train["peak_step_delta_gib"]["msclap"] >= 0 and train["peak_step_delta_gib"]["clapkit"] >= 0

    # (d) loader: 8 clips, batch 4: the first batch (worker start-up) is timed apart, the second is the figure
    runs = res["loader"]["runs"]
    assert [r["workers"] for r in runs] == [0]
    assert runs[0]["clips"] == 4 and runs[0]["clips_per_s"] > 0 and runs[0]["first_batch_s"] > 0

    # (e) stage timings: read as written, with provenance; a broken file is reported, not fatal
    stages = res["pipeline"]["stages"]
    assert stages["train"]["figures"] == {"seconds_this_run": 274.3, "steps_this_run": 200}
    assert stages["evaluate"]["figures"]["seconds"] == 27.6 and len(stages["evaluate"]["sha256"]) == 64
    assert "not valid JSON" in stages["bad"]["error"]


def test_compiled_towers_compute_the_same(tmp_path):
    """``compiled`` wraps a tower in torch.compile (Dynamo's graph capture with the ``eager`` backend here: the
    GPU entry uses inductor) and the result is the same function; ``none`` leaves the module alone."""
    bench = load_bench()
    from clapkit.models.text_encoders import build_text_encoder

    torch.manual_seed(0)
    tower = build_text_encoder({"name": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 100,
                                "n_positions": 16}).eval()
    ids = torch.randint(1, 100, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    args = bench.parse_args(["--out", str(tmp_path / "x.json"), "--compile-backend", "eager"])
    with torch.no_grad():
        expected = tower(ids, mask)
        torch.testing.assert_close(bench.compiled(tower, args)(ids, mask), expected)
    args.compile_backend = "none"
    assert bench.compiled(tower, args) is tower


def test_bf16_weights_restores_every_tensor_exactly():
    bench = load_bench()
    from clapkit.audio import FrontendConfig, LogMelFrontend

    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3))
    frontend = LogMelFrontend(FrontendConfig())  # a non-persistent float buffer (the STFT window) too
    before = {k: v.clone() for k, v in [*model.state_dict().items(), *frontend.named_buffers()]}
    with bench.bf16_weights(model, frontend):
        assert model[0].weight.dtype == torch.bfloat16 and frontend.window.dtype == torch.bfloat16
        logmel = frontend(0.1 * torch.randn(1, 16000))
        assert logmel.dtype == torch.bfloat16  # computed in float32, handed on in the module's dtype
    after = {k: v for k, v in [*model.state_dict().items(), *frontend.named_buffers()]}
    for name, t in before.items():
        assert after[name].dtype == t.dtype and torch.equal(after[name], t), name


def test_sorted_captions_pad_less_and_keep_every_caption():
    bench = load_bench()
    from clapkit.text import TextTokenizer

    tokenizer = TextTokenizer.from_spec({"kind": "gpt2", "max_length": 77})
    captions = ["a dog", "rain falls on a tin roof while thunder rumbles far away", "glass", "a bell rings twice",
                "an engine idles and then accelerates away down a long wet street at night", "birds"]
    ordered = bench.sort_by_tokens(tokenizer, captions)
    assert sorted(ordered) == sorted(captions)
    lengths = [len(ids) for ids in tokenizer.encode_batch(ordered)]
    assert lengths == sorted(lengths)
    padded = lambda caps: sum(b["clapkit"]["input_ids"].numel()  # noqa: E731
                              for b in bench.text_batches(tokenizer, caps, 2, torch.device("cpu")))
    assert padded(ordered) < padded(captions)
    for b in bench.text_batches(tokenizer, ordered, 2, torch.device("cpu")):  # msclap's side: always 77, mask real
        assert b["msclap"]["input_ids"].shape[1] == 77
        assert b["msclap"]["attention_mask"].sum() == b["clapkit"]["attention_mask"].sum()


def test_precisions_and_gpu_defaults():
    bench = load_bench()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench.resolve_precisions("auto", cuda) == ["fp32", "bf16-autocast", "bf16-weights"]
    native = bench.cpu_has_native_bf16()
    assert bench.resolve_precisions("auto", cpu) == (["fp32", "bf16-autocast"] if native else ["fp32"])
    assert bench.resolve_precisions("fp32,bf16", cpu) == ["fp32", "bf16-autocast"]
    with pytest.raises(SystemExit, match="fp16"):
        bench.resolve_precisions("fp32,fp16", cpu)
    with pytest.raises(SystemExit, match="nope"):
        bench.parse_args(["--out", "x.json", "--sections", "models,nope"])

    gpu = bench.parse_args(["--out", "x.json", "--device", "cuda"])  # the GPU defaults (benchmarks/README.md)
    assert (gpu.audio_batch, gpu.text_batch, gpu.train_batch) == (256, 1024, 128)
    assert gpu.compile_backend == "inductor" and gpu.precisions == ["fp32", "bf16-autocast", "bf16-weights"]
    assert gpu.train_precisions == ["fp32", "bf16-autocast"]
    cpu_args = bench.parse_args(["--out", "x.json"])
    assert cpu_args.compile_backend == "none" and cpu_args.text_layers == 12


def test_msclap_stand_in_window_matches_scipy():
    scipy_signal = pytest.importorskip("scipy.signal")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _msclap_reference as ref
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    for n in (1024, 7):
        for periodic in (True, False):
            np.testing.assert_allclose(ref._get_window("hann", n, fftbins=periodic),
                                       scipy_signal.get_window("hann", n, fftbins=periodic), atol=1e-12)
    with pytest.raises(ValueError, match="hamming"):
        ref._get_window("hamming", 8)


def test_peak_memory_sees_a_large_allocation():
    bench = load_bench()
    with bench.PeakMemory(torch.device("cpu")) as m:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    if bench._proc_status_kib("VmHWM") is None:
        pytest.skip("no /proc/self/status here")
    assert 48 * 2**20 < m.peak_delta < 1024 * 2**20
