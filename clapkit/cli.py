"""``clapkit`` command line: one subcommand family per module, each registering itself.

Every module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)`` that adds its subcommands and sets
``func`` on them; this file only wires them together, so a reader finds a command's options next to its code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "clapkit.data.build",  # clapkit data build ...
    "clapkit.data.prepare",  # clapkit prepare ...
    "clapkit.notebooks",  # clapkit notebook ...
    "clapkit.infer",  # clapkit embed / zeroshot ...
    "clapkit.pretrain",  # clapkit pretrain ...
    "clapkit.encoder_probe",  # clapkit probe-encoder (a diagnostic of the pretrained encoder)
    "clapkit.train",  # clapkit train ...
    "clapkit.data.shard_build",  # clapkit shards build ...
    "clapkit.evaluate",  # clapkit evaluate (the stage, or --model M --task T --data DIR)
    "clapkit.captioning",  # clapkit caption --model M FILES (a clapcap model or the caption stage's)
    "clapkit.caption_stage",  # clapkit train-captioner (the caption stage)
    "clapkit.grid",  # clapkit grid plan / queue / wait / collect (the Table 1 ablation grid)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clapkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
