"""The paper's captioning entries (``audiocaps_captioning``, ``clotho_captioning``) as evaluate tasks.

A tiny random clapcap in msclap's file layout (and the same model as a caption-stage folder) captions the
AudioCaps / Clotho fixtures; every check is by value: the captions scored are ``CaptionModel.caption``'s for the
evaluation split's readable files, and the scores are ``score_captions`` of those captions against the references
read here from the fixture CSVs.  SPICE is made unavailable ($CLAPKIT_SPICE_JAR unset), so SPIDEr must be None.
"""

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from clapkit.caption_eval import caption_task_line, evaluate_captioning_task
from clapkit.caption_metrics import score_captions
from clapkit.caption_spice import SPICE_JAR_ENV, spice_unavailable_reason
from clapkit.captioning import CaptionModel
from clapkit.cli import main
from clapkit.evaluate import EvaluateConfig, evaluate_dataset_task, run_stage
from clapkit.hygiene import UNKNOWN_LABEL
from clapkit.models.clap import load_model_config
from clapkit.models.clapcap import ClapCapModel
from clapkit.tasks import CAPTIONING, PAPER_TASKS, clap_scored_tasks
from dataset_fixtures import SR, wav, write_dataset
from msclap_fixtures import clapcap_as_msclap

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")

_CLAP = load_model_config("clap-tiny-htsat-gpt2")
TINY = {"frontend": _CLAP["frontend"], "audio_encoder": {**_CLAP["audio_encoder"], "depths": [2, 2]},
        "embed_dim": 32, "mapper": {"prefix_length": 4, "clip_length": 3, "num_layers": 2, "num_heads": 4},
        "decoder": {"vocab_size": 50257, "n_positions": 96, "n_embd": 32, "n_layer": 2, "n_head": 2},
        "tokenizer": {"kind": "gpt2", "max_length": 32}}  # fmt: skip
STOP_ID = 220  # msclap's stop token: made likely enough that beams stop at different lengths (as test_clapcap)


def tiny_clapcap() -> ClapCapModel:
    model = ClapCapModel.from_config(TINY, seed=1).eval()
    with torch.no_grad():
        wte, wpe = model.gpt.transformer.wte.weight, model.gpt.transformer.wpe.weight
        direction = wte[STOP_ID] / wte[STOP_ID].norm()
        wte[STOP_ID] = 0.3 * direction
        wpe.add_((torch.arange(wpe.shape[0]) - 4).clamp(min=0)[:, None] * 0.01 * direction)
    return model


def clips(n: int, seed: int, captions_per_clip: int):
    g = np.random.default_rng(seed)
    words = ["a dog barks", "rain falls on a roof", "a car passes by", "birds sing loudly", "people talk"]
    return [([f"{words[(i + k) % 5]} number {k}" for k in range(captions_per_clip)],
             (0.2 * g.standard_normal(SR) + 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * np.arange(SR) / SR))
             .astype(np.float32)) for i in range(n)]  # fmt: skip


@pytest.fixture()
def tiny(tmp_path):
    """(model, its clapcap-layout .pth, its config JSON, the same model as a caption-stage folder)."""
    from safetensors.torch import save_file

    model = tiny_clapcap()
    for i, (_, x) in enumerate(clips(3, seed=0, captions_per_clip=1)):
        wav(tmp_path / "centre" / f"{i}.wav", x)
    with torch.no_grad():  # as test_clapcap: the clips' differences reach the mapper, not their common part
        mean = model.audio_embedding(CaptionModel(model).load_audio(sorted((tmp_path / "centre").glob("*.wav"))))
        model.mapper.linear.bias.copy_(-model.mapper.linear.weight @ mean.mean(0))
    pth = tmp_path / "clapcap_tiny.pth"
    torch.save({"model": clapcap_as_msclap(model)}, pth)
    config = tmp_path / "clapcap-tiny.json"
    config.write_text(json.dumps(TINY))
    folder = tmp_path / "caption-model"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "gpt.lm_head.weight"},
              str(folder / "model.safetensors"))  # the caption stage's layout (GPT-2's tied head saved once)
    (folder / "config.json").write_text(json.dumps(model.config))
    return model, pth, config, folder


@pytest.fixture(autouse=True)
def no_spice(monkeypatch):
    monkeypatch.delenv(SPICE_JAR_ENV, raising=False)


def clotho_references(root: Path) -> dict[str, list[str]]:
    """clip id -> the five captions, read from the evaluation CSV (not through the adapter)."""
    with open(root / "clotho_captions_evaluation.csv", newline="", encoding="utf-8") as f:
        return {f"clotho/evaluation/{Path(r['file_name']).stem}": [r[f"caption_{i}"] for i in range(1, 6)]
                for r in csv.DictReader(f)}  # fmt: skip


def corpus_scores(candidates, references) -> dict:
    scores = asdict(score_captions(candidates, references))
    return {k: v for k, v in scores.items() if k not in ("cider_d_per_clip", "notes")}


def test_registry_marks_captioning_supported_and_keeps_it_out_of_the_clap_stage():
    captioning = [t for t in PAPER_TASKS.values() if t.kind == CAPTIONING]
    assert [t.name for t in captioning] == ["audiocaps_captioning", "clotho_captioning"]
    assert all(t.supported and t.metric == "SPIDEr" and "not zero-shot" in t.protocol for t in captioning)
    assert [t.name for t in clap_scored_tasks("clotho")] == ["clotho_a2t", "clotho_t2a"]
    with pytest.raises(ValueError, match="needs a captioner, not a CLAP embedder"):
        evaluate_dataset_task(None, PAPER_TASKS["clotho_captioning"], "nowhere", EvaluateConfig(cache_dir=None))


def test_cli_captions_clotho_evaluation_and_scores_it_by_value(tiny, tmp_path, capsys):
    _, pth, config, _ = tiny
    root = write_dataset("clotho", tmp_path / "clotho", clips(3, seed=0, captions_per_clip=5))
    (root / "evaluation" / "clip 1.wav").write_bytes(b"RIFF not really a wav file")  # listed, unreadable
    readable = [root / "evaluation" / "clip 0.wav", root / "evaluation" / "clip 2.wav"]
    captioner = CaptionModel.from_msclap(pth, config=config)
    expected = dict(zip(["clotho/evaluation/clip 0", "clotho/evaluation/clip 2"],
                        captioner.caption(readable, beam_size=3, entry_length=12)))  # fmt: skip
    assert len(set(expected.values())) == 2
    # clip 0's first reference becomes its caption: the scores are not all 0, so a mix-up of clips shows
    csv_path = root / "clotho_captions_evaluation.csv"
    own_caption = expected["clotho/evaluation/clip 0"].strip()
    csv_path.write_text(csv_path.read_text().replace('"a dog barks number 0"', f'"{own_caption}"'))
    # a development clip: another split, never scored
    (root / "clotho_captions_development.csv").write_text(
        "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\ndev.wav,a,b,c,d,e\n")
    wav(root / "development" / "dev.wav", clips(1, seed=5, captions_per_clip=1)[0][1])
    out = tmp_path / "clotho.json"
    rc = main(["evaluate", "--task", "clotho_captioning", "--data", str(root), "--model", str(pth),
               "--clapcap-config", str(config), "--beam-size", "3", "--entry-length", "12", "--out", str(out),
               "--cache-dir", ""])  # fmt: skip
    printed, err = capsys.readouterr()
    assert rc == 0
    result = json.loads(out.read_text())

    references = {k: v for k, v in clotho_references(root).items() if k in expected}
    assert {c["clip"]: c["caption"] for c in result["captions"]} == expected
    assert {c["clip"]: c["references"] for c in result["captions"]} == references
    assert [c["file"] for c in result["captions"]] == [str(p) for p in readable]
    assert result["scores"] == pytest.approx(corpus_scores(expected, references))
    assert result["scores"]["bleu_1"] > 0 and result["scores"]["rouge_l"] > 0
    per_clip = score_captions(expected, references).cider_d_per_clip
    assert {c["clip"]: c["cider_d"] for c in result["captions"]} == pytest.approx(per_clip)
    assert (result["task"], result["split"], result["clips"], result["metric"]) == ("clotho_captioning", "test", 2,
                                                                                    "SPIDEr")  # fmt: skip
    assert result["value"] is None and result["scores"]["spice"] is None and result["scores"]["spider"] is None
    assert any(n.startswith("spice, spider unavailable: SPICE needs") for n in result["notes"])
    assert result["decoding"] == {"beam_size": 3, "entry_length": 12, "temperature": 1.0}
    assert [p for p in result["problems"] if "clip 1.wav" in p and "not decodable as audio" in p]
    assert len(result["problems"]) == 1
    assert result["training_overlap"] == UNKNOWN_LABEL  # a clapcap .pth records no training index
    assert "no training index" in err and "1 problem(s) skipped" in err

    s = result["scores"]
    assert printed.splitlines() == [
        f"clotho_captioning: SPIDEr not computed ({spice_unavailable_reason(None)}); CIDEr-D {s['cider_d']:.4f}, "
        f"BLEU-4 {s['bleu_4']:.4f}, ROUGE-L {s['rouge_l']:.4f}, METEOR (exact matches only) {s['meteor_exact']:.4f} "
        f"on 2 clips ({PAPER_TASKS['clotho_captioning'].protocol}); paper CLAP 2023 SPIDEr 0.271, benchmark 0.215"]  # fmt: skip
    print("\n" + printed)


def test_line_with_spice_gives_spider_and_its_parts():
    scores = {"bleu_4": 0.1, "rouge_l": 0.2, "meteor_exact": 0.05, "cider_d": 0.5, "spice": 0.1, "spider": 0.3}
    line = caption_task_line(PAPER_TASKS["clotho_captioning"], {"scores": scores, "value": 0.3, "notes": [],
                                                                 "clips": 7, "training_overlap": dict(UNKNOWN_LABEL)})
    assert line.startswith("clotho_captioning: SPIDEr 0.3000 (CIDEr-D 0.5000, SPICE 0.1000); BLEU-4 0.1000, ")
    assert line.endswith("on 7 clips (captioning; the paper's clapcap trained on AudioCaps + Clotho training "
                         "captions: not zero-shot); paper CLAP 2023 SPIDEr 0.271, benchmark 0.215")


def test_audiocaps_with_a_caption_stage_folder_and_msclap_defaults(tiny, tmp_path, capsys):
    _, _, _, folder = tiny
    root = write_dataset("audiocaps", tmp_path / "audiocaps", clips(2, seed=1, captions_per_clip=5))
    captioner = CaptionModel.from_pretrained(folder)
    result = evaluate_captioning_task(captioner, PAPER_TASKS["audiocaps_captioning"], root)
    assert result["decoding"] == {"beam_size": 5, "entry_length": 67, "temperature": 1.0}  # msclap's defaults
    files = sorted((root / "audio" / "test").glob("*.wav"))
    expected = dict(zip([f"audiocaps/{f.stem}" for f in files], captioner.caption(files)))
    with open(root / "test.csv", newline="", encoding="utf-8") as f:
        references: dict[str, list[str]] = {}
        for row in csv.DictReader(f):
            references.setdefault(f"audiocaps/{row['youtube_id']}_{row['start_time']}", []).append(row["caption"])
    assert {c["clip"]: c["caption"] for c in result["captions"]} == expected
    assert result["scores"] == pytest.approx(corpus_scores(expected, references))
    assert result["clips"] == 2 and result["problems"] == [] and result["value"] is None

    # the CLI reads the folder as a captioner; a CLAP folder is refused by name
    out = tmp_path / "audiocaps.json"
    assert main(["evaluate", "--task", "audiocaps_captioning", "--data", str(root), "--model", str(folder),
                 "--entry-length", "67", "--out", str(out), "--cache-dir", ""]) == 0  # fmt: skip
    line = capsys.readouterr().out
    assert line.startswith("audiocaps_captioning: SPIDEr not computed (SPICE needs ")
    assert line.rstrip().endswith("on 2 clips (captioning; the paper's clapcap trained on AudioCaps + Clotho "
                                  "training captions: not zero-shot); paper CLAP 2023 SPIDEr 0.455, benchmark 0.438")
    cli = json.loads(out.read_text())
    assert cli["scores"] == pytest.approx(result["scores"]) and cli["training_overlap"] == UNKNOWN_LABEL
    from clapkit import CLAP

    clap = CLAP.from_config("clap-tiny-htsat-gpt2", seed=0).save_pretrained(tmp_path / "clap")
    with pytest.raises(SystemExit, match="is a CLAP model .*captioning needs a captioner"):
        main(["evaluate", "--task", "audiocaps_captioning", "--data", str(root), "--model", str(clap)])


def test_stage_with_clotho_scores_retrieval_and_skips_captioning(tmp_path):
    from test_evaluate import Oracle, corpus_clips, write_prepared

    words = ["red", "green", "blue", "circle", "square"]
    oracle = Oracle(words)
    prepared = write_prepared(tmp_path / "prepared", oracle, corpus_clips(words))
    clotho = write_dataset("clotho", tmp_path / "clotho",
                           [([f"a {w} sound"] * 2 + [f"{w} {k}" for k in range(3)], oracle.wave(w)) for w in words])
    cfg = EvaluateConfig(model=str(tmp_path / "no-model"),  # no models/clap of the workspace: the guard reads none
                         prepared=str(prepared), results=str(tmp_path / "results"), plots=str(tmp_path / "plots"),
                         metrics=str(tmp_path / "metrics.json"), cache_dir=None, timings=None, linear_probe=False,
                         transfer=False, datasets={"clotho": str(clotho)})  # fmt: skip
    metrics = run_stage(cfg, embedder=oracle, progress=False)
    assert set(metrics["retrieval"]) == {"corpus_retrieval", "clotho_a2t", "clotho_t2a"}
    assert metrics["retrieval"]["clotho_a2t"]["R@1"] == 1.0 and metrics["retrieval"]["clotho_t2a"]["R@1"] == 1.0
    tasks = json.loads((tmp_path / "results" / "results.json").read_text())["tasks"]
    assert "clotho_captioning" not in tasks and tasks["clotho_a2t"]["clips"] == 5
    assert set(metrics["training_overlap"]["tasks"]) == {"colour", "shape", "corpus_retrieval", "clotho_a2t",
                                                         "clotho_t2a"}  # fmt: skip
