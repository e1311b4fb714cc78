"""The Table 1 ablation grid in miniature: DVC experiments over the encoder pair (pretrained towers included), the
pretraining tasks, the temperature and the batch size, and the summary the ablation notebook reads.

The paper's claims are comparative (MS-CLAP 2023 Table 1: HTSAT-22 pretraining beats plain HTSAT and CNN14, GPT-2
beats BERT / RoBERTa as text encoder; its text encoders are all pretrained).  ``clapkit.grid_rows.ROWS`` lists the
grid as params.yaml overrides; every row states its tower knobs (audio / text encoder, ``pretrain.tasks``, the
freezes, ``train.text_lr_scale``) explicitly, so it means the same experiment whatever params.yaml's default towers
are.  The experiment whose params are params.yaml's (no ``-S`` at all: the row whose knobs are params.yaml's, at
params.yaml's seed) is the workspace run, ``dvc repro``'s, and is not queued; a ``-S`` is written only for what
differs from params.yaml (a null tower and the explicit name of the preset's own, HTSAT / GPT-2, are the same).
The new rows (issue 15): HTSAT-22 + MiniLM frozen / fine-tuned (``train.text_lr_scale: 0.1``), the floor (aisfx +
MiniLM, both frozen: only the projections train), aisfx (frozen) + MiniLM fine-tuned, aisfx (frozen) + GPT-2.

* ``clapkit grid plan``: the experiments and their ``dvc exp run`` commands (nothing runs).
* ``clapkit grid queue``: ``dvc exp run --queue`` for every experiment not already in ``dvc exp show``;
  then ``dvc queue start -j 2`` runs them (``make grid`` does all of it, see the Makefile).
* ``clapkit grid wait``: until the queue is empty.
* ``clapkit grid collect``: ``dvc exp show --json`` -> ``reports/ablations.json`` (committed; the notebook reads
  only this file, so it renders on a fresh clone, where DVC experiments, which live in local git refs, are absent),
  with the statistics of ``clapkit.grid_summary``: per row a t interval over seeds of the transfer score (the
  headline) and of the in-domain zero-shot score, and the claims as paired t-tests of two rows over their common
  seeds (degrees of freedom, p-value), on the transfer score first.
* ``clapkit grid recompute``: those statistics again from the per-seed results a summary stores (nothing reruns).
* ``--tiny`` (plan / queue / collect): the same grid at a few optimiser steps per stage (``TINY``, as
  tests/test_pipeline_e2e.py), experiments named ``tiny-*``, summary ``reports/ablations-tiny.json``: a check
  that every row runs end to end (minutes), not a result; every tiny experiment is queued (TINY changes params).
  ``--set key=value`` adds overrides of your own (under the rows': a row's tower knobs win).

Budget.  A queued experiment runs in a fresh temporary copy of the repository; prepare is skipped (its outputs are
cached or committed).  The pretrain stage depends only on what changes the audio encoder (``preset``, ``frontend``,
``model.<preset>``, ``model.audio_encoder``, the ``pretrain`` block with its own ``pretrain.seed``), not on the
top-level ``seed`` the grid varies, nor on the text tower or the freezes, so the seeds of a row differ in their
contrastive training and share one pretrained encoder.  Rows with the workspace's pretraining find it in dvc.lock;
the others take it from DVC's run-cache once one experiment has run it, which is why ``queue_order`` queues the
first experiment of each other pretraining (keyed by model config, audio encoder and tasks, as DVC keys the stage)
before everything else.  With the committed default (the LiT config, aisfx + MiniLM) the grid runs five beside the
workspace's: CNN14 on sound events, HTSAT-22's 21 tasks, HTSAT on sound events, HTSAT with none (a seeded random
encoder) and aisfx with none in the grid's config (``grid_rows.BASE_CONFIG``; its packaged weights written out, no
training, so nearly free: the stage reads ``model.embedded``, so DVC reruns it per config).  A frozen aisfx tower's
clip features and a frozen MiniLM's caption features are computed once into caches outside the workspace
(``train.audio_cache_dir`` / ``text_cache_dir``), shared by every experiment.  docs/results.md ("Budget") has
the measured wall times.

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

from .grid_rows import KNOBS, PINNED, ROWS, GridRow, base_knobs, check_rows, normalise_knobs
from .atomic_files import write_text

# the rows themselves: clapkit.grid_rows (re-exported here); the summary: clapkit.grid_summary
__all__ = ["ROWS", "Experiment", "GridRow", "base_knobs", "check_rows", "experiments", "queue_order"]

FORMAT = "clapkit-ablations/3"  # 3: the transfer score beside the in-domain one, per run, per row, per comparison
SUMMARY = "reports/ablations.json"
# --tiny: a few steps per stage on the committed corpus (prepare is left alone, so it is not rerun)
TINY = {
    "pretrain.steps": 4, "pretrain.batch_size": 8, "pretrain.warmup_steps": 1, "pretrain.checkpoint_every": 2,
    "pretrain.log_every": 1, "pretrain.eval_clips_per_task": 8, "pretrain.examples_per_task": 1,
    "train.max_steps": 4, "train.batch_size": 8, "train.warmup_steps": 1, "train.checkpoint_every": 2,
    "train.log_every": 1, "train.val_max_clips": 48,
    "evaluate.test_clips_per_task": 20, "evaluate.probe_train_per_class": 3, "evaluate.retrieval_clips": 50,
    "evaluate.map_clips_per_task": 10,
}


@dataclass(frozen=True)
class Experiment:
    row: GridRow
    seed: int
    base: Mapping[str, Any]  # params.yaml's knob values, with ``extra``'s: what ``-S`` changes is relative to it
    extra: Mapping[str, Any] = field(default_factory=dict)  # --tiny / --set overrides, under the row's
    prefix: str = ""
    workspace_seed: int = 0  # params.yaml's top-level seed

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.row.slug}-s{self.seed}"

    @property
    def knobs(self) -> dict[str, Any]:
        return self.row.knobs(self.base)

    @property
    def set_params(self) -> dict[str, Any]:
        """What ``-S`` changes relative to params.yaml: ``extra``, the row's knobs whose meaning differs from
        params.yaml's (a null tower and the explicit name of the preset's own are the same: no ``-S``, so the
        pretrain stage's params stay those of dvc.lock), and the seed where it is not params.yaml's."""
        out = dict(self.extra)
        own = normalise_knobs(self.base)
        knobs = self.knobs
        pinned = self.base.get(PINNED, ())
        keys = {k for k in self.row.overrides if k not in pinned and knobs[k] != own[k]}
        # A knob whose meaning params.yaml shares only under its own towers must be set too: with the default's aisfx
        # any pretrain.tasks means none, but once a row sets htsat, params.yaml's "all" would pretrain HTSAT-22.
        # So add every knob the run would otherwise get wrong, until what the run gets is the row.
        raw = {k: v for k, v in self.base.items() if k != PINNED}
        while True:
            effective = normalise_knobs({**raw, **{k: knobs[k] for k in keys}})
            wrong = {k for k in self.row.overrides if k not in pinned and effective[k] != knobs[k]} - keys
            if not wrong:
                break
            keys |= wrong
        out.update({k: knobs[k] for k in self.row.overrides if k in keys})
        out.update({k: knobs[k] for k in pinned})  # a pinned budget, scaled to the row's (grid_rows.GridRow.knobs)
        if self.seed != self.workspace_seed:
            out["seed"] = self.seed
        return out

    @property
    def is_workspace(self) -> bool:
        """Its params are params.yaml's: ``dvc repro`` runs it, ``clapkit grid queue`` does not."""
        return not self.set_params

    def command(self, queue: bool = True) -> list[str]:
        cmd = ["dvc", "exp", "run"] + (["--queue"] if queue else []) + ["-n", self.name]
        for key, value in self.set_params.items():
            cmd += ["-S", f"{key}={json.dumps(value)}"]
        return cmd + [GRID_TARGET]


GRID_TARGET = "evaluate"  # an experiment runs the pipeline up to evaluate: the caption stage is not part of Table 1


def experiments(rows: Sequence[GridRow] = ROWS, extra: Mapping[str, Any] | None = None, prefix: str = "",
                base: Mapping[str, Any] | None = None, workspace_seed: int = 0) -> list[Experiment]:
    """Every (row, seed), in the grid's order.  ``base``: the knob values of params.yaml with ``extra``'s
    (``base_knobs``; default: those of ./params.yaml)."""
    if base is None:
        from .config import load_params

        base = base_knobs(load_params("params.yaml"), extra)
    return [Experiment(r, s, dict(base), dict(extra or {}), prefix, workspace_seed) for r in rows for s in r.seeds]


# the params that change the pretrain stage's output (dvc.yaml pretrain: params), by their -S prefix
PRETRAIN_PARAMS = ("preset", "frontend", "model.embedded", "model.paper", "model.audio_encoder", "pretrain.")


def _pretraining_key(knobs: Mapping[str, Any], extra: Mapping[str, Any]) -> tuple:
    keys = {k: knobs[k] for k in KNOBS if k.startswith(PRETRAIN_PARAMS)}
    keys.update({k: v for k, v in extra.items() if k.startswith(PRETRAIN_PARAMS) and k not in KNOBS})
    return tuple(sorted((k, json.dumps(v)) for k, v in keys.items()))


def pretraining_of(e: Experiment) -> tuple:
    """What identifies an experiment's pretraining: its values of the knobs the pretrain stage reads (audio encoder,
    tasks; normalised, so a null tower and the preset's own are one) and any other pretrain-stage override of
    ``extra`` (``--tiny``'s steps); not the seed, which is train's."""
    return _pretraining_key(e.knobs, e.extra)


def workspace_pretraining(base: Mapping[str, Any]) -> tuple:
    """The pretraining of params.yaml as it is (``dvc repro``'s, in dvc.lock)."""
    return _pretraining_key(normalise_knobs(base), {})


def pretraining_cost(knobs: Mapping[str, Any]) -> float:
    """Relative cost of a pretraining: ``tasks: none`` costs nothing (a seeded random encoder, or aisfx's packaged
    weights written out), CNN14 ~2.6x the small HTSAT per clip."""
    if knobs.get("pretrain.tasks") == "none":
        return 0.0
    return 2.6 if knobs.get("model.audio_encoder") == "cnn14" else 1.0


def queue_order(exps: Sequence[Experiment]) -> list[Experiment]:
    """The order to queue in so that each pretraining runs once.  DVC's run-cache hands a finished pretraining to
    every later experiment with the same pretrain params, but two experiments that need it while neither has
    finished both run it.  So the first experiment of each pretraining other than the workspace's (``dvc repro``
    ran that one: it is in dvc.lock) goes first, the costliest first, then the experiments that reuse a
    pretraining, in the grid's order."""
    done = {workspace_pretraining(exps[0].base)} if exps else set()
    first: list[Experiment] = []
    for e in exps:
        key = pretraining_of(e)
        if key not in done:
            done.add(key)
            first.append(e)
    first.sort(key=lambda e: pretraining_cost(e.knobs), reverse=True)  # stable: ties keep the grid's order
    return first + [e for e in exps if e not in first]


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
    params = load_params(args.params)
    base = base_knobs(params, extra)
    check_rows(ROWS, base)
    return experiments(ROWS, extra, prefix, base, int(params.get("seed", 0))), base


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
    names = grid_names()
    return ["HEAD"] + parse_exp_list(_dvc("exp", "list", "-A"), names)


def grid_names() -> set[str]:
    """The names of the grid's experiments, full size and ``--tiny`` (slug + seed: they do not depend on params)."""
    return {f"{prefix}{r.slug}-s{s}" for r in ROWS for s in r.seeds for prefix in ("", "tiny-")}


def _cmd_plan(args) -> int:
    exps, _ = _grid(args)
    for e in exps:
        print(f"{e.name:34s} {e.row.name:44s} {' '.join(e.command())}")
    workspace = [e.name for e in exps if e.is_workspace]
    order = queue_order(exps)
    firsts = order[:len({pretraining_of(e) for e in exps} - {workspace_pretraining(exps[0].base)})]
    print(f"{len(exps)} experiments; "
          + (f"{workspace[0]} is the workspace run (dvc repro), {len(exps) - 1} to queue" if workspace
             else f"none has params.yaml's params: all {len(exps)} to queue")
          + f"; {len(firsts)} pretraining(s) beside the workspace's, queued first: {[e.name for e in firsts]}")
    return 0


def _cmd_queue(args) -> int:
    from .grid_summary import parse_exp_show

    exps, _ = _grid(args)
    # Experiments of older baselines count as done: a grid is often finished across commits (grid collect reads
    # the same baselines).
    done = {r["name"] for r in parse_exp_show(exp_show_json(grid_baselines()))}
    queued = 0
    for e in queue_order(exps):
        if e.name in done or (e.is_workspace and not args.include_workspace):
            print(f"skip  {e.name} ({'done' if e.name in done else 'the workspace run: dvc repro'})")
            continue
        print("queue", " ".join(e.command()))
        subprocess.run(e.command(), check=True)
        queued += 1
    print(f"{queued} experiments queued; run them with: dvc queue start -j {args.jobs}")
    return 0


def _cmd_wait(args) -> int:
    """Poll ``dvc queue status`` until nothing is queued or running; fail if an experiment of the grid failed."""
    names = grid_names()
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
    from .grid_summary import SCORES

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(summary, indent=1) + "\n")

    def mean_std(row: Mapping[str, Any], score: str) -> str:
        mean, std = row.get(f"{score}_mean"), row.get(f"{score}_std")
        return "-" if mean is None else f"{mean:.3f}" + (f" +- {std:.3f}" if std is not None else "")

    for row in summary["rows"]:
        if row["runs"]:
            chance = row.get("transfer_chance")
            print(f"{row['row']:44s} transfer {mean_std(row, 'transfer_score')}"
                  + (f" (chance {chance:.3f})" if chance is not None else "")
                  + f"  in-domain {mean_std(row, 'in_domain_score')}  ({len(row['runs'])} seed(s))"
                  + ("  [workspace]" if row.get("workspace") else ""))
        else:
            print(f"{row['row']:44s} not run")
    for c in summary["comparisons"]:
        for key, _, _ in SCORES:
            t = c[key]
            head = f"{c['a']} - {c['b']} ({key}): "
            if t["test"] is None:
                print(head + (f"{t['mean_difference']:+.3f} " if "mean_difference" in t else "") + f"({t['note']})")
            else:
                print(head + f"{t['mean_difference']:+.3f} over {len(t['seeds'])} seeds, paired t({t['df']}) = "
                      f"{t['t']:.2f}, p = {t['p_value']:.3f}"
                      + (" (significant)" if t["significant"] else " (not significant)"))
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
