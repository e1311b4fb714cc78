"""The ``caption`` stage: a clapcap-style captioner on the trained CLAP's frozen audio tower, trained and scored.

As msclap's clapcap: the CLAP audio embedding (projected, L2-normalised) is the prefix source, a ClipCap
transformer mapper turns it into GPT-2 input vectors, and a GPT-2 LM writes the caption.  clapcap froze a
pretrained GPT-2 base and trained the mapper on AudioCaps + Clotho; no pretrained GPT-2 installs offline here, so
the embedded stage trains the mapper *and* a small GPT-2 (``caption.decoder``) on the training split's captions,
with the audio tower frozen (its embeddings computed once, through the evaluate stage's embedding cache).
The decoder's vocabulary is the GPT-2 ids the training captions use (``clapkit.caption_vocab``).

Scoring: the test split (``caption.eval_clips`` of it, spread evenly over the clip ids) decoded by msclap's beam
search, against each clip's captions as references, with ``clapkit.caption_metrics`` (BLEU-1..4, ROUGE-L,
CIDEr-D, METEOR with exact matching; SPICE / SPIDEr only where Java and the SPICE jar are installed).  Two
baselines say what the numbers mean: ``prior``, the single most frequent training caption for every clip (what a
decoder that ignores the audio converges to), and ``nearest_training_clip``, the first caption of the training
clip whose CLAP embedding is closest (retrieval, no decoder).

Outputs: ``models/caption`` (config.json + model.safetensors, loadable by ``clapkit caption --model``),
``metrics/caption.json``, ``metrics/caption_loss.csv``, ``results/caption/examples.json``.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .caption_vocab import CAPTION_END, TokenSubset

__all__ = ["CaptionConfig", "run_stage", "register"]

TIED_HEAD = "gpt.lm_head.weight"  # GPT-2 ties it to gpt.transformer.wte.weight: saved once, under the latter


@dataclass
class CaptionConfig:
    """Block ``caption:`` of params.yaml (comments there say why each value)."""

    model: str = "models/clap"
    prepared: str = "prepared"
    out: str = "models/caption"
    metrics: str = "metrics/caption.json"
    loss_log: str = "metrics/caption_loss.csv"
    results: str = "results/caption"
    mapper: dict = field(default_factory=lambda: {"prefix_length": 10, "clip_length": 10, "num_layers": 2,
                                                  "num_heads": 4, "mlp_ratio": 2.0})
    decoder: dict = field(default_factory=lambda: {"n_layer": 2, "n_embd": 128, "n_head": 4})
    max_caption_tokens: int = 24
    steps: int = 800
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = 0
    eval_clips: int = 400
    beam_size: int = 3
    entry_length: int = 24
    temperature: float = 1.0
    embed_batch_size: int = 64
    precision: str = "fp32"
    cache_dir: str | None = ".cache/clapkit/embeddings"
    audio_cache_dir: str | None = "~/.cache/clapkit/audio-features"
    threads: int = 1
    examples: int = 30

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "CaptionConfig":
        from .config import dataclass_from_dict

        return dataclass_from_dict(cls, params.get("caption"), "caption")


# ------------------------------------------------------------------------------------------------ data


@dataclass
class CaptionCorpus:
    """The clips the stage reads: training clips with their tokenised captions, test clips with references."""

    train_rows: list[int]
    train_tokens: list[list[list[int]]]  # per training clip, its captions as compact ids (caption end included)
    test_rows: list[int]
    references: dict[str, list[str]]  # test clip id -> its captions
    vocab: TokenSubset
    dropped: int  # training captions longer than max_caption_tokens


def spread(indices: list[int], n: int) -> list[int]:
    """``n`` of ``indices`` evenly spaced (all of them when n <= 0 or n >= len)."""
    if n <= 0 or n >= len(indices):
        return list(indices)
    return [indices[int(i)] for i in np.linspace(0, len(indices) - 1, n).round()]


def load_captions(cfg: CaptionConfig, corpus) -> CaptionCorpus:
    from .text import gpt2_bpe

    bpe = gpt2_bpe()
    train_rows, train_seqs, dropped = [], [], 0
    for i in corpus.split("train"):
        seqs = []
        for text in corpus.rows[i].get("captions") or []:
            ids = bpe.encode(text).ids + list(CAPTION_END)
            if len(ids) > cfg.max_caption_tokens:
                dropped += 1
                continue
            seqs.append(ids)
        if seqs:
            train_rows.append(i)
            train_seqs.append(seqs)
    if not train_rows:
        raise ValueError(f"{cfg.prepared}: no training clip has a caption of at most {cfg.max_caption_tokens} tokens")
    vocab = TokenSubset.from_sequences(s for seqs in train_seqs for s in seqs)
    tokens = [[vocab.to_compact(s) for s in seqs] for seqs in train_seqs]
    test = sorted((i for i in corpus.split("test") if corpus.rows[i].get("captions")), key=lambda i: corpus.rows[i]["id"])
    test_rows = spread(test, cfg.eval_clips)
    if not test_rows:
        raise ValueError(f"{cfg.prepared}: no test clip with captions to score")
    references = {corpus.rows[i]["id"]: list(corpus.rows[i]["captions"]) for i in test_rows}
    return CaptionCorpus(train_rows, tokens, test_rows, references, vocab, dropped)


def embed_rows(cfg: CaptionConfig, embedder, corpus, rows: list[int], name: str) -> torch.Tensor:
    """(len(rows), D) CLAP audio embeddings (L2-normalised), through the evaluate stage's embedding cache."""
    from .embeddings import EmbeddingCache, embed_items, prepared_clip_identities

    cache = EmbeddingCache(cfg.cache_dir, embedder.key)
    ident = prepared_clip_identities(corpus, rows)
    emb, kept, problems = cache.get(f"caption-{name}", ident, lambda: embed_items(
        embedder, [corpus.waveform(i) for i in rows], cfg.embed_batch_size, corpus.sample_rate))
    if len(kept) != len(rows):
        raise ValueError(f"{cfg.prepared}: {len(rows) - len(kept)} {name} clip(s) could not be embedded: {problems[:3]}")
    return torch.as_tensor(np.asarray(emb), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ model


def captioner_config(cfg: CaptionConfig, clap_config: dict, vocab: TokenSubset) -> dict:
    """A clapcap config around the trained CLAP's audio tower, with the small decoder and the compact vocabulary."""
    mapper = dict(cfg.mapper)
    positions = int(mapper["prefix_length"]) + cfg.max_caption_tokens
    eos = vocab.compact_of[CAPTION_END[1]]
    decoder = {"n_positions": positions, **cfg.decoder, "vocab_size": len(vocab), "bos_token_id": eos,
               "eos_token_id": eos}
    return {"description": f"clapkit caption stage: a clapcap-style captioner on the CLAP audio tower of {cfg.model} "
                           f"(frozen), mapper and a small GPT-2 trained on the training captions",
            "frontend": copy.deepcopy(clap_config["frontend"]), "audio_encoder": copy.deepcopy(clap_config["audio_encoder"]),
            "embed_dim": int(clap_config["embed_dim"]), "projection_dropout": float(clap_config["projection_dropout"]),
            "normalize_prefix": True, "mapper": mapper, "decoder": decoder,
            "tokenizer": {"kind": "gpt2", "max_length": cfg.max_caption_tokens, "subset": vocab.gpt2_ids}}


def build_captioner(cfg: CaptionConfig, clap, vocab: TokenSubset):
    """A fresh (seeded) ClapCapModel whose audio tower is the trained CLAP's, frozen."""
    from .models.clapcap import ClapCapModel

    model = ClapCapModel.from_config(captioner_config(cfg, clap.model.config, vocab), seed=cfg.seed)
    model.audio.load_state_dict(clap.model.audio.state_dict(), strict=True)  # a mismatch raises, naming the keys
    model.audio.requires_grad_(False).eval()
    return model


def batch(tokens: list[list[list[int]]], pick: torch.Tensor, choice: torch.Tensor, pad: int):
    """Right-padded (B, L) ids and mask of caption ``choice[b] % n_captions`` of training clip ``pick[b]``."""
    seqs = [tokens[int(p)][int(c) % len(tokens[int(p)])] for p, c in zip(pick, choice)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    return ids, mask


def train_captioner(cfg: CaptionConfig, model, data: CaptionCorpus, train_emb: torch.Tensor) -> list[dict]:
    """AdamW on the mapper and the decoder, linear warm-up then cosine; returns the loss log (every 10 steps)."""
    params = [p for n, p in model.named_parameters() if not n.startswith("audio.")]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        done = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))

    gen = torch.Generator().manual_seed(cfg.seed)
    pad = data.vocab.compact_of[CAPTION_END[1]]
    model.mapper.train()
    model.gpt.train()
    log, running = [], []
    for step in range(cfg.steps):
        pick = torch.randint(len(data.train_rows), (cfg.batch_size,), generator=gen)
        choice = torch.randint(1 << 30, (cfg.batch_size,), generator=gen)
        ids, mask = batch(data.train_tokens, pick, choice, pad)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model.loss_from_embedding(train_emb[pick], ids, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        if (step + 1) % 10 == 0 or step + 1 == cfg.steps:
            log.append({"step": step + 1, "loss": round(float(np.mean(running)), 5), "lr": round(lr_at(step), 8)})
            running = []
    model.eval()
    return log


def decode_all(cfg: CaptionConfig, model, embeddings: torch.Tensor) -> list[str]:
    """msclap's beam search on each clip's prefix, through ``CaptionModel`` (as ``clapkit caption`` decodes the
    saved model); clapcap's strings end with the stop token's space, stripped here."""
    from .captioning import CaptionModel

    captioner = CaptionModel(model, device="cpu")
    return [c.strip() for c in captioner.caption_embeddings(embeddings, cfg.beam_size, cfg.entry_length,
                                                            cfg.temperature)]


# ------------------------------------------------------------------------------------------------ scoring


def baselines(data: CaptionCorpus, corpus, train_emb: torch.Tensor, test_emb: torch.Tensor) -> dict[str, dict]:
    """Candidates of the two reference points: the most frequent training caption; the nearest training clip's."""
    counts = Counter(c for i in data.train_rows for c in corpus.rows[i]["captions"])
    prior = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]  # ties: alphabetical, deterministic
    nearest = (test_emb @ train_emb.T).argmax(dim=1).tolist()
    ids = [corpus.rows[i]["id"] for i in data.test_rows]
    return {"prior": {cid: prior for cid in ids},
            "nearest_training_clip": {cid: corpus.rows[data.train_rows[j]]["captions"][0]
                                      for cid, j in zip(ids, nearest)}}


def _scores(candidates: dict[str, str], references: dict[str, list[str]]) -> tuple[dict, Any]:
    from .caption_metrics import score_captions

    s = score_captions(candidates, references)
    keys = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d", "meteor_exact", "spice", "spider")
    return {k: (round(getattr(s, k), 4) if getattr(s, k) is not None else None) for k in keys}, s


# ------------------------------------------------------------------------------------------------ the stage


def run_stage(cfg: CaptionConfig, progress: bool = True) -> dict[str, Any]:
    from .api import CLAP
    from .audio_feature_cache import attach_feature_store, detach_feature_store
    from .data.prepare import PreparedCorpus
    from .atomic_files import write_json
    from .zeroshot import ClapEmbedder

    t0 = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    corpus = PreparedCorpus(cfg.prepared)
    data = load_captions(cfg, corpus)
    clap = CLAP.from_pretrained(cfg.model)
    embedder = ClapEmbedder(clap, cfg.embed_batch_size, cfg.precision)
    store = attach_feature_store(clap.model.audio.encoder, cfg.audio_cache_dir)
    try:
        train_emb = embed_rows(cfg, embedder, corpus, data.train_rows, "train")
        test_emb = embed_rows(cfg, embedder, corpus, data.test_rows, "test")
    finally:
        detach_feature_store(clap.model.audio.encoder, store)
    t_embed = time.time()
    model = build_captioner(cfg, clap, data.vocab)
    log = train_captioner(cfg, model, data, train_emb)
    t_train = time.time()
    ids = [corpus.rows[i]["id"] for i in data.test_rows]
    captions = dict(zip(ids, decode_all(cfg, model, test_emb)))
    t_decode = time.time()

    scores, detail = _scores(captions, data.references)
    reference_points = {name: _scores(c, data.references)[0] for name, c in baselines(data, corpus, train_emb,
                                                                                      test_emb).items()}
    metrics = {"clips": len(ids), **scores, "baselines": reference_points,
               "distinct_captions": len(set(captions.values())),
               "train_loss_final": log[-1]["loss"], "vocab": len(data.vocab),
               "trainable_parameters": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("audio.")),
               "notes": list(detail.notes)}
    save_captioner(cfg, model)
    write_json(cfg.metrics, metrics, allow_nan=False)
    write_loss_log(cfg.loss_log, log)
    per_clip = detail.cider_d_per_clip
    shown = spread(sorted(ids), cfg.examples)
    write_json(Path(cfg.results) / "examples.json", [
        {"id": cid, "caption": captions[cid], "cider_d": round(per_clip[cid], 4), "references": data.references[cid]}
        for cid in shown], allow_nan=False)
    if progress:
        print(f"caption: {len(data.train_rows)} training clips ({data.dropped} over-long captions dropped), vocabulary "
              f"{len(data.vocab)}; embed {t_embed - t0:.0f} s, train {cfg.steps} steps {t_train - t_embed:.0f} s, "
              f"decode {len(ids)} clips {t_decode - t_train:.0f} s; CIDEr-D {scores['cider_d']} "
              f"(prior {reference_points['prior']['cider_d']}, nearest clip "
              f"{reference_points['nearest_training_clip']['cider_d']}) -> {cfg.metrics}")
    return metrics


def save_captioner(cfg: CaptionConfig, model) -> None:
    """config.json + model.safetensors, each written to a temporary name and renamed."""
    from safetensors.torch import save_file

    from .atomic_files import replacing, write_json

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != TIED_HEAD}
    if model.gpt.lm_head.weight.data_ptr() != model.gpt.transformer.wte.weight.data_ptr():
        raise ValueError("the decoder's LM head is not tied to its token embeddings; save it with its own key")
    with replacing(out / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(out / "config.json", model.config, allow_nan=False)


def write_loss_log(path: str, log: list[dict]) -> None:
    from .atomic_files import write_text

    lines = ["step,loss,lr"] + [f"{r['step']},{r['loss']},{r['lr']}" for r in log]
    write_text(path, "\n".join(lines) + "\n")


def _cmd_caption_stage(args) -> int:
    from .config import load_params

    params = load_params(args.params)
    cfg = CaptionConfig.from_params(params)
    run_stage(cfg)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train-captioner", help="the caption stage: train a clapcap-style captioner on the "
                                                      "trained CLAP's frozen audio tower, score the test split")
    p.add_argument("--params", default="params.yaml")
    p.set_defaults(func=_cmd_caption_stage)
