"""dvc.yaml's ``deps`` cover each stage's code: a stage reruns when any clapkit module it executes changes.

A stage's ``cmd`` is a chain of ``clapkit <subcommand> ...`` commands.  Each subcommand is registered by one module
of ``clapkit.cli.COMMANDS`` (``register(subparsers)`` calling ``subparsers.add_parser("<subcommand>")``,
read here from the source); ``clapkit notebook NB ...`` also runs the notebook's ``clapkit`` imports.  From those
entry modules the closure of intra-package imports is computed with ``ast`` (module- and function-level imports,
absolute and relative, ``from . import module``, the packages' ``__init__`` files, ``importlib.import_module`` of a
literal name; ``if TYPE_CHECKING:`` imports are skipped: they never run).  A package ``__init__``'s lazy names (a
``__getattr__`` importing on first use) count only for a module that names them.  ``clapkit/cli.py`` is left out:
it only dispatches to the command's module (importing modules to register their options).  Every ``clapkit/**/*.py`` of the closure must be
in the stage's deps (a folder dep covers the files under it), and every ``clapkit/`` dep must exist.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "clapkit"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _module_file(module: str) -> Path | None:
    """The file of a ``clapkit`` module or package, None for a name that is no module (a class, a function)."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parents(module: str) -> list[str]:
    """The packages importing ``module`` imports first: clapkit, clapkit.data, ... (``__init__`` files)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(tree: ast.AST, skip=lambda node: False):
    """ast.walk without the subtrees of ``if TYPE_CHECKING:`` and those ``skip`` names."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if _is_type_checking(node) or skip(node):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _imports(tree: ast.AST, module: str, is_package: bool, skip=lambda node: False) -> set[str]:
    """Every clapkit module ``tree`` imports, at any depth (function bodies too)."""
    found: set[str] = set()
    calls_import_module = False
    for node in _walk(tree, skip):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, module, is_package)
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import submodule`
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("import_module"):
            calls_import_module = True
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                name = node.args[0].value
                found.add(_absolute(ast.ImportFrom(module=name.lstrip(".") or None, names=[],
                                                   level=len(name) - len(name.lstrip("."))), module, is_package))
    if calls_import_module:  # names handed to import_module from a table (cli.COMMANDS)
        for node in _walk(tree, skip):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(rf"{PACKAGE}(\.\w+)+", node.value):
                found.add(node.value)
    return {m for m in found if m.split(".")[0] == PACKAGE and _module_file(m)}


@lru_cache(maxsize=None)
def _parsed(module: str) -> tuple[ast.Module, bool]:
    path = _module_file(module)
    return ast.parse(path.read_text(encoding="utf-8"), str(path)), path.name == "__init__.py"


def _lazy_names(package: str) -> dict[str, set[str]]:
    """A package ``__init__``'s names imported on first use (``__getattr__``): name -> the modules it imports.

    Two forms: ``if name == "X": from .m import X`` inside ``__getattr__``, and a module-level table of
    ``{"X": ".m"}`` that ``__getattr__`` hands to ``importlib.import_module``."""
    tree, is_package = _parsed(package)
    getattrs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    if not is_package or not getattrs:
        return {}
    lazy: dict[str, set[str]] = {}
    for node in ast.walk(getattrs[0]):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                lazy.setdefault(alias.asname or alias.name, set()).update(_imports(node, package, True))
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Constant) \
                        and isinstance(value.value, str) and value.value.startswith("."):
                    target = _absolute(ast.ImportFrom(module=value.value.lstrip("."), names=[], level=1), package, True)
                    if _module_file(target):
                        lazy.setdefault(key.value, set()).add(target)
    return lazy


def _named(tree: ast.AST) -> set[str]:
    """Every identifier a module uses (names, attributes, imported names)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[-1])
    return names


def _direct(module: str) -> set[str]:
    tree, is_package = _parsed(module)
    skip_getattr = (lambda n: isinstance(n, ast.FunctionDef) and n.name == "__getattr__") if is_package else \
        (lambda n: False)
    out = _imports(tree, module, is_package, skip_getattr)
    return out | _lazy_uses(out, _named(tree))


def _lazy_uses(imported: set[str], named: set[str]) -> set[str]:
    out: set[str] = set()
    for package in imported:
        for name, targets in _lazy_names(package).items():
            if name in named:
                out |= targets
    return out


def closure(entries: set[str]) -> set[str]:
    """``entries`` and every clapkit module importing them imports, transitively (packages included)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_parents(module))
        todo.extend(_direct(module))
    return seen


# --- the stage commands -------------------------------------------------------------------------------------------

def command_modules() -> list[str]:
    """The modules of ``clapkit.cli.COMMANDS`` (command -> module), read from the source, each once."""
    tree = ast.parse((ROOT / PACKAGE / "cli.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "COMMANDS" for t in node.targets):
            return list(dict.fromkeys(ast.literal_eval(node.value).values()))
    raise AssertionError("clapkit/cli.py has no COMMANDS")


def subcommand_modules() -> dict[str, str]:
    """Top-level subcommand -> the module registering it (``<subparsers>.add_parser("name")`` in ``register``)."""
    found: dict[str, list[str]] = {}
    for module in command_modules():
        tree, _ = _parsed(module)
        registers = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "register"]
        assert registers, f"{module} is in COMMANDS but has no register(subparsers)"
        subparsers = registers[0].args.args[0].arg
        for node in ast.walk(registers[0]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "add_parser" and ast.unparse(node.func.value) == subparsers:
                found.setdefault(ast.literal_eval(node.args[0]), []).append(module)
    twice = {name: modules for name, modules in found.items() if len(modules) > 1}
    assert not twice, f"subcommands registered twice: {twice}"
    return {name: modules[0] for name, modules in found.items()}


_MAGIC = re.compile(r"^\s*(%|!(?!=))")


def notebook_imports(path: Path) -> set[str]:
    """The clapkit modules a notebook's code cells import (IPython magics and shell lines left out)."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    out: set[str] = set()
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        code = "\n".join("" if _MAGIC.match(line) else line for line in source.splitlines())
        try:
            tree = ast.parse(code)
        except SyntaxError as exc:  # pragma: no cover - a notebook that does not parse fails loudly
            raise AssertionError(f"{path} cell {i}: {exc}") from exc
        imported = _imports(tree, "__main__", False)
        out |= imported | _lazy_uses(imported, _named(tree))
    return out


def stage_entries(stage: dict) -> set[str]:
    """The entry modules of a stage: its subcommands' modules and its notebooks' clapkit imports."""
    modules = subcommand_modules()
    entries: set[str] = set()
    for part in stage["cmd"].split("&&"):
        words = shlex.split(part)
        assert words[0] == "clapkit", f"a stage command that is not `clapkit ...`: {part.strip()!r}"
        assert words[1] in modules, f"`clapkit {words[1]}` is registered by no module of clapkit/cli.py"
        entries.add(modules[words[1]])
        if words[1] == "notebook":
            entries |= notebook_imports(ROOT / words[2])
    return entries


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def _dep_paths(stage: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in stage.get("deps", [])]


# --- the tests ----------------------------------------------------------------------------------------------------

def test_the_stage_subcommands_map_to_their_modules():
    modules = subcommand_modules()
    for name, module in {"prepare": "clapkit.data.prepare", "pretrain": "clapkit.pretrain", "train": "clapkit.train",
                         "evaluate": "clapkit.evaluate", "train-captioner": "clapkit.caption_stage",
                         "notebook": "clapkit.notebooks"}.items():
        assert modules[name] == module


def test_the_import_closure_follows_every_kind_of_import():
    # function-level, relative, `from . import submodule`, packages' __init__, a lazy name of a package
    assert {"clapkit", "clapkit.data", "clapkit.data.prepare", "clapkit.audio"} <= closure({"clapkit.data.prepare"})
    train = closure({"clapkit.train"})
    assert {"clapkit.models", "clapkit.models.clap", "clapkit.models.text_encoders", "clapkit.errors"} <= train
    assert "clapkit.cli" not in train and "clapkit.captioning" not in closure({"clapkit.data.prepare"})


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_its_code(name):
    stage = STAGES[name]
    deps = _dep_paths(stage)
    files = sorted(str(_module_file(m).relative_to(ROOT)) for m in closure(stage_entries(stage)))
    missing = [f for f in files if not _covered(f, deps)]
    assert not missing, f"stage {name} runs {missing} but dvc.yaml does not list them in its deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_code_deps_exist(name):
    gone = [d for d in _dep_paths(STAGES[name]) if d.split("/")[0] in (PACKAGE, "notebooks")
            and not (ROOT / d).exists()]
    assert not gone, f"stage {name} lists deps that do not exist: {gone}"
