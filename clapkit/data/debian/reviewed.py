"""Reviewed label tables: every audio file of a package, with the label a person gave it or why it is left out.

The newer environmental sources (0ad, widelands, bucklespring, ...) are not labelled by keyword lookup: each has
a table ``tables/<source>.tsv`` that names every audio file below one folder of the package (or one zip inside
it) and gives it a ``sound_event`` of the vocabulary, or ``-`` and the reason it is left out (music, speech,
interface, invented sounds, or a name that does not say what is heard).  Beside it, ``tables/<source>.listing.tsv``
is the pinned listing of that folder in the package version the table was reviewed against: path, bytes, sha1
and duration of every audio file.  The tests check the table against the listing (every file reviewed, none
invented) without downloading anything; the extractor checks it against the unpacked package and skips, as
"not reviewed", any file a newer package version adds.

Table format (tab-separated, ``#`` lines are the header)::

    # package   0ad-data            (tab between key and value)
    # version   0.0.26-1
    # sha256    <sha256 of the .deb>
    # base      usr/share/games/0ad/mods/public/public.zip!audio/     (folder, or zip!member-prefix)
    path        label               group   note
    actor/fauna/animal/cattle_01.ogg    cow moo     -   ...

``group`` overrides the split group of the clip (``-``: ``package:stem`` without numbers, as elsewhere).

Maintainers: ``python -m clapkit.data.debian.reviewed listing SOURCE`` rewrites the listing from the package in
the Debian cache (after a version change: review the new and changed files in the table, then commit both).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import soundfile as sf

__all__ = ["TABLES_DIR", "ReviewedTable", "Row", "ListingRow", "read_table", "read_listing", "package_files",
           "make_listing", "table_sources"]

TABLES_DIR = Path(__file__).parent / "tables"
AUDIO_SUFFIXES = (".wav", ".ogg", ".oga", ".flac", ".mp3", ".au")
EXCLUDED = "-"


@dataclass(frozen=True)
class Row:
    path: str  # relative to the table's base
    label: str  # a vocabulary.EVENTS sound_event, or "-"
    group: str  # split group override, or "-"
    note: str  # why it is left out (required for "-"), or what the sound is


@dataclass(frozen=True)
class ListingRow:
    path: str
    size: int
    sha1: str
    duration_s: float  # -1 when soundfile cannot read the file


@dataclass
class ReviewedTable:
    source: str
    header: dict[str, str]
    rows: list[Row] = field(default_factory=list)

    @property
    def package(self) -> str:
        return self.header["package"]

    @property
    def version(self) -> str:
        return self.header["version"]

    @property
    def base(self) -> str:
        return self.header["base"]

    def by_path(self) -> dict[str, Row]:
        return {r.path: r for r in self.rows}

    def mapped(self) -> list[Row]:
        return [r for r in self.rows if r.label != EXCLUDED]


def table_sources() -> list[str]:
    """Sources that have a reviewed table."""
    return sorted(p.name[: -len(".tsv")] for p in TABLES_DIR.glob("*.tsv") if not p.name.endswith(".listing.tsv"))


def table_path(source: str) -> Path:
    return TABLES_DIR / f"{source}.tsv"


def listing_path(source: str) -> Path:
    return TABLES_DIR / f"{source}.listing.tsv"


def read_table(source: str, path: Path | None = None) -> ReviewedTable:
    path = path or table_path(source)
    header: dict[str, str] = {}
    rows: list[Row] = []
    columns = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition("\t")
            if value:
                header[key.strip()] = value.strip()
            continue
        cells = line.split("\t")
        if columns is None:
            columns = cells
            if columns != ["path", "label", "group", "note"]:
                raise ValueError(f"{path}:{n}: expected the columns path, label, group, note; got {columns}")
            continue
        if len(cells) != 4:
            raise ValueError(f"{path}:{n}: expected 4 tab-separated cells, got {len(cells)}")
        rows.append(Row(*[c.strip() for c in cells]))
    missing = {"package", "version", "base"} - set(header)
    if missing:
        raise ValueError(f"{path}: header lacks {sorted(missing)}")
    return ReviewedTable(source, header, rows)


def read_listing(source: str, path: Path | None = None) -> tuple[dict[str, str], list[ListingRow]]:
    path = path or listing_path(source)
    header: dict[str, str] = {}
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].strip().partition("\t")
            if value:
                header[key.strip()] = value.strip()
        elif line.strip() and not line.startswith("path\t"):
            p, size, sha1, dur = line.split("\t")
            rows.append(ListingRow(p, int(size), sha1, float(dur)))
    return header, rows


def package_files(root: Path, base: str) -> Iterator[tuple[str, str, object]]:
    """(path relative to base, original path inside the package, reader) of every audio file below ``base``.

    ``base`` is a folder of the unpacked package, or ``some.zip!prefix/`` for the members of a zip inside it.
    The reader is a Path (a file to copy) or a callable returning the bytes (a zip member).  Sorted by path.
    """
    if "!" in base:
        zip_rel, prefix = base.split("!", 1)
        zip_path = root / zip_rel
        names = sorted(n for n in _open_zip(zip_path).namelist()
                       if n.startswith(prefix) and n.lower().endswith(AUDIO_SUFFIXES))
        for n in names:
            yield n[len(prefix):], f"{zip_rel}!{n}", (lambda n=n: _zip_read(zip_path, n))
    else:
        folder = root / base
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES:
                yield f.relative_to(folder).as_posix(), f.relative_to(root).as_posix(), f


@functools.lru_cache(maxsize=2)
def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    """One open ZipFile per archive (0ad's public.zip has 40,000 members: reading its index per member is slow)."""
    return zipfile.ZipFile(zip_path)


def _zip_read(zip_path: Path, member: str) -> bytes:
    return _open_zip(zip_path).read(member)


def make_listing(root: Path, base: str) -> list[ListingRow]:
    out = []
    for rel, _, reader in package_files(root, base):
        data = reader() if callable(reader) else reader.read_bytes()
        try:
            duration = round(float(sf.info(io.BytesIO(data)).duration), 3)
        except Exception:  # libsndfile raises several types; -1 marks "unreadable"
            duration = -1.0
        out.append(ListingRow(rel, len(data), hashlib.sha1(data).hexdigest(), duration))
    return out


def write_listing(source: str, table: ReviewedTable, rows: list[ListingRow], sha256: str = "") -> Path:
    path = listing_path(source)
    lines = [f"# {source}: every audio file below the table's base in the package version reviewed",
             f"# package\t{table.package}", f"# version\t{table.version}", f"# base\t{table.base}"]
    if sha256:
        lines.append(f"# sha256\t{sha256}")
    lines.append("path\tbytes\tsha1\tduration_s")
    lines += [f"{r.path}\t{r.size}\t{r.sha1}\t{r.duration_s}" for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cmd_listing(args) -> None:
    import os

    from .fetch import fetch_package

    table = read_table(args.source)
    root, version = fetch_package(table.package, Path(os.path.expanduser(args.cache_dir)))
    if version != table.version:
        print(f"[reviewed] {table.package} is {version} in the cache, the table was reviewed for {table.version}")
    debs = sorted((Path(os.path.expanduser(args.cache_dir)) / "debs").glob(f"{table.package}_*.deb"))
    sha = hashlib.sha256(debs[-1].read_bytes()).hexdigest() if debs else ""
    path = write_listing(args.source, table, make_listing(root, table.base), sha)
    print(f"[reviewed] wrote {path}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m clapkit.data.debian.reviewed")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("listing", help="rewrite tables/SOURCE.listing.tsv from the package in the Debian cache")
    ls.add_argument("source")
    ls.add_argument("--cache-dir", default="~/.cache/clapkit/debian")
    ls.set_defaults(func=_cmd_listing)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
