"""``clapkit data build``: the embedded corpus in ``data/``, offline, from Debian packages and synthesis.

Layout written (every source in its own folder, each with its ``clips.jsonl`` of ``ClipRecord``s)::

    data/<source>/...audio...      copied from an unpacked .deb, or synthesised
    data/<source>/clips.jsonl
    data/corpus.json               sources, package/tool versions, clip counts: what this corpus is made of

Deterministic for a seed and package/tool versions; resumable (a source whose clips.jsonl is stamped with the
same versions and config is skipped, synthesis skips clips already written); ``data/`` is then tracked by
``data.dvc``.  Sources not selected in ``params.yaml`` are removed so ``data/`` is exactly the selection.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..atomic_files import write_json, write_text
from ..config import dataclass_from_dict, load_params
from .debian import SOURCES, fetch_package
from .debian.fetch import ExtractContext
from .records import read_jsonl, write_jsonl


def _register_sources() -> None:
    """Import the extractor modules (their decorators fill SOURCES); kept out of import time for a fast CLI."""
    from .debian import environmental, recordings  # noqa: F401


def synth_tools() -> dict[str, tuple]:
    """tool -> (config dataclass, builder), from clapkit.data.synth."""
    from . import synth

    return synth.BUILDERS


def _code_hash(*paths: str | Path) -> str:
    """Hash of source files, so an extractor whose code changed is re-run even if package versions did not."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


@dataclass
class BuildConfig:
    """The ``data:`` block of params.yaml."""

    root: str = "data"
    cache_dir: str = "~/.cache/clapkit/debian"  # .debs and unpacked trees, outside the repo
    # "all" or a list of Debian source names (clapkit.data.debian.SOURCES)
    debian_sources: Any = "all"
    # tool -> that generator's config fields (clapkit.data.synth.<Tool>Config); a tool absent here is not built
    synth: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "BuildConfig":
        return dataclass_from_dict(cls, params.get("data"), "data")

    def selected_debian(self) -> list[str]:
        _register_sources()
        if self.debian_sources == "all":
            return sorted(SOURCES)
        unknown = sorted(set(self.debian_sources) - set(SOURCES))
        if unknown:
            raise ValueError(f"params.yaml data.debian_sources: unknown source(s) {unknown}; known: {sorted(SOURCES)}")
        return sorted(self.debian_sources)


def _stamp(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def build_debian_source(name: str, root: Path, cache_dir: Path) -> dict[str, Any]:
    """Fetch, unpack and extract one Debian source into ``root/name``; skip if already done for these versions."""
    src = SOURCES[name]
    roots, versions = {}, {}
    for pkg in src.packages:
        roots[pkg], versions[pkg] = fetch_package(pkg, cache_dir)
    out_dir = root / name
    stamp_path, jsonl = out_dir / ".stamp", out_dir / "clips.jsonl"
    import inspect

    from .debian import fetch, reviewed, vocabulary

    # A source labelled through a reviewed table is rebuilt when its table or listing changes too.
    tables = [p for p in (reviewed.table_path(name), reviewed.listing_path(name)) if p.exists()]
    code = _code_hash(inspect.getsourcefile(src.extract), vocabulary.__file__, fetch.__file__,
                      *([reviewed.__file__, *tables] if tables else []))
    stamp = _stamp({"versions": versions, "extractor": name, "code": code})
    if jsonl.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        records = read_jsonl(jsonl)
    else:
        if out_dir.exists():
            shutil.rmtree(out_dir)  # versions changed: start clean so no stale file survives
        out_dir.mkdir(parents=True)
        records = src.extract(ExtractContext(src, roots, versions, out_dir))
        write_jsonl(jsonl, records)
        stamp_path.write_text(stamp)
    return {"kind": "debian", "packages": versions, "licence": src.licence, "clips": len(records),
            "environmental": src.environmental}


def build_synth_source(tool: str, tool_cfg: dict[str, Any], root: Path, seed: int) -> dict[str, Any]:
    cfg_cls, builder = synth_tools()[tool]
    cfg = dataclass_from_dict(cfg_cls, tool_cfg, f"data.synth.{tool}")
    records = builder(root, cfg, seed=seed)
    out_dir = root / tool
    write_jsonl(out_dir / "clips.jsonl", records)
    versions = sorted({(k, str(v)) for r in records for k, v in r.meta.items() if k.endswith("version")})
    return {"kind": "synth", "config": asdict(cfg), "seed": seed, "clips": len(records),
            "tool_versions": dict(versions)}


def build_corpus(cfg: BuildConfig, seed: int) -> dict[str, Any]:
    root = Path(cfg.root)
    root.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(os.path.expanduser(cfg.cache_dir))
    tools = synth_tools()
    unknown_tools = sorted(set(cfg.synth) - set(tools))
    if unknown_tools:
        raise ValueError(f"params.yaml data.synth: unknown tool(s) {unknown_tools}; known: {sorted(tools)}")

    sources: dict[str, Any] = {}
    t0 = time.time()
    debian = cfg.selected_debian()
    for name in tqdm(debian, desc="debian sources", unit="pkg"):
        sources[name] = build_debian_source(name, root, cache_dir)
    for tool in sorted(cfg.synth):
        sources[tool] = build_synth_source(tool, cfg.synth[tool], root, seed)

    # Keep data/ exactly the selection: a source dropped from params.yaml must not linger in the corpus.
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name not in sources:
            shutil.rmtree(child)
    summary = {"sources": sources, "clips": sum(s["clips"] for s in sources.values()), "seed": seed}
    write_json(root / "corpus.json", summary, indent=2, sort_keys=True, ensure_ascii=False)
    print(f"[data build] {summary['clips']} clips from {len(sources)} sources in {time.time() - t0:.0f} s -> {root}")
    return summary


def _cmd_build(args) -> int:
    params = load_params(args.params)
    cfg = BuildConfig.from_params(params)
    if args.root:
        cfg.root = args.root
    build_corpus(cfg, seed=int(params.get("seed", 0)))
    return 0


def corpus_versions(summary: dict[str, Any]) -> dict[str, Any]:
    """What determines the corpus bytes: per source, Debian package versions or synth tool versions + config."""
    out = {}
    for name, s in sorted(summary.get("sources", {}).items()):
        if s.get("kind") == "debian":
            out[name] = {"packages": s["packages"], "clips": s["clips"]}
        else:
            out[name] = {"tool_versions": s.get("tool_versions", {}), "clips": s["clips"], "seed": s.get("seed")}
    return out


def corpus_hash(root: str = "data") -> str:
    """DVC's directory hash of ``root`` (what ``data.dvc`` records), computed without touching the cache."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    repo = Repo(".")
    _, _, obj = build(repo.cache.local, root, repo.fs, "md5", ignore=repo.dvcignore, dry_run=True)
    return obj.hash_info.value


def check_corpus(root: str = "data", dvc_file: str = "data.dvc") -> str:
    """Compare the built ``data/`` with the corpus ``data.dvc`` tracks; returns "match", "differs" or "untracked".

    We hash ``data/`` the way DVC does and compare with the ``md5`` in ``data.dvc``.  (``dvc status`` cannot tell:
    on a fresh clone DVC's cache is empty, and it says "not in cache" whether or not the bytes are identical.)
    When the bytes differ, usually because Debian shipped another package version, we name the sources whose
    versions differ, from ``data.dvc``'s ``meta``.
    """
    import yaml

    if not Path(dvc_file).exists():
        print(f"[data check] {dvc_file} does not exist: track this corpus with `clapkit data track`")
        return "untracked"
    tracked_file = yaml.safe_load(open(dvc_file)) or {}
    tracked_md5 = tracked_file["outs"][0]["md5"]
    if corpus_hash(root) == tracked_md5:
        print(f"[data check] {root}/ matches the corpus tracked in {dvc_file} ({tracked_md5})")
        return "match"
    tracked = tracked_file.get("meta", {}).get("corpus", {})
    built = corpus_versions(json.loads((Path(root) / "corpus.json").read_text()))
    diffs = [name for name in sorted(set(tracked) | set(built)) if tracked.get(name) != built.get(name)]
    print(f"[data check] WARNING: {root}/ differs from the corpus tracked in {dvc_file}.")
    if diffs:
        print("  sources whose package/tool versions, seed or clip counts differ:")
        for name in diffs:
            print(f"    {name}: tracked {tracked.get(name)} | built {built.get(name)}")
    else:
        print("  same versions and counts: an extractor or generator changed its output (check `git log`).")
    print(f"  `dvc repro` will record your corpus in {dvc_file}; `git diff {dvc_file}` then shows the change.")
    return "differs"


def track_corpus(root: str = "data", dvc_file: str = "data.dvc") -> None:
    """Maintainers: ``dvc add`` the corpus and store its versions in ``data.dvc``'s ``meta`` (kept by DVC)."""
    import subprocess

    import yaml

    res = subprocess.run(["dvc", "add", root, "-q"], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"dvc add {root} failed: {res.stderr.strip()}")
    d = yaml.safe_load(open(dvc_file))
    d["meta"] = {"corpus": corpus_versions(json.loads((Path(root) / "corpus.json").read_text()))}
    write_text(dvc_file, yaml.safe_dump(d, sort_keys=False))
    print(f"[data track] {dvc_file} updated")


def _cmd_check(args) -> int:
    state = check_corpus(args.root, args.dvc_file)
    return 1 if (args.strict and state != "match") else 0


def _cmd_track(args) -> int:
    track_corpus(args.root, args.dvc_file)
    return 0


def _cmd_sources(args) -> int:
    _register_sources()
    for name in sorted(SOURCES):
        s = SOURCES[name]
        kind = "environmental" if s.environmental else "recordings"
        print(f"{name:28s} {kind:14s} {s.licence:24s} {' '.join(s.packages)}")
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build the embedded corpus in data/")
    sub = data.add_subparsers(dest="data_command", required=True)
    b = sub.add_parser("build", help="fetch Debian recordings and synthesise labelled audio into data/")
    b.add_argument("--params", default="params.yaml")
    b.add_argument("--root", default=None, help="override data.root")
    b.set_defaults(func=_cmd_build)
    s = sub.add_parser("sources", help="list the Debian sources and their licences")
    s.set_defaults(func=_cmd_sources)
    c = sub.add_parser("check", help="compare data/ with the corpus tracked in data.dvc")
    c.add_argument("--root", default="data")
    c.add_argument("--dvc-file", default="data.dvc")
    c.add_argument("--strict", action="store_true", help="exit 1 unless data/ matches data.dvc")
    c.set_defaults(func=_cmd_check)
    t = sub.add_parser("track", help="maintainers: dvc add data/ and record its versions in data.dvc")
    t.add_argument("--root", default="data")
    t.add_argument("--dvc-file", default="data.dvc")
    t.set_defaults(func=_cmd_track)
