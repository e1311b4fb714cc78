"""A stand-in for ``dvclive.Live``, for the offline GPU machine only (``benchmarks/gpu.sh`` puts this folder on
``PYTHONPATH`` when ``import dvclive`` fails there; nowhere else).

dvclive needs dvc (and through it git bindings, dulwich, scmrepo, ...) at ``Live()``: too many packages to carry to
a machine without network for a logger.  This writes what clapkit's train stage and the GPU check read, in
dvclive's own layout: ``<dir>/plots/metrics/<name>.tsv`` (header ``step<TAB><leaf name>``, one row per
``log_metric``, appended at once so a killed run keeps its rows) and ``<dir>/metrics.json`` (the latest value of
each metric, nested by ``/``).  Every other ``Live`` method is accepted and does nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["Live"]
STAND_IN = True


class Live:
    def __init__(self, dir: str = "dvclive", resume: bool = False, **_ignored):  # dvclive's argument name
        self.dir = str(dir)
        self.step = 0
        self._latest: dict = {}
        Path(self.dir, "plots", "metrics").mkdir(parents=True, exist_ok=True)
        if resume and Path(self.dir, "metrics.json").is_file():
            self._latest = json.loads(Path(self.dir, "metrics.json").read_text(encoding="utf-8"))

    def log_metric(self, name: str, val, **_ignored) -> None:
        path = Path(self.dir, "plots", "metrics", f"{name}.tsv")
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file()
        with open(path, "a", encoding="utf-8") as f:
            if new:
                f.write(f"step\t{name.split('/')[-1]}\n")
            f.write(f"{int(self.step)}\t{float(val)}\n")
        node = self._latest
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = float(val)
        self._write_summary()

    def _write_summary(self) -> None:
        from clapkit.atomic_files import write_json  # only ever imported by clapkit's own stages

        write_json(Path(self.dir, "metrics.json"), self._latest, indent=4)

    def next_step(self) -> None:
        self.step += 1

    def end(self) -> None:
        self._write_summary()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.end()

    def __getattr__(self, name: str):  # log_params, log_param, log_artifact, make_summary, ...: no-ops
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None
