"""The Table 1 grid knobs: tower swaps (model.audio_encoder / model.text_encoder), corpus-trained BERT / RoBERTa
tokenizers, pretrained CNN14 weights into the train model, the temperature keys; and clapkit.grid's plan."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
import torch

from clapkit.config import load_params, model_config_from_params
from clapkit.models.clap import load_model_config

from tests.test_train import make_prepared, train_config

torch.set_num_threads(1)
PARAMS = load_params("params.yaml")


def params_with(**model):
    p = copy.deepcopy(PARAMS)
    p["model"].update(model)
    return p


def shrink(cfg: dict) -> dict:
    """The embedded towers at test size (1 s clips, 16 mels): same kinds, tiny widths."""
    cfg = copy.deepcopy(cfg)
    cfg["frontend"] = dict(cfg["frontend"], clip_seconds=1.0, hop_length=320, n_mels=16)
    enc = cfg["audio_encoder"]
    if enc["name"] == "cnn14":
        enc.update(n_mels=16, channels=[4, 8], embed_dim=16)
    else:
        enc.update(n_mels=16, spec_size=32, patch_size=4, patch_stride=4, embed_dim=8, depths=[1, 1],
                   num_heads=[1, 2], window_size=4)
    text = cfg["text_encoder"]
    if text["name"] == "gpt2":
        text.update(n_embd=16, n_layer=1, n_head=2)
    else:
        text.update(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    vocab_size=300)
    cfg["embed_dim"] = 16
    return cfg


def test_tower_swaps_follow_towers_json():
    base_name, base = model_config_from_params(PARAMS)
    assert base_name == PARAMS["model"]["embedded"] and base["frontend"]["sample_rate"] == 16000
    towers = json.loads(open("clapkit/model_configs/towers.json").read())
    for audio in ("htsat", "cnn14"):
        for text in ("gpt2", "bert", "roberta"):
            name, cfg = model_config_from_params(params_with(audio_encoder=audio, text_encoder=text))
            assert name == f"{base_name}+{audio}+{text}"
            assert cfg["audio_encoder"]["name"] == audio and cfg["text_encoder"]["name"] == text
            assert cfg["tokenizer"]["kind"] == {"gpt2": "gpt2", "bert": "wordpiece", "roberta": "bpe"}[text]
            assert cfg["frontend"] == base["frontend"] and cfg["embed_dim"] == base["embed_dim"]
            if audio == "cnn14":
                assert cfg["audio_encoder"] == towers["embedded"]["audio"]["cnn14"]
            else:  # "from": the preset's own config
                assert cfg["audio_encoder"] == base["audio_encoder"]
    # the paper preset swaps in the released towers of the 2022 model
    paper = copy.deepcopy(PARAMS)
    paper["preset"] = "paper"
    paper["model"].update(audio_encoder="cnn14", text_encoder="bert")
    _, cfg = model_config_from_params(paper)
    ref = load_model_config("msclap-2022")
    assert cfg["audio_encoder"] == ref["audio_encoder"] and cfg["text_encoder"] == ref["text_encoder"]
    assert cfg["tokenizer"] == ref["tokenizer"] and cfg["frontend"]["sample_rate"] == 44100
    with pytest.raises(ValueError, match="model.text_encoder: 'clip' is not one of"):
        model_config_from_params(params_with(text_encoder="clip"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("corpus"), n=32)


@pytest.mark.parametrize("audio,text", [(a, t) for a in ("cnn14", "htsat") for t in ("bert", "roberta", "gpt2")])
def test_every_tower_pair_builds_and_trains(prepared, tmp_path, audio, text):
    from clapkit.api import CLAP
    from clapkit.train import corpus_tokenizer, train

    _, cfg = model_config_from_params(params_with(audio_encoder=audio, text_encoder=text))
    cfg = shrink(cfg)
    tok = corpus_tokenizer(cfg, prepared)
    if text == "gpt2":
        assert tok is None  # the real GPT-2 BPE ships with clapkit
    else:
        assert tok.kind == cfg["tokenizer"]["kind"] and tok.vocab_size <= 300
        again = corpus_tokenizer(cfg, prepared)  # the same corpus gives the same ids
        assert tok.encode("a recording of a sine tone") == again.encode("a recording of a sine tone")
    metrics = train(train_config(tmp_path, prepared, max_steps=1, batch_size=4), cfg, seed=0, progress=False)
    assert metrics["step"] == 1 and 0.01 <= metrics["temperature"] <= 1
    clap = CLAP.from_pretrained(tmp_path / "clap")
    assert type(clap.model.audio.encoder).__name__.lower().startswith(audio)
    if tok is not None:
        assert clap.tokenizer.kind == tok.kind
        assert clap.tokenizer.encode("white noise") == tok.encode("white noise")
    emb = clap.get_text_embeddings(["white noise", "a chirp"])
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=1), torch.ones(2))


def test_gpt2_needs_no_corpus_tokenizer(prepared):
    from clapkit.train import corpus_tokenizer

    assert corpus_tokenizer(model_config_from_params(PARAMS)[1], prepared) is None


def test_pretrained_cnn14_encoder_loads_into_the_train_model(prepared, tmp_path):
    from safetensors.torch import load_file

    from clapkit.api import CLAP
    from clapkit.audio import FrontendConfig
    from clapkit.pretrain import PretrainConfig, pretrain
    from clapkit.train import train

    _, cfg = model_config_from_params(params_with(audio_encoder="cnn14"))
    cfg = shrink(cfg)
    pcfg = PretrainConfig(prepared=str(prepared), out=str(tmp_path / "pre"), metrics=str(tmp_path / "pm.json"),
                          loss_log=str(tmp_path / "loss.csv"), checkpoint_dir=str(tmp_path / "pck"), timings="",
                          tasks=["tone"], steps=2, batch_size=4, prefix_length=2, mapper_layers=1, mapper_heads=2,
                          lm={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 48}, precision="fp32",
                          threads=1, eval_clips_per_task=4, eval_batch_size=4)
    pretrain(pcfg, FrontendConfig.from_dict(cfg["frontend"]), "grid-cnn14", cfg, seed=0, progress=False)
    saved = load_file(str(tmp_path / "pre" / "audio_encoder.safetensors"))
    metrics = train(train_config(tmp_path, prepared, max_steps=1, batch_size=4, audio_init=str(tmp_path / "pre"),
                                 freeze_audio=True), cfg, seed=1, progress=False)
    assert metrics["init"][0]["tensors"] == len(saved)
    trained = CLAP.from_pretrained(tmp_path / "clap").model.audio.encoder.state_dict()
    assert all(torch.equal(trained[k], v) for k, v in saved.items())


def test_temperature_keys(prepared, tmp_path):
    from clapkit.api import CLAP
    from clapkit.train import TrainConfig, train

    cfg = shrink(model_config_from_params(PARAMS)[1])
    train(train_config(tmp_path, prepared, max_steps=2, batch_size=4, temperature=0.05, learn_temperature=False),
          cfg, seed=0, progress=False)
    scale = CLAP.from_pretrained(tmp_path / "clap").model.logit_scale.item()
    assert scale == pytest.approx(math.log(20.0), abs=1e-6)  # fixed at ln(1 / 0.05)
    train(train_config(tmp_path / "b", prepared, max_steps=2, batch_size=4, temperature=0.05), cfg, seed=0,
          progress=False)
    assert CLAP.from_pretrained(tmp_path / "b" / "clap").model.logit_scale.item() != pytest.approx(math.log(20.0), abs=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        TrainConfig(temperature=0.0)


# --- clapkit.grid: the plan, reading `dvc exp show --json`, the summary, the notebook ------------------------------

def _exp_params(seed=0, **knobs):
    p = copy.deepcopy(PARAMS)
    p["seed"] = seed
    for dotted, value in knobs.items():
        block, key = dotted.split(".")
        p[block][key] = value
    return p


def _record(rev, name, params, score, probe=0.3, ts="2026-11-26T22:10:00"):
    tasks = {"gender": score, "tone": score / 2}
    return {"rev": rev, "name": name, "error": None, "data": {
        "rev": rev, "timestamp": ts, "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics/evaluate.json": {"data": {"zero_shot": tasks, "embedded_zero_shot_score": score,
                                                       "embedded_linear_probe_score": probe}},
                    "metrics/pretrain.json": {"data": {"tasks_significant": 5, "tasks_above_audio_blind": 2}}},
        "deps": {}, "outs": {}, "meta": {}}}


def _exp(rec, state="success"):
    rec["experiments"] = None
    return {"revs": [rec], "executor": {"state": state, "name": "dvc-task", "local": {"returncode": 0}},
            "name": rec["name"]}


def exp_show_fixture():
    """The layout DVC 3.67 `dvc exp show --json` printed for a toy pipeline with queued experiments (learnt by
    running it): a list of [workspace, baseline commit]; the commit's `experiments` is a list of
    {revs: [record], executor, name}; a record is {rev, name, data: {rev, timestamp, params: {file: {data}},
    metrics: {file: {data}}, deps, outs, meta}, error, experiments: null}.  The baseline commit holds the
    workspace's own run (row 1, seed 0)."""
    base = _record("abc123", "main", _exp_params(), 0.30, ts="2026-11-26T22:00:00")
    base["experiments"] = [
        _exp(_record("e1", "htsat22-gpt2-s1", _exp_params(seed=1), 0.32)),
        _exp(_record("e2", "htsat22-gpt2-s2", _exp_params(seed=2), 0.34)),
        _exp(_record("e3", "htsat-gpt2-s0", _exp_params(**{"pretrain.tasks": "sound_events"}), 0.20)),
        _exp(_record("e4", "htsat-gpt2-s1", _exp_params(1, **{"pretrain.tasks": "sound_events"}), 0.22)),
        _exp(_record("e5", "mine", _exp_params(**{"train.temperature": 0.05}), 0.25)),
        _exp({"rev": "e6", "name": "broken", "error": {"type": "ReproductionError", "msg": "failed"},
              "data": {"rev": "e6", "params": {}, "metrics": {}}}, state="failed"),
        # still running: its temporary copy still holds the baseline's metrics (as DVC 3.67 shows it)
        _exp(_record("e7", "htsat-gpt2-s2", _exp_params(2, **{"pretrain.tasks": "sound_events"}), 0.30),
             state="running"),
    ]
    # an older baseline (`--rev`) with an earlier run of one experiment: the newer run counts
    older = _record("0ld", None, _exp_params(), 0.10, ts="2026-11-25T10:00:00")
    older["experiments"] = [_exp(_record("e0", "htsat-gpt2-s0", _exp_params(**{"pretrain.tasks": "sound_events"}),
                                         0.90, ts="2026-11-25T11:00:00"))]
    # the workspace, reproduced after code changes since the commit: its run (0.36) replaces the commit's (0.30)
    workspace = _record("workspace", None, _exp_params(), 0.36, ts=None)
    return [dict(workspace, experiments=None), base, older]


def base():
    from clapkit.grid import base_knobs

    return base_knobs(PARAMS)


def test_grid_plan():
    from clapkit.grid import ROWS, base_knobs, check_rows, experiments

    exps = experiments()
    assert len({e.name for e in exps}) == len(exps) == sum(len(r.seeds) for r in ROWS)
    assert exps[0].set_params == {} and exps[0].name == "htsat22-gpt2-s0"  # the workspace's own run
    assert len({tuple(sorted(r.knobs(base()).items())) for r in ROWS}) == len(ROWS)  # every row differs
    check_rows(ROWS, base())
    batch_row = next(r for r in ROWS if "train.batch_size" in r.overrides)
    clash = copy.deepcopy(PARAMS)  # params.yaml's batch size set to the batch row's: two rows would be one
    clash["train"]["batch_size"] = batch_row.overrides["train.batch_size"]
    with pytest.raises(ValueError, match="same params"):
        check_rows(ROWS, base_knobs(clash))
    headline = [r for r in ROWS if r.table1 in ("HTSAT-22+GPT2", "HTSAT+GPT2")]
    assert all(len(r.seeds) >= 3 for r in headline)
    cnn = next(e for e in exps if e.name == "cnn14-bert-s0").command()
    assert cnn[:5] == ["dvc", "exp", "run", "--queue", "-n"] and '-S' in cnn
    assert 'model.audio_encoder="cnn14"' in cnn and 'pretrain.tasks="sound_events"' in cnn
    # every override names a real params.yaml key, whose value model_config_from_params / the stages accept
    for r in ROWS:
        for dotted in r.overrides:
            block, key = dotted.split(".")
            assert key in PARAMS[block], dotted


def test_queue_order_runs_each_pretraining_once():
    from clapkit.grid import PRETRAIN_PARAMS, experiments, pretraining_of, queue_order

    # the grid's notion of "what changes the pretraining" is dvc.yaml's pretrain params, and the seed is not one
    stage = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["pretrain"]
    assert {p if p in ("preset", "frontend") or "." in p else p + "." for p in stage["params"]} == set(PRETRAIN_PARAMS)
    assert "seed" not in stage["params"] and "seed" in PARAMS["pretrain"]
    exps = experiments()
    order = queue_order(exps)
    assert sorted(e.name for e in order) == sorted(e.name for e in exps)
    groups = [pretraining_of(e) for e in order]
    assert pretraining_of(next(e for e in exps if e.name == "htsat22-gpt2-s1")) == ()  # seeds share the encoder
    new = [g for g in dict.fromkeys(groups) if g != ()]
    assert len(new) == 3  # CNN14 / HTSAT on sound events, no pretraining
    # the first experiment of every new pretraining is queued before any experiment that needs one already run
    assert groups[:len(new)] == new and order[0].name == "cnn14-bert-s0"
    assert all(g == () or g in new for g in groups[len(new):])


def test_grid_summary_matches_rows_by_params():
    from clapkit.grid_summary import parse_exp_show, summarise

    records = parse_exp_show(exp_show_fixture())
    assert {r["name"] for r in records} == {"workspace", "main", "0ld", "htsat22-gpt2-s1", "htsat22-gpt2-s2",
                                            "htsat-gpt2-s0", "htsat-gpt2-s1", "mine"}  # "broken" has no metrics
    s = summarise(records, base())
    rows = {r["slug"]: r for r in s["rows"]}
    head = rows["htsat22-gpt2"]
    assert [x["seed"] for x in head["runs"]] == [0, 1, 2] and head["runs"][0]["experiment"] == "workspace"
    assert head["zero_shot_score_mean"] == pytest.approx(0.34)
    assert head["zero_shot_score_std"] == pytest.approx(0.02)  # sample std of 0.36, 0.32, 0.34
    assert head["zero_shot_mean"]["tone"] == pytest.approx(0.17)
    assert rows["htsat-gpt2"]["runs"][0]["rev"] == "e3"  # not the older e0 (0.90) of the same row and seed
    assert rows["htsat-gpt2"]["zero_shot_score_mean"] == pytest.approx(0.21) and len(rows["htsat-gpt2"]["runs"]) == 2
    assert rows["cnn14-bert"]["runs"] == []
    assert s["pretrain_steps"] == [PARAMS["pretrain"]["steps"]] and head["runs"][1]["pretrain_steps"] == s["pretrain_steps"][0]
    older = copy.deepcopy(records)  # one run from a params.yaml with another pretraining budget: the summary says so
    next(r for r in older if r["name"] == "htsat-gpt2-s1")["params"]["pretrain"]["steps"] = 7
    assert summarise(older, base())["pretrain_steps"] == sorted([7, PARAMS["pretrain"]["steps"]])
    assert [o["name"] for o in s["other"]] == ["mine"]
    assert s["paper_table1"]["HTSAT-22+GPT2"]["average"] == pytest.approx(0.480, abs=5e-4)
    assert s["paper_table1"]["CNN14+BERT"]["average"] == pytest.approx(0.4275, abs=1e-4)  # printed 0.428


def test_grid_comparisons_are_paired_t_tests_over_common_seeds(tmp_path, capsys):
    from clapkit.cli import main
    from clapkit.grid_summary import SEED_TEST_ALPHA, parse_exp_show, summarise

    s = summarise(parse_exp_show(exp_show_fixture()), base())
    head = next(r for r in s["rows"] if r["slug"] == "htsat22-gpt2")
    # t interval of the mean over 3 seeds (0.36, 0.32, 0.34): 0.34 +- t(0.975, 2) 0.02 / sqrt 3
    half = 4.302652729749462 * 0.02 / math.sqrt(3)
    assert head["zero_shot_score_ci95"] == pytest.approx([0.34 - half, 0.34 + half])
    c = next(c for c in s["comparisons"] if c["b"] == "HTSAT + GPT-2")
    # common seeds 0 and 1: differences 0.36 - 0.20 and 0.32 - 0.22; t = 0.13 / (0.0424 / sqrt 2) = 4.33 with
    # 1 degree of freedom, whose two-sided p is 1 - 2 atan(t) / pi (the Cauchy distribution)
    assert c["seeds"] == [0, 1] and c["differences"] == pytest.approx([0.16, 0.10])
    assert c["mean_difference"] == pytest.approx(0.13) and c["df"] == 1
    t = 0.13 / (math.sqrt(0.0018) / math.sqrt(2))
    assert c["t"] == pytest.approx(t) and c["p_value"] == pytest.approx(1 - 2 * math.atan(t) / math.pi)
    assert c["test"] == "paired t-test (two-sided)" and c["significant"] is False and c["alpha"] == SEED_TEST_ALPHA
    assert c["paper_difference"] == pytest.approx(0.480 - 0.435, abs=6e-4)
    assert [x["b"] for x in s["comparisons"]] == ["HTSAT + GPT-2"]  # the other rows did not run
    # one common seed: no test, and the summary says why
    one = copy.deepcopy(s)
    row = next(r for r in one["rows"] if r["slug"] == "htsat-gpt2")
    row["runs"] = row["runs"][:1]
    from clapkit.grid_summary import add_statistics

    single = add_statistics(one)["comparisons"][0]
    assert single["test"] is None and "a paired test needs 2" in single["note"]
    # `clapkit grid recompute` rebuilds the statistics from the runs a stored summary holds
    stripped = copy.deepcopy(s)
    del stripped["comparisons"]
    for r in stripped["rows"]:
        r.pop("zero_shot_score_ci95", None)
    path = tmp_path / "ablations.json"
    path.write_text(json.dumps(stripped))
    assert main(["grid", "recompute", "--summary", str(path)]) == 0
    assert json.loads(path.read_text()) == json.loads(json.dumps(s))
    assert "paired t(1) = 4.33" in capsys.readouterr().out


def test_baselines_from_dvc_exp_list():
    from clapkit.grid import parse_exp_list

    text = "main:\n\td9e576b [cnn14-bert-s0]\n215066a:\n\tf86bc5a [mine]\n8ca739e:\n\t56fce4a [htsat-gpt2-s1]\n" \
           "\ta69c310 [tiny-htsat-gpt2-s0]\n"
    assert parse_exp_list(text, {"cnn14-bert-s0", "htsat-gpt2-s1", "tiny-htsat-gpt2-s0"}) == ["main", "8ca739e"]


def test_tiny_grid_and_set_overrides(tmp_path, capsys):
    from clapkit.cli import main
    from clapkit.grid import ROWS, TINY, base_knobs, experiments, parse_set
    from clapkit.grid_summary import parse_exp_show, summarise

    assert parse_set(["train.max_steps=3", 'model.text_encoder="bert"', "train.temperature=null"]) == {
        "train.max_steps": 3, "model.text_encoder": "bert", "train.temperature": None}
    with pytest.raises(ValueError, match="block.key=value"):
        parse_set(["max_steps"])
    exps = experiments(ROWS, TINY, "tiny-")
    assert exps[0].name == "tiny-htsat22-gpt2-s0" and exps[0].set_params == TINY  # queued too: not the workspace
    b32 = next(e for e in exps if e.row.overrides.get("train.batch_size") == 32)
    assert b32.set_params["train.batch_size"] == 32 and b32.set_params["train.max_steps"] == TINY["train.max_steps"]
    cmd = " ".join(exps[0].command())
    assert "-n tiny-htsat22-gpt2-s0" in cmd and "-S pretrain.steps=4" in cmd
    assert main(["grid", "plan", "--tiny"]) == 0
    assert "tiny-cnn14-bert-s0" in capsys.readouterr().out
    # a tiny run is matched to its rows with the tiny batch size as the base; the full-size runs are "other"
    tiny = _exp_params(**{"train.batch_size": 8, "pretrain.tasks": "sound_events"})
    records = exp_show_fixture()
    records[1]["experiments"].append(_exp(_record("e7", "tiny-htsat-gpt2-s0", tiny, 0.1)))
    (tmp_path / "show.json").write_text(json.dumps(records))
    assert main(["grid", "collect", "--tiny", "--exp-show", str(tmp_path / "show.json"),
                 "--out", str(tmp_path / "tiny.json")]) == 0
    s = json.loads((tmp_path / "tiny.json").read_text())
    rows = {r["slug"]: r for r in s["rows"]}
    assert [x["experiment"] for x in rows["htsat-gpt2"]["runs"]] == ["tiny-htsat-gpt2-s0"]
    assert rows["htsat22-gpt2"]["runs"] == [] and "htsat22-gpt2-s1" in {o["name"] for o in s["other"]}
    full = summarise(parse_exp_show(records), base_knobs(PARAMS))
    assert "tiny-htsat-gpt2-s0" in {o["name"] for o in full["other"]}


def test_ablation_notebook_renders_from_a_summary(tmp_path):
    from clapkit.grid_summary import parse_exp_show, summarise
    from clapkit.notebooks import run_notebook

    path = tmp_path / "ablations.json"
    path.write_text(json.dumps(summarise(parse_exp_show(exp_show_fixture()), base())))
    out = run_notebook("notebooks/05_ablations.ipynb", tmp_path / "05.ipynb", {"summary_path": str(path)})
    text = (tmp_path / "05.ipynb").read_text()
    assert "seed 0: HTSAT-22 0.360  HTSAT 0.200  difference +0.160" in text  # the workspace's run at seed 0
    assert "seed 1: HTSAT-22 0.320  HTSAT 0.220  difference +0.100" in text
    assert "mean difference +0.130" in text and "not run yet: ['HTSAT-22 + RoBERTa'" in text
    assert "paired t(1) = 4.33, two-sided p = 0.144: not significant at 0.05" in text  # the test, stated
    assert out.with_suffix(".html").is_file()


def test_wait_reports_failed_grid_experiments(monkeypatch):
    import types

    import clapkit.grid as grid

    status = ("Task     Name             Created    Status\n"
              "82e3606  cnn14-bert-s0    10:46 PM   Failed\n"
              "e21defc  cnn14-bert-s0    10:50 PM   Success\n"  # failed once, rerun: fine
              "1f0a2b3  someone-else     10:50 PM   Failed\n"  # not the grid's
              "{last}\n\nWorker status: 0 active, 0 idle\n")
    args = types.SimpleNamespace(poll=0)
    monkeypatch.setattr(grid, "_dvc", lambda *a: status.format(last="e21def0  htsat-gpt2-s0    10:50 PM   Success"))
    assert grid._cmd_wait(args) == 0
    monkeypatch.setattr(grid, "_dvc", lambda *a: status.format(last="e21def0  htsat-gpt2-s0    10:50 PM   Failed"))
    assert grid._cmd_wait(args) == 1
    calls = iter(["Task Name Created Status\nab  x  10:50 PM   Running\n", status.format(last="")])
    monkeypatch.setattr(grid, "_dvc", lambda *a: next(calls))
    assert grid._cmd_wait(args) == 0  # polled until nothing ran
