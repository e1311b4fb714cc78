"""clapkit.atomic_files: content, mode, failure behaviour, JSON format; and that nothing else in clapkit renames
temporary files by hand."""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from clapkit import atomic_files
from clapkit.atomic_files import leftovers, replacing, write_bytes, write_json, write_text

PACKAGE = Path(__file__).resolve().parent.parent / "clapkit"


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_content_and_creates_parents(tmp_path):
    write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01")
    write_text(tmp_path / "a" / "c.txt", "é\nx")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a" / "c.txt").read_bytes() == "é\nx".encode()
    write_text(tmp_path / "a" / "c.txt", "new")  # replaces
    assert (tmp_path / "a" / "c.txt").read_text() == "new"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b.bin", "c.txt"]  # no temporary file left


def test_json_format(tmp_path):
    obj = {"b": 1, "a": [1.5, "é"]}
    write_json(tmp_path / "d.json", obj)
    assert (tmp_path / "d.json").read_text(encoding="utf-8") == json.dumps(obj, indent=2) + "\n"
    write_json(tmp_path / "e.json", obj, indent=1, sort_keys=True, ensure_ascii=False)
    assert (tmp_path / "e.json").read_text(encoding="utf-8") == '{\n "a": [\n  1.5,\n  "é"\n ],\n "b": 1\n}\n'
    with pytest.raises(ValueError):
        write_json(tmp_path / "d.json", {"x": float("nan")}, allow_nan=False)
    assert json.loads((tmp_path / "d.json").read_text()) == obj  # the old file stays
    assert not leftovers(tmp_path / "d.json")


def test_mode_is_that_of_a_normally_created_file(tmp_path, umask022):
    write_text(tmp_path / "t.txt", "x")
    write_json(tmp_path / "j.json", {})
    with replacing(tmp_path / "a.npy", suffix=".npy") as tmp:  # np.save would append .npy to another name
        np.save(tmp, np.zeros(3))
    with replacing(tmp_path / "r.bin") as tmp:  # a writer that removes and recreates the file, privately
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    for name in ("t.txt", "j.json", "a.npy", "r.bin"):
        assert mode(tmp_path / name) == 0o644, name
    os.umask(0o002)
    write_text(tmp_path / "g.txt", "x")
    assert mode(tmp_path / "g.txt") == 0o664


def test_replacing_keeps_the_old_file_on_an_exception(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.startswith(".model.bin.") and tmp.name.endswith(".tmp")
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_replacing_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "nb.ipynb"
    with replacing(target, suffix=".ipynb", fsync=True) as tmp:
        assert tmp.name.endswith(".tmp.ipynb") and tmp.exists()  # created empty, like open(..., "w") would
        with open(tmp, "w") as f:
            f.write("{}")
        assert not target.exists()  # nothing under the final name until the block ends
    assert target.read_text() == "{}"
    assert [p.name for p in target.parent.iterdir()] == ["nb.ipynb"]


def test_leftovers_finds_a_killed_writers_temporary_files(tmp_path):
    target = tmp_path / "shard-000.tar"
    stale = tmp_path / ".shard-000.tar.0123abcd.tmp"
    stale.write_bytes(b"")
    (tmp_path / ".shard-001.tar.0123abcd.tmp").write_bytes(b"")
    assert leftovers(target) == [stale]


# --- hygiene: atomic_files is the one place that renames temporary files ------------------------------------------

# Renames of a whole folder (written under a temporary name, renamed when complete): atomic_files writes files only.
ALLOWED = {
    ("data/prepare.py", "os.replace"): "the prepare stage's output folder (prepared.tmp/ -> prepared/)",
    ("data/debian/fetch.py", "os.replace"): "a Debian package unpacked by dpkg -x (a folder tree)",
}
FORBIDDEN = {("os", "replace"), ("os", "rename"), ("os", "renames"), ("tempfile", "mkstemp"),
             ("tempfile", "NamedTemporaryFile"), ("shutil", "move")}


def _calls(tree: ast.AST) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and (node.value.id, node.attr) in FORBIDDEN:
            found.append((f"{node.value.id}.{node.attr}", node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", "tempfile", "shutil"}:
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names
                      if (node.module, a.name) in FORBIDDEN]
    return found


def test_no_hand_made_atomic_writes_outside_atomic_files():
    offenders, used = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "atomic_files.py":
            continue
        for call, line in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            if (rel, call) in ALLOWED:
                used.add((rel, call))
            else:
                offenders.append(f"clapkit/{rel}:{line}: {call}")
    assert not offenders, "write through clapkit.atomic_files instead:\n" + "\n".join(offenders)
    assert used == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used}"


def test_atomic_files_is_what_the_scan_looks_for():
    assert ("os.replace", ) == tuple({c for c, _ in _calls(ast.parse(Path(atomic_files.__file__).read_text()))})
