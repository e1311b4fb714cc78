"""How well the aisfx teacher's clip embeddings separate the corpus' environmental sounds, against simple baselines.

    python benchmarks/aisfx_probe.py [--prepared prepared] [--min-clips 10] [--folds 5] [--threads 1] [--out F.json]

The environmental clips of ``prepared/`` (every split, the transfer test's held-out sources included: nothing here
trains a CLAP model) are embedded three ways: the aisfx teacher (clapkit.aisfx_teacher; checkpoint CC BY 4.0, Ma &
Lerch, ISMIR 2022), the same network with random weights (seeded; batch-norm statistics at their initial values), and
the mean and standard deviation over time of clapkit's own log-mel (``frontend.embedded``).  For each label task
(``sound_event`` with labels of at least ``--min-clips`` clips, ``sound_category``) a standardised logistic
regression is scored by grouped k-fold cross-validation: clips of one recording group (``group``: e.g. one animal's
calls) are never split between training and test folds.  Reports accuracy (mean over folds, and the spread) and
chance (the most frequent label's share).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch


def embed_all(corpus, rows: list[int]) -> dict[str, np.ndarray]:
    from clapkit.aisfx_teacher import AisfxEmbedder, load_aisfx_embedder
    from clapkit.audio import LogMelFrontend
    from clapkit.config import frontend_config, load_params

    waves = [corpus.waveform(i) for i in rows]
    out, seconds = {}, {}
    teacher = load_aisfx_embedder()
    torch.manual_seed(0)
    random_net = AisfxEmbedder(teacher.cfg).requires_grad_(False).eval()
    for name, model in (("aisfx", teacher), ("aisfx_random_weights", random_net)):
        t0 = time.perf_counter()
        out[name] = np.concatenate([model.embed(waves[s:s + 32], corpus.sample_rate).numpy()
                                    for s in range(0, len(waves), 32)])
        seconds[name] = round(time.perf_counter() - t0, 1)
    frontend = LogMelFrontend(frontend_config(load_params("params.yaml"))).eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        stats = [torch.cat([m.mean(0), m.std(0)]) for m in (frontend(torch.from_numpy(w)[None])[0] for w in waves)]
    out["logmel_mean_std"] = torch.stack(stats).numpy()
    seconds["logmel_mean_std"] = round(time.perf_counter() - t0, 1)
    return {"features": out, "seconds": seconds}


def probe(x: np.ndarray, y: list[str], groups: list[str], folds: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_arr, accs = np.asarray(y), []
    for train, test in GroupKFold(n_splits=folds).split(x, y_arr, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
        clf.fit(x[train], y_arr[train])
        accs.append(float((clf.predict(x[test]) == y_arr[test]).mean()))
    return {"accuracy": round(float(np.mean(accs)), 4), "fold_min": round(min(accs), 4),
            "fold_max": round(max(accs), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", default="prepared")
    ap.add_argument("--min-clips", type=int, default=10)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from clapkit.data.prepare import PreparedCorpus

    corpus = PreparedCorpus(args.prepared)
    rows = [i for i, r in enumerate(corpus.rows) if r["environmental"] and "sound_event" in r["labels"]]
    embedded = embed_all(corpus, rows)
    result = {"clips": len(rows), "threads": args.threads, "embed_seconds": embedded["seconds"], "tasks": {}}
    events = Counter(corpus.rows[i]["labels"]["sound_event"] for i in rows)
    for task in ("sound_event", "sound_category"):
        keep = [j for j, i in enumerate(rows) if task in corpus.rows[i]["labels"]
                and (task != "sound_event" or events[corpus.rows[i]["labels"][task]] >= args.min_clips)]
        y = [corpus.rows[rows[j]]["labels"][task] for j in keep]
        groups = [corpus.rows[rows[j]]["group"] for j in keep]
        entry = {"clips": len(keep), "labels": len(set(y)), "groups": len(set(groups)),
                 "chance": round(Counter(y).most_common(1)[0][1] / len(y), 4)}
        for name, x in embedded["features"].items():
            entry[name] = probe(x[keep], y, groups, args.folds)
        result["tasks"][task] = entry
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
