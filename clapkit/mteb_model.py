"""A clapkit CLAP model as an MTEB audio-text encoder, for MAEB (MTEB's audio benchmark).  Needs ``clapkit[mteb]``.

    import mteb
    from clapkit.mteb_model import ClapkitMTEBEncoder
    model = ClapkitMTEBEncoder.from_pretrained("models/clap")                          # a save_pretrained dir
    model = ClapkitMTEBEncoder.from_msclap("CLAP_weights_2023.pth", version="2023")  # the official weights
    mteb.evaluate(model, mteb.get_benchmark("MAEB(v1)"), encode_kwargs={"batch_size": 16})

or ``python -m clapkit.mteb_model --model models/clap`` (``--help``).

mteb hands ``encode`` a ``torch.utils.data.DataLoader`` whose batches are dicts of lists: ``batch["text"]`` holds
strings, ``batch["audio"]`` items with ``item["array"]`` (samples,) or (channels, samples) and
``item["sampling_rate"]`` (plain dicts, or the ``datasets`` AudioDecoders of MAEB's datasets, which answer the same
keys).  Each clip goes through ``CLAP.load_audio`` at its *own* rate: channels averaged, resampled to the model's
frontend rate with ``clapkit.audio.resample``, repeat-padded or centre-cropped to the model's clip length; so an
embedding here is exactly ``CLAP.get_audio_embeddings`` of that clip, deterministic.  Texts go through the model's
tokenizer as ``CLAP.get_text_embeddings``.  Both are L2-normalised; similarity is cosine.

Why not mteb's own MS-CLAP wrapper: up to mteb 2.24.3 its ``MSClapWrapper`` resampled every clip to a hard-coded
48 kHz, wrote it to a WAV and called msclap with ``resample=False``, so MS-CLAP 2023 (44.1 kHz, msclap's
``config_2023.yml``) read 48 kHz audio as 44.1 kHz: every frequency 8 % low, and 6.43 s of audio in its 7 s window
(embeddings-benchmark/mteb pull request #5404; 2.24.4 takes the rate from msclap's config).  It still goes through a
temporary WAV per clip and keeps the *first* 7 s of a longer clip (clapkit: the centre 7 s, as everywhere in
clapkit).  This wrapper takes the rate from the model's own frontend config, so no rate is written twice.

Importing this module does not import mteb (nor does ``import clapkit``); only ``mteb_model_meta`` and the CLI do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .api import CLAP
from .file_hash import file_sha256

__all__ = [
    "EMBEDDED_CORPUS",
    "MSCLAP_2023_TRAINING_TASKS",
    "ClapkitMTEBEncoder",
    "main",
    "run_benchmark",
]

MAEB = "MAEB(v1)"
MSCLAP_REFERENCE = "https://github.com/microsoft/CLAP"
MSCLAP_2023_CITATION = """@inproceedings{elizalde2024clap,
  title     = {Natural Language Supervision for General-Purpose Audio Representations},
  author    = {Elizalde, Benjamin and Deshmukh, Soham and Wang, Huaming},
  booktitle = {ICASSP 2024 - 2024 IEEE International Conference on Acoustics, Speech and Signal Processing},
  year      = {2024},
  note      = {arXiv:2309.05767}
}"""
# What a model trained by this project's pipeline (`dvc repro`, preset embedded) has seen: docs/data.md.
EMBEDDED_CORPUS = (
    "clapkit's embedded corpus (`clapkit data build`, pinned by data.dvc): recordings shipped in Debian packages "
    "(speech, music, game/UI and environmental sounds; GPL / CC-BY(-SA) / CC0 / MIT) and synthesised labelled audio "
    "(espeak-ng, flite, fluidsynth, sox); none of MTEB's datasets"
)
MSCLAP_2023_TRAINING_DATA = (
    "4.6M audio-text pairs (MS-CLAP 2023 paper): WavCaps, AudioSet, FSD50K, Clotho, AudioCaps, MACS, WavText5k, "
    "SoundDescs, NSynth, FMA, MOSI, MELD, IEMOCAP, MOSEI, MSP-Podcast, CochlScene, LJSpeech, EPIC-Kitchens, "
    "Kinetics-700, findsounds.com"
)
# MTEB tasks built on those datasets, superseded versions included (MAEB(v1) lists ClothoT2ARetrieval and
# MACST2ARetrieval, not their .v2): the training splits were used, and MTEB flags any overlap of datasets, so a
# leaderboard does not count these as zero-shot for the official weights.  tests/test_mteb_model.py checks that
# every name is an mteb task.
MSCLAP_2023_TRAINING_TASKS = frozenset({
    "AudioCapsA2TRetrieval", "AudioCapsT2ARetrieval", "AudioCapsAVVA2TRetrieval", "AudioCapsAVVT2ARetrieval",
    "AudioSet", "AudioSetMini", "AudioSetStrongA2TRetrieval", "AudioSetStrongA2TRetrieval.v2",
    "AudioSetStrongT2ARetrieval", "AudioSetStrongT2ARetrieval.v2",
    "ClothoA2TRetrieval", "ClothoA2TRetrieval.v2", "ClothoT2ARetrieval", "ClothoT2ARetrieval.v2",
    "ClothoMomentRetrieval",
    "FSD50K",
    "IEMOCAPEmotion", "IEMOCAPGender",
    "Kinetics700VA",
    "MACSA2TRetrieval", "MACSA2TRetrieval.v2", "MACST2ARetrieval", "MACST2ARetrieval.v2",
    "MELDEmotionAudioVideoClustering",
    "NSynth", "NSynthInstrumentFamilyClustering",
    "SoundDescsA2TRetrieval", "SoundDescsT2ARetrieval",
})


def _file_revision(path: Path) -> str:
    """The first 16 hex digits of the weights file's sha256: results are filed under the exact weights."""
    return file_sha256(path)[:16]


def _batches(inputs: Iterable[Mapping[str, Any]], show_progress_bar: bool, desc: str):
    if not show_progress_bar:
        return inputs
    from tqdm.auto import tqdm

    return tqdm(inputs, desc=desc)


class ClapkitMTEBEncoder:
    """mteb's ``EncoderProtocol`` for audio and text around a ``clapkit.CLAP``.

    ``info`` holds the model's metadata as plain values (no mteb needed); ``mteb_model_meta`` is the same as an
    ``mteb.ModelMeta`` whose loader rebuilds this encoder from the same files.
    """

    def __init__(self, clap: CLAP, info: Mapping[str, Any]):
        self.clap = clap
        self.model = clap  # mteb wrappers expose the wrapped model as .model
        self.info = dict(info)
        self._meta = None

    # --- construction --------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        training_data: str | None = EMBEDDED_CORPUS,
        training_datasets: Iterable[str] | None = (),
        license: str = "not specified",
        release_date: str | None = None,
    ) -> "ClapkitMTEBEncoder":
        """A ``CLAP.save_pretrained`` directory.

        The defaults describe a model trained by this project's pipeline (``dvc repro``) on the embedded corpus:
        no MTEB dataset was seen (``training_datasets`` empty), and no single licence covers weights learnt from
        its mix of GPL / CC-BY(-SA) / CC0 / MIT recordings, so none is claimed.  A directory holding other weights
        (e.g. the official ones re-saved) should pass its own ``training_data``, ``training_datasets`` (MTEB task
        names; None = unknown) and ``license``, or be loaded with ``from_msclap``.
        """
        directory = Path(directory)
        clap = CLAP.from_pretrained(directory, device=device)
        description = str(clap.config.get("description", "")).strip()
        info = cls._describe(
            clap,
            name=name or f"clapkit/{directory.resolve().name}",
            revision=_file_revision(directory / "model.safetensors"),
            license=license,
            release_date=release_date,
            training_data=training_data,
            training_datasets=None if training_datasets is None else set(training_datasets),
            reference=None,
            adapted_from=None,
            loader_kwargs={"source": str(directory.resolve()), "kind": "pretrained"},
            description=description,
        )
        return cls(clap, info)

    @classmethod
    def from_msclap(
        cls,
        path: str | Path,
        version: str = "2023",
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        bert_vocab: str | Path | None = None,
        config: str | Path | Mapping[str, Any] | None = None,
    ) -> "ClapkitMTEBEncoder":
        """An official msclap checkpoint (``CLAP_weights_2023.pth``), loaded strictly by ``load_msclap``.

        Filed in mteb as ``clapkit/msclap-<version>`` (adapted from mteb's ``microsoft/msclap-<version>``: same
        weights, clapkit's deterministic preprocessing), under the checkpoint's sha256 as revision.  ``config``
        overrides the architecture, as in ``CLAP.from_msclap`` (tests use a tiny one).
        """
        path = Path(path)
        version = str(version)
        clap = CLAP.from_msclap(path, version, device=device, bert_vocab=bert_vocab, config=config)
        is_2023 = version == "2023"
        info = cls._describe(
            clap,
            name=name or f"clapkit/msclap-{version}",
            revision=_file_revision(path),
            # msclap's code and the GitHub release are MIT (mteb's own entry says "mit" too); the Hugging Face
            # model card of microsoft/msclap tags the weights ms-pl, which mteb's licence list does not have.
            license="mit",
            release_date="2023-09-01" if is_2023 else "2022-12-01",
            training_data=MSCLAP_2023_TRAINING_DATA if is_2023 else "128k audio-text pairs (MS-CLAP 2022 paper)",
            training_datasets=set(MSCLAP_2023_TRAINING_TASKS) if is_2023 else None,
            reference=MSCLAP_REFERENCE,
            adapted_from=f"microsoft/msclap-{version}",
            loader_kwargs={"source": str(path.resolve()), "kind": "msclap", "version": version,
                           **({"bert_vocab": str(bert_vocab)} if bert_vocab is not None else {}),
                           **({"config": config if isinstance(config, Mapping) else str(config)}
                              if config is not None else {})},
            description=str(clap.config.get("description", "")).strip(),
        )
        if is_2023:
            info["public_training_code"] = MSCLAP_REFERENCE
        return cls(clap, info)

    @staticmethod
    def _describe(clap: CLAP, **fields: Any) -> dict[str, Any]:
        n_parameters = sum(p.numel() for p in clap.model.parameters())
        frontend = clap.model.frontend_config
        return {
            **fields,
            "embed_dim": int(clap.config["embed_dim"]),
            "n_parameters": n_parameters,
            "memory_usage_mb": round(sum(p.numel() * p.element_size() for p in clap.model.parameters()) / 2**20, 1),
            "max_tokens": int(clap.tokenizer.max_length),
            "sample_rate": int(frontend.sample_rate),
            "clip_seconds": float(frontend.clip_seconds),
            "languages": ["eng-Latn"],
            "modalities": ["audio", "text"],
            "framework": ["PyTorch"],
            "similarity_fn_name": "cosine",
            "open_weights": True,
            "public_training_code": None,
            "citation": MSCLAP_2023_CITATION,
        }

    # --- mteb ----------------------------------------------------------------------------------------------

    @property
    def mteb_model_meta(self):
        if self._meta is None:
            from mteb.models import ModelMeta

            i = self.info
            self._meta = ModelMeta(
                loader=_load_for_mteb,
                loader_kwargs=dict(i["loader_kwargs"]),
                name=i["name"],
                revision=i["revision"],
                release_date=i["release_date"],
                languages=list(i["languages"]),
                n_parameters=i["n_parameters"],
                memory_usage_mb=i["memory_usage_mb"],
                max_tokens=i["max_tokens"],
                embed_dim=i["embed_dim"],
                license=i["license"],
                open_weights=i["open_weights"],
                public_training_code=i["public_training_code"],
                public_training_data=i["training_data"],
                framework=list(i["framework"]),
                reference=i["reference"],
                similarity_fn_name=i["similarity_fn_name"],
                use_instructions=False,
                training_datasets=None if i["training_datasets"] is None else set(i["training_datasets"]),
                adapted_from=i["adapted_from"],
                modalities=list(i["modalities"]),
                citation=i["citation"],
            )
        return self._meta

    @mteb_model_meta.setter
    def mteb_model_meta(self, meta) -> None:  # ModelMeta.load_model() files its own copy on the model
        self._meta = meta

    def encode(
        self,
        inputs: Iterable[Mapping[str, Any]],
        *,
        task_metadata: Any = None,
        hf_split: str | None = None,
        hf_subset: str | None = None,
        prompt_type: Any = None,
        show_progress_bar: bool = False,
        **kwargs: Any,
    ) -> np.ndarray:
        """(N, embed_dim) float32 embeddings of every batch of ``inputs`` (an mteb DataLoader), in order.

        A batch with ``audio`` gives audio embeddings, one with ``text`` text embeddings; a batch with both (a
        multimodal document) gives their sum, as mteb's CLAP wrappers do.
        """
        out = []
        for batch in _batches(inputs, show_progress_bar, "clapkit encode"):
            parts = []
            if batch.get("audio") is not None:
                parts.append(self._embed_audio(batch["audio"]))
            if batch.get("text") is not None:
                parts.append(self._embed_text(batch["text"]))
            if not parts:
                raise ValueError(f"batch has neither 'audio' nor 'text' (keys: {sorted(batch)})")
            if len(parts) == 2 and parts[0].shape[0] != parts[1].shape[0]:
                raise ValueError(f"batch has {parts[0].shape[0]} clips but {parts[1].shape[0]} texts")
            out.append(parts[0] if len(parts) == 1 else parts[0] + parts[1])
        if not out:
            return np.zeros((0, self.info["embed_dim"]), dtype=np.float32)
        return torch.cat(out).numpy()

    def get_audio_embeddings(self, inputs: Iterable[Mapping[str, Any]], show_progress_bar: bool = False,
                             **kwargs: Any) -> np.ndarray:
        """Audio embeddings of every ``batch["audio"]`` of ``inputs`` (mteb's per-modality method)."""
        out = [self._embed_audio(b["audio"]) for b in _batches(inputs, show_progress_bar, "clapkit audio")]
        return torch.cat(out).numpy() if out else np.zeros((0, self.info["embed_dim"]), dtype=np.float32)

    def get_text_embeddings(self, inputs: Iterable[Mapping[str, Any]], show_progress_bar: bool = False,
                            **kwargs: Any) -> np.ndarray:
        """Text embeddings of every ``batch["text"]`` of ``inputs`` (mteb's per-modality method)."""
        out = [self._embed_text(b["text"]) for b in _batches(inputs, show_progress_bar, "clapkit text")]
        return torch.cat(out).numpy() if out else np.zeros((0, self.info["embed_dim"]), dtype=np.float32)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """(N1, N2) cosine similarities (what mteb's ``cos_sim`` returns, a float32 tensor)."""
        a, b = _as_2d(embeddings1), _as_2d(embeddings2)
        return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        a, b = _as_2d(embeddings1), _as_2d(embeddings2)
        return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(dim=-1)

    # --- the two towers ------------------------------------------------------------------------------------

    def load_audio(self, items: Sequence[Any]) -> torch.Tensor:
        """mteb audio items -> (N, clip_samples) float32: the waveforms the model sees, at its rate."""
        return torch.stack([self._clip(item, i) for i, item in enumerate(items)])

    def _clip(self, item: Any, index: int) -> torch.Tensor:
        """One mteb audio item -> the model's (clip_samples,) waveform, exactly as ``CLAP.load_audio``."""
        try:
            array, rate = item["array"], item["sampling_rate"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"audio item {index}: expected 'array' and 'sampling_rate' ({err})") from err
        wave = array if isinstance(array, torch.Tensor) else np.asarray(array, dtype=np.float32)
        if rate is None or int(rate) <= 0:
            raise ValueError(f"audio item {index}: sampling_rate must be a positive number of Hz, got {rate!r}")
        try:
            return self.clap.load_audio([wave], sample_rate=int(rate))[0]
        except ValueError as err:
            raise ValueError(f"audio item {index} ({int(rate)} Hz): {err}") from err

    @torch.no_grad()
    def _embed_audio(self, items: Sequence[Any]) -> torch.Tensor:
        waves = self.load_audio(items)
        emb = self.clap.model.encode_audio(waves.to(self.clap.device)).float().cpu()
        return F.normalize(emb, dim=-1)

    def _embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [str(t) for t in texts]
        return self.clap.get_text_embeddings(texts, batch_size=max(len(texts), 1))


def _as_2d(x: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32)
    return t.unsqueeze(0) if t.ndim == 1 else t


def _load_for_mteb(model_name: str, revision: str | None = None, *, source: str, kind: str,
                   version: str = "2023", bert_vocab: str | None = None, config: Any = None,
                   device: str | None = None, **kwargs: Any) -> ClapkitMTEBEncoder:
    """``ModelMeta.loader``: the same files again (``meta.load_model()``); refuses other weights."""
    if kind == "pretrained":
        encoder = ClapkitMTEBEncoder.from_pretrained(source, name=model_name, device=device)
    elif kind == "msclap":
        encoder = ClapkitMTEBEncoder.from_msclap(source, version, name=model_name, device=device,
                                                 bert_vocab=bert_vocab, config=config)
    else:
        raise ValueError(f"unknown clapkit model kind {kind!r} (expected 'pretrained' or 'msclap')")
    if revision is not None and encoder.info["revision"] != revision:
        raise ValueError(f"{source}: weights have revision {encoder.info['revision']}, the metadata says {revision}")
    return encoder


# --- running a benchmark -------------------------------------------------------------------------------------


def run_benchmark(encoder: ClapkitMTEBEncoder, tasks: Any, results: str | Path, batch_size: int = 16,
                  overwrite: bool = False, show_progress_bar: bool = True) -> dict[str, float]:
    """``mteb.evaluate`` of ``encoder`` on ``tasks`` (a Benchmark or tasks); results (one JSON per task plus
    model_meta.json) under ``results/results/<name>/<revision>/``.  Returns ``{task name: main score}``."""
    import mteb

    cache = mteb.ResultCache(cache_path=Path(results))
    result = mteb.evaluate(
        encoder,
        tasks,
        encode_kwargs={"batch_size": batch_size, "show_progress_bar": show_progress_bar},
        cache=cache,
        overwrite_strategy="always" if overwrite else "only-missing",
        show_progress_bar=show_progress_bar,
    )
    return {r.task_name: float(r.get_score()) for r in result.task_results}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clapkit.mteb_model",
        description="Evaluate a clapkit model (or the official MS-CLAP weights) on MAEB or other MTEB tasks. "
                    "Downloads the tasks' datasets from the Hugging Face Hub: needs network access and "
                    "`pip install -e '.[mteb]'` (torchcodec + FFmpeg libraries to decode them).",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a CLAP.save_pretrained directory (e.g. models/clap)")
    src.add_argument("--msclap", help="an official checkpoint, e.g. CLAP_weights_2023.pth")
    parser.add_argument("--msclap-version", default="2023", choices=("2023", "2022"))
    parser.add_argument("--bert-vocab", help="bert-base-uncased vocab.txt (msclap 2022 only)")
    parser.add_argument("--name", help="model name in the results (default clapkit/<dir name> or clapkit/msclap-<v>)")
    parser.add_argument("--benchmark", default=MAEB, help=f"an mteb benchmark name (default {MAEB!r})")
    parser.add_argument("--tasks", nargs="+", help="mteb task names instead of a benchmark")
    parser.add_argument("--results", default="results/mteb", help="results folder (default results/mteb)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="rerun tasks that already have results")
    args = parser.parse_args(argv)

    try:
        import mteb
    except ImportError:
        parser.error("mteb is not installed: pip install -e '.[mteb]'")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.model:
        encoder = ClapkitMTEBEncoder.from_pretrained(args.model, name=args.name, device=device)
    else:
        encoder = ClapkitMTEBEncoder.from_msclap(args.msclap, args.msclap_version, name=args.name, device=device,
                                                 bert_vocab=args.bert_vocab)
    tasks = mteb.get_tasks(tasks=args.tasks) if args.tasks else mteb.get_benchmark(args.benchmark)
    scores = run_benchmark(encoder, tasks, args.results, args.batch_size, args.overwrite)
    print(json.dumps({"model": encoder.info["name"], "revision": encoder.info["revision"], "main_scores": scores},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
