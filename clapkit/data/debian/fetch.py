"""Download and unpack Debian packages offline-friendly: ``apt-get download`` + ``dpkg -x`` into a cache.

Nothing is installed: each package is unpacked into ``<cache>/unpacked/<name>_<version>/``, and a second call
reuses both the .deb and the unpacked tree.  Needs only the Debian archive (no root for the unpack; ``apt-get
update`` is run once if the package lists are missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...atomic_files import replacing
from ..records import ClipRecord

__all__ = ["DebianSource", "SOURCES", "debian_source", "fetch_package", "deb_version"]


@dataclass(frozen=True)
class DebianSource:
    name: str  # corpus source name, also the folder under the corpus root ("ktuberling")
    packages: tuple[str, ...]  # Debian packages to fetch, the first is the main one
    licence: str  # default licence of the clips (an extractor may set a per-clip one)
    environmental: bool  # True for §1b sources
    extract: Callable[["ExtractContext"], list[ClipRecord]]


@dataclass
class ExtractContext:
    """What an extractor gets: unpacked package roots, the folder to copy audio into, and versions."""

    source: DebianSource
    roots: dict[str, Path]  # package -> unpacked root (contains usr/...)
    versions: dict[str, str]  # package -> Debian version
    out_dir: Path  # <corpus>/<source.name>/ ; record paths are relative to its parent (the corpus root)

    def copy(self, src: Path, rel: str | Path) -> str:
        """Copy ``src`` to ``out_dir/rel`` (atomically) and return the path relative to the corpus root."""
        dst = self.out_dir / rel
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            with replacing(dst) as tmp:
                shutil.copyfile(src, tmp)
        return str(Path(self.out_dir.name) / rel)

    def write_bytes(self, data: bytes, rel: str | Path) -> str:
        """Write extracted bytes (e.g. from a zip or Qt resource bundle) to ``out_dir/rel`` atomically."""
        dst = self.out_dir / rel
        if not dst.exists() or dst.stat().st_size != len(data):
            with replacing(dst) as tmp:
                tmp.write_bytes(data)
        return str(Path(self.out_dir.name) / rel)


SOURCES: dict[str, DebianSource] = {}


def debian_source(name: str, packages: list[str] | tuple[str, ...], licence: str, environmental: bool = False):
    """Register an extractor ``fn(ctx: ExtractContext) -> list[ClipRecord]`` for a corpus source."""

    def deco(fn):
        if name in SOURCES:
            raise ValueError(f"duplicate Debian source {name!r}")
        SOURCES[name] = DebianSource(name, tuple(packages), licence, environmental, fn)
        return fn

    return deco


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def _find_deb(debs: Path, package: str) -> Path | None:
    found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def fetch_package(package: str, cache_dir: Path) -> tuple[Path, str]:
    """Return (unpacked root, version) of ``package``, downloading and unpacking it if not cached."""
    debs = Path(cache_dir) / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _find_deb(debs, package)
    if deb is None:
        res = _run(["apt-get", "download", package], cwd=debs)
        if res.returncode != 0:
            # Fresh machines often have no package lists yet.
            upd = _run(["apt-get", "update", "-qq"])
            if upd.returncode != 0:
                raise RuntimeError(f"apt-get update failed (needed for {package}): {upd.stderr.strip()}")
            res = _run(["apt-get", "download", package], cwd=debs)
        if res.returncode != 0:
            raise RuntimeError(f"apt-get download {package} failed: {res.stderr.strip()}")
        deb = _find_deb(debs, package)
        if deb is None:
            raise RuntimeError(f"apt-get download {package} reported success but no .deb appeared in {debs}")
    version = deb_version(deb)
    root = Path(cache_dir) / "unpacked" / f"{package}_{version}"
    if not (root / ".unpacked").exists():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        res = _run(["dpkg", "-x", str(deb), str(tmp)])
        if res.returncode != 0:
            raise RuntimeError(f"dpkg -x {deb} failed: {res.stderr.strip()}")
        (tmp / ".unpacked").write_text(version)
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)  # a whole folder (dpkg -x's tree): atomic_files writes files only; allow-listed
    return root, version
