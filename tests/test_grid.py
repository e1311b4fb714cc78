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
# These tests were written against the from-scratch default (HTSAT-22 + GPT-2, 200 steps), which the grid still
# measures; params.yaml's default is now the packaged towers (test_rows_do_not_depend_on_the_default_towers covers it)
PARAMS = load_params("params.yaml")
PARAMS["model"]["embedded"] = "clap-small-htsat-gpt2"
PARAMS["train"]["max_steps"] = 200
# The grid's rows state the model config they build on (grid_rows.BASE_CONFIG) and swap towers into it: the same
# from-scratch default expressed that way, so that HTSAT-22 + GPT-2 is the workspace's row
GRID_PARAMS = copy.deepcopy(PARAMS)
GRID_PARAMS["model"].update(embedded="clap-small-aisfx-minilm", audio_encoder="htsat", text_encoder="gpt2")


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
    """A grid run's params: ``GRID_PARAMS`` (model.embedded the rows' BASE_CONFIG, as every grid run's params state
    it: the row passes it with -S where params.yaml's differs) with ``knobs``."""
    p = copy.deepcopy(GRID_PARAMS)
    p["seed"] = seed
    for dotted, value in knobs.items():
        block, key = dotted.split(".")
        p[block][key] = value
    return p


def _record(rev, name, params, score, transfer, probe=0.3, ts="2026-11-26T22:10:00"):
    """A run: in-domain zero-shot ``score``, transfer score ``transfer`` (chance 0.05, two entries)."""
    tasks = {"gender": score, "tone": score / 2}
    entries = {"debian:qabcs-data": {"sound_event": {"clips": 53, "chance": 0.02, "accuracy": transfer}},
               "debian:ktuberling-data": {"language": {"clips": 1662, "chance": 0.08, "accuracy": 2 * transfer}}}
    evaluate = {"transfer_zero_shot_score": transfer, "transfer_zero_shot_score_training_wordings": transfer + 0.01,
                "transfer_chance": 0.05, "transfer_entries": 2, "transfer_entries_above_chance": 1,
                "transfer": entries, "zero_shot": tasks, "embedded_zero_shot_score": score,
                "embedded_linear_probe_score": probe}
    return {"rev": rev, "name": name, "error": None, "data": {
        "rev": rev, "timestamp": ts, "params": {"params.yaml": {"data": params}},
        "metrics": {"metrics/evaluate.json": {"data": evaluate},
                    "metrics/pretrain.json": {"data": {"tasks_significant": 5, "tasks_above_audio_blind": 2}}},
        "deps": {}, "outs": {}, "meta": {}}}


def _exp(rec, state="success"):
    rec["experiments"] = None
    return {"revs": [rec], "executor": {"state": state, "name": "dvc-task", "local": {"returncode": 0}},
            "name": rec["name"]}


SOUND_EVENTS = {"pretrain.tasks": "sound_events"}
FLOOR = {"model.audio_encoder": "aisfx", "model.text_encoder": "minilm", "pretrain.tasks": "none",
         "train.freeze_audio": True, "train.freeze_text": True}
# the floor as params.yaml of 2026-12-03 ran it: null towers (BASE_CONFIG's own, aisfx / MiniLM), null freezes (frozen,
# packaged towers), its pretrain.tasks whatever params.yaml had (aisfx is not pretrained: none)
FLOOR_NULL = {"model.audio_encoder": None, "model.text_encoder": None, "pretrain.tasks": "all",
              "train.freeze_audio": None, "train.freeze_text": None}


def exp_show_fixture():
    """The layout DVC 3.67 `dvc exp show --json` printed for a toy pipeline with queued experiments (learnt by
    running it): a list of [workspace, baseline commit]; the commit's `experiments` is a list of
    {revs: [record], executor, name}; a record is {rev, name, data: {rev, timestamp, params: {file: {data}},
    metrics: {file: {data}}, deps, outs, meta}, error, experiments: null}.  The baseline commit holds the
    workspace's own run (row 1, seed 0).  Scores (in-domain, transfer): HTSAT-22 + GPT-2 (0.36, 0.10) (0.32, 0.08)
    (0.34, 0.09); HTSAT + GPT-2 (0.20, 0.05) (0.22, 0.07); the floor (0.15, 0.06) (0.17, 0.05)."""
    base = _record("abc123", "main", _exp_params(), 0.30, 0.02, ts="2026-11-26T22:00:00")
    base["experiments"] = [
        _exp(_record("e1", "htsat22-gpt2-s1", _exp_params(seed=1), 0.32, 0.08)),
        _exp(_record("e2", "htsat22-gpt2-s2", _exp_params(seed=2), 0.34, 0.09)),
        _exp(_record("e3", "htsat-gpt2-s0", _exp_params(**SOUND_EVENTS), 0.20, 0.05)),
        _exp(_record("e4", "htsat-gpt2-s1", _exp_params(1, **SOUND_EVENTS), 0.22, 0.07)),
        _exp(_record("e5", "mine", _exp_params(**{"train.temperature": 0.05}), 0.25, 0.04)),
        _exp({"rev": "e6", "name": "broken", "error": {"type": "ReproductionError", "msg": "failed"},
              "data": {"rev": "e6", "params": {}, "metrics": {}}}, state="failed"),
        # still running: its temporary copy still holds the baseline's metrics (as DVC 3.67 shows it)
        _exp(_record("e7", "htsat-gpt2-s2", _exp_params(2, **SOUND_EVENTS), 0.30, 0.02), state="running"),
        _exp(_record("f0", "aisfx-minilm-frozen-s0", _exp_params(**FLOOR), 0.15, 0.06)),
        _exp(_record("f1", "aisfx-minilm-frozen-s1", _exp_params(1, **FLOOR_NULL), 0.17, 0.05)),
    ]
    # an older baseline (`--rev`) with an earlier run of one experiment: the newer run counts
    older = _record("0ld", None, _exp_params(), 0.10, 0.01, ts="2026-11-25T10:00:00")
    older["experiments"] = [_exp(_record("e0", "htsat-gpt2-s0", _exp_params(**SOUND_EVENTS), 0.90, 0.9,
                                         ts="2026-11-25T11:00:00"))]
    # the workspace, reproduced after code changes since the commit: its run (0.36) replaces the commit's (0.30)
    workspace = _record("workspace", None, _exp_params(), 0.36, 0.10, ts=None)
    return [dict(workspace, experiments=None), base, older]


def base():
    from clapkit.grid import base_knobs

    return base_knobs(GRID_PARAMS)


def aisfx_minilm_default():
    """params.yaml with the default switched to aisfx (frozen) + MiniLM fine-tuned, as the lead may do."""
    return _exp_params(**{"model.audio_encoder": "aisfx", "model.text_encoder": "minilm", "pretrain.tasks": "none",
                          "train.freeze_audio": True, "train.freeze_text": False, "train.text_lr_scale": 0.1})


def test_grid_plan():
    from clapkit.grid import ROWS, base_knobs, check_rows, experiments
    from clapkit.grid_rows import TOWER_KNOBS, GridRow

    exps = experiments(base=base())
    assert len({e.name for e in exps}) == len(exps) == sum(len(r.seeds) for r in ROWS) == 34
    assert [e.name for e in exps if e.is_workspace] == ["htsat22-gpt2-s0"]  # the workspace's own run
    assert exps[0].set_params == {} and exps[0].command(queue=False) == ["dvc", "exp", "run", "-n", "htsat22-gpt2-s0",
                                                                         "evaluate"]
    assert len({tuple(sorted(r.knobs(base()).items())) for r in ROWS}) == len(ROWS)  # every row differs
    check_rows(ROWS, base())
    batch_row = next(r for r in ROWS if "train.batch_size" in r.overrides)
    clash = copy.deepcopy(GRID_PARAMS)  # params.yaml's batch size set to the batch row's: two rows would be one
    clash["train"]["batch_size"] = batch_row.overrides["train.batch_size"]
    with pytest.raises(ValueError, match="same params"):
        check_rows(ROWS, base_knobs(clash))
    with pytest.raises(ValueError, match="states no"):  # a row that leaves a tower knob to params.yaml
        check_rows([GridRow("GPT-2", {"model.text_encoder": "gpt2"}, slug="gpt2")], base())
    with pytest.raises(ValueError, match="not in KNOBS"):
        check_rows([GridRow("x", dict(ROWS[0].overrides, **{"train.lr": 1.0}), slug="x")], base())
    headline = [r for r in ROWS if r.table1 in ("HTSAT-22+GPT2", "HTSAT+GPT2")]
    assert all(len(r.seeds) >= 3 for r in headline)
    cnn = next(e for e in exps if e.name == "cnn14-bert-s0").command()
    assert cnn[:5] == ["dvc", "exp", "run", "--queue", "-n"] and '-S' in cnn
    assert 'model.audio_encoder="cnn14"' in cnn and 'pretrain.tasks="sound_events"' in cnn
    # the pretrained-tower rows (issue 15 item 4), with params.yaml's committed default (HTSAT-22 + GPT-2)
    by_name = {e.name: e for e in exps}
    minilm = {"model.text_encoder": "minilm"}
    aisfx = {"model.audio_encoder": "aisfx", "pretrain.tasks": "none", "train.freeze_audio": True}
    assert by_name["htsat22-minilm-frozen-s1"].set_params == dict(minilm, **{"train.freeze_text": True, "seed": 1})
    # params.yaml's null freeze means frozen for MiniLM (packaged): a fine-tuned row must say false
    assert by_name["htsat22-minilm-ft-s0"].set_params == dict(minilm, **{"train.text_lr_scale": 0.1,
                                                                         "train.freeze_text": False})
    # params.yaml's pretrain.tasks ("all") would pretrain HTSAT-22 once the row sets htsat: the row says none
    assert by_name["none-gpt2-s0"].set_params["pretrain.tasks"] == "none"
    assert by_name["aisfx-minilm-frozen-s0"].set_params == dict(aisfx, **minilm, **{"train.freeze_text": True})
    assert by_name["aisfx-minilm-ft-s1"].set_params == dict(aisfx, **minilm, **{"train.text_lr_scale": 0.1, "seed": 1,
                                                                                 "train.freeze_text": False})
    assert by_name["aisfx-gpt2-s0"].set_params == aisfx and "aisfx-gpt2-s1" not in by_name
    assert {r.slug: r.seeds for r in ROWS[8:]} == {"htsat22-minilm-frozen": (0, 1), "htsat22-minilm-ft": (0, 1),
                                                   "aisfx-minilm-frozen": (0, 1, 2, 3, 4), "aisfx-minilm-ft": (0, 1),
                                                   "aisfx-gpt2": (0,), "aisfx-minilm-frozen-1000": (0, 1, 2, 3, 4),
                                                   "aisfx-minilm-lit": (0, 1, 2, 3, 4)}
    assert by_name["aisfx-minilm-lit-s2"].set_params == dict(aisfx, **minilm, **{
        "model.embedded": "clap-small-aisfx-minilm-lit", "train.freeze_text": True, "train.max_steps": 1000, "seed": 2})
    assert '-S train.freeze_audio=true' in " ".join(by_name["aisfx-gpt2-s0"].command())
    # every row states every tower knob; every override names a real params.yaml key
    for r in ROWS:
        assert set(TOWER_KNOBS) <= set(r.overrides), r.name
        for dotted in r.overrides:
            block, key = dotted.split(".")
            assert key in PARAMS[block], dotted
    # every row states its model config: the grid's own (BASE_CONFIG) but for the LiT row
    from clapkit.grid_rows import BASE_CONFIG, LIT_CONFIG

    assert GRID_PARAMS["model"]["embedded"] == BASE_CONFIG
    assert {r.slug for r in ROWS if r.overrides["model.embedded"] != BASE_CONFIG} == {"aisfx-minilm-lit"}
    assert next(r for r in ROWS if r.slug == "aisfx-minilm-lit").overrides["model.embedded"] == LIT_CONFIG
    # what params.yaml's default is (the LiT config, its own towers): if this changes, the expectations of
    # test_tiny_grid_and_set_overrides (which row is the workspace's, which rows pass which -S) do too
    real = load_params("params.yaml")
    assert (real["model"]["embedded"], real["model"]["audio_encoder"], real["model"]["text_encoder"],
            real["pretrain"]["tasks"], real["train"]["max_steps"]) == (LIT_CONFIG, None, None, "all", 1000)


def test_rows_do_not_depend_on_the_default_towers():
    from clapkit.grid import ROWS, base_knobs, experiments, pretraining_of, queue_order, workspace_pretraining
    from clapkit.grid_rows import TOWER_KNOBS, workspace_row

    switched = base_knobs(aisfx_minilm_default())
    lit = base_knobs(load_params("params.yaml"))  # the committed default: the LiT config, its own towers (null)
    assert workspace_row(ROWS, switched).slug == "aisfx-minilm-ft" and workspace_row(ROWS, base()).slug == "htsat22-gpt2"
    assert workspace_row(ROWS, lit).slug == "aisfx-minilm-lit"
    for row in ROWS:  # a row's towers (its model config among them) are the same whichever default params.yaml has
        towers = {k: row.knobs(base())[k] for k in TOWER_KNOBS}
        assert {k: row.knobs(switched)[k] for k in TOWER_KNOBS} == towers, row.slug
        assert {k: row.knobs(lit)[k] for k in TOWER_KNOBS} == towers, row.slug
        assert towers["model.embedded"] == row.overrides["model.embedded"]
    exps = {e.name: e for e in experiments(base=switched)}
    assert [n for n, e in exps.items() if e.is_workspace] == ["aisfx-minilm-ft-s0"]
    assert exps["htsat22-gpt2-s0"].set_params == {
        "model.audio_encoder": "htsat", "model.text_encoder": "gpt2", "pretrain.tasks": "all",
        "train.freeze_audio": False, "train.text_lr_scale": 1.0}
    assert exps["htsat22-gpt2-s1"].set_params == dict(exps["htsat22-gpt2-s0"].set_params, seed=1)
    assert exps["aisfx-minilm-frozen-s0"].set_params == {"train.freeze_text": True, "train.text_lr_scale": 1.0}
    assert exps["aisfx-gpt2-s0"].set_params == {"model.text_encoder": "gpt2", "train.text_lr_scale": 1.0}
    assert exps["htsat22-minilm-ft-s0"].set_params == {"model.audio_encoder": "htsat", "pretrain.tasks": "all",
                                                       "train.freeze_audio": False}
    # the pretrainings: aisfx's is now the workspace's (done); HTSAT-22's 21 tasks is one to run, first
    order = queue_order(list(exps.values()))
    assert workspace_pretraining(switched) == pretraining_of(exps["aisfx-gpt2-s0"])
    assert [e.name for e in order[:4]] == ["cnn14-bert-s0", "htsat22-gpt2-s0", "htsat-gpt2-s0", "none-gpt2-s0"]
    assert pretraining_of(exps["htsat22-gpt2-s0"]) == pretraining_of(exps["htsat22-minilm-ft-s1"])
    # the LiT config as params.yaml's default: every other row passes its own model config, and the towers the LiT
    # config does not have (its own are aisfx / MiniLM, frozen, 1000 steps), so no row becomes a LiT one
    exps = {e.name: e for e in experiments(base=lit)}
    assert [n for n, e in exps.items() if e.is_workspace] == ["aisfx-minilm-lit-s0"]
    grid = {"model.embedded": "clap-small-aisfx-minilm"}
    assert exps["htsat22-gpt2-s0"].set_params == dict(grid, **{
        "model.audio_encoder": "htsat", "model.text_encoder": "gpt2", "pretrain.tasks": "all",
        "train.freeze_audio": False, "train.freeze_text": False, "train.max_steps": 200})
    assert exps["aisfx-minilm-frozen-s0"].set_params == dict(grid, **{"train.max_steps": 200})
    assert exps["aisfx-minilm-frozen-1000-s1"].set_params == dict(grid, seed=1)  # differs from LiT's in its config only
    assert exps["aisfx-minilm-lit-s3"].set_params == {"seed": 3}
    assert exps["aisfx-gpt2-s0"].set_params == dict(grid, **{"model.text_encoder": "gpt2", "train.freeze_text": False,
                                                             "train.max_steps": 200})
    assert all(e.set_params.get("model.embedded") == "clap-small-aisfx-minilm"
               for e in exps.values() if e.row.slug != "aisfx-minilm-lit")
    # the pretrain stage reads model.embedded (dvc.yaml), so DVC runs aisfx's 'pretraining' (its packaged weights
    # written out, no training: cost 0) again for the grid's config: one more pretraining to queue, the last of the
    # firsts; HTSAT-22's 21 tasks is one again, and the HTSAT rows still share theirs
    order = queue_order(list(exps.values()))
    assert pretraining_of(exps["aisfx-gpt2-s0"]) != workspace_pretraining(lit) == pretraining_of(exps["aisfx-minilm-lit-s1"])
    assert pretraining_of(exps["aisfx-gpt2-s0"]) == pretraining_of(exps["aisfx-minilm-frozen-1000-s4"])
    assert [e.name for e in order[:5]] == ["cnn14-bert-s0", "htsat22-gpt2-s0", "htsat-gpt2-s0", "none-gpt2-s0",
                                           "aisfx-minilm-frozen-s0"]
    assert len({pretraining_of(e) for e in exps.values()} - {workspace_pretraining(lit)}) == 5
    assert pretraining_of(exps["htsat22-gpt2-s0"]) == pretraining_of(exps["htsat22-minilm-ft-s1"])


def test_queue_order_runs_each_pretraining_once():
    from clapkit.grid import PRETRAIN_PARAMS, base_knobs, experiments, pretraining_of, queue_order, workspace_pretraining

    # the grid's notion of "what changes the pretraining" is dvc.yaml's pretrain params, and the seed is not one
    stage = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]["pretrain"]
    assert {p if p in ("preset", "frontend") or "." in p else p + "." for p in stage["params"]} == set(PRETRAIN_PARAMS)
    assert "seed" not in stage["params"] and "seed" in PARAMS["pretrain"]
    exps = experiments(base=base())
    order = queue_order(exps)
    assert sorted(e.name for e in order) == sorted(e.name for e in exps)
    groups = [pretraining_of(e) for e in order]
    done = workspace_pretraining(base())
    by_name = {e.name: e for e in exps}
    # seeds, text towers and freezes share the workspace's encoder
    assert {pretraining_of(by_name[n]) for n in ("htsat22-gpt2-s1", "htsat22-minilm-frozen-s0",
                                                 "htsat22-minilm-ft-s1", "htsat22-gpt2-b32-s0")} == {done}
    new = [g for g in dict.fromkeys(groups) if g != done]
    # CNN14 / HTSAT on sound events, HTSAT with none, aisfx with none in the grid's config and in the LiT row's: the
    # pretrain stage reads model.embedded (dvc.yaml), so DVC runs aisfx's (its packaged weights written out, cost 0)
    # once per config; the HTSAT rows all state the grid's config, so they share theirs as before
    assert len(new) == 5
    assert {dict(g)["model.embedded"] for g in new} == {'"clap-small-aisfx-minilm"', '"clap-small-aisfx-minilm-lit"'}
    assert [dict(g)["model.embedded"] for g in new].count('"clap-small-aisfx-minilm-lit"') == 1
    assert dict(new[0])["model.audio_encoder"] == '"cnn14"'
    # the first experiment of every new pretraining is queued before any experiment that needs one already run,
    # the costliest first (CNN14, then HTSAT on sound events; `none` costs nothing)
    assert groups[:len(new)] == new
    assert [e.name for e in order[:5]] == ["cnn14-bert-s0", "htsat-gpt2-s0", "none-gpt2-s0", "aisfx-minilm-frozen-s0",
                                           "aisfx-minilm-lit-s0"]
    assert all(g == done or g in new for g in groups[len(new):])
    # a null tower and the config's own named explicitly are one pretraining (the grid's config's own: aisfx)
    nulls = copy.deepcopy(GRID_PARAMS)
    nulls["model"].update(audio_encoder=None, text_encoder=None)
    null = {e.name: e for e in experiments(base=base_knobs(nulls))}["aisfx-gpt2-s0"]
    assert pretraining_of(null) == pretraining_of(by_name["aisfx-gpt2-s0"])
    assert dict(pretraining_of(null))["model.audio_encoder"] == '"aisfx"'


def test_grid_summary_matches_rows_by_params():
    from clapkit.grid import base_knobs
    from clapkit.grid_summary import parse_exp_show, summarise

    records = parse_exp_show(exp_show_fixture())
    assert {r["name"] for r in records} == {"workspace", "main", "0ld", "htsat22-gpt2-s1", "htsat22-gpt2-s2",
                                            "htsat-gpt2-s0", "htsat-gpt2-s1", "mine", "aisfx-minilm-frozen-s0",
                                            "aisfx-minilm-frozen-s1"}  # "broken" has no metrics
    s = summarise(records, base())
    rows = {r["slug"]: r for r in s["rows"]}
    head = rows["htsat22-gpt2"]
    assert head["workspace"] is True and rows["aisfx-minilm-frozen"]["floor"] is True
    assert [x["seed"] for x in head["runs"]] == [0, 1, 2] and head["runs"][0]["experiment"] == "workspace"
    # the transfer score (the headline) beside the in-domain one, per run and per row
    assert [x["transfer_score"] for x in head["runs"]] == [0.10, 0.08, 0.09]
    assert head["runs"][0]["transfer_chance"] == 0.05 and head["runs"][0]["transfer_entries_above_chance"] == 1
    assert head["transfer_score_mean"] == pytest.approx(0.09) and head["transfer_score_std"] == pytest.approx(0.01)
    assert head["transfer_chance"] == pytest.approx(0.05)
    assert head["in_domain_score_mean"] == pytest.approx(0.34)
    assert head["in_domain_score_std"] == pytest.approx(0.02)  # sample std of 0.36, 0.32, 0.34
    assert head["in_domain_per_task_mean"]["tone"] == pytest.approx(0.17)
    assert s["transfer_entry_names"] == ["debian:ktuberling-data language", "debian:qabcs-data sound_event"]
    assert head["transfer_per_entry_mean"]["debian:ktuberling-data language"] == pytest.approx(0.18)
    assert rows["htsat-gpt2"]["runs"][0]["rev"] == "e3"  # not the older e0 (0.90) of the same row and seed
    assert rows["htsat-gpt2"]["in_domain_score_mean"] == pytest.approx(0.21) and len(rows["htsat-gpt2"]["runs"]) == 2
    assert rows["htsat-gpt2"]["transfer_score_mean"] == pytest.approx(0.06)
    assert rows["aisfx-minilm-frozen"]["transfer_score_mean"] == pytest.approx(0.055)
    assert rows["cnn14-bert"]["runs"] == []
    assert s["pretrain_steps"] == [PARAMS["pretrain"]["steps"]] and head["runs"][1]["pretrain_steps"] == s["pretrain_steps"][0]
    older = copy.deepcopy(records)  # one run from a params.yaml with another pretraining budget: the summary says so
    next(r for r in older if r["name"] == "htsat-gpt2-s1")["params"]["pretrain"]["steps"] = 7
    assert summarise(older, base())["pretrain_steps"] == sorted([7, PARAMS["pretrain"]["steps"]])
    assert [o["name"] for o in s["other"]] == ["mine"] and s["other"][0]["transfer_score"] == 0.04
    # every row states its model config: a run of another config (the 2026-11 grid's clap-small-htsat-gpt2 with its
    # own towers; one with no model.embedded at all, from before the key, when that was the model) is "other"
    old_grid, keyless = _exp_params(), _exp_params()
    old_grid["model"].update(embedded="clap-small-htsat-gpt2", audio_encoder=None, text_encoder=None)
    del keyless["model"]["embedded"]
    extra = [{"name": n, "rev": n, "timestamp": "2026-11-27T00:00:00", "params": p, "metrics": {"zero_shot": {}},
              "all_metrics": {}} for n, p in (("old-grid", old_grid), ("keyless", keyless))]
    more = summarise(records + extra, base())
    assert [r["runs"] for r in more["rows"]] == [r["runs"] for r in s["rows"]]
    assert {o["name"]: o["knobs"]["model.embedded"] for o in more["other"][1:]} == {
        "old-grid": "clap-small-htsat-gpt2", "keyless": "clap-small-htsat-gpt2"}
    assert more["other"][2]["knobs"]["model.audio_encoder"] == "htsat"  # the towers of that config
    assert s["paper_table1"]["HTSAT-22+GPT2"]["average"] == pytest.approx(0.480, abs=5e-4)
    assert s["paper_table1"]["CNN14+BERT"]["average"] == pytest.approx(0.4275, abs=1e-4)  # printed 0.428
    # with the default switched to aisfx + MiniLM fine-tuned the same runs land in the same rows; that row (not run)
    # is now the workspace's, so "the default beats the floor" has nothing to compare yet
    switched = summarise(records, base_knobs(aisfx_minilm_default()))
    assert [r["runs"] for r in switched["rows"]] == [r["runs"] for r in s["rows"]]
    assert [r["slug"] for r in switched["rows"] if r["workspace"]] == ["aisfx-minilm-ft"]
    assert "the default beats the floor (both pretrained towers frozen)" not in {c["claim"] for c in switched["comparisons"]}


def test_grid_comparisons_are_paired_t_tests_over_common_seeds(tmp_path, capsys):
    from clapkit.cli import main
    from clapkit.grid_summary import SEED_TEST_ALPHA, add_statistics, parse_exp_show, summarise

    s = summarise(parse_exp_show(exp_show_fixture()), base())
    assert s["format"] == "clapkit-ablations/3"
    head = next(r for r in s["rows"] if r["slug"] == "htsat22-gpt2")
    # t interval of the mean over 3 seeds: in-domain (0.36, 0.32, 0.34): 0.34 +- t(0.975, 2) 0.02 / sqrt 3;
    # transfer (0.10, 0.08, 0.09): 0.09 +- t(0.975, 2) 0.01 / sqrt 3
    t975 = 4.302652729749462
    half = t975 * 0.02 / math.sqrt(3)
    assert head["in_domain_score_ci95"] == pytest.approx([0.34 - half, 0.34 + half])
    half = t975 * 0.01 / math.sqrt(3)
    assert head["transfer_score_ci95"] == pytest.approx([0.09 - half, 0.09 + half])
    # the claims that have two rows with runs, in COMPARISONS' order: the default against the floor first
    assert [(c["a"], c["b"]) for c in s["comparisons"]] == [("HTSAT-22 + GPT-2", "aisfx + MiniLM, both frozen (floor)"),
                                                            ("HTSAT-22 + GPT-2", "HTSAT + GPT-2")]
    floor = s["comparisons"][0]
    assert floor["claim"] == "the default beats the floor (both pretrained towers frozen)"
    # transfer, seeds 0 and 1: differences 0.10 - 0.06 and 0.08 - 0.05; mean 0.035, their std 0.005 sqrt 2, so
    # t = 0.035 / (0.005 sqrt 2 / sqrt 2) = 7 with 1 degree of freedom (Cauchy: p = 1 - 2 atan(t) / pi)
    tr = floor["transfer"]
    assert tr["score"] == "transfer_score" and tr["seeds"] == [0, 1]
    assert tr["differences"] == pytest.approx([0.04, 0.03]) and tr["mean_difference"] == pytest.approx(0.035)
    assert tr["t"] == pytest.approx(7.0) and tr["df"] == 1
    assert tr["p_value"] == pytest.approx(1 - 2 * math.atan(7.0) / math.pi)
    # in-domain: 0.36 - 0.15, 0.32 - 0.17 = 0.21, 0.15: mean 0.18, std 0.03 sqrt 2, t = 0.18 / 0.03 = 6
    ind = floor["in_domain"]
    assert ind["differences"] == pytest.approx([0.21, 0.15]) and ind["t"] == pytest.approx(6.0)
    assert "paper_difference" not in floor  # the floor is not a Table 1 model
    c = s["comparisons"][1]
    # in-domain, seeds 0 and 1: differences 0.36 - 0.20 and 0.32 - 0.22; t = 0.13 / (0.0424 / sqrt 2) = 4.33
    ind = c["in_domain"]
    assert ind["seeds"] == [0, 1] and ind["differences"] == pytest.approx([0.16, 0.10])
    assert ind["mean_difference"] == pytest.approx(0.13) and ind["df"] == 1
    t = 0.13 / (math.sqrt(0.0018) / math.sqrt(2))
    assert ind["t"] == pytest.approx(t) and ind["p_value"] == pytest.approx(1 - 2 * math.atan(t) / math.pi)
    assert ind["test"] == "paired t-test (two-sided)" and ind["significant"] is False and ind["alpha"] == SEED_TEST_ALPHA
    # transfer: 0.10 - 0.05, 0.08 - 0.07 = 0.05, 0.01: mean 0.03, std 0.02 sqrt 2, t = 0.03 / 0.02 = 1.5
    assert c["transfer"]["mean_difference"] == pytest.approx(0.03) and c["transfer"]["t"] == pytest.approx(1.5)
    assert c["paper_difference"] == pytest.approx(0.480 - 0.435, abs=6e-4)
    # one common seed: no test, and the summary says why
    one = copy.deepcopy(s)
    row = next(r for r in one["rows"] if r["slug"] == "htsat-gpt2")
    row["runs"] = row["runs"][:1]
    single = add_statistics(one)["comparisons"][1]
    assert single["transfer"]["test"] is None and "a paired test needs 2" in single["transfer"]["note"]
    assert single["in_domain"]["mean_difference"] == pytest.approx(0.16)
    # `clapkit grid recompute` rebuilds the statistics from the runs a stored summary holds
    stripped = copy.deepcopy(s)
    del stripped["comparisons"]
    for r in stripped["rows"]:
        r.pop("transfer_score_ci95", None)
        r.pop("in_domain_score_mean", None)
    path = tmp_path / "ablations.json"
    path.write_text(json.dumps(stripped))
    assert main(["grid", "recompute", "--summary", str(path)]) == 0
    assert json.loads(path.read_text()) == json.loads(json.dumps(s))
    out = capsys.readouterr().out
    assert "HTSAT-22 + GPT-2 - aisfx + MiniLM, both frozen (floor) (transfer): +0.035 over 2 seeds, paired t(1) = 7.00" in out
    assert "(in_domain): +0.130 over 2 seeds, paired t(1) = 4.33" in out
    # a summary of an older format (no transfer score) is refused, saying what to do
    stripped["format"] = "clapkit-ablations/2"
    path.write_text(json.dumps(stripped))
    with pytest.raises(ValueError, match="clapkit grid collect"):
        main(["grid", "recompute", "--summary", str(path)])


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
    # params.yaml's default is the packaged towers: the HTSAT-22 + GPT-2 row names its towers; TINY's budget wins
    # (the row's model config too: params.yaml's is the LiT one)
    assert exps[0].name == "tiny-htsat22-gpt2-s0" and exps[0].set_params == dict(TINY, **{
        "model.embedded": "clap-small-aisfx-minilm", "model.audio_encoder": "htsat", "model.text_encoder": "gpt2",
        "pretrain.tasks": "all", "train.freeze_audio": False, "train.freeze_text": False})  # queued: not the workspace
    assert not any(e.is_workspace for e in exps)
    lit = next(e for e in exps if e.name == "tiny-aisfx-minilm-lit-s0")  # params.yaml's own row: only TINY (its
    assert lit.set_params == dict(TINY, **{"train.max_steps": 20})  # budget scaled to the row's 1000 steps)
    assert all(e.set_params["model.embedded"] == "clap-small-aisfx-minilm" for e in exps if e.row is not lit.row)
    assert exps[-1].command()[-1] == "evaluate"
    b32 = next(e for e in exps if e.row.overrides.get("train.batch_size") == 32)
    assert b32.set_params["train.batch_size"] == 32 and b32.set_params["train.max_steps"] == TINY["train.max_steps"]
    cmd = " ".join(exps[0].command())
    assert "-n tiny-htsat22-gpt2-s0" in cmd and "-S pretrain.steps=4" in cmd
    assert main(["grid", "plan", "--tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny-cnn14-bert-s0" in out and "none has params.yaml's params: all 34 to queue" in out
    assert main(["grid", "plan"]) == 0
    out = capsys.readouterr().out
    assert ("aisfx-minilm-lit-s0 is the workspace run (dvc repro), 33 to queue; 5 pretraining(s) beside the "
            "workspace's") in out
    assert " evaluate\n" in out and "-S model.embedded=\"clap-small-aisfx-minilm\"" in out
    # a tiny run is matched to its rows with the tiny batch size as the base; the full-size runs are "other"
    tiny = _exp_params(**{"train.batch_size": 8, "train.max_steps": 4, "pretrain.tasks": "sound_events"})
    records = exp_show_fixture()
    records[1]["experiments"].append(_exp(_record("e8", "tiny-htsat-gpt2-s0", tiny, 0.1, 0.03)))
    (tmp_path / "show.json").write_text(json.dumps(records))
    assert main(["grid", "collect", "--tiny", "--exp-show", str(tmp_path / "show.json"),
                 "--out", str(tmp_path / "tiny.json")]) == 0
    s = json.loads((tmp_path / "tiny.json").read_text())
    rows = {r["slug"]: r for r in s["rows"]}
    assert [x["experiment"] for x in rows["htsat-gpt2"]["runs"]] == ["tiny-htsat-gpt2-s0"]
    assert rows["htsat22-gpt2"]["runs"] == [] and "htsat22-gpt2-s1" in {o["name"] for o in s["other"]}
    full = summarise(parse_exp_show(records), base_knobs(GRID_PARAMS))
    assert "tiny-htsat-gpt2-s0" in {o["name"] for o in full["other"]}


@pytest.mark.slow  # executes a stage notebook (a Jupyter kernel, 2-15 s)
def test_ablation_notebook_renders_from_a_summary(tmp_path):
    from clapkit.grid_summary import parse_exp_show, summarise
    from clapkit.notebooks import run_notebook

    path = tmp_path / "ablations.json"
    path.write_text(json.dumps(summarise(parse_exp_show(exp_show_fixture()), base())))
    out = run_notebook("notebooks/05_ablations.ipynb", tmp_path / "05.ipynb", {"summary_path": str(path)})
    text = (tmp_path / "05.ipynb").read_text()
    assert "the default (params.yaml's towers, the workspace run): HTSAT-22 + GPT-2" in text
    assert "not run yet: ['HTSAT-22 + RoBERTa'" in text
    # the default against the floor, transfer first (seed 0: 0.10 against 0.06), then in-domain
    floor = text.index("the default beats the floor (both pretrained towers frozen): HTSAT-22 + GPT-2 against aisfx")
    seed0 = text.index("seed 0: 0.100 against 0.060, difference +0.040", floor)
    assert text.index("mean difference +0.035", floor) > seed0
    assert "paired t(1) = 7.00, two-sided p = 0.090: not significant at 0.05" in text
    assert text.index("seed 0: 0.360 against 0.150, difference +0.210", floor) > seed0
    # HTSAT-22 against HTSAT: in-domain 0.360 - 0.200 at seed 0 (the workspace's run), the test stated
    assert "seed 0: 0.360 against 0.200, difference +0.160" in text
    assert "seed 1: 0.320 against 0.220, difference +0.100" in text
    assert "mean difference +0.130" in text
    assert "paired t(1) = 4.33, two-sided p = 0.144: not significant at 0.05" in text
    assert "the paper: +0.045 (Table 1 averages)" in text
    assert out.with_suffix(".html").is_file()
    # before the grid has run (a summary with no runs) it renders too, saying so
    path.write_text(json.dumps(summarise([], base())))
    run_notebook("notebooks/05_ablations.ipynb", tmp_path / "empty.ipynb", {"summary_path": str(path)})
    text = (tmp_path / "empty.ipynb").read_text()
    assert "0 grid rows with results, 0 runs" in text and "the default against the floor: not both run yet" in text
    # a summary of the previous format is refused with what to do
    old = summarise(parse_exp_show(exp_show_fixture()), base())
    old["format"] = "clapkit-ablations/2"
    path.write_text(json.dumps(old))
    with pytest.raises(Exception, match="clapkit grid collect"):
        run_notebook("notebooks/05_ablations.ipynb", tmp_path / "old.ipynb", {"summary_path": str(path)})


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
