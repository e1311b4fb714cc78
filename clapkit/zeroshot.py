"""Zero-shot classification: one function for the validation inside ``train`` and for the ``evaluate`` stage.

prompts -> text classifier -> scores:

1. ``class_prompts(classes, template)``: each class name written into the task's prompt (``clapkit.text.
   apply_prompt``: ``"dog_bark"`` reads ``"dog bark"``).  The prompt rule, ``embedded_task_prompt``: an embedded
   task is prompted with its first caption template (``clapkit.data.captions.TASK_TEMPLATES``), the wording its
   training captions start from; a paper task carries its own (``clapkit.tasks``: msclap's "this is the sound of
   {}" unless the label alone would not name a sound).
2. ``text_classifier``: the prompts' text embeddings, one row per class.
3. ``zero_shot_logits``: the (clips, classes) logits exp(logit_scale) * cosine of the audio embeddings against it.

Metrics are computed on these logits.  The paper turns them into a softmax over classes (single-label) or a sigmoid
per class (multi-label); both are monotone where the metrics rank (a row for accuracy and the top-k F1, a column
for mAP under the sigmoid), and in float32 the sigmoid saturates (sigmoid(20) == 1.0), which would tie clips that
the logits rank.  (``CLAP.zero_shot_classify`` gives the paper's probabilities for display.)

Precision.  One setting, ``evaluate.precision`` (default ``DEFAULT_PRECISION``), is the autocast of both towers in
every zero-shot evaluation: the evaluate stage and the validation of ``train`` (which reads that key), so the
numbers of validation and test are one protocol.  ``ClapEmbedder`` applies it.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol, Sequence

import torch

__all__ = ["DEFAULT_PRECISION", "Embedder", "ClapEmbedder", "embedded_task_prompt", "class_prompts",
           "text_classifier", "zero_shot_logits"]  # fmt: skip

# fp32: deterministic on every device and, on CPUs without native bf16 (this one), the fastest: emulated bf16 ran
# 5-40x slower (benchmarks/README.md).  On GPUs, "auto" (bf16) is faster and moves embeddings slightly.
DEFAULT_PRECISION = "fp32"
FALLBACK_PROMPT = "this is the sound of {}"  # msclap's, for a corpus task without a caption template


class Embedder(Protocol):
    """What the protocols need from a model (``ClapEmbedder``; tests use an oracle with the same methods)."""

    key: str  # identifies the model's weights, config and precision: the embedding cache is keyed by it
    sample_rate: int

    def load(self, item: Any, sample_rate: int | None = None) -> torch.Tensor: ...  # one clip, model rate/length

    def audio(self, waves: torch.Tensor) -> torch.Tensor: ...  # (B, samples) -> (B, D), L2-normalised

    def text(self, texts: Sequence[str]) -> torch.Tensor: ...  # -> (N, D), L2-normalised

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor: ...  # (Na, Nt)


class ClapEmbedder:
    """A ``clapkit.CLAP`` as an ``Embedder``: batched, both towers under the autocast of ``precision`` (auto | fp32
    | bf16 | fp16, as ``train.precision``)."""

    def __init__(self, clap, batch_size: int = 64, precision: str = DEFAULT_PRECISION):
        from .training import Precision

        self.clap = clap
        self.batch_size = batch_size
        self.precision = Precision(precision, clap.device)
        self.sample_rate = clap.sample_rate

    @functools.cached_property
    def key(self) -> str:  # hashing every weight takes a moment: only the embedding cache asks for it
        from .training_state import model_fingerprint

        return model_fingerprint(dict(self.clap.config, tokenizer=self.clap.tokenizer.spec(),
                                      precision=self.precision.name), self.clap.model.state_dict())  # fmt: skip

    def autocast(self):
        return self.precision.autocast()

    def load(self, item: Any, sample_rate: int | None = None) -> torch.Tensor:
        return self.clap.load_audio([item], sample_rate=sample_rate)[0]

    def audio(self, waves: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.clap.get_audio_embeddings(waves, batch_size=self.batch_size).float()

    def text(self, texts: Sequence[str]) -> torch.Tensor:
        with self.autocast():
            return self.clap.get_text_embeddings(list(texts), batch_size=self.batch_size).float()

    def logits(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.clap.similarity(audio, text)


def embedded_task_prompt(task: str) -> str:
    """The prompt of a task of the embedded corpus: its first caption template."""
    from .data.captions import TASK_TEMPLATES

    return TASK_TEMPLATES.get(task, [FALLBACK_PROMPT])[0]


def class_prompts(classes: Sequence[str], template: str) -> list[str]:
    from .text import apply_prompt

    return apply_prompt(classes, template)


def text_classifier(embedder: Embedder, classes: Sequence[str], template: str) -> torch.Tensor:
    """(C, D) text embeddings of the class prompts: the zero-shot classifier's weights."""
    classes = [str(c) for c in classes]
    if not classes:
        raise ValueError("no classes given")
    if len(set(classes)) != len(classes):
        raise ValueError("classes must be distinct")
    return embedder.text(class_prompts(classes, template))


def zero_shot_logits(embedder: Embedder, audio: torch.Tensor, classes: Sequence[str], template: str) -> torch.Tensor:
    """(N, C) logits of N audio embeddings against the prompts of ``classes`` in ``template``."""
    return embedder.logits(audio, text_classifier(embedder, classes, template))

