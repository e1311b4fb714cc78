"""Stage ``pretrain``: multi-task audio-encoder pretraining, Pengi-style ("HTSAT-22" of MS-CLAP 2023).

The paper's largest single gain comes from pretraining HTSAT on 22 audio tasks instead of sound-event
classification alone, "using a similar method to" Pengi: the audio encoder feeds a mapper that writes a prefix for
a causal language model, and the whole is trained as a captioning system with next-token cross-entropy on
task-prompted answers.  Here (read top to bottom):

1. ``build_tasks``: one generation task per label task of the prepared corpus (``tasks.json``: language, keyword,
   digit, speaker, gender, drum, instrument, ...), plus tasks read from each clip's text fields: a free caption,
   the spoken words (transcript), a sound's title, real recording or synthesised, and a yes/no question about one
   of the clip's labels (audio question answering).  Each task has one prompt,
   ``"question: what language is spoken? answer:"``; the answer is the label text, ended by ``<|endoftext|>``.
   ``tasks: sound_events`` keeps only sound-event classification (the plain "HTSAT" row of the paper's Table 1),
   ``tasks: none`` skips pretraining (the stage then writes the seeded random encoder, so the train stage's input
   always exists).
2. ``PretrainModel``: log-mel frontend (``frontend.<preset>``) -> the audio encoder of ``model.<preset>`` ->
   ``PrefixLM`` (``clapkit.models.mapper``: transformer mapper -> GPT-2 LM from a config, trained or frozen).
3. ``pretrain``: each step draws ``batch_size`` clips, task-balanced (a task uniformly, then one of its training
   clips), and trains on *every* task of every drawn clip (the encoder, the expensive part, runs once per clip).
   Atomic checkpoints every ``checkpoint_every`` steps (``clapkit.training_state``); a rerun resumes from the
   newest one written under the same parameters and ends with the same weights as an uninterrupted run.
   With ``distill_weight`` > 0 each step also distils the pretrained aisfx teacher (``clapkit.aisfx_teacher``,
   checkpoint CC BY 4.0, Ma & Lerch, ISMIR 2022): a linear head maps each drawn clip's embedding to the teacher's
   512-d space and the loss gains ``distill_weight`` x the mean cosine distance to the teacher's embedding of the
   whole clip (computed once per corpus, ``clapkit.aisfx_cache``); the head is not part of the outputs.
4. ``evaluate_generation``: greedy answers for held-out clips (the corpus' ``test`` split, unseen recording
   identities), scored by exact match after light normalisation, with chance = 1 / number of distinct answers;
   ``accuracy`` decodes inside the task's answer set (a trie of its training answers), ``free_accuracy`` over
   the whole output vocabulary.
5. Outputs (``out``, default ``models/pretrain/``): ``audio_encoder.safetensors`` (the encoder's state dict, bare
   keys = ``CLAPModel``'s ``audio.encoder.*`` without the prefix), ``config.json`` (encoder config, frontend, tasks
   and prompts), ``prefix_lm.safetensors`` (mapper + LM, to generate again), ``generations.json`` (examples);
   ``metrics/pretrain.json`` (per-task accuracy and chance); ``metrics/pretrain_loss.csv`` (per-task loss curves).

``load_pretrained_audio_encoder(path, encoder)`` loads the encoder weights and reports every key mismatch.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .audio import FrontendConfig, LogMelFrontend, fit_length
from .config import dataclass_from_dict, frontend_config, load_params, model_config_from_params
from .atomic_files import write_bytes, write_text
from .text import gpt2_bpe
from .models.mapper import PREFIX_POSITIONS
from .pretrain_tasks import (MODES, Examples, Task, TaskSampler, answer_vocabulary, build_tasks,
                             evaluate_generation, make_examples)
from .training import (LRSchedule, Precision, Runtime, ScheduleConfig, frozen_batchnorm_statistics, make_optimizer,
                       maybe_compile, param_groups, runtime_problems, setup_runtime)

__all__ = ["PretrainConfig", "PretrainModel", "distill_loss", "load_pretrained_audio_encoder", "pretrain",
           "run_training", "teacher_targets"]

FORMAT = "clapkit-pretrain/1"

# --- parameters ----------------------------------------------------------------------------------------------------

@dataclass
class PretrainConfig:
    """Block ``pretrain:`` of params.yaml (see the comments there)."""

    prepared: str = "prepared"
    out: str = "models/pretrain"
    metrics: str = "metrics/pretrain.json"
    loss_log: str = "metrics/pretrain_loss.csv"
    checkpoint_dir: str = "checkpoints/pretrain"
    timings: str = "reports/timings/pretrain.json"
    seed: int = 0  # the pretraining's own seed (params.yaml pretrain.seed), independent of the top-level one
    tasks: Any = "all"  # all | sound_events | none | a list of task names
    steps: int = 300
    batch_size: int = 32
    tasks_per_clip: int | None = 3
    lr: float = 1.0e-3
    encoder_lr_scale: float = 1.0
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip_norm: float | None = 1.0
    prefix_length: int = 8
    prefix_position: str = "after_prompt"  # | start (Pengi: [prefix] [prompt] [answer])
    mapper_layers: int = 0  # 0 = linear mapping
    mapper_heads: int = 4
    lm: dict = field(default_factory=lambda: {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 64})
    freeze_lm: bool = False
    output_vocab: str = "answers"  # answers | full
    max_answer_tokens: int = 16
    accum_steps: int = 1  # micro-batches per optimiser step on each rank (gradients summed: same step, less memory)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 with loss scaling)
    compile: bool = False  # torch.compile the model
    threads: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_clips_per_task: int = 150
    eval_batch_size: int = 128
    examples_per_task: int = 4
    distill_weight: float = 0.0  # > 0: also distil the aisfx teacher's clip embeddings (see ``distill_loss``)
    distill_cache_dir: str = "~/.cache/clapkit/aisfx"  # the teacher's embeddings of the corpus, computed once
    logmel_memory_gib: float = 2.0  # log-mels of clips used whole, kept in memory (``ClipLogMels``); 0 = none

    def __post_init__(self):
        problems = []
        if isinstance(self.tasks, str) and self.tasks not in MODES:
            problems.append(f"tasks must be one of {MODES} or a list of task names, got {self.tasks!r}")
        if self.output_vocab not in ("answers", "full"):
            problems.append(f"output_vocab must be 'answers' or 'full', got {self.output_vocab!r}")
        if self.prefix_position not in PREFIX_POSITIONS:
            problems.append(f"prefix_position must be one of {PREFIX_POSITIONS}, got {self.prefix_position!r}")
        problems += runtime_problems(self.device, self.precision)
        for name in ("steps", "max_answer_tokens", "eval_clips_per_task", "mapper_layers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if self.encoder_lr_scale < 0:
            problems.append("encoder_lr_scale must be >= 0")
        if self.distill_weight < 0:
            problems.append("distill_weight must be >= 0")
        if self.tasks_per_clip is not None and self.tasks_per_clip < 1:
            problems.append("tasks_per_clip must be >= 1 or null")
        for name in ("batch_size", "checkpoint_every", "log_every", "eval_batch_size", "prefix_length", "accum_steps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise ValueError("params.yaml pretrain: " + "; ".join(problems))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "PretrainConfig":
        return dataclass_from_dict(cls, params.get("pretrain"), "pretrain")

    def training_config(self) -> dict[str, Any]:
        """The fields that change what a run computes (the checkpoint config hash); paths and logging excluded."""
        skip = {"prepared", "out", "metrics", "loss_log", "checkpoint_dir", "timings", "seed", "checkpoint_every",
                "keep_checkpoints", "log_every", "eval_clips_per_task", "eval_batch_size", "examples_per_task",
                "threads", "device", "compile", "distill_cache_dir",
                "logmel_memory_gib"}
        if not self.distill_weight:  # without distillation, the identity of the runs before it existed
            skip.add("distill_weight")
        return {k: v for k, v in asdict(self).items() if k not in skip}


# --- the model -----------------------------------------------------------------------------------------------------

class PretrainModel(nn.Module):
    """Waveform -> log-mel -> audio encoder -> pooled embedding -> ``PrefixLM`` (mapper + GPT-2)."""

    def __init__(self, frontend: FrontendConfig, encoder_cfg: Mapping[str, Any], cfg: PretrainConfig,
                 output_vocab: Sequence[int] | None):
        super().__init__()
        from .models import build_audio_encoder
        from .models.mapper import PrefixLM

        self.frontend_cfg = frontend
        self.frontend = LogMelFrontend(frontend)
        self.encoder = build_audio_encoder(encoder_cfg)
        enc_cfg = getattr(self.encoder, "config", None)
        if getattr(enc_cfg, "n_mels", frontend.n_mels) != frontend.n_mels:
            raise ValueError(f"audio encoder expects {enc_cfg.n_mels} mel bins, frontend.<preset> makes {frontend.n_mels}")
        max_frames = getattr(enc_cfg, "max_frames", None)
        if max_frames is not None and frontend.num_frames() > max_frames:
            raise ValueError(f"{frontend.clip_seconds} s clips give {frontend.num_frames()} frames, more than the "
                             f"audio encoder's {max_frames}")
        self.prefix_lm = PrefixLM(self.encoder.out_dim, cfg.lm, cfg.prefix_length, cfg.mapper_layers,
                                  cfg.mapper_heads, freeze_lm=cfg.freeze_lm, output_vocab=output_vocab,
                                  prefix_position=cfg.prefix_position)
        self.distill_head = None
        if cfg.distill_weight > 0:  # the clip embedding -> the teacher's space (512-d); dropped with the prefix LM
            from .aisfx_teacher import AisfxConfig

            self.distill_head = nn.Linear(self.encoder.out_dim, AisfxConfig().dim)

    def embed(self, wave: torch.Tensor, precision: Precision) -> torch.Tensor:
        """(B, samples) waveforms, or (B, frames, n_mels) log-mels already computed (``ClipLogMels``)."""
        if wave.ndim == 3:
            logmel = wave
        else:
            with torch.autocast(wave.device.type, enabled=False):
                logmel = self.frontend(wave.float())  # fp32: the log of tiny mel energies is where bf16 would hurt
        with precision.autocast():
            return self.encoder(logmel).float()

    def forward(self, wave: torch.Tensor, input_ids: torch.Tensor, target_mask: torch.Tensor, clip_index: torch.Tensor,
                precision: Precision, teacher: torch.Tensor | None = None):
        """Per-example next-token loss of the answers ``input_ids`` given clip ``clip_index[j]``'s audio (one
        forward, so that DDP sees the whole computation); with ``teacher`` (clips, 512) also each clip's
        ``distill_loss``: returns (per-example loss, per-clip distillation loss)."""
        embedding = self.embed(wave, precision)
        with precision.autocast():
            per_example = self.prefix_lm.loss(embedding[clip_index], input_ids, target_mask)
        if teacher is None:
            return per_example
        return per_example, distill_loss(self.distill_head(embedding), teacher)


class ClipLogMels:
    """Each drawn clip's log-mel, computed clip by clip, and kept for the clips used whole.

    The front-end (STFT, power, mel projection, log) cost ~30 % of a pretraining step of the embedded model on this
    CPU (0.15 s of 0.5 s per 32 clips, 1 thread), and pretraining draws each training clip ~8 times (2,400 steps x
    32 clips over ~10k clips).  A clip not longer than the clip length (all of them when prepare caches one clip
    length, the default) is used whole, so its log-mel is the same every time: it is computed once and kept, up
    to ``memory_gib`` (then computed each time); a longer clip is cropped at random and computed each time.  Every
    log-mel is computed on its own (batch of one), so the values do not depend on what was kept, the batch it came
    in, or a resume: the run is the same with any memory budget."""

    def __init__(self, frontend: LogMelFrontend, corpus, num_samples: int, memory_gib: float):
        self.frontend, self.corpus, self.num_samples = frontend, corpus, int(num_samples)
        self.budget = int(memory_gib * 2**30)
        self.kept: dict[int, torch.Tensor] = {}
        self.used = 0

    @torch.no_grad()
    def __call__(self, row: int, generator: torch.Generator) -> torch.Tensor:
        if row in self.kept:
            return self.kept[row]
        wave = torch.from_numpy(self.corpus.waveform(row))
        whole = wave.shape[0] <= self.num_samples
        wave = fit_length(wave, self.num_samples) if whole else \
            fit_length(wave, self.num_samples, crop="random", generator=generator)
        device = self.frontend.mel_fb.device
        with torch.autocast(device.type, enabled=False):
            logmel = self.frontend(wave.float().unsqueeze(0).to(device))[0]
        size = logmel.numel() * logmel.element_size()
        if whole and self.used + size <= self.budget:
            self.kept[row] = logmel
            self.used += size
        return logmel


def distill_loss(predicted: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-clip cosine distance (0 = same direction, 2 = opposite) between the projected clip embedding and the
    aisfx teacher's: the teacher's scale carries nothing the student needs (its embeddings are max-pooled ReLUs)."""
    return 1.0 - torch.nn.functional.cosine_similarity(predicted.float(), teacher.float().to(predicted.device), dim=-1)


# --- outputs -------------------------------------------------------------------------------------------------------

def _save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata))
    write_bytes(path, data)


def load_pretrained_audio_encoder(path: str | Path, encoder: nn.Module, strict: bool = True) -> dict[str, Any]:
    """Load ``audio_encoder.safetensors`` (or the directory holding it) into ``encoder``.

    Returns ``{"path", "loaded", "missing", "unexpected", "shape_mismatch"}``.  With ``strict`` (the default) any
    mismatch raises ``ValueError`` naming the keys: a pretrained encoder of another config must not be loaded
    half-way.  With ``strict=False`` the matching tensors are loaded and the report says what was not.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        path = path / "audio_encoder.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pretrained audio encoder (run the pretrain stage)")
    state = load_file(str(path))
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    report = {"path": str(path), "loaded": len(set(own) & set(state)) - len(mismatched), "missing": missing,
              "unexpected": unexpected, "shape_mismatch": [f"{k}: file {tuple(state[k].shape)}, encoder "
                                                            f"{tuple(own[k].shape)}" for k in mismatched]}
    if missing or unexpected or mismatched:
        message = (f"{path}: does not match the audio encoder: {len(missing)} missing {missing[:5]}, "
                   f"{len(unexpected)} unexpected {unexpected[:5]}, shape mismatch {report['shape_mismatch'][:5]}")
        if strict:
            raise ValueError(message)
        print(f"warning: {message}")
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    encoder.load_state_dict(usable, strict=False)
    return report


def write_outputs(model: PretrainModel, out: Path, info: Mapping[str, Any]) -> None:
    """``audio_encoder.safetensors``, ``prefix_lm.safetensors`` and ``config.json``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT}
    _save_safetensors(model.encoder.state_dict(), out / "audio_encoder.safetensors", meta)
    # GPT-2's output layer is its token embedding (tied): store it once, as lm.transformer.wte.weight.
    lm_state = {k: v for k, v in model.prefix_lm.state_dict().items() if k != "lm.lm_head.weight"}
    _save_safetensors(lm_state, out / "prefix_lm.safetensors", meta)
    write_text(out / "config.json", json.dumps({"format": FORMAT, **info}, indent=2) + "\n")


# --- training ------------------------------------------------------------------------------------------------------

def schedule_config(cfg: PretrainConfig) -> ScheduleConfig:
    """Linear warmup, then cosine down to ``min_lr_ratio * lr`` at the last step."""
    return ScheduleConfig(lr=cfg.lr, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps, kind="cosine",
                          min_lr_ratio=cfg.min_lr_ratio)


def build_optimizer(model: nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; the audio encoder's groups at ``lr * encoder_lr_scale``."""
    def lr_scale(name: str) -> float:
        return cfg.encoder_lr_scale if name.startswith(("encoder.", "frontend.")) else 1.0

    return make_optimizer(param_groups(model, cfg.weight_decay, lr_scale), "adamw", cfg.lr, (0.9, 0.98), 1e-6, device)


def train_step(model: nn.Module, waves: torch.Tensor, examples: Examples, items: Sequence[tuple[int, str, str, str]],
               global_count: int, world: int, accum_steps: int, precision: Precision,
               teacher: torch.Tensor | None = None, distill_weight: float = 0.0,
               global_clips: int | None = None) -> tuple[float, dict[str, list[float]]]:
    """Forward + backward of this rank's part of one optimiser step (no optimiser call).

    ``items`` are this rank's (clip position in ``waves``, task, prompt, answer) examples.  The step's loss is the
    mean over the *global* batch's ``global_count`` examples; DDP averages gradients over ranks, so each rank
    backpropagates its sum x world / global_count, and the result equals one process on the whole batch.  With
    ``accum_steps`` > 1 the rank's clips are cut into that many micro-batches whose gradients add up (each
    micro-batch's BatchNorm normalises with its own batch statistics, as each rank's does under DDP; running
    statistics follow the first micro-batch).  With ``teacher`` (this rank's clips' teacher embeddings) the loss
    gains ``distill_weight`` x the mean ``distill_loss`` over the global batch's ``global_clips`` clips (by task:
    ``"distill"``).  Returns this rank's share of the loss (the ranks' shares sum to the global mean) and the
    per-example losses by task."""
    device = precision.device
    n_clips = waves.shape[0]
    if n_clips % accum_steps:
        raise ValueError(f"{n_clips} clips on this rank are not divisible by accum_steps {accum_steps}")
    size = n_clips // accum_steps
    share, by_task = 0.0, {}
    for m in range(accum_steps):
        mine = [(pos - m * size, name, p, a) for pos, name, p, a in items if m * size <= pos < (m + 1) * size]
        last = m == accum_steps - 1
        sync = model.no_sync() if (not last and hasattr(model, "no_sync")) else nullcontext()
        # BatchNorm running statistics follow the first micro-batch only (rank 0's slice under DDP): the same
        # statistics for every (ranks x accum_steps) layout of a global batch.
        stats = frozen_batchnorm_statistics(model) if m > 0 else nullcontext()
        with sync, stats:
            if not mine:  # cannot happen: every drawn clip has the task it was drawn for
                raise RuntimeError("pretrain: a micro-batch without examples")
            ids, mask = examples.batch([(p, a) for _, _, p, a in mine])
            index = torch.tensor([pos for pos, _, _, _ in mine], device=device)
            targets = None if teacher is None else teacher[m * size:(m + 1) * size].to(device)
            out = model(waves[m * size:(m + 1) * size].to(device), ids.to(device), mask.to(device), index,
                        precision, targets)
            per_example, distill = out if targets is not None else (out, None)
            loss = per_example.float().sum() / global_count
            if distill is not None:
                loss = loss + distill_weight * distill.sum() / (global_clips or n_clips * world)
                by_task.setdefault("distill", []).extend(distill.detach().float().tolist())
            precision.backward(loss * world)
        share += float(loss.detach())
        for (_, name, _, _), value in zip(mine, per_example.detach().float().tolist()):
            by_task.setdefault(name, []).append(value)
    return share, by_task


def teacher_targets(corpus, rows: Sequence[int], cfg: PretrainConfig, runtime: Runtime) -> torch.Tensor:
    """(len(corpus), 512) the aisfx teacher's whole-clip embeddings of ``rows`` (zeros elsewhere), from the cache in
    ``cfg.distill_cache_dir`` or computed there once (``clapkit.aisfx_cache``; every rank reads or builds it
    itself, so no rank waits in a collective while another builds)."""
    from .aisfx_cache import teacher_embedding_cache
    from .aisfx_teacher import load_aisfx_embedder

    embedder = load_aisfx_embedder()
    cache, report = teacher_embedding_cache(embedder, corpus, rows, cfg.distill_cache_dir)
    if runtime.is_main:
        print(f"pretrain: aisfx teacher embeddings of {report['clips']} clips "
              f"{'computed' if report['built'] else 'read'} in {report['seconds']} s ({report['file']})")
    out = torch.zeros(len(corpus.rows), cache.features.shape[1])
    out[torch.tensor(list(rows), dtype=torch.long)] = cache.for_ids([corpus.rows[i]["id"] for i in rows])
    return out


def _rank_slice(n: int, runtime: Runtime) -> range:
    per_rank = n // runtime.world
    return range(runtime.rank * per_rank, (runtime.rank + 1) * per_rank)


def run_training(model: PretrainModel, corpus, tasks: Sequence[Task], examples: Examples, cfg: PretrainConfig,
                 seed: int, runtime: Runtime, precision: Precision, progress: bool = True,
                 stop_after: int | None = None, resume: str = "latest",
                 allow_other_identity: bool = False) -> list[dict[str, Any]]:
    """Train for ``cfg.steps`` steps, resuming as ``resume`` says (``clapkit.training_state``: ``latest`` = the
    newest unfinished checkpoint of the same run identity); returns the loss log rows.

    Every rank draws the same global batch from the seeded generators (tasks, clips, a crop seed per clip, the
    examples) and keeps its contiguous slice of the clips.  ``stop_after`` (tests, and a cheap way to simulate a
    kill) stops after that many steps, having saved a checkpoint there.
    """
    from tqdm import tqdm

    from .training_state import (corpus_hash, find_resumable, load_checkpoint, model_fingerprint, run_directory,
                                run_identity, save_checkpoint)
    device, world = runtime.device, runtime.world
    if cfg.batch_size % (world * cfg.accum_steps):
        raise ValueError(f"pretrain.batch_size {cfg.batch_size} must be divisible by ranks x accum_steps = "
                         f"{world} x {cfg.accum_steps}")
    train_rows = {i for i, r in enumerate(corpus.rows) if r["split"] == "train"}
    sampler = TaskSampler(tasks, train_rows)
    teacher = teacher_targets(corpus, sorted(train_rows), cfg, runtime) if cfg.distill_weight > 0 else None
    classes = {name: spec["classes"] for name, spec in corpus.tasks.items()}
    n_samples = model.frontend_cfg.clip_samples
    identity = run_identity(
        {"pretrain": cfg.training_config(), "seed": seed, "tasks": [t.name for t in tasks],
         "frontend": asdict(model.frontend_cfg)},
        corpus=corpus_hash(cfg.prepared, Path(cfg.checkpoint_dir) / "corpus-hashes.json"),
        initial_weights=model_fingerprint({}, model.state_dict()), world=world)
    run_dir = run_directory(cfg.checkpoint_dir, identity)
    model.to(device)
    optimizer = build_optimizer(model, cfg, device)
    schedule = LRSchedule(optimizer, schedule_config(cfg))
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    wrapped = maybe_compile(wrapped, cfg.compile)
    trainable = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    log: list[dict[str, Any]] = []
    window: dict[str, list[float]] = {}  # per-task losses since the last log row (saved too: exact resume)
    window_loss: list[float] = []
    step = 0
    latest = None
    if resume in ("latest", "auto"):  # rank 0 decides (it may clear a finished run's folder) and tells the others
        latest = find_resumable(cfg.checkpoint_dir, identity) if runtime.is_main else None
    elif resume not in ("none", None):
        latest = Path(resume)
    if world > 1:  # rank 0 may have cleared a finished run: every rank decides on the same file
        box = [str(latest) if latest is not None else None]
        torch.distributed.broadcast_object_list(box, src=0)
        latest = Path(box[0]) if box[0] is not None else None
    if latest is not None:
        state = load_checkpoint(latest, model, optimizer, schedule, precision.scaler, identity=identity,
                                allow_other_identity=allow_other_identity)
        step = state["step"]
        generator.set_state(state["extra"]["generator"])
        rng.setstate(_tuple_state(state["extra"]["python_rng"]))
        log = list(state["extra"]["log"])
        window, window_loss = dict(state["extra"]["window"]), list(state["extra"]["window_loss"])
        if runtime.is_main:
            print(f"pretrain: resuming from {latest} (step {step} of {cfg.steps})")
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and runtime.is_main), desc="pretrain",
               unit="step", dynamic_ncols=True)
    model.train()
    logmels = ClipLogMels(model.frontend, corpus, n_samples, cfg.logmel_memory_gib)
    mine = _rank_slice(cfg.batch_size, runtime)
    clips_done, t0 = 0, time.perf_counter()
    while step < cfg.steps:
        drawn = sampler.draw(cfg.batch_size, generator)
        crop_seeds = torch.randint(0, 2**62, (cfg.batch_size,), generator=generator).tolist()
        items = make_examples(drawn, tasks, corpus.rows, classes, rng, cfg.tasks_per_clip)
        waves = torch.stack([logmels(drawn[j][0], torch.Generator().manual_seed(crop_seeds[j])) for j in mine])
        local = [(pos - mine.start, name, p, a) for pos, name, p, a in items if pos in mine]
        optimizer.zero_grad(set_to_none=True)
        targets = None if teacher is None else teacher[torch.tensor([drawn[j][0] for j in mine])]
        share, by_task = train_step(wrapped, waves, examples, local, len(items), world, cfg.accum_steps, precision,
                                    targets, cfg.distill_weight, cfg.batch_size)
        precision.step(optimizer, trainable, cfg.grad_clip_norm)
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
        schedule.step()
        loss = runtime.all_reduce_sum(share)
        step += 1
        window_loss.append(loss)
        for name, values in by_task.items():
            window.setdefault(name, []).extend(values)
        clips_done += len(drawn)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{clips_done / (time.perf_counter() - t0):.1f}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            # per-task means of rank 0's examples (a sample of the batch under DDP); the loss is the global one
            log.append({"step": step, "loss": float(np.mean(window_loss)), "lr": lr,
                        "tasks": {k: float(np.mean(v)) for k, v in sorted(window.items())}})
            window, window_loss = {}, []
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_after:
            if runtime.is_main:
                save_checkpoint(run_dir, step, model, identity, optimizer, schedule, precision.scaler,
                                keep=cfg.keep_checkpoints, finished=step == cfg.steps,
                                extra={"generator": generator.get_state(), "python_rng": _list_state(rng.getstate()),
                                       "log": log, "window": window, "window_loss": window_loss})
            runtime.barrier()
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    return log


def _list_state(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _tuple_state(state) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


# --- the stage -----------------------------------------------------------------------------------------------------

def write_loss_log(path: Path, log: Sequence[Mapping[str, Any]], task_names: Sequence[str]) -> None:
    """Wide CSV for ``dvc plots``: step, loss, lr, then one column per task (mean loss over the log window)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["step", "loss", "lr", *task_names])
    for row in log:
        writer.writerow([row["step"], f"{row['loss']:.5f}", f"{row['lr']:.6g}",
                         *(f"{row['tasks'][t]:.5f}" if t in row["tasks"] else "" for t in task_names)])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buf.getvalue())


def pretrain(cfg: PretrainConfig, frontend: FrontendConfig, model_name: str, model_config: Mapping[str, Any],
             seed: int = 0, progress: bool = True, stop_after: int | None = None, resume: str = "latest",
             allow_other_identity: bool = False) -> dict[str, Any]:
    """Run the stage; returns the metrics written to ``cfg.metrics`` (on rank 0; ``{}`` on the other ranks).

    Under ``torchrun`` every rank trains; then the other ranks leave and rank 0 alone evaluates and writes the
    outputs.  Nobody waits in a collective while rank 0 evaluates, so a long evaluation cannot trip NCCL's
    timeout."""
    from .data.prepare import PreparedCorpus

    started = time.perf_counter()
    # the resumable state's folder exists after every run, also when nothing is trained (tasks: none)
    Path(cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    runtime = setup_runtime(cfg.device)
    precision = Precision(cfg.precision, runtime.device)
    corpus = PreparedCorpus(cfg.prepared)
    if corpus.sample_rate != frontend.sample_rate:
        raise ValueError(f"{cfg.prepared}: prepared at {corpus.sample_rate} Hz, frontend.<preset> wants "
                         f"{frontend.sample_rate} Hz (rerun the prepare stage)")
    tokenizer = gpt2_bpe()
    tasks = build_tasks(corpus.rows, corpus.tasks, cfg.tasks, cfg.max_answer_tokens, tokenizer)
    # A small slice of the corpus can hold a task's clips only in val/test: nothing to learn it from, skip it.
    untrainable = [t.name for t in tasks if not any(corpus.rows[i]["split"] == "train" for i in t.answers)]
    if untrainable:
        print(f"pretrain: no training clips for task(s) {untrainable}: left out")
        tasks = [t for t in tasks if t.name not in untrainable]
    examples = Examples(tokenizer, tasks)
    vocab = answer_vocabulary(tasks, examples) if cfg.output_vocab == "answers" else None
    torch.manual_seed(seed)  # the initial weights, SpecAugment and drop-path draw from torch's global generator
    random.seed(seed)
    np.random.seed(seed)
    model = PretrainModel(frontend, model_config["audio_encoder"], cfg, vocab)
    packaged = getattr(model.encoder, "pretrained", None) if getattr(model.encoder, "takes_waveform", False) else None
    if packaged:  # a packaged pretrained tower (aisfx): its weights, not ours to pretrain (the metrics say so)
        from .models.aisfx_encoder import load_packaged_audio_encoder

        load_packaged_audio_encoder(model.encoder)
        if tasks and runtime.is_main:
            print(f"pretrain: the {packaged} audio tower comes pretrained (packaged weights): the {len(tasks)} "
                  f"tasks of pretrain.tasks={cfg.tasks!r} are not trained; writing its weights")
        tasks = []
    log: list[dict[str, Any]] = []
    if tasks and cfg.steps:
        log = run_training(model, corpus, tasks, examples, cfg, seed, runtime, precision, progress, stop_after,
                           resume, allow_other_identity)
    trained = time.perf_counter()
    if stop_after is not None and stop_after < cfg.steps:
        return {"stopped_after": stop_after}
    if not runtime.is_main:
        return {}
    task_metrics, generations = ({}, [])
    if tasks and cfg.steps:
        task_metrics, generations = evaluate_generation(model, corpus, tasks, examples, cfg, seed, precision)
    finished = time.perf_counter()
    model.to("cpu")
    mode = f"packaged:{packaged}" if packaged else cfg.tasks if isinstance(cfg.tasks, str) else "list"
    info = {"model_config": model_name, "audio_encoder": model_config["audio_encoder"], "frontend": asdict(frontend),
            "mode": mode, "tasks": [t.name for t in tasks], "prompts": {t.name: t.prompt for t in tasks if t.prompt},
            "steps": cfg.steps if tasks else 0, "seed": seed,
            "pretrain": {k: v for k, v in asdict(cfg).items() if k != "seed"},  # the seed once, the one used
            "output_vocab_size": int(model.prefix_lm.output_vocab.numel())}
    out = Path(cfg.out)
    write_outputs(model, out, info)
    write_text(out / "generations.json", json.dumps(generations, indent=1, ensure_ascii=False) + "\n")
    accs = [m["accuracy"] for m in task_metrics.values()]
    metrics = {"mode": mode, "num_tasks": len(tasks), "steps": info["steps"],
               "mean_accuracy": round(float(np.mean(accs)), 4) if accs else None,
               "mean_chance": round(float(np.mean([m["chance"] for m in task_metrics.values()])), 4) if accs else None,
               "tasks_significant": sum(m["significant"] for m in task_metrics.values()),
               "tasks_above_audio_blind": sum(m["above_audio_blind"] for m in task_metrics.values()),
               "final_loss": round(log[-1]["loss"], 4) if log else None, "tasks": task_metrics}
    if cfg.distill_weight > 0 and log:  # the teacher's cosine distance over the last log window
        metrics["final_distill_loss"] = round(log[-1]["tasks"].get("distill", float("nan")), 4)
    Path(cfg.metrics).parent.mkdir(parents=True, exist_ok=True)
    write_text(Path(cfg.metrics), json.dumps(metrics, indent=2) + "\n")
    write_loss_log(Path(cfg.loss_log), log, [t.name for t in tasks] + (["distill"] if cfg.distill_weight > 0 else []))
    if cfg.timings:  # wall time is not a DVC output: it differs on every run
        Path(cfg.timings).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(cfg.timings), json.dumps({
            "train_s": round(trained - started, 1), "evaluate_s": round(finished - trained, 1),
            "steps": info["steps"], "batch_size": cfg.batch_size, "threads": torch.get_num_threads(),
            "precision": precision.name, "device": str(runtime.device), "world": runtime.world,
            "compile": cfg.compile, **({"peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
                                       if runtime.device.type == "cuda" else {})}, indent=2) + "\n")
    return metrics


def _cmd_pretrain(args) -> int:
    params = load_params(args.params)
    cfg = PretrainConfig.from_params(params)
    name, model_config = model_config_from_params(params)
    metrics = pretrain(cfg, frontend_config(params), name, model_config, seed=cfg.seed,
                       progress=not args.no_progress, resume=args.resume,
                       allow_other_identity=args.resume_any_identity)
    if torch.distributed.is_initialized():  # not a collective: rank 0 may still be evaluating
        torch.distributed.destroy_process_group()
    if not metrics:  # a rank other than 0 under torchrun: rank 0 evaluates and reports
        return 0
    for task, m in metrics["tasks"].items():
        print(f"{task:18s} accuracy {m['accuracy']:.3f}  chance {m['chance']:.3f}  ({m['clips']} clips)")
    print(f"pretrain: {metrics['num_tasks']} tasks, weights in {cfg.out}, metrics in {cfg.metrics}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="stage pretrain: multi-task audio-encoder pretraining (prefix LM)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--resume", default="latest",
                   help="latest (default: the newest unfinished checkpoint of the same run identity, if any), none, "
                        "or a checkpoint path (its identity must match)")
    p.add_argument("--resume-any-identity", action="store_true",
                   help="with --resume PATH: load it even if it was written by another run identity (warned)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_pretrain)
