"""What the text side of one training step costs, per text tower mode, on real captions of prepared/.

    python benchmarks/text_tower_cost.py [--prepared prepared] [--steps 8] [--batch 64] [--threads 1] [--out F.json]

Per step: a batch of ``--batch`` captions drawn from the training split, tokenised, through the text tower (encoder +
projection), a scalar loss and its backward, as in ``clapkit.train.train_step`` (the audio side is the same in every
mode and is left out).  Modes, run alternately step by step so that load from other processes hits all alike;
the figure is the median step time:

- ``gpt2``: the embedded default (clap-small-htsat-gpt2's 2-layer GPT-2, from scratch), trained;
- ``minilm-finetuned``: the pretrained tower, trained (``train.text_lr_scale``);
- ``minilm-frozen-cached``: the frozen tower answering from caption features (``train.freeze_text``), only the
  projection trained.

Also the one-time cost of the frozen mode: caption features per second when the cache is built (on a sample of
``--cache-sample`` distinct captions; the whole corpus' count is printed beside it).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time

import torch

from clapkit.config import load_params, model_config_from_params
from clapkit.data.prepare import PreparedCorpus
from clapkit.models.clap import TextTower
from clapkit.pretrained import load_packaged_text_encoder
from clapkit.text import TextTokenizer
from clapkit.text_cache import build_caption_features, caption_feature_cache, corpus_captions


def towers(params: dict):
    _, base = model_config_from_params(params)
    params = dict(params, model=dict(params["model"], text_encoder="minilm"))
    _, mini = model_config_from_params(params)
    dim = int(base["embed_dim"])
    gpt2 = TextTower(base["text_encoder"], dim, 0.5).train()
    finetuned = TextTower(mini["text_encoder"], dim, 0.5).train()
    load_packaged_text_encoder(finetuned.encoder, "minilm")
    frozen = TextTower(mini["text_encoder"], dim, 0.5).train()
    frozen.encoder.load_state_dict(finetuned.encoder.state_dict())
    frozen.encoder.requires_grad_(False).eval()
    return ({"gpt2": gpt2, "minilm-finetuned": finetuned, "minilm-frozen-cached": frozen},
            {"gpt2": TextTokenizer.from_spec(base["tokenizer"]), "minilm": TextTokenizer.from_spec(mini["tokenizer"])})


def step(tower: TextTower, tokenizer: TextTokenizer, captions: list[str]) -> float:
    t0 = time.perf_counter()
    batch = tokenizer(captions)
    out = tower(batch["input_ids"], batch["attention_mask"])
    out.square().mean().backward()
    tower.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--prepared", default="prepared")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-sample", type=int, default=512)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    corpus = PreparedCorpus(args.prepared)
    captions = corpus_captions(corpus, corpus.split("train") + corpus.split("val"))
    distinct = sorted(set(captions))
    models, toks = towers(load_params(args.params))
    rng = random.Random(0)
    sample = rng.sample(distinct, min(args.cache_sample, len(distinct)))
    t0 = time.perf_counter()
    build_caption_features(models["minilm-frozen-cached"].encoder, toks["minilm"], sample, torch.device("cpu"))
    per_s = len(sample) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp:  # the cache of the captions the steps draw (a subset: cheap)
        batches = [rng.sample(sample, args.batch) for _ in range(args.steps + 1)]
        cache, _ = caption_feature_cache(models["minilm-frozen-cached"].encoder, toks["minilm"],
                                         [c for b in batches for c in b], tmp, torch.device("cpu"))
    models["minilm-frozen-cached"].encoder.attach_cache(cache)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i, captions_i in enumerate(batches):
        for name, tower in models.items():
            t = step(tower, toks["gpt2" if name == "gpt2" else "minilm"], captions_i)
            if i:  # the first step warms up
                times[name].append(t)
    assert cache.misses == 0, "a cached step ran the text transformer"
    result = {"batch": args.batch, "steps": args.steps, "threads": args.threads,
              "text_step_seconds_median": {k: round(statistics.median(v), 4) for k, v in times.items()},
              "cache_build_captions_per_s": round(per_s, 1), "distinct_train_val_captions": len(distinct),
              "cache_build_seconds_estimated": round(len(distinct) / per_s, 1)}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
