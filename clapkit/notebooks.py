"""``clapkit notebook``: execute a parameterised notebook with papermill, make it reproducible, render HTML.

Executed notebooks normally change on every run (papermill timestamps and durations, execution times), which
would make ``dvc.lock`` and git dirty after every ``dvc repro``.  We strip those volatile fields, so the same
inputs give byte-identical ``.ipynb`` and ``.html`` files.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .atomic_files import replacing, write_text

VOLATILE_CELL_KEYS = ("execution", "papermill")
# a warning raised in a cell names the kernel's per-run temporary file, e.g. /tmp/ipykernel_5061/3077112976.py
KERNEL_FILE = re.compile(r"[^\s'\"]*ipykernel_\d+[/\\]\d+\.py")


def _machine_paths() -> list[tuple[str, str]]:
    """Absolute paths that differ between clones and machines (a warning names a file of the venv or the
    repository), longest first, with the placeholder that replaces them."""
    import sys

    paths = {os.path.realpath(sys.prefix): "<venv>", sys.prefix: "<venv>", os.getcwd(): "<repo>",
             os.path.realpath(os.getcwd()): "<repo>"}
    return sorted(paths.items(), key=lambda kv: -len(kv[0]))


def scrub(nb: dict[str, Any]) -> dict[str, Any]:
    paths = _machine_paths()
    nb.get("metadata", {}).pop("papermill", None)
    nb.get("metadata", {}).get("widgets", None) and nb["metadata"].pop("widgets")
    for cell in nb.get("cells", []):
        for k in VOLATILE_CELL_KEYS:
            cell.get("metadata", {}).pop(k, None)
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["id"] = "injected-parameters"  # papermill gives this cell a random id on every run
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                text = "".join(out["text"]) if isinstance(out.get("text"), list) else out.get("text", "")
                text = KERNEL_FILE.sub("<cell>", text)
                for path, mark in paths:  # same bytes from every clone: no absolute paths
                    text = text.replace(path, mark)
                out["text"] = text
    return nb


def run_notebook(src: str | Path, dst: str | Path, parameters: dict[str, Any], html: bool = True) -> Path:
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    dst = Path(dst)
    with replacing(dst, suffix=".ipynb") as tmp:  # papermill wants an .ipynb name
        pm.execute_notebook(str(src), str(tmp), parameters=parameters, kernel_name="python3", progress_bar=False,
                            cwd=os.getcwd())
        nb = scrub(json.loads(tmp.read_text(encoding="utf-8")))
        tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    if html:
        body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(dst), as_version=4))
        write_text(dst.with_suffix(".html"), body)
    return dst


def _parse_value(v: str) -> Any:
    """``-p key value``: JSON if it parses (numbers, lists, null), else the raw string (so '007' stays '007')."""
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _cmd(args) -> int:
    params = {k: _parse_value(v) for k, v in (args.param or [])}
    run_notebook(args.notebook, args.output, params, html=not args.no_html)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("notebook", help="execute a notebook with papermill, scrub it, render HTML")
    p.add_argument("notebook")
    p.add_argument("output", help="executed .ipynb (the .html is written beside it)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"))
    p.add_argument("--no-html", action="store_true")
    p.set_defaults(func=_cmd)
