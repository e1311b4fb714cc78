"""``clapkit`` command line: one subcommand family per module, each registering itself.

Every module named in ``COMMANDS`` (command -> module) exposes ``register(subparsers)`` that adds its subcommands and sets
``func`` on them; this file only wires them together, so a reader finds a command's options next to its code.

``pip install clapkit`` is the inference library; the pipeline's packages come with ``clapkit[pipeline]``.  So a
command imports only its own module: ``clapkit zeroshot``, ``embed`` and ``caption`` run without the
pipeline extra (tests/test_packaging.py), and a pipeline command run without it stops with a message naming
``pip install 'clapkit[pipeline]'``.  ``clapkit --help`` (or no or an unknown command) imports every module.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Each command and the module that registers it (its options live beside its code).  tests/test_packaging.py checks
# this against the commands the modules register; tests/test_dvc_deps.py reads it to find each stage's code.
COMMANDS = {
    "data": "clapkit.data.build",
    "prepare": "clapkit.data.prepare",
    "notebook": "clapkit.notebooks",
    "embed": "clapkit.infer",
    "zeroshot": "clapkit.infer",
    "pretrain": "clapkit.pretrain",
    "probe-encoder": "clapkit.encoder_probe",
    "train": "clapkit.train",
    "caption-repeats": "clapkit.train",
    "shards": "clapkit.data.shard_build",
    "evaluate": "clapkit.evaluate",
    "caption": "clapkit.captioning",
    "train-captioner": "clapkit.caption_stage",
    "grid": "clapkit.grid",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))  # each module once, in the table's order

# What the pipeline extra (pyproject.toml) brings, by import name, with packages those bring in turn.
PIPELINE_MODULES = frozenset({
    "dvc", "dvc_data", "dvc_objects", "dvclive", "papermill", "jupyterlab", "ipykernel", "jupyter_client",
    "nbclient", "nbconvert", "nbformat", "webdataset", "matplotlib", "seaborn", "pandas", "yaml", "tqdm"})
PIPELINE_INSTALL = "pip install 'clapkit[pipeline]'"


def missing_pipeline_package(err: ModuleNotFoundError) -> str | None:
    """What to say when a package of the pipeline extra is not installed; None for any other missing module."""
    top = (err.name or "").split(".")[0]
    if top not in PIPELINE_MODULES:
        return None
    return f"this command needs {top!r}, part of the pipeline extra, which is not installed: {PIPELINE_INSTALL}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with ``command``'s module only, or with every module (``command`` None or unknown)."""
    parser = argparse.ArgumentParser(prog="clapkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in [COMMANDS[command]] if command in COMMANDS else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the top-level parser has no other options
    try:
        args = build_parser(command).parse_args(argv)
        return int(args.func(args) or 0)
    except ModuleNotFoundError as err:
        message = missing_pipeline_package(err)
        if message is None:
            raise
        raise SystemExit(f"clapkit {command}: {message}") from err


if __name__ == "__main__":
    sys.exit(main())
