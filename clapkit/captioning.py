"""Audio captioning with a clapcap model: msclap's beam search, the ``CaptionModel`` API and ``clapkit caption``.

    cap = CaptionModel.from_msclap("clapcap_weights_2023.pth")   # strict import, report in .msclap_report
    cap.caption(["dog.wav", "rain.flac"])                         # ["A dog barks ", ...] (msclap's strings)
    cap.caption(files, beam_size=1)                               # greedy

    clapkit caption --model clapcap_weights_2023.pth dog.wav rain.flac     # path<TAB>caption per file
    clapkit caption --model runs/clapcap-tiny.pth --config my-clapcap.json --greedy *.wav

Decoding is msclap 1.3.4's ``CLAPWrapper._generate_beam`` step for step: log-softmax via ``softmax().log()`` of
the last logits divided by ``temperature``; the first step takes the top ``beam_size`` tokens; later steps rank
``(score + logprob) / length`` over all beams x vocabulary, a stopped beam only extends with token 0 at no cost
and no length; at most ``entry_length`` tokens; the best beam by mean log-probability wins.  The stop token is
msclap's ``tokenizer.encode(' <|endoftext|>')[0]``, i.e. id 220, the bare space *before* ``<|endoftext|>`` (msclap
trained on captions ending in ``' <|endoftext|>'``).  The caption is the decoded tokens up to and including the
stop token, ``.capitalize()``d, so msclap's captions end with a space and are lower-case after the first letter;
``caption`` returns exactly that, the CLI prints it without the trailing space.  ``beam_size=1`` is greedy
decoding through the same code (msclap has no separate greedy path).  Unlike msclap, GPT-2 reuses its key/value
cache between steps instead of re-running the whole sequence (same tokens; logits equal to float rounding).

Audio: as ``clapkit.CLAP`` (mono by averaging channels, resampled to 44.1 kHz, repeat-padded to 7 s, long clips
*centre*-cropped).  msclap concatenates channels and crops long clips at random, even at inference; on a mono
clip of at most 7 s the two preprocessings are the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .caption_vocab import TokenSubset

__all__ = ["CaptionModel", "MSCLAP_STOP_TEXT", "beam_search", "register"]

MSCLAP_STOP_TEXT = " <|endoftext|>"  # msclap's stop_token argument; its first token (220) is what stops
MSCLAP_DEFAULTS = {"beam_size": 5, "entry_length": 67, "temperature": 1.0}  # generate_caption's defaults


@torch.no_grad()
def beam_search(gpt, prefix: torch.Tensor, stop_token: int, beam_size: int = 5, entry_length: int = 67,
                temperature: float = 1.0) -> list[tuple[list[int], float]]:
    """msclap's ``_generate_beam`` from one (1, P, n_embd) prefix: ``[(token ids, mean log-prob)]``, best first.

    The token lists are msclap's ``output[:length]``: the stop token included, beam padding excluded.
    """
    from transformers import DynamicCache

    if prefix.ndim != 3 or prefix.shape[0] != 1:
        raise ValueError(f"beam_search takes one prefix of shape (1, P, n_embd), got {tuple(prefix.shape)}")
    if beam_size < 1 or entry_length < 1:
        raise ValueError(f"beam_size and entry_length must be >= 1, got {beam_size}, {entry_length}")
    device = prefix.device
    seq_lengths = torch.ones(beam_size, device=device)
    is_stopped = torch.zeros(beam_size, device=device, dtype=torch.bool)
    tokens = scores = None
    cache, step_input = DynamicCache(), prefix
    for _ in range(entry_length):
        out = gpt(inputs_embeds=step_input, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        logits = out.logits[:, -1, :] / (temperature if temperature > 0 else 1.0)
        logits = logits.softmax(-1).log()  # not log_softmax: msclap's -inf for underflowing probabilities
        if scores is None:  # first step: the beams are the top tokens after the prefix
            scores, next_tokens = logits.topk(beam_size, -1)
            next_tokens, scores = next_tokens.permute(1, 0), scores.squeeze(0)
            source = torch.zeros(beam_size, dtype=torch.long, device=device)  # all continue the one prefix
            tokens = next_tokens
        else:
            logits[is_stopped] = -float("inf")
            logits[is_stopped, 0] = 0  # a stopped beam survives unchanged (token 0 is cut off at decoding)
            scores_sum = scores[:, None] + logits
            seq_lengths[~is_stopped] += 1
            scores_sum_average, next_tokens = (scores_sum / seq_lengths[:, None]).view(-1).topk(beam_size, -1)
            source = next_tokens // scores_sum.shape[1]
            seq_lengths = seq_lengths[source]
            next_tokens = (next_tokens % scores_sum.shape[1]).unsqueeze(1)
            tokens = torch.cat((tokens[source], next_tokens), dim=1)
            scores = scores_sum_average * seq_lengths
            is_stopped = is_stopped[source]
        cache.reorder_cache(source)
        step_input = gpt.transformer.wte(next_tokens.view(-1)).view(beam_size, 1, -1)
        is_stopped = is_stopped | next_tokens.view(-1).eq(stop_token)
        if is_stopped.all():
            break
    scores = scores / seq_lengths
    order = scores.argsort(descending=True)
    return [(tokens[i, : int(seq_lengths[i])].tolist(), float(scores[i])) for i in order.tolist()]


class CaptionModel:
    """A ClapCapModel with its GPT-2 tokenizer, for captioning files or waveforms."""

    def __init__(self, model, tokenizer=None, device: str | torch.device | None = None):
        from .text import TextTokenizer

        self.model = model.eval()
        self.tokenizer = tokenizer or TextTokenizer.from_spec(model.config["tokenizer"])
        if self.tokenizer.kind != "gpt2":
            raise ValueError(f"clapcap decodes GPT-2 ids; got a {self.tokenizer.kind} tokenizer")
        self.stop_token = self.tokenizer.tokenizer.encode(MSCLAP_STOP_TEXT).ids[0]  # 220, as msclap computes it
        # A decoder trained on a subset of GPT-2's ids (the caption stage's: clapkit.caption_vocab) numbers them
        # 0..V-1; its config lists the GPT-2 id of each.
        subset = model.config["tokenizer"].get("subset")
        self.vocab = TokenSubset(subset) if subset else None
        if self.vocab is not None:
            if len(self.vocab) != model.gpt.config.vocab_size:
                raise ValueError(f"tokenizer.subset has {len(self.vocab)} ids, the decoder {model.gpt.config.vocab_size}")
            self.stop_token = self.vocab.compact_of[self.stop_token]
        self.msclap_report = None  # set by from_msclap
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)

    @classmethod
    def from_msclap(cls, path: str | Path, config: str | Path | Mapping[str, Any] | None = None,
                    device: str | torch.device | None = None) -> "CaptionModel":
        """``clapcap_weights_2023.pth`` (or a file in its layout for ``config``), loaded strictly and offline."""
        from .clapcap_weights import load_clapcap

        model, report = load_clapcap(path, config=config)
        captioner = cls(model, device=device)
        captioner.msclap_report = report
        return captioner

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> "CaptionModel":
        """A captioner saved by the caption stage (``config.json`` + ``model.safetensors``), loaded strictly."""
        from safetensors.torch import load_file

        from .errors import WeightsError
        from .msclap_weights import key_problems
        from .models.clapcap import ClapCapModel

        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise WeightsError(path, "missing (a captioner folder holds config.json and model.safetensors)")
        model = ClapCapModel(json.loads(config_path.read_text(encoding="utf-8")))
        state = load_file(str(weights_path))
        if "gpt.lm_head.weight" not in state and "gpt.transformer.wte.weight" in state:
            state["gpt.lm_head.weight"] = state["gpt.transformer.wte.weight"]  # GPT-2's tied head, saved once
        expected = model.state_dict()
        problems = key_problems(state, {k: k for k in state}, expected, list(expected), [])
        if problems:
            raise WeightsError(weights_path, f"does not match {config_path.name}", problems)
        model.load_state_dict(state, strict=True)
        return cls(model, device=device)

    @classmethod
    def load(cls, model: str | Path, config: str | Path | Mapping[str, Any] | None = None,
             device: str | torch.device | None = None) -> "CaptionModel":
        """A clapcap ``.pth`` (``config``: its model config, default clapcap-2023) or a caption-stage folder; a CLAP
        folder (no ``mapper`` in its config.json) raises ValueError saying what to pass."""
        path = Path(model)
        if path.is_dir():
            config_path = path / "config.json"
            if config_path.is_file() and "mapper" not in json.loads(config_path.read_text(encoding="utf-8")):
                raise ValueError(f"{path} is a CLAP model (its config.json has no 'mapper'): captioning needs a "
                                 f"captioner, msclap's clapcap_weights_2023.pth or a folder saved by the caption stage")
            return cls.from_pretrained(path, device=device)  # a missing file is named there
        return cls.from_msclap(path, config=config, device=device)  # as is a missing .pth

    @classmethod
    def from_config(cls, config: str | Path | Mapping[str, Any], seed: int = 0,
                    device: str | torch.device | None = None) -> "CaptionModel":
        """A freshly initialised (seeded) model, e.g. to train."""
        from .models.clapcap import ClapCapModel

        return cls(ClapCapModel.from_config(config, seed=seed), device=device)

    def load_audio(self, files: Sequence[str | Path]) -> torch.Tensor:
        """(N, clip_samples) mono waveforms; an unreadable file raises ``AudioReadError`` naming it."""
        from .audio import load_clip

        return torch.stack([load_clip(f, self.model.frontend_config, crop="center") for f in files])

    @torch.no_grad()
    def prefix(self, wave: torch.Tensor) -> torch.Tensor:
        """(N, samples) at the model's rate -> (N, prefix_length, n_embd) GPT-2 prefixes."""
        return self.model.prefix(wave.to(self.device)).float()

    def decode(self, ids: Sequence[int]) -> str:
        """msclap's ``tokenizer.decode``: special tokens kept, no clean-up of spaces (transformers >= 5)."""
        ids = self.vocab.to_gpt2(list(ids)) if self.vocab is not None else list(ids)
        return self.tokenizer.tokenizer.decode(ids, skip_special_tokens=False)

    def caption_prefixes(self, prefixes: torch.Tensor, beam_size: int = 5, entry_length: int = 67,
                         temperature: float = 1.0) -> list[str]:
        """Captions of (N, prefix_length, n_embd) GPT-2 prefixes (msclap's strings: see the module docstring)."""
        return [self.decode(beam_search(self.model.gpt, p[None], self.stop_token, beam_size, entry_length,
                                        temperature)[0][0]).capitalize() for p in prefixes]

    @torch.no_grad()
    def caption_embeddings(self, embeddings: torch.Tensor, beam_size: int = 5, entry_length: int = 67,
                           temperature: float = 1.0) -> list[str]:
        """Captions of (N, embed_dim) audio embeddings as ``model.audio_embedding`` gives them (L2-normalised)."""
        prefixes = self.model.mapper(embeddings.to(self.device)).float()
        return self.caption_prefixes(prefixes, beam_size, entry_length, temperature)

    def caption_waves(self, wave: torch.Tensor, beam_size: int = 5, entry_length: int = 67,
                      temperature: float = 1.0) -> list[str]:
        """Captions of (N, samples) waveforms at the model's rate (msclap's strings: see the module docstring)."""
        return self.caption_prefixes(self.prefix(wave), beam_size, entry_length, temperature)

    def caption(self, files: str | Path | Sequence[str | Path], beam_size: int = 5, entry_length: int = 67,
                temperature: float = 1.0) -> list[str]:
        """One caption per audio file, msclap's ``generate_caption`` defaults; ``beam_size=1`` is greedy."""
        files = [files] if isinstance(files, (str, Path)) else list(files)
        if not files:
            raise ValueError("no audio files given")
        return self.caption_waves(self.load_audio(files), beam_size, entry_length, temperature)


# ------------------------------------------------------------------------------------------------ the CLI


def register(subparsers) -> None:
    """Add ``clapkit caption``."""
    p = subparsers.add_parser("caption", help="caption audio files with a clapcap model (msclap's beam search)")
    p.add_argument("files", nargs="+", help="audio files (any format libsndfile reads)")
    p.add_argument("--model", required=True, help="clapcap_weights_2023.pth (or a file in its layout), or a folder "
                                                  "saved by the caption stage (models/caption)")
    p.add_argument("--config", help="clapcap model config name or JSON (default: clapcap-2023)")
    p.add_argument("--beam-size", type=int, default=MSCLAP_DEFAULTS["beam_size"])
    p.add_argument("--entry-length", type=int, default=MSCLAP_DEFAULTS["entry_length"], help="max tokens")
    p.add_argument("--temperature", type=float, default=MSCLAP_DEFAULTS["temperature"])
    p.add_argument("--greedy", action="store_true", help="greedy decoding (= --beam-size 1)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    p.set_defaults(func=cmd_caption)


def cmd_caption(args: argparse.Namespace) -> int:
    """Print ``path<TAB>caption`` per file; an unreadable file is reported on stderr and skipped.

    Exit status 0 when every file was captioned, 1 when some were skipped, 2 when none could be."""
    from .audio import AudioReadError

    if args.beam_size < 1 or args.entry_length < 1:
        raise SystemExit("clapkit caption: --beam-size and --entry-length must be >= 1")
    try:
        captioner = CaptionModel.load(args.model, config=args.config, device=args.device)
    except ValueError as err:  # WeightsError, a CLAP folder, no such file
        raise SystemExit(f"clapkit caption: {err}") from err
    beam_size = 1 if args.greedy else args.beam_size
    skipped = 0
    for path in args.files:
        try:
            wave = captioner.load_audio([path])
        except AudioReadError as err:
            print(f"clapkit: skipped {err}", file=sys.stderr)
            skipped += 1
            continue
        caption = captioner.caption_waves(wave, beam_size, args.entry_length, args.temperature)[0]
        print(f"{path}\t{caption.rstrip()}", flush=True)
    if skipped == len(args.files):
        return 2
    return 1 if skipped else 0
