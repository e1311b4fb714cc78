"""The ablation grid's summary (``reports/ablations.json``): its runs from ``dvc exp show --json``, and the statistics
computed from them.

* ``parse_exp_show`` / ``summarise``: each row of ``clapkit.grid.ROWS`` with the runs of every seed found,
  matched by params (not names), the newest run of a (row, seed) winning.
* ``add_statistics``: everything derived from the per-seed runs: per row the mean, sample standard deviation and
  t interval (95%, ``n - 1`` degrees of freedom) of the embedded zero-shot score over seeds, per-task means; and
  ``COMPARISONS``, the paper's claims as row-against-row comparisons, each a **paired t-test over the seeds both
  rows ran** (a seed fixes the contrastive training's initial weights, data order and crops, so pairing by seed
  removes that variance from the difference): mean difference, its t interval, t, degrees of freedom (pairs - 1),
  two-sided p-value, "significant" at ``SEED_TEST_ALPHA`` = 0.05.  With one common seed there is no test (a single
  difference has no spread to compare it with), and the comparison says so.  The seeds of a row share one
  pretrained encoder, so the test covers contrastive training's variance, not the pretraining's.
* ``clapkit grid recompute``: ``add_statistics`` again on a stored summary, from the per-seed results it holds
  (no DVC, nothing rerun).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from .grid import FORMAT, ROWS, GridRow, _get, check_rows, normalise_knobs, KNOBS
from .stats import paired_t_test, student_t_quantile

__all__ = ["parse_exp_show", "summarise", "add_statistics", "COMPARISONS", "SEED_TEST_ALPHA"]

# two-sided; with 2-4 seeds per row the one-sided 3-sigma level of the evaluate stage could never be reached
SEED_TEST_ALPHA = 0.05


def _entries(node: Any) -> Iterable[dict[str, Any]]:
    """Every {rev, name, data: {params, metrics}} record anywhere in ``dvc exp show --json`` output (the
    baseline commits and the experiments under them, whatever the nesting of this DVC version)."""
    if isinstance(node, list):
        for item in node:
            yield from _entries(item)
    elif isinstance(node, dict):
        state = (node.get("executor") or {}).get("state")
        if state in ("queued", "running", "failed"):
            # an unfinished experiment shows the files of its temporary copy: until its stages rewrite them,
            # those are the baseline's metrics under the experiment's params (a failed one never finished)
            return
        data = node.get("data")
        if isinstance(data, dict) and ("params" in data or "metrics" in data):
            yield {"rev": node.get("rev") or data.get("rev"), "name": node.get("name"), "data": data,
                   "error": node.get("error")}
        for key in ("experiments", "revs"):
            if key in node:
                yield from _entries(node[key])


def parse_exp_show(records: Any, params_file: str = "params.yaml",
                   metrics_file: str = "metrics/evaluate.json") -> list[dict[str, Any]]:
    """Flat list of {name, rev, params, metrics} for entries with evaluate metrics (finished runs)."""
    out = []
    for entry in _entries(records):
        params = ((entry["data"].get("params") or {}).get(params_file) or {}).get("data") or {}
        metrics = (entry["data"].get("metrics") or {}).get(metrics_file, {}).get("data")
        if not metrics or not params:
            continue
        extra = {f: (m or {}).get("data") for f, m in (entry["data"].get("metrics") or {}).items()}
        out.append({"name": entry["name"] or entry["rev"], "rev": entry["rev"],
                    "timestamp": entry["data"].get("timestamp"), "params": params,
                    "metrics": metrics, "all_metrics": extra})
    return out


def knobs_of(params: Mapping[str, Any]) -> dict[str, Any]:
    return normalise_knobs({k: _get(params, k) for k in KNOBS})


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def _newness(rec: Mapping[str, Any]) -> str:
    """Sort key of a run's age: its commit timestamp (ISO text); the uncommitted workspace is newest."""
    if rec.get("rev") == "workspace":
        return "~"  # after every digit: later than any timestamp
    return rec.get("timestamp") or ""


def summarise(records: Sequence[Mapping[str, Any]], base: Mapping[str, Any],
              rows: Sequence[GridRow] = ROWS) -> dict[str, Any]:
    """Rows of the grid with every seed found (``runs``), then ``add_statistics``.  ``base``: the knob values the
    rows start from (``base_knobs``)."""
    from .tasks import PAPER_TASKS, TABLE1_MODELS

    check_rows(rows, base)

    # (row index, seed) -> record: the newest run (commit timestamp) wins, e.g. a rerun after a retune.  The
    # workspace (no timestamp) is the newest of all: `make grid` reproduces it before queueing, so where the code
    # changed since HEAD, HEAD's committed metrics are stale and the workspace holds the current run.
    by_key: dict[tuple[int, int], dict[str, Any]] = {}
    other = []
    for rec in records:
        knobs, seed = knobs_of(rec["params"]), int(rec["params"].get("seed", 0))
        idx = next((i for i, r in enumerate(rows) if r.knobs(base) == knobs), None)
        if idx is None:
            other.append({"name": rec["name"], "knobs": knobs, "seed": seed,
                          "zero_shot_score": rec["metrics"].get("embedded_zero_shot_score")})
            continue
        old = by_key.get((idx, seed))
        if old is None or _newness(rec) > _newness(old):
            by_key[(idx, seed)] = rec
    tasks = sorted({t for rec in by_key.values() for t in rec["metrics"].get("zero_shot", {})})
    table = []
    for i, row in enumerate(rows):
        found = sorted((seed, rec) for (j, seed), rec in by_key.items() if j == i)
        runs = []
        for seed, rec in found:
            m = rec["metrics"]
            pre = (rec.get("all_metrics") or {}).get("metrics/pretrain.json") or {}
            runs.append({"experiment": rec["name"], "rev": rec["rev"], "seed": seed,
                         "pretrain_steps": _get(rec["params"], "pretrain.steps"),
                         "zero_shot_score": m.get("embedded_zero_shot_score"),
                         "linear_probe_score": m.get("embedded_linear_probe_score"),
                         "zero_shot": {t: m.get("zero_shot", {}).get(t) for t in tasks},
                         "pretrain_tasks_above_chance": pre.get("tasks_significant"),
                         "pretrain_tasks_above_audio_blind": pre.get("tasks_above_audio_blind")})
        table.append({"row": row.name, "slug": row.slug, "table1": row.table1, "knobs": row.knobs(base),
                      "seeds_planned": list(row.seeds), "runs": runs})
    paper = {}
    for model in TABLE1_MODELS:
        per_task = {t.title: t.table1[model] for t in PAPER_TASKS.values() if model in t.table1}
        paper[model] = {"average": sum(per_task.values()) / len(per_task), "tasks": per_task}
    # the budget the rows were pretrained with: one value, unless runs from different params.yaml were collected
    # (e.g. a row that failed in a rerun of the grid, so an older run at another budget filled in)
    steps = sorted({r["pretrain_steps"] for row in table for r in row["runs"] if r["pretrain_steps"] is not None})
    return add_statistics({"format": FORMAT, "source": "dvc exp show --json", "tasks": tasks, "rows": table,
                           "other": other, "pretrain_steps": steps, "paper_table1": paper,
                           "note": "paper_table1.average is the mean of the 16 per-task numbers of Table 1 (the "
                                   "paper prints the same values, except 0.469 for HTSAT-22+CLIP where the cells "
                                   "give 0.465)"})


# (row a, row b, the claim "a beats b"): the paper's comparisons (Table 1) and the grid's own ablations
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("htsat22-gpt2", "htsat-gpt2", "HTSAT-22 pretraining beats sound-event pretraining (GPT-2 text encoder)"),
    ("htsat22-roberta", "htsat-roberta", "HTSAT-22 pretraining beats sound-event pretraining (RoBERTa)"),
    ("htsat22-gpt2", "htsat22-roberta", "GPT-2 beats RoBERTa as text encoder (HTSAT-22)"),
    ("htsat-gpt2", "htsat-roberta", "GPT-2 beats RoBERTa as text encoder (HTSAT)"),
    ("htsat22-gpt2", "none-gpt2", "pretraining the audio encoder beats none"),
    ("htsat22-gpt2", "htsat22-gpt2-fixedtau", "a learned temperature beats a fixed 0.07"),
    ("htsat22-gpt2", "htsat22-gpt2-b32", "batch 64 beats batch 32"),
    ("htsat22-gpt2", "cnn14-bert", "HTSAT-22 + GPT-2 beats CNN14 + BERT"),
)


def _t_interval(values: Sequence[float]) -> list[float] | None:
    n = len(values)
    if n < 2:
        return None
    mean, std = _mean_std(values)
    half = student_t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return [mean - half, mean + half]


def compare(a: Mapping[str, Any], b: Mapping[str, Any], claim: str,
            paper: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Row ``a`` against row ``b`` (summary rows): the paired t-test of their zero-shot scores over common seeds."""
    sa = {r["seed"]: r["zero_shot_score"] for r in a["runs"] if r["zero_shot_score"] is not None}
    sb = {r["seed"]: r["zero_shot_score"] for r in b["runs"] if r["zero_shot_score"] is not None}
    seeds = sorted(set(sa) & set(sb))
    out: dict[str, Any] = {"a": a["row"], "b": b["row"], "claim": claim, "seeds": seeds,
                           "differences": [sa[s] - sb[s] for s in seeds]}
    if paper and a.get("table1") in paper and b.get("table1") in paper:
        out["paper_difference"] = paper[a["table1"]]["average"] - paper[b["table1"]]["average"]
    if not seeds:
        return dict(out, test=None, note="no seed run by both rows")
    out["mean_difference"] = sum(out["differences"]) / len(seeds)
    if len(seeds) < 2:
        return dict(out, test=None, note=f"{len(seeds)} common seed: a paired test needs 2 (one difference has no "
                                         f"spread to compare it with)")
    test = paired_t_test([sa[s] for s in seeds], [sb[s] for s in seeds]).as_dict()
    test.pop("pairs")
    return dict(out, **test, alpha=SEED_TEST_ALPHA, significant=bool(test["p_value"] < SEED_TEST_ALPHA))


def add_statistics(summary: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute, from each row's per-seed ``runs``, the row statistics and the ``comparisons``; returns the
    summary (changed in place)."""
    tasks = summary["tasks"]
    for entry in summary["rows"]:
        for key in ("zero_shot_score_mean", "zero_shot_score_std", "zero_shot_score_ci95", "linear_probe_score_mean",
                    "zero_shot_mean"):
            entry.pop(key, None)
        runs = entry["runs"]
        if not runs:
            continue
        scores = [r["zero_shot_score"] for r in runs]
        entry["zero_shot_score_mean"], entry["zero_shot_score_std"] = _mean_std(scores)
        entry["zero_shot_score_ci95"] = _t_interval(scores)  # t interval over seeds (none with one seed)
        probes = [r["linear_probe_score"] for r in runs if r["linear_probe_score"] is not None]
        entry["linear_probe_score_mean"] = _mean_std(probes)[0] if probes else None
        entry["zero_shot_mean"] = {t: _mean_std([r["zero_shot"][t] for r in runs
                                                 if r["zero_shot"].get(t) is not None])[0] for t in tasks}
    by_slug = {r["slug"]: r for r in summary["rows"]}
    summary["seed_test"] = (f"paired t-test over the seeds both rows ran (two-sided, df = pairs - 1), significant "
                            f"at p < {SEED_TEST_ALPHA}; intervals: t, 95%")
    summary["comparisons"] = [compare(by_slug[a], by_slug[b], claim, summary.get("paper_table1"))
                              for a, b, claim in COMPARISONS
                              if a in by_slug and b in by_slug and by_slug[a]["runs"] and by_slug[b]["runs"]]
    summary["format"] = FORMAT
    return summary
