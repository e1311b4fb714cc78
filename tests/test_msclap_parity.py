"""``load_msclap`` against the reference: msclap 1.3.4's own CLAP, random weights, 2023 and 2022 architectures.

The reference code (msclap 1.3.4 + torchlibrosa 0.1.0 wheels, MIT) is unpacked by
``scripts/install_msclap_reference.sh`` into ``.cache/msclap_site`` (or ``$MSCLAP_SITE``); a missing folder is
installed here (CI has PyPI), never skipped.  msclap is imported without its hub-bound wrapper: ``AutoModel``
builds GPT-2 base / BERT base from their default configs with random weights, and ``librosa`` (only needed for
the window and the Slaney mel filterbank) is replaced by a numpy transcription of librosa's formulas.

The saved file imitates the official one: ``{"model": state_dict}`` with every tensor float (the 2023 file
holds only FloatStorage), plus the legacy GPT-2 causal-mask buffers / BERT ``position_ids`` that older
transformers versions wrote.  Both towers then see the same (B, samples) waveform and the same token ids.

clapkit's CLAP model has no AudioSet head (its loss never reaches one); the official files carry a 527-class head,
which ``load_msclap`` verifies and reports as dropped.  The AudioSet tags are compared through a standalone HTSAT /
CNN14 built with the head, holding the loaded encoder's weights plus the checkpoint's head.

The malformed-checkpoint tests at the end use a tiny clapkit model written out under msclap's key names.
"""

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import scipy.signal
import torch

from clapkit.audio import FrontendConfig, mel_filterbank
from clapkit.errors import WeightsError
from clapkit.msclap_weights import AUDIO_PREFIX, AUDIOSET_HEAD_DROPPED, hann_dft_kernels, load_msclap
from clapkit.models import build_audio_encoder
from clapkit.models.clap import CLAPModel, load_model_config
from msclap_fixtures import tiny_as_msclap  # shared with test_mteb_model

pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")  # raised inside msclap's HTSAT

REPO = Path(__file__).resolve().parent.parent
HEAD_KEYS = {"2023": ("tscam_conv.weight", "tscam_conv.bias", "head.weight", "head.bias"),
             "2022": ("fc_audioset.weight", "fc_audioset.bias")}
HEAD_IN_MODEL = tuple(f"audio.encoder.{k}." for k in ("tscam_conv", "head", "fc_audioset"))  # where a head would be
# the reference installer, librosa stand-in and site folder shared with the benchmark (benchmarks/_msclap_reference.py)
_spec = importlib.util.spec_from_file_location("_msclap_reference", REPO / "benchmarks" / "_msclap_reference.py")
_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reference)
SITE = _reference.site_dir()
TOL = 1e-4


# ------------------------------------------------------------------------------------- the reference package


def _librosa_stand_in():
    """The benchmark's librosa stand-in (Slaney mel, pad_center), with scipy's own Hann window here."""
    lib = _reference.librosa_stand_in()
    lib.filters.get_window = lambda window, n, fftbins=True: scipy.signal.get_window(window, n, fftbins=fftbins)
    return lib


@pytest.fixture(scope="module")
def msclap():
    """msclap's model modules, importable for the duration of this test module."""
    try:
        _reference.ensure_installed(SITE)
    except RuntimeError as err:
        pytest.fail(str(err))
    saved = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] in ("librosa", "msclap", "torchlibrosa")}
    sys.path.insert(0, str(SITE))
    sys.modules["librosa"] = _librosa_stand_in()
    package = types.ModuleType("msclap")  # skip msclap/__init__.py: its wrapper downloads from the hub
    package.__path__ = [str(SITE / "msclap")]
    sys.modules["msclap"] = package
    try:
        import msclap.models.clap as msclap_clap
        from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

        def random_text_model(name, *args, **kwargs):
            return GPT2Model(GPT2Config()) if "gpt" in name else BertModel(BertConfig())

        msclap_clap.AutoModel = types.SimpleNamespace(from_pretrained=random_text_model)
        yield msclap_clap
    finally:
        sys.path.remove(str(SITE))
        for name in [n for n in sys.modules if n.split(".")[0] in ("librosa", "msclap", "torchlibrosa")]:
            del sys.modules[name]
        sys.modules.update(saved)


def msclap_yaml(version: str) -> dict:
    import yaml

    return yaml.safe_load((SITE / "msclap" / "configs" / f"config_{version}.yml").read_text())


# msclap's STFT kernels and mel filterbank, as its audio encoders build them, per version (building a full
# reference model takes seconds: the parity test fills this, the frontend tests reuse it).
REFERENCE_FRONTEND: dict[str, dict[str, torch.Tensor]] = {}


def keep_frontend(version: str, audio_base) -> dict[str, torch.Tensor]:
    base = audio_base.htsat if version == "2023" else audio_base
    REFERENCE_FRONTEND[version] = {
        "melW": base.logmel_extractor.melW.detach().clone(),
        "conv_real": base.spectrogram_extractor.stft.conv_real.weight.detach().clone(),
        "conv_imag": base.spectrogram_extractor.stft.conv_imag.weight.detach().clone(),
    }
    return REFERENCE_FRONTEND[version]


def reference_frontend(msclap_clap, version: str) -> dict[str, torch.Tensor]:
    """msclap's own audio encoder constructor, called with the YAML's values as its wrapper does."""
    if version not in REFERENCE_FRONTEND:
        from msclap.models.audio import get_audio_encoder

        c = msclap_yaml(version)
        base = get_audio_encoder(c["audioenc_name"])(c["sampling_rate"], c["window_size"], c["hop_size"], c["mel_bins"],
                                                     c["fmin"], c["fmax"], c["num_classes"], c["out_emb"])
        keep_frontend(version, base)
    return REFERENCE_FRONTEND[version]


def build_reference(msclap_clap, version: str, seed: int):
    """msclap's CLAP exactly as its wrapper builds it from the shipped YAML, then every weight randomised."""
    cfg = msclap_yaml(version)
    torch.manual_seed(seed)
    model = msclap_clap.CLAP(
        audioenc_name=cfg["audioenc_name"], sample_rate=cfg["sampling_rate"], window_size=cfg["window_size"],
        hop_size=cfg["hop_size"], mel_bins=cfg["mel_bins"], fmin=cfg["fmin"], fmax=cfg["fmax"],
        classes_num=cfg["num_classes"], out_emb=cfg["out_emb"], text_model=cfg["text_model"],
        transformer_embed_dim=cfg["transformer_embed_dim"], d_proj=cfg["d_proj"],
    )
    keep_frontend(version, model.audio_encoder.base)
    # Fresh init leaves norms at 1/0, biases and BN statistics at 0/1: move them so that a swapped or skipped
    # tensor cannot go unnoticed.  STFT kernels, filterbank and derived buffers stay as built.
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point() or "extractor" in name or "attn_mask" in name:
                continue
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif name.endswith("running_mean"):
                t.normal_(std=3.0 if ".bn0." in name else 0.3)
            elif t.ndim <= 1 and t.numel() > 1:  # biases and norm scales
                t.add_(0.1 * torch.randn_like(t))
        model.logit_scale.fill_(math.log(30.0))
    if version == "2022":
        # A random CNN14 with made-up BatchNorm statistics maps every clip to nearly the same embedding, which
        # would make the parity check blind.  Calibrate its statistics on audio (as training would): activations
        # then keep their scale through the six blocks and the embedding depends on the input.
        cnn14 = model.audio_encoder.base
        for bn in [m for m in cnn14.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batch
        cnn14.train()
        with torch.no_grad():
            t = torch.arange(44100) / 44100.0
            cnn14(torch.stack([0.1 * torch.randn(44100), 0.3 * torch.sin(2 * math.pi * 440 * t)]))
        model.eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(12345)
    return model.eval()


def save_like_official(model, version: str, path: Path) -> dict:
    """``{"model": state_dict}`` with only float tensors and the legacy text buffers of the real files."""
    sd = {k: (v.float() if not v.is_floating_point() else v) for k, v in model.state_dict().items()}
    if version == "2023":
        causal = torch.ones(1024, 1024).tril().view(1, 1, 1024, 1024)
        for i in range(12):
            sd[f"caption_encoder.base.h.{i}.attn.bias"] = causal
            sd[f"caption_encoder.base.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    else:
        sd["caption_encoder.base.embeddings.position_ids"] = torch.arange(512).view(1, 512).float()
    torch.save({"model": sd}, path)
    return sd


def token_batch(version: str):
    """Right-padded ids as msclap's tokenizers make them: GPT-2 ends with <|endoftext|>, pads with 0 ('!');
    BERT is [CLS] ... [SEP] then [PAD]=0."""
    g = torch.Generator().manual_seed(7)
    length, lengths = (77, (12, 40)) if version == "2023" else (100, (9, 33))
    ids = torch.zeros(len(lengths), length, dtype=torch.long)
    for row, n in enumerate(lengths):
        if version == "2023":
            ids[row, : n - 1] = torch.randint(1, 50256, (n - 1,), generator=g)
            ids[row, n - 1] = 50256
        else:
            ids[row, 0], ids[row, n - 1] = 101, 102
            ids[row, 1 : n - 1] = torch.randint(1000, 30522, (n - 2,), generator=g)
    return ids, (ids != 0).long()


# ------------------------------------------------------------------------------------- parity


@pytest.mark.slow  # full size against msclap's reference, ~8 s each
@pytest.mark.parametrize("version, samples", [("2023", 7 * 44100), ("2022", 5 * 44100)])
def test_load_msclap_matches_reference_embeddings(msclap, tmp_path, version, samples):
    reference = build_reference(msclap, version, seed=int(version))
    path = tmp_path / f"CLAP_weights_{version}.pth"
    saved = save_like_official(reference, version, path)

    model, report = load_msclap(path, version=version)

    # what the loader did with each key group
    prefix = AUDIO_PREFIX[version]
    dropped = {k for keys in report.dropped.values() for k in keys}
    assert report.loaded + len(dropped) == len(saved)
    assert {prefix + "spectrogram_extractor.stft.conv_real.weight", prefix + "spectrogram_extractor.stft.conv_imag.weight"} <= dropped
    assert all(k.endswith("num_batches_tracked") for k in report.cast)
    # the AudioSet head: present in the file with msclap's shapes, dropped, named in the report; absent from the model
    head_keys = [prefix + k for k in HEAD_KEYS[version]]
    assert report.dropped[AUDIOSET_HEAD_DROPPED] == report.dropped_audioset_head == head_keys
    assert saved[prefix + HEAD_KEYS[version][0]].shape[0] == 527
    assert f"dropped {len(head_keys)} ({AUDIOSET_HEAD_DROPPED}): {', '.join(head_keys)}" in report.summary()
    assert not [n for n in model.state_dict() if n.startswith(HEAD_IN_MODEL)]
    if version == "2023":
        assert len(report.cast) == 1  # bn0 only; the derived int buffers are verified, not loaded
        assert sum("attn" in k and k.startswith("caption_encoder") for k in dropped) == 24
        assert sum(k.endswith(("attn_mask", "relative_position_index")) for k in dropped) == 12 + 5
        assert any("attention masks" in v for v in report.verified)
    else:
        assert len(report.cast) == 1 + 6 * 2  # bn0 and the two BatchNorms of each conv block
        assert "caption_encoder.base.embeddings.position_ids" in dropped
        assert {k for k in dropped if ".pooler." in k} == {"caption_encoder.base.pooler.dense.weight",
                                                           "caption_encoder.base.pooler.dense.bias"}
    assert int(model.audio.encoder.bn0.num_batches_tracked) == 12345
    assert report.logit_scale == pytest.approx(math.log(30.0))
    assert report.mel_fb_matches_config
    assert report.mel_fb_design.startswith("HTS-AT config.py design" if version == "2023" else "YAML design")
    print("\n" + report.summary())
    torch.testing.assert_close(model.audio.frontend.mel_fb, saved[prefix + "logmel_extractor.melW"], rtol=0, atol=0)

    # two different clips: noise, and a chirp over quieter noise
    t = torch.arange(samples) / 44100.0
    wave = 0.1 * torch.randn(2, samples, generator=torch.Generator().manual_seed(3))
    wave[1] = 0.5 * torch.sin(2 * math.pi * (200.0 + 300.0 * t) * t) + 0.2 * wave[1]
    ids, mask = token_batch(version)
    with torch.no_grad():
        ref_audio, ref_tags = reference.audio_encoder(wave)
        if version == "2023":
            ref_text = reference.caption_encoder({"input_ids": ids, "attention_mask": mask})
        else:
            ref_text = reference.caption_encoder({"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                                                  "attention_mask": mask})
        audio = model.encode_audio(wave)
        text = model.encode_text(ids, mask)
        tagger = standalone_tagger(model, saved, version)
        tags = tagger.tag(model.audio.frontend(wave[:1]))
        ref_logits = reference.logit_scale.exp() * torch.nn.functional.normalize(ref_audio, dim=-1) @ \
            torch.nn.functional.normalize(ref_text, dim=-1).T

    audio_diff = (audio - ref_audio).abs().max().item()
    text_diff = (text - ref_text).abs().max().item()
    print(f"\nmsclap {version}: audio embedding max abs diff {audio_diff:.2e}, text {text_diff:.2e}, "
          f"AudioSet tags {(tags - ref_tags[:1]).abs().max().item():.2e}")
    assert audio.shape == ref_audio.shape == (2, 1024) and text.shape == ref_text.shape == (2, 1024)
    assert audio_diff <= TOL, f"audio embeddings differ by {audio_diff}"
    assert text_diff <= TOL, f"text embeddings differ by {text_diff}"
    assert (tags - ref_tags[:1]).abs().max() <= TOL and tags.max() - tags.min() > 100 * TOL  # 527 distinct tags
    torch.testing.assert_close(model.logits(audio, text), ref_logits, atol=1e-3, rtol=1e-4)
    # not a vacuous match: the two clips and the two captions are far apart
    assert (ref_audio[0] - ref_audio[1]).abs().max() > 100 * TOL and (ref_text[0] - ref_text[1]).abs().max() > 100 * TOL


def standalone_tagger(model: CLAPModel, saved: dict, version: str):
    """A standalone HTSAT / CNN14 with msclap's 527-class head: the loaded CLAP encoder's weights plus the
    checkpoint's head tensors, loaded strictly (so the head's key names and shapes are the module's)."""
    prefix = AUDIO_PREFIX[version]
    tagger = build_audio_encoder({**model.config["audio_encoder"], "num_classes": 527})
    state = dict(model.audio.encoder.state_dict())
    state.update({k: saved[prefix + k] for k in HEAD_KEYS[version]})
    tagger.load_state_dict(state, strict=True)
    return tagger.eval()


def test_msclap_2023_filterbank_is_designed_for_32khz(msclap):
    """The sample-rate quirk: msclap 2023 resamples to 44.1 kHz (YAML) but its HTSAT builds the mel filterbank
    from HTS-AT's config.py, for 32 kHz and 50-14000 Hz.  clapkit's msclap-2023 config reproduces it."""
    from msclap.models import config as htsat_config

    yaml_cfg = msclap_yaml("2023")
    assert (yaml_cfg["sampling_rate"], yaml_cfg["fmax"]) == (44100, 8000)  # what the wrapper passes (ignored)
    assert (htsat_config.sample_rate, htsat_config.fmin, htsat_config.fmax) == (32000, 50, 14000)  # what is used
    melw = reference_frontend(msclap, "2023")["melW"]
    cfg = FrontendConfig.from_dict(load_model_config("msclap-2023")["frontend"])
    assert cfg.sample_rate == 44100 and cfg.filterbank_sample_rate == 32000 and cfg.f_max == 14000
    torch.testing.assert_close(mel_filterbank(cfg), melw, atol=1e-6, rtol=1e-4)
    as_documented = mel_filterbank(FrontendConfig.from_dict({**cfg.to_dict(), "filterbank_sample_rate": None, "f_max": 8000.0}))
    assert (as_documented - melw).abs().max() > 1e-3  # not the 44.1 kHz / 8 kHz design the paper and YAML state
    # On 44.1 kHz audio the top filter's upper edge lands at 14000 * 44100 / 32000 Hz.
    top_bin = int(melw[:, -1].nonzero().max())
    assert top_bin * 44100 / 1024 == pytest.approx(14000 * 44100 / 32000, abs=44100 / 1024)


def test_msclap_2022_cnn14_filterbank_follows_the_yaml(msclap):
    melw = reference_frontend(msclap, "2022")["melW"]
    cfg = FrontendConfig.from_dict(load_model_config("msclap-2022")["frontend"])
    torch.testing.assert_close(mel_filterbank(cfg), melw, atol=1e-6, rtol=1e-4)


def test_torchlibrosa_stft_kernels_are_the_analytic_hann_dft(msclap):
    real, imag = hann_dft_kernels(1024, 1024)
    for version in ("2023", "2022"):
        kernels = reference_frontend(msclap, version)
        assert (kernels["conv_real"].double() - real).abs().max() < 1e-6
        assert (kernels["conv_imag"].double() - imag).abs().max() < 1e-6


# ------------------------------------------------------------------------------------- malformed checkpoints

TINY = load_model_config("clap-tiny-htsat-gpt2")
TINY["audio_encoder"] = {**TINY["audio_encoder"], "depths": [2, 2]}  # shifted windows


@pytest.fixture()
def tiny_file(tmp_path):
    source = CLAPModel.from_config(TINY, seed=1)
    sd = tiny_as_msclap(source)

    def write(mutate=None, name="tiny.pth"):
        data = dict(sd)
        if mutate:
            mutate(data)
        path = tmp_path / name
        torch.save({"model": data}, path)
        return path

    return source, sd, write


def load_tiny(path):
    return load_msclap(path, version="2023", model=CLAPModel.from_config(TINY, seed=2))


def test_tiny_round_trip_is_exact(tiny_file):
    source, _, write = tiny_file
    path = write()
    given, _ = load_tiny(path)  # into a model the caller built
    built, report = load_msclap(path, version="2023", config=TINY)  # built here, without random init
    for model in (given, built):
        assert not model.training
        for key, t in source.state_dict().items():
            assert torch.equal(model.state_dict()[key], t), key
        for key, b in source.named_buffers():  # derived buffers are computed, never left uninitialised
            assert torch.equal(dict(model.named_buffers())[key], b), key
    assert report.mel_fb_matches_config and report.mel_fb_design == "as configured"
    assert "tensors loaded" in report.summary()
    with pytest.raises(ValueError, match="either model or config"):
        load_msclap(path, version="2023", model=given, config=TINY)


def test_audioset_head_is_verified_dropped_and_reported(tiny_file):
    source, sd, write = tiny_file
    model, report = load_tiny(write())
    prefix = AUDIO_PREFIX["2023"]
    head_keys = [prefix + k for k in HEAD_KEYS["2023"]]
    assert sd[head_keys[0]].shape == (527, 32, 2, 3) and sd[head_keys[2]].shape == (527, 527)  # as written
    assert report.dropped_audioset_head == head_keys and len(report.dropped[AUDIOSET_HEAD_DROPPED]) == 4
    assert "AudioSet head: 4 tensors with the shapes of a 527-class head on this encoder" in report.verified
    assert f"dropped 4 ({AUDIOSET_HEAD_DROPPED}): {', '.join(head_keys)}" in report.summary().splitlines()
    # every other tensor of the file is loaded or dropped for another stated reason
    others = {k for reason, keys in report.dropped.items() if reason != AUDIOSET_HEAD_DROPPED for k in keys}
    assert report.loaded + len(others) + 4 == len(sd)
    assert not [n for n in model.state_dict() if n.startswith(HEAD_IN_MODEL)]
    assert model.state_dict().keys() == source.state_dict().keys()


def test_missing_or_misshapen_audioset_head_is_an_error(tiny_file):
    _, _, write = tiny_file
    prefix = AUDIO_PREFIX["2023"]
    with pytest.raises(WeightsError, match=r"missing AudioSet head tensors \(msclap files carry a 527-class head\) "
                                              r"\(2\): audio_encoder\.base\.htsat\.head\.weight, "
                                              r"audio_encoder\.base\.htsat\.head\.bias") as err:
        load_tiny(write(lambda sd: [sd.pop(prefix + "head.weight"), sd.pop(prefix + "head.bias")]))
    assert "tiny.pth" in str(err.value)

    def ten_classes(sd):  # a head for another label set (e.g. ESC-50 fine-tuning): not msclap's
        sd[prefix + "tscam_conv.weight"] = torch.zeros(10, 32, 2, 3)

    with pytest.raises(WeightsError, match="AudioSet head shape mismatch") as err:
        load_tiny(write(ten_classes))
    assert (f"{prefix}tscam_conv.weight: checkpoint (10, 32, 2, 3), a 527-class head on this encoder has "
            "(527, 32, 2, 3)") in str(err.value)
    with pytest.raises(WeightsError, match=r"unexpected .* \(1\): audio_encoder\.base\.htsat\.head\.extra"):
        load_tiny(write(lambda sd: sd.__setitem__(prefix + "head.extra", torch.ones(3))))


def test_wrong_shape_is_named(tiny_file):
    _, _, write = tiny_file
    key = "audio_encoder.projection.linear1.weight"
    path = write(lambda sd: sd.__setitem__(key, torch.zeros(32, 31)))
    with pytest.raises(WeightsError, match="shape mismatch") as err:
        load_tiny(path)
    assert f"{key}: checkpoint (32, 31) vs model audio.projection.linear1.weight (32, 32)" in str(err.value)
    assert str(path) in str(err.value)


def test_missing_key_is_named(tiny_file):
    _, _, write = tiny_file
    with pytest.raises(WeightsError, match=r"missing \(model keys not in the checkpoint\) \(1\): "
                                              r"audio\.encoder\.layers\.1\.blocks\.0\.mlp\.fc2\.bias"):
        load_tiny(write(lambda sd: sd.pop("audio_encoder.base.htsat.layers.1.blocks.0.mlp.fc2.bias")))


def test_extra_keys_are_named(tiny_file):
    _, _, write = tiny_file

    def add(sd):
        sd["audio_encoder.base.htsat.layers.5.blocks.0.norm1.weight"] = torch.ones(3)
        sd["some_other_model.weight"] = torch.ones(3)
        sd["caption_encoder.base.h.0.attn.bias"] = torch.ones(1, 1, 32, 32)  # a legacy buffer that is NOT causal

    with pytest.raises(WeightsError, match=r"unexpected \(checkpoint keys with no place in the model\) \(3\)") as err:
        load_tiny(write(add))
    for key in ("audio_encoder.base.htsat.layers.5.blocks.0.norm1.weight", "some_other_model.weight",
                "caption_encoder.base.h.0.attn.bias"):
        assert key in str(err.value)


def test_legacy_gpt2_buffers_are_dropped(tiny_file):
    _, _, write = tiny_file

    def add(sd):
        sd["caption_encoder.base.h.0.attn.bias"] = torch.ones(32, 32).tril().view(1, 1, 32, 32)
        sd["caption_encoder.base.h.0.attn.masked_bias"] = torch.tensor(-1e4)

    _, report = load_tiny(write(add))
    assert sum(len(v) for k, v in report.dropped.items() if "legacy GPT-2" in k) == 2


def test_pickle_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"logit_scale": torch.tensor(1.0)}, "extra": Payload()}, path)
    with pytest.raises(WeightsError, match=r"refusing to unpickle: the file references Python code \(io\.open\)") as err:
        load_msclap(path, version="2023", model=CLAPModel.from_config(TINY))
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_tampered_stft_and_masks_fail_loudly(tiny_file):
    _, _, write = tiny_file
    key = "audio_encoder.base.htsat.spectrogram_extractor.stft.conv_real.weight"
    hamming = lambda sd: sd.__setitem__(key, sd[key] * 0.9)  # noqa: E731  (another window)
    with pytest.raises(WeightsError, match="is not the periodic-Hann DFT the frontend computes"):
        load_tiny(write(hamming))
    mask_key = "audio_encoder.base.htsat.layers.0.blocks.1.attn_mask"
    zeroed = lambda sd: sd.__setitem__(mask_key, torch.zeros_like(sd[mask_key]))  # noqa: E731
    with pytest.raises(WeightsError, match="differs from the buffer this HTSAT config derives"):
        load_tiny(write(zeroed))


def test_unreadable_and_wrong_files(tmp_path, tiny_file):
    model = CLAPModel.from_config(TINY)
    with pytest.raises(WeightsError, match="does not exist"):
        load_msclap(tmp_path / "nope.pth", model=model)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_msclap(tmp_path / "junk.pth", model=model)
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="expected a dict with a 'model' state dict"):
        load_msclap(tmp_path / "other.pth", model=model)
    _, _, write = tiny_file
    with pytest.raises(WeightsError, match="version '2022' requested, but this is a 2023 checkpoint"):
        load_msclap(write(), version="2022", model=model)
    with pytest.raises(ValueError, match="version must be one of"):
        load_msclap(write(), version="2024", model=model)
