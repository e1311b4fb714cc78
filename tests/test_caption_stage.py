"""The caption stage (clapkit/caption_stage.py): the compact vocabulary, a known answer for the training loop and the
decoder, and the whole stage on a tiny corpus with a tiny CLAP (deterministic, saved model = the stage's captions)."""

import json
from pathlib import Path

import pytest
import torch

from clapkit.api import CLAP
from clapkit.caption_stage import CaptionConfig, CaptionCorpus, run_stage, train_captioner
from clapkit.caption_vocab import CAPTION_END, TokenSubset
from clapkit.captioning import CaptionModel
from clapkit.errors import WeightsError
from clapkit.models.clap import load_model_config
from clapkit.models.clapcap import ClapCapModel
from clapkit.text import gpt2_bpe
from clapkit.zeroshot import ClapEmbedder
from test_train import make_prepared

TINY = "clap-tiny-htsat-gpt2"


def test_token_subset_renumbers_gpt2_ids_and_keeps_the_caption_end():
    vocab = TokenSubset([5000, 17, 17, 300])
    assert vocab.gpt2_ids == [17, 220, 300, 5000, 50256]  # ascending, deduplicated, the ending added
    assert vocab.to_compact([300, 17, 220, 50256]) == [2, 0, 1, 4]
    assert vocab.to_gpt2([2, 0, 1, 4]) == [300, 17, 220, 50256]
    assert vocab.to_gpt2(torch.tensor([3])) == [5000]
    with pytest.raises(KeyError, match="GPT-2 id 42 "):
        vocab.to_compact([42])


def _tiny_captioner_config(vocab: TokenSubset, embed_dim: int) -> dict:
    clap = load_model_config(TINY)
    return {"frontend": clap["frontend"], "audio_encoder": clap["audio_encoder"], "embed_dim": embed_dim,
            "projection_dropout": 0.0, "normalize_prefix": True,
            "mapper": {"prefix_length": 2, "clip_length": 2, "num_layers": 1, "num_heads": 2},
            "decoder": {"vocab_size": len(vocab), "n_positions": 24, "n_embd": 32, "n_layer": 1, "n_head": 2,
                        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
                        "bos_token_id": vocab.compact_of[50256], "eos_token_id": vocab.compact_of[50256]},
            "tokenizer": {"kind": "gpt2", "max_length": 20, "subset": vocab.gpt2_ids}}


def test_trained_decoder_writes_each_embeddings_own_caption():
    """Known answer: four orthogonal embeddings, one caption each; after training, beam search on each embedding
    gives back exactly its caption (loss, mapper, compact vocabulary and decoding agree end to end)."""
    bpe = gpt2_bpe()
    texts = ["a dog barks", "rain on a roof", "a bell rings twice", "footsteps on gravel"]
    seqs = [bpe.encode(t).ids + list(CAPTION_END) for t in texts]
    vocab = TokenSubset.from_sequences(seqs)
    data = CaptionCorpus(train_rows=[0, 1, 2, 3], train_tokens=[[vocab.to_compact(s)] for s in seqs], test_rows=[],
                         references={}, vocab=vocab, dropped=0)
    emb = torch.eye(8)[:4]  # L2-normalised, as audio_embedding gives them
    cfg = CaptionConfig(steps=150, batch_size=8, lr=3e-3, warmup_steps=10, seed=0)
    model = ClapCapModel.from_config(_tiny_captioner_config(vocab, 8), seed=0)
    log = train_captioner(cfg, model, data, emb)
    assert log[-1]["loss"] < 0.2 < 2.0 < log[0]["loss"]
    captions = CaptionModel(model).caption_embeddings(emb, beam_size=2, entry_length=12)
    assert [c.strip() for c in captions] == [t.capitalize() for t in texts]


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption")
    prepared = make_prepared(root / "corpus", n=48)
    model_dir = CLAP.from_config(TINY, seed=0).save_pretrained(root / "clap")

    def config(name: str) -> CaptionConfig:
        out = root / name
        return CaptionConfig(model=str(model_dir), prepared=str(prepared), out=str(out / "model"),
                             metrics=str(out / "metrics.json"), loss_log=str(out / "loss.csv"),
                             results=str(out / "results"), steps=40, batch_size=8, warmup_steps=5, eval_clips=0,
                             beam_size=2, entry_length=10, cache_dir=str(root / "emb"), audio_cache_dir=None,
                             mapper={"prefix_length": 2, "clip_length": 2, "num_layers": 1, "num_heads": 2},
                             decoder={"n_layer": 1, "n_embd": 32, "n_head": 2}, examples=4)

    first, second = config("a"), config("b")
    return first, run_stage(first, progress=False), run_stage(second, progress=False), second


def test_stage_scores_the_test_split_beside_its_reference_points(stage_run):
    cfg, metrics, _, _ = stage_run
    assert metrics["clips"] > 0 and metrics["vocab"] > 2
    for scores in (metrics, *metrics["baselines"].values()):
        assert 0 <= scores["bleu_1"] <= 1 and 0 <= scores["rouge_l"] <= 1 and scores["cider_d"] >= 0
        assert scores["spice"] is None or scores["spice"] >= 0
    assert set(metrics["baselines"]) == {"prior", "nearest_training_clip"}
    losses = [float(line.split(",")[1]) for line in open(cfg.loss_log).read().splitlines()[1:]]
    assert len(losses) == 4 and losses[-1] < losses[0]  # every 10 steps; the decoder learns the captions
    examples = json.loads(open(f"{cfg.results}/examples.json").read())
    assert len(examples) == 4 and all(e["references"] and isinstance(e["caption"], str) for e in examples)


def test_stage_is_deterministic(stage_run):
    first, m1, m2, second = stage_run
    assert m1 == m2
    a = CaptionModel.from_pretrained(first.out).model.state_dict()
    b = CaptionModel.from_pretrained(second.out).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saved_captioner_gives_the_stage_captions(stage_run, tmp_path, capsys):
    """The saved folder reloads strictly, its audio tower is the CLAP's, and captioning the test clips from their
    waveforms gives the captions the stage scored."""
    from clapkit.cli import main
    from clapkit.data.prepare import PreparedCorpus

    cfg = stage_run[0]
    captioner = CaptionModel.from_pretrained(cfg.out)
    clap = CLAP.from_pretrained(cfg.model)
    ca, cb = captioner.model.audio.state_dict(), clap.model.audio.state_dict()
    assert all(torch.equal(ca[k], cb[k]) for k in cb)
    examples = json.loads(open(f"{cfg.results}/examples.json").read())
    corpus = PreparedCorpus(cfg.prepared)
    embedder = ClapEmbedder(clap, batch_size=8, precision="fp32")  # the stage's loading of a prepared clip
    waves = torch.stack([embedder.load(corpus.waveform(corpus.index[e["id"]]), corpus.sample_rate) for e in examples])
    got = captioner.caption_waves(waves, cfg.beam_size, cfg.entry_length)
    assert [c.strip() for c in got] == [e["caption"] for e in examples]

    # the CLI reads the folder; a corrupted folder is named with the reason
    wav = Path(cfg.prepared).parent / "fixture" / "c000.wav"
    assert main(["caption", "--model", cfg.out, "--greedy", "--entry-length", "6", str(wav)]) == 0
    assert capsys.readouterr().out.startswith(f"{wav}\t")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(open(f"{cfg.out}/config.json").read())
    with pytest.raises(WeightsError, match="model.safetensors: missing"):
        CaptionModel.from_pretrained(broken)
    from safetensors.torch import load_file, save_file

    state = load_file(f"{cfg.out}/model.safetensors")
    state.pop("mapper.prefix_const")
    state["mapper.extra"] = torch.zeros(1)
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(WeightsError, match="(?s)does not match config.json.*missing .*: mapper.prefix_const.*"
                                              "unexpected .*: mapper.extra"):
        CaptionModel.from_pretrained(broken)
