"""``clapkit embed`` and ``clapkit zeroshot``: the inference API from the command line.

    clapkit embed --model runs/clap-tiny a.wav b.flac --out emb.npy    # (N, D) float32 + emb.files.txt
    clapkit zeroshot --model CLAP_weights_2023.pth --msclap-version 2023 --labels "dog,rain,piano" *.wav

``--model`` is a ``CLAP.save_pretrained`` directory or an official msclap ``.pth`` (then ``--msclap-version``
is required).  A file that cannot be read is reported on stderr and skipped; the rest are processed.  The exit
status is 0 when every file was processed, 1 when some were skipped, 2 when none could be.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``embed`` and ``zeroshot`` subcommands (imports stay light until a command runs)."""
    embed = subparsers.add_parser("embed", help="audio embeddings of files with a CLAP model")
    _model_arguments(embed)
    embed.add_argument("files", nargs="+", help="audio files (any format libsndfile reads)")
    embed.add_argument("--out", help="write an (N, D) float32 .npy here, and the files' order to <out>.files.txt; "
                                     "default: print one line per file")
    embed.set_defaults(func=cmd_embed)

    zeroshot = subparsers.add_parser("zeroshot", help="zero-shot classification of files against text labels")
    _model_arguments(zeroshot)
    zeroshot.add_argument("files", nargs="+", help="audio files")
    zeroshot.add_argument("--labels", required=True, help='comma-separated class names, e.g. "dog,rain,piano"')
    zeroshot.add_argument("--prompt", default="msclap",
                          help='prompt template with {} or a preset name (default msclap: "this is the sound of {}")')
    zeroshot.add_argument("--top-k", type=int, default=None, help="labels shown per file (default all)")
    zeroshot.add_argument("--multilabel", action="store_true", help="sigmoid per label instead of a softmax")
    zeroshot.set_defaults(func=cmd_zeroshot)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="save_pretrained directory or msclap .pth checkpoint")
    parser.add_argument("--msclap-version", choices=["2023", "2022"], help="version of a msclap .pth checkpoint")
    parser.add_argument("--bert-vocab", help="bert-base-uncased vocab.txt (msclap 2022 only)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")


def load_model(args: argparse.Namespace):
    from .api import CLAP

    path = Path(args.model)
    if path.is_dir():
        return CLAP.from_pretrained(path, device=args.device)
    if path.is_file():
        if not args.msclap_version:
            raise SystemExit(f"clapkit: {path} is a file: give --msclap-version 2023|2022 for a msclap checkpoint")
        return CLAP.from_msclap(path, args.msclap_version, device=args.device, bert_vocab=args.bert_vocab)
    raise SystemExit(f"clapkit: --model {path}: no such file or directory")


def _embed_files(clap, files: list[str], batch_size: int):
    """Embed ``files`` a batch at a time; report and skip unreadable ones.

    Returns (embeddings (N, D) tensor or None, the N files embedded, number skipped)."""
    import torch

    from .audio import AudioReadError

    chunks, kept = [], []
    for start in range(0, len(files), batch_size):
        waves = []
        for f in files[start : start + batch_size]:
            try:
                waves.append(clap.load_audio([f])[0])
                kept.append(f)
            except AudioReadError as err:
                print(f"clapkit: skipped {err}", file=sys.stderr)
        if waves:
            chunks.append(clap.get_audio_embeddings(torch.stack(waves), batch_size=batch_size))
    skipped = len(files) - len(kept)
    return (torch.cat(chunks) if chunks else None), kept, skipped


def _status(kept: list[str], skipped: int) -> int:
    if not kept:
        print("clapkit: no file could be read", file=sys.stderr)
        return 2
    return 1 if skipped else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .atomic_files import write_bytes, write_text

    clap = load_model(args)
    emb, kept, skipped = _embed_files(clap, args.files, args.batch_size)
    if emb is None:
        return _status(kept, skipped)
    emb = emb.numpy().astype(np.float32)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, emb)
        write_bytes(out, buf.getvalue())
        listing = out.with_suffix(".files.txt")
        write_text(listing, "".join(f + "\n" for f in kept))
        print(f"{len(kept)} embeddings of dimension {emb.shape[1]} -> {out} (row order: {listing})")
    else:
        for f, row in zip(kept, emb):
            print(f, " ".join(f"{v:.7g}" for v in row))
    return _status(kept, skipped)


def cmd_zeroshot(args: argparse.Namespace) -> int:
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if not labels:
        raise SystemExit("clapkit: --labels is empty")
    clap = load_model(args)
    emb, kept, skipped = _embed_files(clap, args.files, args.batch_size)
    if emb is None:
        return _status(kept, skipped)
    result = clap.zero_shot_from_embeddings(emb, labels, prompt=args.prompt, multilabel=args.multilabel)
    print(format_ranking(kept, result.top(args.top_k)))
    return _status(kept, skipped)


def format_ranking(files: list[str], top: list[list[tuple[str, float]]]) -> str:
    """A plain-text table: one row per file, columns = rank 1, 2, ... as ``label (probability)``."""
    cells = [[f"{label} ({p:.3f})" for label, p in row] for row in top]
    header = ["file"] + [f"#{i + 1}" for i in range(max(len(row) for row in cells))]
    rows = [[f] + row for f, row in zip(files, cells)]
    widths = [max(len(r[i]) for r in [header] + rows if i < len(r)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines)
