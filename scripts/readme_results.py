"""README's result tables, generated from the metrics files the pipeline writes, so they cannot drift from the runs.

README holds each table between two markers::

    <!-- results:pretrain -->
    ...generated...
    <!-- /results:pretrain -->

``python scripts/readme_results.py`` rewrites every block from the committed outputs (after ``dvc repro``);
``--check`` exits 1 when README differs from what the outputs say (tests/test_readme_results.py runs it in CI).
Intervals are Wilson 95% and tests exact one-sided binomial (clapkit.stats), as in the stages and notebooks.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

from clapkit.atomic_files import write_text
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


GENERATORS: dict[str, Callable[[Path], str]] = {"caption": caption_block, "data": data_block, "pretrain": pretrain_block,
                                                 "pretrain_from_scratch": pretrain_htsat22_block,
                                                 "train": train_block, "evaluate": evaluate_block,
                                                 "transfer": transfer_block, "grid": grid_block}


def render(readme: str, root: Path) -> str:
    """README with every marked block regenerated; an unknown block name is an error."""
    def one(match: re.Match) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise KeyError(f"README block results:{name} has no generator (known: {sorted(GENERATORS)})")
        return match.group(1) + GENERATORS[name](root) + match.group(4)

    return BLOCK.sub(one, readme)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", type=Path, default=REPO / "README.md")
    ap.add_argument("--root", type=Path, default=REPO, help="where metrics/ and results/ are")
    ap.add_argument("--check", action="store_true", help="exit 1 if README differs from the outputs")
    args = ap.parse_args(argv)
    old = args.readme.read_text()
    new = render(old, args.root)
    if args.check:
        if new != old:
            print(f"{args.readme}: result tables differ from the metrics files: run python scripts/readme_results.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != old:
        write_text(args.readme, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
