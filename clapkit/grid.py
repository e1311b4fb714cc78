"""The Table 1 ablation grid in miniature: DVC experiments over the encoder pair, the pretraining tasks, the
temperature and the batch size, and the summary the ablation notebook reads.

The paper's claims are comparative (MS-CLAP 2023 Table 1: HTSAT-22 pretraining beats plain HTSAT and CNN14,
GPT-2 beats BERT / RoBERTa as text encoder).  ``ROWS`` lists the grid as params.yaml overrides, so a row is
exactly what ``dvc exp run -S key=value ...`` changes; the workspace's own params are the first row at seed 0
(``model.audio_encoder`` / ``text_encoder`` null = the preset's HTSAT + GPT-2, ``pretrain.tasks: all``).

* ``clapkit grid plan``: the experiments and their ``dvc exp run`` commands (nothing runs).
* ``clapkit grid queue``: ``dvc exp run --queue`` for every experiment not already in ``dvc exp show``;
  then ``dvc queue start -j 2`` runs them (``make grid`` does all of it, see the Makefile).
* ``clapkit grid wait``: until the queue is empty.
* ``clapkit grid collect``: ``dvc exp show --json`` -> ``reports/ablations.json`` (committed; the notebook reads
  only this file, so it renders on a fresh clone, where DVC experiments, which live in local git refs, are absent),
  with the statistics of ``clapkit.grid_summary``: per row a t interval over seeds, and the paper's claims as
  paired t-tests of two rows over their common seeds (degrees of freedom, p-value).
* ``clapkit grid recompute``: those statistics again from the per-seed results a summary stores (nothing reruns).
* ``--tiny`` (plan / queue / collect): the same grid at a few optimiser steps per stage (``TINY``, as
  tests/test_pipeline_e2e.py), experiments named ``tiny-*``, summary ``reports/ablations-tiny.json``: a check
  that every row runs end to end (minutes), not a result.  ``--set key=value`` adds overrides of your own.

Budget.  A queued experiment runs in a fresh temporary copy of the repository; prepare is skipped (its outputs are
cached or committed).  The pretrain stage depends only on what changes the audio encoder (``preset``, ``frontend``,
``model.<preset>``, ``model.audio_encoder``, the ``pretrain`` block with its own ``pretrain.seed``), not on the
top-level ``seed`` the grid varies, so the seeds of a row differ in their contrastive training and share one
pretrained encoder.  Rows with the workspace's pretraining (other seeds, the text tower, the temperature, the batch
size) find it in dvc.lock; the others take it from DVC's run-cache once one experiment has run it, which is why
``queue_order`` queues the first experiment of each new pretraining before everything else.  So the grid runs
three pretrainings beside the workspace's: CNN14 on sound events, HTSAT on sound events, none.  An experiment that
reuses a pretraining costs train + evaluate (~7 min on one thread here, two side by side); CNN14 costs ~2.6x the
small HTSAT per clip.  README "The ablation grid" has the measured wall time of the whole grid.

Experiments are matched to rows by their *params*, not their names, so an experiment run by hand with the same
overrides counts too.  Experiments with other params (your own ablations) are listed under ``other``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .text import atomic_write_text

__all__ = ["ROWS", "Experiment", "GridRow", "experiments"]  # the summary: clapkit.grid_summary

FORMAT = "clapkit-ablations/2"  # 2: per-row t intervals and the paired tests of `comparisons`
SUMMARY = "reports/ablations.json"
# params.yaml keys that define a row (the grid's knobs); a row's values are params.yaml's with its overrides
KNOBS = ("model.audio_encoder", "model.text_encoder", "pretrain.tasks", "train.temperature",
         "train.learn_temperature", "train.batch_size")
# --tiny: a few steps per stage on the committed corpus (prepare is left alone, so it is not rerun)
TINY = {
    "pretrain.steps": 4, "pretrain.batch_size": 8, "pretrain.warmup_steps": 1, "pretrain.checkpoint_every": 2,
    "pretrain.log_every": 1, "pretrain.eval_clips_per_task": 8, "pretrain.examples_per_task": 1,
    "train.max_steps": 4, "train.batch_size": 8, "train.warmup_steps": 1, "train.checkpoint_every": 2,
    "train.log_every": 1, "train.val_max_clips": 48,
    "evaluate.test_clips_per_task": 20, "evaluate.probe_train_per_class": 3, "evaluate.retrieval_clips": 50,
    "evaluate.map_clips_per_task": 10,
}
# None = the preset's own tower, which for the embedded preset is HTSAT / GPT-2
TOWER_DEFAULTS = {"model.audio_encoder": "htsat", "model.text_encoder": "gpt2"}


@dataclass(frozen=True)
class GridRow:
    name: str  # as in the paper's Table 1 where the row is one of its encoder pairs
    overrides: Mapping[str, Any]
    seeds: tuple[int, ...] = (0,)
    table1: str | None = None  # clapkit.tasks.TABLE1_MODELS entry this row corresponds to
    slug: str = ""

    def knobs(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The row's knob values: ``base`` (params.yaml's, see ``base_knobs``) with the row's overrides."""
        k = dict(base)
        k.update(self.overrides)
        return normalise_knobs(k)


ROWS: tuple[GridRow, ...] = (
    GridRow("HTSAT-22 + GPT-2", {}, (0, 1, 2), "HTSAT-22+GPT2", "htsat22-gpt2"),
    GridRow("HTSAT + GPT-2", {"pretrain.tasks": "sound_events"}, (0, 1, 2), "HTSAT+GPT2", "htsat-gpt2"),
    GridRow("HTSAT-22 + RoBERTa", {"model.text_encoder": "roberta"}, (0,), "HTSAT-22+RoBERTa", "htsat22-roberta"),
    GridRow("HTSAT + RoBERTa", {"model.text_encoder": "roberta", "pretrain.tasks": "sound_events"}, (0,),
            "HTSAT+RoBERTa", "htsat-roberta"),
    GridRow("no pretraining + GPT-2", {"pretrain.tasks": "none"}, (0,), None, "none-gpt2"),
    GridRow("HTSAT-22 + GPT-2, fixed temperature 0.07", {"train.learn_temperature": False}, (0,), None,
            "htsat22-gpt2-fixedtau"),
    GridRow("HTSAT-22 + GPT-2, batch 32", {"train.batch_size": 32}, (0,), None, "htsat22-gpt2-b32"),
    GridRow("CNN14 + BERT", {"model.audio_encoder": "cnn14", "model.text_encoder": "bert",
                             "pretrain.tasks": "sound_events"}, (0,), "CNN14+BERT", "cnn14-bert"),
)


def base_knobs(params: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The knob values every row starts from: params.yaml's, then ``extra`` (``--tiny`` / ``--set``), so that a
    change of params.yaml (say train.batch_size) moves the whole grid with it instead of breaking the matching."""
    base = {k: _get(params, k) for k in KNOBS}
    base.update({k: v for k, v in (extra or {}).items() if k in KNOBS})
    return base


def check_rows(rows: Sequence[GridRow], base: Mapping[str, Any]) -> None:
    """Two rows with the same knobs would be one experiment twice (e.g. params.yaml's batch size set to the batch
    row's): refuse, naming them."""
    seen: dict[tuple, str] = {}
    for row in rows:
        key = tuple(sorted(row.knobs(base).items(), key=lambda kv: kv[0]))
        if key in seen:
            raise ValueError(f"grid rows {seen[key]!r} and {row.name!r} have the same params with this params.yaml "
                             f"({dict(key)}); change one of them in clapkit/grid.py ROWS")
        seen[key] = row.name


def normalise_knobs(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Same meaning, same value: a null tower is the preset's own (HTSAT / GPT-2 when embedded)."""
    out = dict(knobs)
    for key, default in TOWER_DEFAULTS.items():
        if out.get(key) is None:
            out[key] = default
    return out


@dataclass(frozen=True)
class Experiment:
    row: GridRow
    seed: int
    extra: Mapping[str, Any] = field(default_factory=dict)  # --tiny / --set overrides, under the row's
    prefix: str = ""

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.row.slug}-s{self.seed}"

    @property
    def set_params(self) -> dict[str, Any]:
        """What ``-S`` changes relative to params.yaml (the seed included when it is not 0)."""
        out = dict(self.extra)
        out.update(self.row.overrides)
        if self.seed != 0:
            out["seed"] = self.seed
        return out

    def command(self, queue: bool = True) -> list[str]:
        cmd = ["dvc", "exp", "run"] + (["--queue"] if queue else []) + ["-n", self.name]
        for key, value in self.set_params.items():
            cmd += ["-S", f"{key}={json.dumps(value)}"]
        return cmd


def experiments(rows: Sequence[GridRow] = ROWS, extra: Mapping[str, Any] | None = None,
                prefix: str = "") -> list[Experiment]:
    """Every (row, seed); the workspace's own row at seed 0 first (it is the main pipeline's run)."""
    return [Experiment(r, s, dict(extra or {}), prefix) for r in rows for s in r.seeds]


# the params that change the pretrain stage's output (dvc.yaml pretrain: params), by their -S prefix
PRETRAIN_PARAMS = ("preset", "frontend", "model.embedded", "model.paper", "model.audio_encoder", "pretrain.")


def pretraining_of(e: Experiment) -> tuple:
    """What identifies an experiment's pretraining: its overrides of the pretrain stage's params (the seed is train's)."""
    return tuple(sorted((k, json.dumps(v)) for k, v in e.set_params.items() if k.startswith(PRETRAIN_PARAMS)))


def queue_order(exps: Sequence[Experiment]) -> list[Experiment]:
    """The order to queue in so that each pretraining runs once.  DVC's run-cache hands a finished pretraining to
    every later experiment with the same pretrain params, but two experiments that need it while neither has
    finished both run it.  So the first experiment of each pretraining not already done by the workspace goes
    first, the costliest first (CNN14 ~2.6x the small HTSAT per clip; ``tasks: none`` costs nothing), and the
    experiments that reuse a pretraining after them, in the grid's order."""
    done = {()}  # the workspace's (dvc repro) pretraining: no overrides
    first: list[Experiment] = []
    for e in exps:
        key = pretraining_of(e)
        if key not in done:
            done.add(key)
            first.append(e)

    def cost(e: Experiment) -> float:
        knobs = e.set_params  # a fresh dict per call
        if knobs.get("pretrain.tasks") == "none":
            return 0.0
        return 2.6 if knobs.get("model.audio_encoder") == "cnn14" else 1.0

    first.sort(key=cost, reverse=True)  # stable: ties keep the grid's order
    return first + [e for e in exps if e not in first]


# --- reading `dvc exp show --json` --------------------------------------------------------------------------------

def _get(tree: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


# --- commands -------------------------------------------------------------------------------------------------------

def _dvc(*args: str, capture: bool = True) -> str:
    proc = subprocess.run(["dvc", *args], capture_output=capture, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}): {(proc.stderr or '')[-2000:]}")
    return proc.stdout if capture else ""


def exp_show_json(revs: Sequence[str] = ()) -> Any:
    """``dvc exp show --json`` of HEAD (default) or of the given baseline commits, with their experiments."""
    args = ["exp", "show", "--json"]
    for rev in revs:
        args += ["--rev", rev]
    return json.loads(_dvc(*args))


def parse_set(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set key=value`` (value as YAML, as ``dvc exp run -S`` reads it) -> {key: value}."""
    import yaml

    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set {item!r}: expected block.key=value (a params.yaml key)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _overrides(args) -> tuple[dict[str, Any], str]:
    """(extra overrides, experiment-name prefix) of ``--tiny`` / ``--set``."""
    extra = dict(TINY) if args.tiny else {}
    extra.update(parse_set(args.set))
    return extra, ("tiny-" if args.tiny else "")


def _grid(args) -> tuple[list[Experiment], dict[str, Any]]:
    from .config import load_params

    extra, prefix = _overrides(args)
    base = base_knobs(load_params(args.params), extra)
    check_rows(ROWS, base)
    return experiments(ROWS, extra, prefix), base


def parse_exp_list(text: str, names: set[str]) -> list[str]:
    """Baselines (branch or short sha, newest first as DVC lists them) of ``dvc exp list -A`` output that hold an
    experiment named in ``names``.  Lines: ``<baseline>:`` then ``<tab><sha> [<name>]`` per experiment."""
    baselines: list[str] = []
    current = None
    for line in text.splitlines():
        if line.strip() and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
        elif current and "[" in line and line.rstrip().endswith("]"):
            name = line[line.index("[") + 1:line.rstrip().rindex("]")]
            if name in names and current not in baselines:
                baselines.append(current)
    return baselines


def grid_baselines() -> list[str]:
    """HEAD and every commit the grid's experiments were queued from (experiments hang off the commit that was
    HEAD when they were queued, so a commit made while the grid ran would hide them from plain ``exp show``)."""
    names = {e.name for e in experiments()} | {e.name for e in experiments(prefix="tiny-")}
    return ["HEAD"] + parse_exp_list(_dvc("exp", "list", "-A"), names)


def _cmd_plan(args) -> int:
    exps, _ = _grid(args)
    for e in exps:
        print(f"{e.name:30s} {e.row.name:42s} {' '.join(e.command())}")
    note = "" if args.tiny or exps[0].set_params else f"; {exps[0].name} is the workspace run (dvc repro)"
    print(f"{len(exps)} experiments{note}")
    return 0


def _cmd_queue(args) -> int:
    from .grid_summary import parse_exp_show

    exps, _ = _grid(args)
    done = {r["name"] for r in parse_exp_show(exp_show_json())}
    queued = 0
    for e in queue_order(exps):
        if e.name in done or (not e.set_params and not args.include_workspace):
            print(f"skip  {e.name} ({'done' if e.name in done else 'the workspace run: dvc repro'})")
            continue
        print("queue", " ".join(e.command()))
        subprocess.run(e.command(), check=True)
        queued += 1
    print(f"{queued} experiments queued; run them with: dvc queue start -j {args.jobs}")
    return 0


def _cmd_wait(args) -> int:
    """Poll ``dvc queue status`` until nothing is queued or running; fail if an experiment of the grid failed."""
    names = {e.name for e in experiments()} | {e.name for e in experiments(prefix="tiny-")}
    while True:
        status = _dvc("queue", "status")
        lines = [l.split() for l in status.splitlines()[1:] if l.strip()]
        # rows: task id, name, created (time, AM/PM), status
        active = [l for l in lines if "Running" in l or "Queued" in l]
        if not active:
            succeeded = {l[1] for l in lines if "Success" in l and len(l) > 1}  # a failed try rerun since is fine
            failed = sorted({l[1] for l in lines if "Failed" in l and len(l) > 1 and l[1] in names} - succeeded)
            print(status)
            if failed:
                print(f"failed: {failed} (dvc queue logs <name>)", file=sys.stderr)
                return 1
            return 0
        time.sleep(args.poll)


def _cmd_collect(args) -> int:
    from .config import load_params
    from .grid_summary import parse_exp_show, summarise

    extra, _ = _overrides(args)
    base = base_knobs(load_params(args.params), extra)
    if args.exp_show:
        records = json.loads(Path(args.exp_show).read_text())
    else:
        records = exp_show_json(args.rev or grid_baselines())
    summary = summarise(parse_exp_show(records), base)
    out = Path(args.out or (SUMMARY.replace(".json", "-tiny.json") if args.tiny else SUMMARY))
    _write_summary(summary, out)
    if len(summary["pretrain_steps"]) > 1:
        print(f"warning: the rows were pretrained for different numbers of steps {summary['pretrain_steps']} (runs "
              f"from an older params.yaml were collected; see pretrain_steps per run in {out})", file=sys.stderr)
    return 0


def _cmd_recompute(args) -> int:
    """The summary's statistics again, from the per-seed results it stores (nothing rerun, no DVC)."""
    from .grid_summary import add_statistics

    path = Path(args.summary)
    _write_summary(add_statistics(json.loads(path.read_text(encoding="utf-8"))), path)
    return 0


def _write_summary(summary: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(summary, indent=1) + "\n")
    for row in summary["rows"]:
        if row["runs"]:
            std = row["zero_shot_score_std"]
            print(f"{row['row']:44s} {row['zero_shot_score_mean']:.3f}" + (f" +- {std:.3f}" if std is not None else "")
                  + f"  ({len(row['runs'])} seed(s))")
        else:
            print(f"{row['row']:44s} not run")
    for c in summary["comparisons"]:
        if c["test"] is None:
            print(f"{c['a']} - {c['b']}: {c.get('mean_difference', float('nan')):+.3f} ({c['note']})")
        else:
            print(f"{c['a']} - {c['b']}: {c['mean_difference']:+.3f} over {len(c['seeds'])} seeds, paired "
                  f"t({c['df']}) = {c['t']:.2f}, p = {c['p_value']:.3f}"
                  + (" (significant)" if c["significant"] else " (not significant)"))
    print(f"summary in {out}")


def _grid_options(p) -> None:
    p.add_argument("--params", default="params.yaml", help="the params the grid's rows are overrides of")
    p.add_argument("--tiny", action="store_true", help="a few steps per stage (clapkit.grid.TINY), experiments "
                   "tiny-*: checks that every row runs, in minutes; not a result")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="an extra params.yaml override for every "
                   "experiment (under the row's own); give the same to queue and collect")


def register(subparsers) -> None:
    p = subparsers.add_parser("grid", help="the Table 1 ablation grid as DVC experiments (plan/queue/wait/collect)")
    sub = p.add_subparsers(dest="grid_command", required=True)
    pl = sub.add_parser("plan", help="list the experiments and their dvc exp run commands (runs nothing)")
    _grid_options(pl)
    pl.set_defaults(func=_cmd_plan)
    q = sub.add_parser("queue", help="dvc exp run --queue every experiment not run yet")
    _grid_options(q)
    q.add_argument("--jobs", type=int, default=2)
    q.add_argument("--include-workspace", action="store_true",
                   help="also queue the workspace's own params (normally `dvc repro` runs them)")
    q.set_defaults(func=_cmd_queue)
    w = sub.add_parser("wait", help="wait until the DVC queue is empty")
    w.add_argument("--poll", type=float, default=30.0)
    w.set_defaults(func=_cmd_wait)
    c = sub.add_parser("collect", help="dvc exp show --json -> reports/ablations.json")
    _grid_options(c)
    c.add_argument("--out", help=f"default {SUMMARY} ({SUMMARY.replace('.json', '-tiny.json')} with --tiny)")
    c.add_argument("--exp-show", help="read this saved `dvc exp show --json` output instead of running it")
    c.add_argument("--rev", action="append", help="baseline commit(s) to read experiments from (default: HEAD "
                   "and every commit that holds an experiment of the grid, from `dvc exp list -A`; where the same "
                   "row and seed ran on several, the newest baseline's counts)")
    c.set_defaults(func=_cmd_collect)
    r = sub.add_parser("recompute", help="the statistics of a stored summary again, from its per-seed results "
                                         "(paired t-tests of the rows over seeds; nothing rerun)")
    r.add_argument("--summary", default=SUMMARY)
    r.set_defaults(func=_cmd_recompute)
