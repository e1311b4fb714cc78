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

from ..config import dataclass_from_dict, load_params
from .debian import SOURCES, fetch_package
from .debian.fetch import ExtractContext
from .records import read_jsonl, write_jsonl


def _register_sources() -> None:
    """Import the extractor modules (their decorators fill SOURCES); kept out of import time for a fast CLI."""
    from .debian import environmental, recordings  # noqa: F401


def synth_tools() -> dict[str, tuple]:
    from . import synth

    return {
        "espeak": (synth.build_espeak, synth.EspeakConfig),
        "flite": (synth.build_flite, synth.FliteConfig),
        "fluidsynth": (synth.build_fluidsynth, synth.FluidsynthConfig),
        "sox": (synth.build_sox, synth.SoxConfig),
    }


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


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def build_debian_source(name: str, root: Path, cache_dir: Path) -> dict[str, Any]:
    """Fetch, unpack and extract one Debian source into ``root/name``; skip if already done for these versions."""
    src = SOURCES[name]
    roots, versions = {}, {}
    for pkg in src.packages:
        roots[pkg], versions[pkg] = fetch_package(pkg, cache_dir)
    out_dir = root / name
    stamp_path, jsonl = out_dir / ".stamp", out_dir / "clips.jsonl"
    stamp = _stamp({"versions": versions, "extractor": name})
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
    builder, cfg_cls = synth_tools()[tool]
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
    _write_json(root / "corpus.json", summary)
    print(f"[data build] {summary['clips']} clips from {len(sources)} sources in {time.time() - t0:.0f} s -> {root}")
    return summary


def _cmd_build(args) -> int:
    params = load_params(args.params)
    cfg = BuildConfig.from_params(params)
    if args.root:
        cfg.root = args.root
    build_corpus(cfg, seed=int(params.get("seed", 0)))
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
