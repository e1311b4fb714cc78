"""The ablation grid's summary (``reports/ablations.json``): its runs from ``dvc exp show --json``, and the statistics
computed from them.

* ``parse_exp_show`` / ``summarise``: each row of ``clapkit.grid_rows.ROWS`` with the runs of every seed found,
  matched by params (not names), the newest run of a (row, seed) winning; the row whose knobs are params.yaml's is
  marked ``workspace`` (the default), the floor (both pretrained towers frozen) ``floor``.
* ``SCORES``: per run the **transfer score** first (evaluate's ``transfer_zero_shot_score``: held-out sources
  scored with held-out wordings; its ``transfer_chance`` and ``transfer_entries_above_chance`` beside it), the
  embedded model's headline, then the **in-domain** zero-shot score (``embedded_zero_shot_score``, the 16 embedded
  tasks' test split) and the linear probe.
* ``add_statistics``: everything derived from the per-seed runs: per row and score the mean, sample standard
  deviation and t interval (95%, ``n - 1`` degrees of freedom) over seeds, per-entry / per-task means; and
  ``COMPARISONS``, the claims as row-against-row comparisons, each a **paired t-test over the seeds both rows ran**
  on the transfer score, then on the in-domain score (a seed fixes the contrastive training's initial weights,
  data order and crops, so pairing by seed removes that variance from the difference): mean difference, its t
  interval, t, degrees of freedom (pairs - 1), two-sided p-value, "significant" at ``SEED_TEST_ALPHA`` = 0.05.
  With one common seed there is no test (a single difference has no spread to compare it with), and the
  comparison says so.  The seeds of a row share one pretrained encoder, so the test covers contrastive training's
  variance, not the pretraining's.
* ``clapkit grid recompute``: ``add_statistics`` again on a stored summary of this ``FORMAT``, from the per-seed
  results it holds (no DVC, nothing rerun); an older format is refused (it lacks the transfer score).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

from .grid import FORMAT
from .grid_rows import FLOOR, KNOBS, ROWS, GridRow, check_rows, normalise_knobs, with_preset_towers, workspace_row
from .grid_rows import get_dotted as _get
from .stats import paired_t_test, student_t_quantile

__all__ = ["parse_exp_show", "summarise", "add_statistics", "COMPARISONS", "SCORES", "SEED_TEST_ALPHA"]

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


# the scores the statistics are computed on, in the order they are reported: the transfer test first (held-out
# sources, held-out wordings: the embedded model's headline), the in-domain zero-shot score second
SCORES: tuple[tuple[str, str, str], ...] = (
    ("transfer", "transfer_score", "transfer zero-shot score (held-out sources, held-out wordings)"),
    ("in_domain", "in_domain_score", "in-domain zero-shot score (the embedded tasks' test split)"),
)
WORKSPACE = "@workspace"  # in COMPARISONS: the row whose knobs are params.yaml's, whichever it is


def knobs_of(params: Mapping[str, Any]) -> dict[str, Any]:
    return normalise_knobs(with_preset_towers({k: _get(params, k) for k in KNOBS}, params))


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


def transfer_accuracies(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``"<source> <task>" -> accuracy`` (held-out wordings) of evaluate's ``transfer`` block."""
    return {f"{source} {task}": entry["accuracy"] for source, tasks in (metrics.get("transfer") or {}).items()
            for task, entry in tasks.items() if entry.get("accuracy") is not None}


def run_scores(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The scores of one run's metrics/evaluate.json that the summary keeps (None where the run predates them)."""
    return {"transfer_score": metrics.get("transfer_zero_shot_score"),
            "transfer_score_training_wordings": metrics.get("transfer_zero_shot_score_training_wordings"),
            "transfer_chance": metrics.get("transfer_chance"),
            "transfer_entries": metrics.get("transfer_entries"),
            "transfer_entries_above_chance": metrics.get("transfer_entries_above_chance"),
            "in_domain_score": metrics.get("embedded_zero_shot_score"),
            "linear_probe_score": metrics.get("embedded_linear_probe_score")}


def summarise(records: Sequence[Mapping[str, Any]], base: Mapping[str, Any],
              rows: Sequence[GridRow] = ROWS) -> dict[str, Any]:
    """Rows of the grid with every seed found (``runs``), then ``add_statistics``.  ``base``: the knob values the
    rows start from (``base_knobs``); the row whose knobs they are is the workspace run (``workspace: true``)."""
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
            m = rec["metrics"]
            other.append({"name": rec["name"], "knobs": knobs, "seed": seed,
                          "transfer_score": m.get("transfer_zero_shot_score"),
                          "in_domain_score": m.get("embedded_zero_shot_score")})
            continue
        old = by_key.get((idx, seed))
        if old is None or _newness(rec) > _newness(old):
            by_key[(idx, seed)] = rec
    tasks = sorted({t for rec in by_key.values() for t in rec["metrics"].get("zero_shot", {})})
    entries = sorted({e for rec in by_key.values() for e in transfer_accuracies(rec["metrics"])})
    own = workspace_row(rows, base)
    table = []
    for i, row in enumerate(rows):
        found = sorted((seed, rec) for (j, seed), rec in by_key.items() if j == i)
        runs = []
        for seed, rec in found:
            m = rec["metrics"]
            pre = (rec.get("all_metrics") or {}).get("metrics/pretrain.json") or {}
            per_entry = transfer_accuracies(m)
            runs.append({"experiment": rec["name"], "rev": rec["rev"], "seed": seed,
                         "pretrain_steps": _get(rec["params"], "pretrain.steps"), **run_scores(m),
                         "transfer_per_entry": {e: per_entry.get(e) for e in entries},
                         "in_domain_per_task": {t: m.get("zero_shot", {}).get(t) for t in tasks},
                         "pretrain_tasks_above_chance": pre.get("tasks_significant"),
                         "pretrain_tasks_above_audio_blind": pre.get("tasks_above_audio_blind")})
        table.append({"row": row.name, "slug": row.slug, "table1": row.table1, "knobs": row.knobs(base),
                      "workspace": row is own, "floor": row.slug == FLOOR, "seeds_planned": list(row.seeds),
                      "runs": runs})
    paper = {}
    for model in TABLE1_MODELS:
        per_task = {t.title: t.table1[model] for t in PAPER_TASKS.values() if model in t.table1}
        paper[model] = {"average": sum(per_task.values()) / len(per_task), "tasks": per_task}
    # the budget the rows were pretrained with: one value, unless runs from different params.yaml were collected
    # (e.g. a row that failed in a rerun of the grid, so an older run at another budget filled in)
    steps = sorted({r["pretrain_steps"] for row in table for r in row["runs"] if r["pretrain_steps"] is not None})
    return add_statistics({"format": FORMAT, "source": "dvc exp show --json", "base_knobs": normalise_knobs(base),
                           "tasks": tasks, "transfer_entry_names": entries, "rows": table, "other": other,
                           "pretrain_steps": steps, "paper_table1": paper,
                           "note": "paper_table1.average is the mean of the 16 per-task numbers of Table 1 (the "
                                   "paper prints the same values, except 0.469 for HTSAT-22+CLIP where the cells "
                                   "give 0.465)"})


# (row a, row b, the claim "a beats b"): the paper's comparisons (Table 1), the pretrained towers' and the grid's own
# ablations; a is WORKSPACE for the row params.yaml runs (the default), whichever that is
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    (WORKSPACE, FLOOR, "the default beats the floor (both pretrained towers frozen)"),
    ("aisfx-minilm-lit", "aisfx-minilm-frozen-1000",
     "locking the text space (LiT) beats training a text projection (both towers frozen, 1000 steps)"),
    ("aisfx-minilm-frozen-1000", FLOOR, "1000 steps of both projections beat the floor's 200"),
    ("htsat22-minilm-ft", "htsat22-gpt2", "MiniLM (fine-tuned) beats GPT-2 from scratch (HTSAT-22)"),
    ("aisfx-minilm-ft", "htsat22-minilm-ft", "the aisfx tower beats HTSAT-22 (MiniLM fine-tuned)"),
    ("htsat22-minilm-ft", "htsat22-minilm-frozen", "fine-tuning MiniLM beats freezing it (HTSAT-22)"),
    ("aisfx-minilm-ft", "aisfx-gpt2", "MiniLM (fine-tuned) beats GPT-2 from scratch (aisfx)"),
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


def paired_scores(a: Mapping[str, Any], b: Mapping[str, Any], score: str) -> dict[str, Any]:
    """Row ``a`` against row ``b`` (summary rows) on one per-run score: the paired t-test over their common seeds."""
    sa = {r["seed"]: r[score] for r in a["runs"] if r.get(score) is not None}
    sb = {r["seed"]: r[score] for r in b["runs"] if r.get(score) is not None}
    seeds = sorted(set(sa) & set(sb))
    out: dict[str, Any] = {"score": score, "seeds": seeds, "differences": [sa[s] - sb[s] for s in seeds]}
    if not seeds:
        return dict(out, test=None, note="no seed run by both rows")
    out["mean_difference"] = sum(out["differences"]) / len(seeds)
    if len(seeds) < 2:
        return dict(out, test=None, note=f"{len(seeds)} common seed: a paired test needs 2 (one difference has no "
                                         f"spread to compare it with)")
    test = paired_t_test([sa[s] for s in seeds], [sb[s] for s in seeds]).as_dict()
    test.pop("pairs")
    return dict(out, **test, alpha=SEED_TEST_ALPHA, significant=bool(test["p_value"] < SEED_TEST_ALPHA))


def compare(a: Mapping[str, Any], b: Mapping[str, Any], claim: str,
            paper: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Row ``a`` against row ``b``: the paired test of each score of ``SCORES``, the transfer score first."""
    out: dict[str, Any] = {"a": a["row"], "b": b["row"], "claim": claim}
    for key, score, _ in SCORES:
        out[key] = paired_scores(a, b, score)
    if paper and a.get("table1") in paper and b.get("table1") in paper:
        out["paper_difference"] = paper[a["table1"]]["average"] - paper[b["table1"]]["average"]
    return out


def check_format(summary: Mapping[str, Any]) -> None:
    if summary.get("format") != FORMAT:
        raise ValueError(f"a summary of format {summary.get('format')!r}: this clapkit reads {FORMAT!r} (the transfer "
                         f"score per run, which older summaries lack); write it again from the experiments with "
                         f"`clapkit grid collect`")


def add_statistics(summary: dict[str, Any]) -> dict[str, Any]:
    """(Re)compute, from each row's per-seed ``runs``, the row statistics (per score of ``SCORES``: mean, sample
    std, t interval over seeds) and the ``comparisons``; returns the summary (changed in place)."""
    check_format(summary)
    for entry in summary["rows"]:
        for key in list(entry):
            if key.endswith(("_mean", "_std", "_ci95")) or key == "transfer_chance":
                entry.pop(key)
        runs = entry["runs"]
        if not runs:
            continue
        for _, score, _ in SCORES + (("probe", "linear_probe_score", ""),):
            values = [r[score] for r in runs if r.get(score) is not None]
            mean, std = _mean_std(values) if values else (None, None)
            entry[f"{score}_mean"], entry[f"{score}_std"] = mean, std
            entry[f"{score}_ci95"] = _t_interval(values)  # t interval over seeds (none with one seed)
        chances = [r["transfer_chance"] for r in runs if r.get("transfer_chance") is not None]
        entry["transfer_chance"] = _mean_std(chances)[0] if chances else None
        for per_run, names in (("transfer_per_entry", summary["transfer_entry_names"]),
                               ("in_domain_per_task", summary["tasks"])):
            values = {n: [r[per_run][n] for r in runs if r[per_run].get(n) is not None] for n in names}
            entry[f"{per_run}_mean"] = {n: (_mean_std(v)[0] if v else None) for n, v in values.items()}
    by_slug = {r["slug"]: r for r in summary["rows"]}
    own = next((r for r in summary["rows"] if r.get("workspace")), None)
    if own is not None:
        by_slug[WORKSPACE] = own
    summary["seed_test"] = (f"paired t-test over the seeds both rows ran (two-sided, df = pairs - 1), significant "
                            f"at p < {SEED_TEST_ALPHA}; intervals: t, 95%; on the transfer score first, the "
                            f"in-domain score second")
    summary["comparisons"] = [compare(by_slug[a], by_slug[b], claim, summary.get("paper_table1"))
                              for a, b, claim in COMPARISONS
                              if a in by_slug and b in by_slug and by_slug[a] is not by_slug[b]
                              and by_slug[a]["runs"] and by_slug[b]["runs"]]
    summary["format"] = FORMAT
    return summary
