"""``clapkit.mteb_model``: a clapkit model and msclap-format weights as an MTEB audio-text encoder, offline.

Two encoders: a tiny clapkit model written by ``save_pretrained``, and a tiny model's random weights saved in the
official msclap 2023 container (``{"model": state_dict}`` under msclap's key names, with the STFT kernels, derived
buffers and a 527-class AudioSet head), loaded through ``load_msclap``.  Their ``encode`` is fed mteb's own batch
format (a DataLoader collated by mteb's ``_custom_collate_fn``; 48, 44.1, 22.05 and 16 kHz clips, mono and stereo,
shorter and longer than the model's clip) and must give ``CLAP.get_audio_embeddings`` / ``get_text_embeddings`` of the
same clips resampled by ``clapkit.audio.resample``.  mteb's own evaluator then runs two in-memory tasks built on its
mock tasks (zero-shot classification and text-to-audio retrieval) whose answers are constructed from clapkit's own
scores, so the expected accuracy / nDCG is known exactly.  No dataset or model is downloaded.
"""

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from clapkit.api import CLAP
from clapkit.audio import mix_down, resample
from clapkit.models.clap import CLAPModel, load_model_config
from clapkit.mteb_model import (EMBEDDED_CORPUS, MSCLAP_2023_TRAINING_TASKS, ClapkitMTEBEncoder, main,
                                run_benchmark)
from msclap_fixtures import tiny_as_msclap  # shared with test_msclap_parity

try:  # clapkit[mteb], in the locked dev install: CI runs every test here
    import mteb
    from mteb._create_dataloaders import _custom_collate_fn  # mteb's batch format: audio stays a list of items
    from mteb.mocks.mock_tasks.retrieval import MockAny2AnyRetrievalT2ATask
    from mteb.mocks.mock_tasks.zeroshot_classification import MockAudioZeroshotClassificationTask
    from mteb.models import EncoderProtocol, ModelMeta
except ImportError:  # without mteb the wrapper's own tests still run, on the same batch layout
    mteb = None

    def _custom_collate_fn(rows):
        return {k: [r[k] for r in rows] for k in rows[0]}

needs_mteb = pytest.mark.skipif(mteb is None, reason="mteb is not installed (pip install -e '.[mteb]')")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:torch.meshgrid:UserWarning",
                                        "ignore:Precision is ill-defined")  # sklearn, on a 4-clip task

TINY = load_model_config("clap-tiny-htsat-gpt2")  # 16 kHz, 1 s clips, 32-d embeddings
TINY["audio_encoder"] = {**TINY["audio_encoder"], "depths": [2, 2]}  # shifted windows: msclap files carry masks
TOL = 1e-6
LABELS = ["a dog barks", "rain falls on a roof", "a bell rings"]


# --------------------------------------------------------------------------------------------- the two encoders


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mteb-models")
    CLAP.from_config(TINY, seed=0).save_pretrained(root / "tiny-clap")
    torch.save({"model": tiny_as_msclap(CLAPModel.from_config(TINY, seed=1))}, root / "tiny_msclap_2023.pth")
    return root / "tiny-clap", root / "tiny_msclap_2023.pth"


@pytest.fixture(scope="module")
def encoders(files):
    model_dir, pth = files
    return {"pretrained": ClapkitMTEBEncoder.from_pretrained(model_dir),
            "msclap": ClapkitMTEBEncoder.from_msclap(pth, "2023", config=TINY)}


# --------------------------------------------------------------------------------------------- audio in mteb's format


def _noise(rng, seconds, rate, channels=1):
    shape = (int(seconds * rate),) if channels == 1 else (channels, int(seconds * rate))
    return (0.3 * rng.standard_normal(shape)).astype(np.float32)


def audio_rows():
    """mteb rows: {"audio": {"array", "sampling_rate"}} at several rates, mono and (channels, samples) stereo."""
    rng = np.random.default_rng(7)
    clips = [(_noise(rng, 1.5, 48000), 48000), (_noise(rng, 0.6, 16000, channels=2), 16000),
             (_noise(rng, 2.0, 44100), 44100), (_noise(rng, 1.0, 48000, channels=2), 48000),
             (_noise(rng, 0.8, 22050), 22050)]
    return [{"id": f"c{i}", "audio": {"array": a, "sampling_rate": sr}} for i, (a, sr) in enumerate(clips)]


def loader(rows, batch_size):
    return torch.utils.data.DataLoader(rows, batch_size=batch_size, collate_fn=_custom_collate_fn, shuffle=False)


def expected_audio(clap: CLAP, rows) -> torch.Tensor:
    """CLAP.get_audio_embeddings of each clip mixed down and resampled here, by clapkit's own resampler."""
    waves = [resample(mix_down(r["audio"]["array"]), r["audio"]["sampling_rate"], clap.sample_rate) for r in rows]
    return clap.get_audio_embeddings(waves, sample_rate=clap.sample_rate)


@pytest.mark.parametrize("kind", ["pretrained", "msclap"])
def test_encode_mteb_batches_equals_clapkit_embeddings(encoders, kind):
    enc = encoders[kind]
    rows = audio_rows()
    batch = next(iter(loader(rows, 3)))
    assert isinstance(batch["audio"], list) and set(batch["audio"][0]) == {"array", "sampling_rate"}  # mteb's format
    got = enc.encode(loader(rows, 3), task_metadata=None, hf_split="test", hf_subset="default")
    assert got.shape == (len(rows), enc.info["embed_dim"]) and got.dtype == np.float32
    want = expected_audio(enc.clap, rows)
    assert np.abs(got - want.numpy()).max() <= TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # per-modality method, other batch size: same numbers (the batch does not change a clip's embedding)
    assert np.abs(enc.get_audio_embeddings(loader(rows, 2)) - got).max() <= TOL
    again = enc.encode(loader(rows, 3), task_metadata=None, hf_split="test", hf_subset="default")
    assert np.array_equal(again, got)  # deterministic: centre crop, no random window

    texts = [{"text": t} for t in LABELS + ["wind in the trees", "a piano plays a slow melody"]]
    got_t = enc.encode(loader(texts, 2), task_metadata=None, hf_split="test", hf_subset="default")
    assert np.abs(got_t - enc.clap.get_text_embeddings([t["text"] for t in texts]).numpy()).max() <= TOL

    both = [{"text": t["text"], "audio": r["audio"]} for t, r in zip(texts, rows)]  # a multimodal document
    got_b = enc.encode(loader(both, 5), task_metadata=None, hf_split="test", hf_subset="default")
    assert np.abs(got_b - (got + got_t)).max() <= 2 * TOL


def test_clips_are_resampled_from_their_own_rate(encoders):
    """A 48 kHz tone reaches the 16 kHz model as the same tone sampled at 16 kHz; read as 44.1 kHz (mteb <= 2.24.3
    fed MS-CLAP 48 kHz audio that way) it is another clip: pitch 8 % low."""
    enc = encoders["pretrained"]
    assert enc.clap.sample_rate == 16000 and enc.info["sample_rate"] == 16000
    t = lambda rate: np.arange(rate) / rate  # 1 s = the model's clip
    tone = lambda rate: (0.5 * np.sin(2 * np.pi * 440.0 * t(rate))).astype(np.float32)
    at_48k = {"array": tone(48000), "sampling_rate": 48000}
    native = {"array": tone(16000), "sampling_rate": 16000}
    misread = {"array": tone(48000), "sampling_rate": 44100}
    waves = enc.load_audio([at_48k, native, misread])
    assert waves.shape == (3, 16000)
    inner = slice(400, -400)  # away from the resampler's edge transient
    assert (waves[0, inner] - waves[1, inner]).abs().max() < 2e-3
    assert (waves[2, inner] - waves[1, inner]).abs().max() > 0.5
    spectrum = lambda w: np.abs(np.fft.rfft(w.numpy()))
    assert np.argmax(spectrum(waves[0])) == 440 and np.argmax(spectrum(waves[2])) == round(440 * 44100 / 48000)  # 404 Hz
    emb = enc.encode([{"audio": [at_48k, native, misread]}])
    assert np.dot(emb[0], emb[1]) > 0.999
    assert np.dot(emb[0], emb[1]) > np.dot(emb[2], emb[1])


def test_bad_audio_items_are_named(encoders):
    enc = encoders["pretrained"]
    with pytest.raises(ValueError, match="audio item 1 .*NaN"):
        enc.encode([{"audio": [{"array": np.zeros(100, np.float32), "sampling_rate": 16000},
                               {"array": np.full(100, np.nan, np.float32), "sampling_rate": 16000}]}])
    with pytest.raises(ValueError, match="audio item 0: sampling_rate"):
        enc.encode([{"audio": [{"array": np.zeros(100, np.float32), "sampling_rate": 0}]}])
    with pytest.raises(ValueError, match="audio item 0: expected 'array'"):
        enc.encode([{"audio": [{"samples": np.zeros(100, np.float32)}]}])
    with pytest.raises(ValueError, match="neither 'audio' nor 'text'"):
        enc.encode([{"id": ["x"]}])


# --------------------------------------------------------------------------------------------- metadata


@needs_mteb
def test_metadata_of_a_clapkit_model(files, encoders):
    model_dir, _ = files
    enc = encoders["pretrained"]
    meta = enc.mteb_model_meta
    assert isinstance(meta, ModelMeta)
    assert meta.embed_dim == TINY["embed_dim"] == 32
    assert meta.name == "clapkit/tiny-clap" and meta.modalities == ["audio", "text"]
    assert meta.revision == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    assert meta.n_parameters == sum(p.numel() for p in enc.clap.model.parameters())
    assert meta.max_tokens == 32 and meta.similarity_fn_name.value == "cosine" and meta.framework == ["PyTorch"]
    assert meta.public_training_data == EMBEDDED_CORPUS and meta.training_datasets == set()
    assert meta.license == "not specified" and meta.open_weights
    assert isinstance(enc, EncoderProtocol)
    # the loader in the metadata rebuilds the same encoder from the same files (what `meta.load_model()` does)
    again = meta.load_model()
    rows = audio_rows()
    assert np.array_equal(again.encode(loader(rows, 5)), enc.encode(loader(rows, 5)))


@needs_mteb
def test_metadata_of_the_official_weights(files, encoders):
    _, pth = files
    meta = encoders["msclap"].mteb_model_meta
    assert meta.name == "clapkit/msclap-2023" and meta.adapted_from == "microsoft/msclap-2023"
    assert meta.license == "mit" and meta.reference == "https://github.com/microsoft/CLAP"
    assert meta.revision == hashlib.sha256(pth.read_bytes()).hexdigest()[:16]
    assert meta.embed_dim == 32  # from the (here tiny) config; the shipped msclap-2023 config says 1024
    assert load_model_config("msclap-2023")["embed_dim"] == 1024
    assert "4.6M audio-text pairs" in meta.public_training_data
    assert meta.training_datasets == set(MSCLAP_2023_TRAINING_TASKS)
    for name in MSCLAP_2023_TRAINING_TASKS:  # every name is an mteb task (a typo would hide a contamination)
        assert mteb.get_task(name).metadata.name == name
    assert mteb.get_model_meta("microsoft/msclap-2023").embed_dim == 1024  # mteb's own entry for these weights
    maeb = [t.metadata.name for t in mteb.get_benchmark("MAEB(v1)").tasks]
    assert meta.get_training_datasets() & set(maeb) == {"ClothoT2ARetrieval", "MACST2ARetrieval", "IEMOCAPGender"}
    assert encoders["pretrained"].mteb_model_meta.is_zero_shot_on(maeb)
    assert encoders["msclap"].clap.msclap_report.loaded > 0


def test_importing_clapkit_does_not_import_mteb():
    code = "import sys, clapkit, clapkit.api, clapkit.mteb_model; print('mteb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------------------------- mteb's evaluator


def mono_rows():
    """Mono clips at mixed rates as a datasets column holds them (arrays come back as lists of floats)."""
    rng = np.random.default_rng(11)
    rates = [48000, 16000, 48000, 16000]
    return [{"array": _noise(rng, 1.2, sr), "sampling_rate": sr} for sr in rates]


def clapkit_scores(enc: ClapkitMTEBEncoder, clips, texts) -> np.ndarray:
    """(clips, texts) cosine from clapkit's own API, independent of the wrapper."""
    audio = expected_audio(enc.clap, [{"audio": c} for c in clips])
    return (audio @ enc.clap.get_text_embeddings(texts).T).numpy()


def index_labels(truth: list[str]) -> tuple[list[int], list[str]]:
    """Candidates ordered with the labels in use first: with two classes present they are 0 and 1, the binary
    case in which mteb also computes average precision with class 1 as the positive one."""
    candidates = list(dict.fromkeys(truth)) + [x for x in LABELS if x not in truth]
    return [candidates.index(x) for x in truth], candidates


if mteb is not None:  # tasks built on mteb's own mock tasks

    class ZeroShotInMemory(MockAudioZeroshotClassificationTask):
        """mteb's mock audio zero-shot task on given clips/labels; the audio column stays a plain struct (decoding a
        datasets.Audio column needs torchcodec + FFmpeg, which the offline CI does not have)."""

        def __init__(self, clips, labels, candidates, **kwargs):
            super().__init__(**kwargs)
            self._clips, self._labels, self._candidates = clips, labels, candidates

        def load_data(self, **kwargs):
            from datasets import Dataset, DatasetDict

            self.dataset = DatasetDict({"test": Dataset.from_dict({"audio": self._clips, "label": self._labels})})
            self.data_loaded = True

        def get_candidate_labels(self):
            return list(self._candidates)

    class TextToAudioInMemory(MockAny2AnyRetrievalT2ATask):
        def __init__(self, queries, clips, relevant, **kwargs):
            super().__init__(**kwargs)
            self._queries, self._clips, self._relevant = queries, clips, relevant

        def load_data(self, **kwargs):
            from datasets import Dataset, DatasetDict

            n, m = len(self._queries), len(self._clips)
            self.queries = DatasetDict({"test": Dataset.from_dict(
                {"id": [f"q{i}" for i in range(n)], "text": self._queries, "modality": ["text"] * n})})
            self.corpus = DatasetDict({"test": Dataset.from_dict(
                {"id": [f"d{j}" for j in range(m)], "audio": self._clips, "modality": ["audio"] * m})})
            self.relevant_docs = {"test": {f"q{i}": {f"d{j}": int(j == self._relevant[i]) for j in range(m)}
                                           for i in range(n)}}
            self.data_loaded = True


@needs_mteb
@pytest.mark.parametrize("kind", ["pretrained", "msclap"])
def test_mteb_zero_shot_task_scores_the_known_answer(encoders, kind, tmp_path):
    enc = encoders[kind]
    clips = mono_rows()
    scores = clapkit_scores(enc, clips, LABELS)
    top2 = np.sort(scores, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4  # no near-tie: the argmax is robust to float noise
    predicted = [LABELS[i] for i in scores.argmax(axis=1)]
    truth = predicted[:-1] + [next(x for x in LABELS if x != predicted[-1])]  # one clip against the model: 3/4
    task = ZeroShotInMemory(clips, *index_labels(truth))
    result = run_benchmark(enc, [task], tmp_path, batch_size=3, show_progress_bar=False)
    assert result == {"MockAudioZeroshotClassification": pytest.approx(0.75, abs=1e-12)}
    folder = tmp_path / "results" / enc.info["name"].replace("/", "__") / enc.info["revision"]
    saved = json.loads((folder / "MockAudioZeroshotClassification.json").read_text())
    assert saved["scores"]["test"][0]["accuracy"] == pytest.approx(0.75, abs=1e-12)
    meta = json.loads((folder / "model_meta.json").read_text())
    assert meta["embed_dim"] == 32 and meta["license"] == enc.info["license"]
    assert meta["modalities"] == ["audio", "text"]


@needs_mteb
def test_mteb_text_to_audio_retrieval_scores_the_known_answer(encoders, tmp_path):
    """Each query's relevant clip is clapkit's best match for it, except the last query's, its worst: nDCG@10 is
    (1 + 1 + 1/log2(1 + rank of the worst, 4)) / 3."""
    enc = encoders["pretrained"]
    clips = mono_rows()
    scores = clapkit_scores(enc, clips, LABELS).T  # (queries, clips)
    ordered = np.sort(scores, axis=1)
    assert np.diff(ordered, axis=1).min() > 1e-4  # every rank is robust to float noise
    relevant = scores.argmax(axis=1).tolist()
    relevant[-1] = int(scores[-1].argmin())
    task = TextToAudioInMemory(list(LABELS), clips, relevant)
    result = run_benchmark(enc, [task], tmp_path, batch_size=2, show_progress_bar=False)
    expected = (1 + 1 + 1 / math.log2(1 + len(clips))) / 3
    assert result == {"MockAny2AnyRetrievalT2A": pytest.approx(expected, abs=1e-5)}


@needs_mteb
def test_cli_runs_mteb_on_a_clapkit_model(files, tmp_path, monkeypatch, capsys):
    """`python -m clapkit.mteb_model --model DIR --tasks ...`, with the task lookup answered in memory."""
    model_dir, _ = files
    enc = ClapkitMTEBEncoder.from_pretrained(model_dir)
    clips = mono_rows()
    truth = [LABELS[i] for i in clapkit_scores(enc, clips, LABELS).argmax(axis=1)]
    asked = []
    monkeypatch.setattr(mteb, "get_tasks",
                        lambda tasks: asked.append(tasks) or [ZeroShotInMemory(clips, *index_labels(truth))])
    assert main(["--model", str(model_dir), "--tasks", "MockAudioZeroshotClassification", "--results",
                 str(tmp_path), "--batch-size", "4", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert asked == [["MockAudioZeroshotClassification"]]
    assert out == {"model": "clapkit/tiny-clap", "revision": enc.info["revision"],
                   "main_scores": {"MockAudioZeroshotClassification": 1.0}}
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--msclap", "x.pth"])  # one source only
