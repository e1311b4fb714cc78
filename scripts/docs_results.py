"""The result tables and figures of README.md and docs/*.md, generated from the metrics files the pipeline writes,
so that they cannot drift from the runs.

A document holds each generated block between two markers::

    <!-- results:evaluate -->
    ...generated...
    <!-- /results:evaluate -->

``python scripts/docs_results.py`` (``make docs``, after ``dvc repro``) rewrites every block of every document from
the committed outputs and draws the figures into ``docs/figures/``; each block name appears in exactly one document.
A figure's block names the figure and a digest of the numbers it was drawn from, so a change of those numbers changes
the block. ``--check`` exits 1 when a document differs from what the outputs say, or a figure is missing
(tests/test_docs_results.py runs it in CI). Intervals are Wilson 95% and tests exact one-sided binomial
(clapkit.stats), as in the stages and notebooks.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from clapkit.atomic_files import replacing, write_text
from clapkit.stats import THREE_SIGMA, binomial_tail, wilson_interval

REPO = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- results:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def _load(root: Path, rel: str) -> Any:
    path = root / rel
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run `dvc repro` first)")
    return json.loads(path.read_text())


def _ci(acc: float, n: int) -> str:
    """The accuracy with the Wilson 95% interval of acc x n successes (for metrics that do not carry one)."""
    return _cell(acc, list(wilson_interval(acc * n, n)))


def _p(x: float | None) -> str:
    return "" if x is None else f"{x:.2g}"


def _yes(flag: bool | None) -> str:
    return "yes" if flag else ""


def data_block(root: Path) -> str:
    m = _load(root, "metrics/data.json")
    split = m["clips_by_split"]
    rows = ["| metric | value |", "|---|---|",
            f"| clips_total | {m['clips_total']} ({m['hours_total']:.3f} hours) |",
            f"| clips_real (recorded by people) | {m['clips_real']} |",
            f"| clips_synthetic | {m['clips_synthetic']} |",
            f"| clips_environmental | {m['clips_environmental']} |",
            "| environmental_labels (distinct `sound_event` labels of environmental clips) "
            f"| {m['environmental_labels']} |",
            f"| sources | {m['sources']} |",
            f"| tasks (label keys with at least 2 classes) | {m['tasks']} |",
            f"| quarantined | {m['quarantined']} |",
            "| clips by split | " + " / ".join(f"{k} {v}" for k, v in split.items()) + " |"]
    return "\n".join(rows) + "\n"


def pretrain_block(root: Path) -> str:
    m = _load(root, "metrics/pretrain.json")
    if str(m.get("mode", "")).startswith("packaged:"):
        return (f"The default's audio tower comes pretrained (mode `{m['mode']}`): the stage wrote its packaged, "
                f"sha256-verified weights and trained nothing ({m['steps']} steps, `metrics/pretrain.json`). The "
                "multi-task pretraining of the from-scratch HTSAT, last run as the default, is below.\n")
    return htsat22_table(m)


def pretrain_htsat22_block(root: Path) -> str:
    """The from-scratch pair's multi-task pretraining as the pipeline last ran it (the default until be977f0)."""
    return htsat22_table(_load(root, "reports/pretrain-htsat22-be977f0.json"), "reports/pretrain-htsat22-be977f0.json")


def htsat22_table(m: dict, source: str = "metrics/pretrain.json") -> str:
    rows = ["| task | classes | test clips | accuracy [95% CI] | chance | audio-blind | p vs chance | p vs audio-blind "
            "| above chance | above audio-blind |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in sorted(m["tasks"].items()):
        rows.append(f"| {name} | {t['classes']} | {t['clips']} | {_cell(t['accuracy'], t['ci95'])} | {t['chance']:.3f} "
                    f"| {t['audio_blind']:.3f} | {_p(t.get('p_value_chance'))} | {_p(t.get('p_value_audio_blind'))} "
                    f"| {_yes(t['significant'])} | {_yes(t['above_audio_blind'])} |")
    above = sorted(n for n, t in m["tasks"].items() if t["above_audio_blind"])
    return "\n".join(rows) + (
        f"\n\n**{m['tasks_significant']} of {m['num_tasks']} tasks** are above chance and "
        f"**{m['tasks_above_audio_blind']}** above the audio-blind answer (exact one-sided binomial, "
        f"p < {THREE_SIGMA:.5f}: {', '.join(above)}); mean "
        f"accuracy {m['mean_accuracy']:.3f} against a mean chance of {m['mean_chance']:.3f}; {m['steps']} steps, "
        f"final training loss {m['final_loss']:.3f} (`{source}`).\n")


def train_block(root: Path) -> str:
    m = _load(root, "metrics/train.json")
    rows = ["| task | classes | val clips | accuracy [95% CI] | chance | p vs chance |", "|---|---|---|---|---|---|"]
    above = []
    for name, t in sorted(m["val_zeroshot"].items()):
        p = binomial_tail(t["accuracy"] * t["clips"], t["clips"], t["chance"])
        above += [name] if p < THREE_SIGMA else []
        rows.append(f"| {name} | {t['classes']} | {t['clips']} | {_ci(t['accuracy'], t['clips'])} | {t['chance']:.3f} "
                    f"| {_p(p)} |")
    return "\n".join(rows) + (
        f"\n\n{m['step']} steps ({m['clips_seen']} clips, {m['epochs']} epochs); validation loss {m['val_loss']:.3f}, "
        f"temperature {m['temperature']:.3f}, mean zero-shot accuracy {m['val_mean_accuracy']:.3f}; above chance "
        f"(exact one-sided binomial, p < {THREE_SIGMA:.5f}): {', '.join(above) or 'none'} (`metrics/train.json`)."
        + _repeats(m.get("caption_repeats")) + "\n")


def _repeats(r: dict | None) -> str:
    if not r:
        return ""
    return (f" Caption repeats: {r['batches_with_repeat']} of {r['batches']} batches of {r['batch_size']} hold a "
            f"caption twice; {100 * r['clips_with_twin_fraction']:.1f}% of the clips share their caption with another "
            f"clip of their batch (at most {r['max_same_caption']} one caption); "
            f"{100 * r['false_negative_fraction']:.2f}% of the in-batch negatives are identical captions.")


def _cell(value: float | None, ci: list | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and None not in ci else "")


def _probe_note(note: str | None) -> str:
    """'not probed: 33 of the 40 classes ... training clips: a (0), b (1), ...' without the list of classes."""
    return ": ".join(note.split(": ")[:2]) if note else "not probed"


def evaluate_block(root: Path) -> str:
    m = _load(root, "metrics/evaluate.json")
    rows = ["| task | test clips | zero-shot [95% CI] | p vs chance | linear probe [95% CI] | p vs chance | chance |",
            "|---|---|---|---|---|---|---|"]
    for name, t in sorted(m["tasks"].items()):
        zs = _cell(m["zero_shot"][name], [t["zero_shot_ci95_low"], t["zero_shot_ci95_high"]])
        probe = _cell(m["linear_probe"].get(name), [t.get("linear_probe_ci95_low"), t.get("linear_probe_ci95_high")]) \
            or _probe_note(t.get("linear_probe_note"))
        rows.append(f"| {name} | {t['clips']} | {zs} | {_p(t['zero_shot_p_value'])} | {probe} "
                    f"| {_p(t.get('linear_probe_p_value'))} | {t['chance']:.3f} |")
    text = "\n".join(rows) + (
        f"\n\nEmbedded zero-shot score {m['embedded_zero_shot_score']:.3f} "
        f"({m['embedded_zero_shot_tasks_above_chance']} of {len(m['tasks'])} tasks above chance, exact one-sided "
        f"binomial, p < {THREE_SIGMA:.5f}), linear-probe "
        f"score {m['embedded_linear_probe_score']:.3f} over {m['embedded_linear_probe_tasks']} probed tasks "
        f"({m['embedded_linear_probe_tasks_above_chance']} above chance); `metrics/evaluate.json`.")
    for name, ret in sorted(m["retrieval"].items()):
        parts = [f"{'audio->text' if d == 'a2t' else 'text->audio'} R@1 {v['R@1']:.3f}, R@10 {v['R@10']:.3f}, "
                 f"mAP@10 {v['mAP@10']:.3f}" for d, v in sorted(ret.items())]
        text += f" Caption retrieval ({name}): " + "; ".join(parts) + "."
    return text + "\n"


def transfer_block(root: Path) -> str:
    m = _load(root, "metrics/evaluate.json")
    rows = ["| held-out source | task | clips | classes | held-out wordings [95% CI] | p vs chance "
            "| training wordings [95% CI] | chance |", "|---|---|---|---|---|---|---|---|"]
    for source, tasks in sorted(m["transfer"].items()):
        for task, e in sorted(tasks.items()):
            held = _cell(e["accuracy"], [e["ci95_low"], e["ci95_high"]])
            trained = _cell(e["training_wordings_accuracy"],
                            [e["training_wordings_ci95_low"], e["training_wordings_ci95_high"]])
            rows.append(f"| {source} | {task} | {e['clips']} | {e['classes']} | {held} | {_p(e['p_value'])} "
                        f"| {trained} | {e['chance']:.3f} |")
    return "\n".join(rows) + (
        f"\n\nTransfer score (mean held-out-wording accuracy over {m['transfer_entries']} entries) "
        f"**{m['transfer_zero_shot_score']:.3f}** against a mean chance of {m['transfer_chance']:.3f}; "
        f"{m['transfer_entries_above_chance']} entries above chance (exact one-sided binomial, p < {THREE_SIGMA:.5f}); "
        f"the same clips with the training wordings {m['transfer_zero_shot_score_training_wordings']:.3f} "
        f"(`metrics/evaluate.json`).\n")


def _mean_sd(row: dict, score: str) -> str:
    mean, std = row.get(f"{score}_mean"), row.get(f"{score}_std")
    if mean is None:
        return "not run"
    return f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def grid_block(root: Path) -> str:
    s = _load(root, "reports/ablations.json")
    lines = ["| row | seeds run | transfer score, mean ± sd over seeds | in-domain zero-shot | linear probe |",
             "|---|---|---|---|---|"]
    for r in s["rows"]:
        seeds = ", ".join(str(x["seed"]) for x in r["runs"]) or "-"
        mark = " (**default**)" if r.get("workspace") else ""
        lines.append(f"| {r['row']}{mark} | {seeds} | {_mean_sd(r, 'transfer_score')} | "
                     f"{_mean_sd(r, 'in_domain_score')} | {_mean_sd(r, 'linear_probe_score')} |")
    tests = []
    for c in s.get("comparisons", []):
        t = c.get("transfer") or {}
        if t.get("p_value") is not None:
            tests.append(f"{c['claim']}: transfer difference {t['mean_difference']:+.3f} over seeds "
                         f"{', '.join(map(str, t['seeds']))}, t({t['df']}) = {t['t']:.2f}, p = {t['p_value']:.2g}")
    chance = next((r["transfer_chance"] for r in s["rows"] if r.get("transfer_chance") is not None), None)
    lines.append("")
    lines.append(f"Transfer chance {chance:.3f}; `reports/ablations.json`." if chance is not None else
                 "`reports/ablations.json`.")
    return "\n".join(lines) + "\n\n" + ("Paired tests on the transfer score (`comparisons`): " + "; ".join(tests)
                                         + "." if tests else "No comparison has two common seeds yet.") + "\n"


def caption_block(root: Path) -> str:
    m = _load(root, "metrics/caption.json")
    keys = [("bleu_1", "BLEU-1"), ("bleu_4", "BLEU-4"), ("rouge_l", "ROUGE-L"), ("cider_d", "CIDEr-D"),
            ("meteor_exact", "METEOR (exact matches)"), ("spider", "SPIDEr")]
    rows = ["| candidates | " + " | ".join(label for _, label in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    named = {"captioner": "the captioner (beam search)", "prior": "prior: the commonest training caption, every clip",
             "nearest_training_clip": "nearest training clip's caption (retrieval)"}
    for name, scores in [("captioner", m), *m["baselines"].items()]:
        cells = [f"{scores[k]:.3f}" if scores[k] is not None else "n/a" for k, _ in keys]
        rows.append(f"| {named.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + (
        f"\n\n{m['clips']} test clips, {m['distinct_captions']} distinct captions generated; decoder vocabulary "
        f"{m['vocab']} GPT-2 ids, {m['trainable_parameters']:,} trained parameters, final training loss "
        f"{m['train_loss_final']:.3f} (`metrics/caption.json`). SPIDEr is n/a where SPICE (Java + its jar) is not "
        f"installed.\n")


def headline_block(root: Path) -> str:
    """README's one table: the default's zero-shot (transfer) and in-domain results, and the paper's for scale."""
    ev, cap, grid = _load(root, "metrics/evaluate.json"), _load(root, "metrics/caption.json"), \
        _load(root, "reports/ablations.json")
    mean_chance = sum(t["chance"] for t in ev["tasks"].values()) / len(ev["tasks"])
    ret = next(iter(ev["retrieval"].values()), None)
    rows = ["| result | protocol | the default (`dvc repro`) | chance |", "|---|---|---|---|",
            f"| transfer test: {ev['transfer_entries']} held-out source x task entries, held-out wordings | "
            f"**zero-shot** | **{ev['transfer_zero_shot_score']:.3f}** ({ev['transfer_entries_above_chance']} of "
            f"{ev['transfer_entries']} entries above chance) | {ev['transfer_chance']:.3f} |",
            f"| the same clips with the training wordings | zero-shot audio, seen wordings | "
            f"{ev['transfer_zero_shot_score_training_wordings']:.3f} | {ev['transfer_chance']:.3f} |",
            f"| {len(ev['tasks'])} embedded tasks, zero-shot classification | in-domain | "
            f"{ev['embedded_zero_shot_score']:.3f} ({ev['embedded_zero_shot_tasks_above_chance']} of {len(ev['tasks'])} "
            f"above chance) | {mean_chance:.3f} |",
            f"| the same tasks, linear probe | in-domain | {ev['embedded_linear_probe_score']:.3f} "
            f"({ev['embedded_linear_probe_tasks']} tasks probed) | |"]
    if ret:
        rows.append(f"| caption retrieval, R@1 audio->text / text->audio | in-domain | {ret['a2t']['R@1']:.3f} / "
                    f"{ret['t2a']['R@1']:.3f} | |")
    prior = cap["baselines"].get("prior", {}).get("cider_d")
    rows.append(f"| captioning (stage `caption`), CIDEr-D | in-domain | {cap['cider_d']:.3f} | "
                f"{'' if prior is None else f'{prior:.3f} (the commonest caption)'} |")
    default = next((r for r in grid["rows"] if r.get("workspace")), None)
    floor = next((r for r in grid["rows"] if r.get("floor")), None)
    test = next((c["transfer"] for c in grid.get("comparisons", [])
                 if default and floor and (c.get("a"), c.get("b")) == (default["row"], floor["row"])), None)
    text = "\n".join(rows) + "\n"
    if default and floor and default.get("transfer_score_mean") is not None:
        text += (f"\nOver {len(default['runs'])} seeds (the ablation grid) the default scores "
                 f"{_mean_sd(default, 'transfer_score')} on the transfer test, against {_mean_sd(floor, 'transfer_score')} "
                 f"for the floor (both towers frozen, both projections trained for 200 steps)"
                 + (f"; paired t({test['df']}) = {test['t']:.2f}, p = {test['p_value']:.2g}" if test else "") + ".\n")
    text += ("\nFor scale, **the paper's** MS-CLAP 2023 (its Table 2) on its benchmark datasets. These were not run "
             "here; score your copies with `clapkit evaluate --model CLAP_weights_2023.pth --msclap-version 2023 "
             "--task esc50 --data DIR`:\n\n" + _paper_row() + "\n")
    return text


def _paper_row() -> str:
    from clapkit.tasks import PAPER_TASKS

    names = ["esc50", "us8k", "gtzan_genre", "crema_d", "audiocaps_a2t", "clotho_captioning"]
    cells = []
    for name in names:
        t = PAPER_TASKS[name]
        label = "seen in training" if t.seen_in_training else "zero-shot"
        cells.append((f"{t.title} ({t.metric}, {label})", f"{t.paper[t.metric]:.3f}"))
    return ("| " + " | ".join(c[0] for c in cells) + " |\n|" + "---|" * len(cells) + "\n| "
            + " | ".join(c[1] for c in cells) + " |")


# --- figures: drawn into docs/figures/, named in their block with a digest of the numbers drawn -----------------

FIGURE_DIR = "docs/figures"


def _grid_figure_data(root: Path) -> dict:
    s = _load(root, "reports/ablations.json")
    rows = [{"row": r["row"], "default": bool(r.get("workspace")),
             "seeds": [x["transfer_score"] for x in r["runs"] if x.get("transfer_score") is not None]}
            for r in s["rows"]]
    chance = next((r["transfer_chance"] for r in s["rows"] if r.get("transfer_chance") is not None), None)
    return {"rows": rows, "chance": chance}


def _draw_grid(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["seeds"]]
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2), dpi=110)
    for y, r in enumerate(rows):
        mean = sum(r["seeds"]) / len(r["seeds"])
        colour = "tab:red" if r["default"] else "tab:blue"
        ax.barh(y, mean, color=colour, alpha=0.35)
        ax.plot(r["seeds"], [y] * len(r["seeds"]), "o", color=colour, markersize=4)
    if data["chance"] is not None:
        ax.axvline(data["chance"], color="k", linestyle="--", linewidth=1, label=f"chance {data['chance']:.3f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["row"] + (" (default)" if r["default"] else "") for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("transfer score (bar: mean over seeds; dots: one seed each)")
    ax.set_title("The ablation grid on the transfer test (reports/ablations.json)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


def _evaluate_figure_data(root: Path) -> dict:
    m = _load(root, "metrics/evaluate.json")
    return {"tasks": {name: {"zero_shot": m["zero_shot"][name], "probe": m["linear_probe"].get(name),
                             "chance": t["chance"]} for name, t in sorted(m["tasks"].items())}}


def _draw_evaluate(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["tasks"])
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(names) + 1.2), dpi=110)
    for y, name in enumerate(names):
        t = data["tasks"][name]
        ax.barh(y - 0.2, t["zero_shot"], height=0.4, color="tab:blue", label="zero-shot" if y == 0 else None)
        if t["probe"] is not None:
            ax.barh(y + 0.2, t["probe"], height=0.4, color="tab:green", label="linear probe" if y == 0 else None)
        ax.plot([t["chance"]] * 2, [y - 0.45, y + 0.45], color="k", linewidth=1.5,
                label="chance" if y == 0 else None)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy on the test split (in-domain)")
    ax.set_title("The default model on the embedded tasks (metrics/evaluate.json)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


# name -> (file under docs/figures, the numbers drawn, the drawing, the alt text, where the numbers come from)
FIGURES: dict[str, tuple[str, Callable[[Path], dict], Callable[[dict, Path], None], str, str]] = {
    "figure_grid": ("grid-transfer.png", _grid_figure_data, _draw_grid,
                    "Transfer score of every row of the ablation grid, per seed", "reports/ablations.json"),
    "figure_evaluate": ("evaluate-tasks.png", _evaluate_figure_data, _draw_evaluate,
                        "Zero-shot and linear-probe accuracy of the default model per embedded task",
                        "metrics/evaluate.json"),
}


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def figure_block(name: str, root: Path, document: Path, draw: bool) -> str:
    filename, read, drawing, alt, source = FIGURES[name]
    data = read(root)
    out = root / FIGURE_DIR / filename
    if draw:
        out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out, suffix=".png") as tmp:
            drawing(data, tmp)
    elif not out.is_file():
        raise FileNotFoundError(f"{out}: missing (run python scripts/docs_results.py)")
    link = os.path.relpath(root / FIGURE_DIR / filename, (root / document).parent)
    return f"![{alt}]({link})\n\n*Drawn from `{source}` by `make docs` (numbers digest `{_digest(data)}`).*\n"


GENERATORS: dict[str, Callable[[Path], str]] = {"caption": caption_block, "data": data_block, "pretrain": pretrain_block,
                                                 "pretrain_from_scratch": pretrain_htsat22_block,
                                                 "train": train_block, "evaluate": evaluate_block,
                                                 "transfer": transfer_block, "grid": grid_block,
                                                 "headline": headline_block}
DOCUMENTS = ["README.md", "docs/*.md"]  # relative to the repository root


def documents(root: Path) -> list[Path]:
    """The documents that may hold generated blocks, relative to ``root``."""
    found = []
    for pattern in DOCUMENTS:
        found += sorted(p.relative_to(root) for p in root.glob(pattern))
    return found


def render(text: str, root: Path, document: Path = Path("README.md"), draw: bool = False) -> str:
    """``text`` with every marked block regenerated; an unknown block name is an error."""
    def one(match: re.Match) -> str:
        name = match["name"]
        if name in FIGURES:
            return match.group(1) + figure_block(name, root, document, draw) + match.group(4)
        if name not in GENERATORS:
            raise KeyError(f"{document}: block results:{name} has no generator "
                           f"(known: {sorted(GENERATORS) + sorted(FIGURES)})")
        return match.group(1) + GENERATORS[name](root) + match.group(4)

    return BLOCK.sub(one, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO, help="the repository: metrics/, reports/, README.md, docs/")
    ap.add_argument("--check", action="store_true", help="exit 1 if a document differs from the outputs")
    args = ap.parse_args(argv)
    stale = []
    for document in documents(args.root):
        path = args.root / document
        old = path.read_text()
        new = render(old, args.root, document, draw=not args.check)
        if new == old:
            continue
        if args.check:
            stale.append(str(document))
            continue
        write_text(path, new)
    if stale:
        print(f"{', '.join(stale)}: generated blocks differ from the metrics files: run python scripts/docs_results.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
