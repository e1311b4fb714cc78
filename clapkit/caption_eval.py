"""The paper's captioning entries (AudioCaps, Clotho; SPIDEr): caption a dataset's evaluation split, score it.

    clapkit evaluate --task clotho_captioning --data DIR --model clapcap_weights_2023.pth [--out result.json]

``evaluate_captioning_task`` captions the clips ``clapkit.scoring.scored_records`` picks (AudioCaps ``test``,
Clotho ``evaluation``: the split the retrieval tasks score) with msclap's beam search (``CaptionModel``; defaults
beam 5, 67 tokens, temperature 1) and scores them against the dataset's human captions with
``clapkit.caption_metrics.score_captions``.  SPIDEr, the paper's metric, needs SPICE (Java + the SPICE 1.0 jar):
without it SPIDEr is None, the notes say why, and the printed line gives CIDEr-D and the others instead.

The captioner is a clapcap ``.pth`` (msclap's layout) or a folder the caption stage saved (config.json with a
``mapper`` block + model.safetensors); a CLAP ``save_pretrained`` folder cannot caption and is refused by name.
Neither records a training index, so the hygiene check labels the result ``training_index: unknown``.
The evaluate stage does not run these tasks: it holds a CLAP embedder, not a captioner (``clap_scored_tasks``).
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .tasks import CAPTIONING, Task

__all__ = ["evaluate_captioning_task", "caption_task_line", "run_caption_task"]


def _caption_readable(captioner, records, batch_size: int, decoding: dict[str, Any], problems: list[str]):
    """(records captioned, their captions): a batch at a time; an unreadable file is listed and skipped."""
    from .audio import AudioReadError

    kept, captions = [], []
    for start in range(0, len(records), batch_size):
        waves, batch = [], []
        for r in records[start : start + batch_size]:
            try:
                waves.append(captioner.load_audio([r.path])[0])
                batch.append(r)
            except AudioReadError as err:
                problems.append(f"skipped {err}")
        if batch:
            captions += captioner.caption_waves(torch.stack(waves), **decoding)
            kept += batch
    return kept, captions


def evaluate_captioning_task(captioner, task: Task, root: str | Path, beam_size: int = 5, entry_length: int = 67,
                             temperature: float = 1.0, batch_size: int = 16,
                             spice_jar: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Caption ``task``'s evaluation clips of the dataset at ``root`` and score them against its references.

    Returns the result entry: ``value`` = SPIDEr (None without SPICE), ``scores`` (every corpus metric),
    ``notes``, ``captions`` (per clip: id, file, caption as ``CaptionModel.caption`` gives it, references,
    CIDEr-D), ``problems`` (rows the adapter skipped, unreadable audio), ``decoding``."""
    from .caption_metrics import score_captions
    from .data.adapters import ADAPTERS, LoadReport
    from .scoring import scored_records

    if task.kind != CAPTIONING:
        raise ValueError(f"{task.name} is a {task.kind} task, not captioning")
    if not task.supported:
        raise ValueError(f"{task.name}: {task.prompt_note}")
    if beam_size < 1 or entry_length < 1:
        raise ValueError(f"beam size and entry length must be >= 1, got {beam_size}, {entry_length}")
    report = LoadReport()
    records = ADAPTERS[task.adapter].load(root, report)
    problems = [str(p) for p in report.problems]
    _, test = scored_records(task, records, root)
    decoding = {"beam_size": beam_size, "entry_length": entry_length, "temperature": temperature}
    kept, captions = _caption_readable(captioner, test, batch_size, decoding, problems)
    if not kept:
        raise ValueError(f"{task.name}: none of the {len(test)} {task.eval_split!r} clips under {root} is readable")
    candidates = {r.id: c for r, c in zip(kept, captions)}
    references = {r.id: list(r.texts) for r in kept}
    scores = score_captions(candidates, references, spice_jar)
    metrics = {k: v for k, v in asdict(scores).items() if k not in ("cider_d_per_clip", "notes")}
    return {
        "task": task.name, "dataset": str(root), "split": task.eval_split, "clips": len(kept),
        "metric": task.metric, "value": scores.spider, "scores": metrics, "notes": list(scores.notes),
        "decoding": decoding, "problems": problems,
        "captions": [{"clip": r.id, "file": r.path, "caption": candidates[r.id], "references": references[r.id],
                      "cider_d": scores.cider_d_per_clip[r.id]} for r in kept],
    }  # fmt: skip


def caption_task_line(task: Task, result: dict[str, Any]) -> str:
    """The one line ``clapkit evaluate --task`` prints: SPIDEr (or why not, and CIDEr-D first) beside the paper's."""
    s = result["scores"]
    others = (f"BLEU-4 {s['bleu_4']:.4f}, ROUGE-L {s['rouge_l']:.4f}, "
              f"METEOR (exact matches only) {s['meteor_exact']:.4f}")
    if result["value"] is not None:
        line = (f"{task.name}: SPIDEr {result['value']:.4f} (CIDEr-D {s['cider_d']:.4f}, SPICE {s['spice']:.4f}); "
                f"{others}")
    else:
        reason = next((n.split(": ", 1)[1] for n in result["notes"] if n.startswith("spice, spider unavailable")), "")
        line = (f"{task.name}: SPIDEr not computed ({reason}); CIDEr-D {s['cider_d']:.4f}, {others}")
    line += f" on {result['clips']} clips ({task.protocol})"
    overlap = result.get("training_overlap", {})
    if overlap.get("zero_shot") is False:
        line += f" {overlap['overlap_clips']} of them are training clips"
    return line + f"; paper CLAP 2023 SPIDEr {task.paper['SPIDEr']}, benchmark {task.benchmark['SPIDEr']}"


def run_caption_task(args, task: Task, cfg) -> int:
    """``clapkit evaluate --task <captioning task> --data DIR --model <captioner>``: hygiene check, caption, score,
    print one line, ``--out`` the whole result."""
    from .atomic_files import write_json
    from .hygiene import OverlapGuard, check_dataset_task

    if args.msclap_version:
        raise ValueError(f"{task.name} needs a captioner: --msclap-version is for CLAP checkpoints (a .pth here is "
                         f"read as msclap's clapcap layout)")
    if args.prompt:
        raise ValueError(f"{task.name}: --prompt is for zero-shot classification; captioning has no prompt")
    from .captioning import MSCLAP_DEFAULTS, CaptionModel

    captioner = CaptionModel.load(args.model, config=args.clapcap_config, device=args.device)
    guard = OverlapGuard.for_model(args.model, cfg.allow_training_overlap, cfg.cache_dir)  # no index: "unknown"
    check = check_dataset_task(guard, task, args.data)
    guard.refuse([check])  # before anything is captioned
    result = evaluate_captioning_task(captioner, task, args.data, batch_size=cfg.batch_size,
                                      **{k: getattr(args, k) if getattr(args, k) is not None else v
                                         for k, v in MSCLAP_DEFAULTS.items()})  # fmt: skip
    result["training_overlap"] = check.label()
    print(caption_task_line(task, result))
    if result["problems"]:
        print(f"{len(result['problems'])} problem(s) skipped (see --out)", file=sys.stderr)
    if args.out:
        write_json(args.out, result, allow_nan=False)
    return 0
