"""The notebook runner writes byte-identical notebooks for identical inputs (so dvc.lock stays put)."""

import json

import nbformat

from clapkit.notebooks import run_notebook


def test_executed_notebook_is_reproducible_and_parameterised(tmp_path):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1\nlabel = 'a'")
    params.metadata["tags"] = ["parameters"]
    # a warning names the kernel's temporary file (/tmp/ipykernel_<pid>/<hash>.py), which differs per run
    nb.cells = [params, nbformat.v4.new_code_cell("print(x * 2, label)"),
                nbformat.v4.new_code_cell("import warnings\nwarnings.warn('glyph missing')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(src))
    a = run_notebook(src, tmp_path / "a" / "out.ipynb", {"x": 21, "label": "007"})
    b = run_notebook(src, tmp_path / "b" / "out.ipynb", {"x": 21, "label": "007"})
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".html").read_bytes() == b.with_suffix(".html").read_bytes()
    out = json.loads(a.read_text())
    texts = [o["text"] for c in out["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout"]
    printed = "".join("".join(t) if isinstance(t, list) else t for t in texts)
    assert printed.strip() == "42 007"
    warned = "".join("".join(o["text"]) for c in out["cells"] for o in c.get("outputs", []) if o.get("name") == "stderr")
    assert "<cell>:2: UserWarning: glyph missing" in warned and "ipykernel_" not in warned
    assert "papermill" not in out["metadata"]
