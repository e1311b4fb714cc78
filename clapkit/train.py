"""Stage ``train``: contrastive training of a CLAP model on the prepared corpus (MS-CLAP 2023 §2-3).

One command on one CPU, one GPU or many (``torchrun --nproc-per-node N -m clapkit.cli train ...``)::

    clapkit train --params params.yaml [--resume latest|none|<checkpoint>] [--resume-any-identity]

What happens, top to bottom of this file:

1. ``TrainConfig`` (block ``train:`` of params.yaml) + the shared ``seed``, ``model.<preset>`` and
   ``frontend.<preset>``.  The model's frontend is always the params one.
2. ``build_model``: a seeded CLAP of that config.  ``init: msclap:2023:<path>`` starts the whole CLAP (towers,
   projections, temperature) from an official msclap checkpoint (``clapkit.init_weights``: fine-tuning).  Else
   the audio encoder is initialised from the pretrain stage (``audio_init: pretrain`` reads
   ``models/pretrain/``), from a file/directory, or left random (``none``);
   the same for the text encoder (``text_init``; a pretrained tower such as ``minilm`` starts from its packaged,
   sha256-verified weights, ``clapkit.pretrained``).  ``freeze_audio`` / ``freeze_text`` fix an encoder (its
   projection still trains) and keep it in eval mode; a frozen text encoder answers from caption features
   computed once per corpus (``text_cache_dir``, ``clapkit.text_cache``), so a step runs no text transformer.  A
   trained text encoder runs at ``lr * text_lr_scale``.  The encoders carry no AudioSet head, so every
   parameter gets a gradient (DDP needs no ``find_unused_parameters``).
3. The shared training support (``clapkit.training``): device (``device: auto|cpu|cuda``), process group,
   optimiser (Adam or AdamW; no weight decay on biases, norms, embeddings and the temperature), the schedule
   (linear warmup, then cosine, constant, or reduce-on-plateau on the validation loss), autocast and fp16 loss
   scaling (``precision``), ``torch.compile`` (``compile``), gradient clipping; optional gradient accumulation in
   OpenCLIP's two-pass form (``train_step``).
4. The loop, with a budget in optimiser *steps* (``max_steps``): checkpoints every ``checkpoint_every`` steps,
   at each epoch end and at the end (``clapkit.training_state``); validation (loss + zero-shot accuracy per task
   of the corpus on the ``val`` split, shared across ranks: ``clapkit.validation``, in the evaluate stage's
   precision ``evaluate.precision``, with its zero-shot function ``clapkit.zeroshot``) at each epoch end and at the
   end; dvclive logs (loss, lr, temperature, clips/s, validation metrics) in ``train.live_dir``.
5. The final model through ``CLAP.save_pretrained`` into ``train.out`` (``models/clap``), with the content hashes of
   the clips it trained on (``training_index.npy``, recorded in its config.json: ``clapkit.training_index``, which
   the evaluate stage checks its clips against); ``metrics/train.json``.

Resume (``clapkit.training_state``): a run's identity is its parameters, the hash of the clapkit code, the hash
of the corpus it reads and the fingerprint of its initial weights.  ``--resume latest`` (what the stage runs)
continues the newest unfinished checkpoint of the same identity (model, optimiser, schedule, scaler, RNG, epoch
and batch position), also from the middle of an epoch; a finished run or any change trains afresh.  Batches are
a pure function of (seed, epoch, index) (``clapkit.data.loader``), so "interrupted + resumed" computes the same
steps as "uninterrupted" (tests/test_train.py).  dvclive rows logged after the checkpoint are dropped on resume,
so the curves have no duplicated steps.

Distributed: ``torchrun`` sets RANK / WORLD_SIZE; the process group is NCCL on GPUs, gloo on CPUs.  Each rank
takes a contiguous slice of every global batch; features are gathered with gradients (``clapkit.losses``), so
the loss and the gradients equal those of one process running the same global batch as ``world`` accumulation
micro-batches (tests/test_ddp.py).  BatchNorm (HTSAT's ``bn0``) normalises per rank and per micro-batch, as in
OpenCLIP (``sync_batchnorm: true`` for SyncBatchNorm on GPUs).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
import torch.distributed as dist
from torch import nn

from .atomic_files import replacing, write_text
from .audio_feature_cache import attach_feature_store, detach_feature_store
from .training_state import (corpus_hash, find_resumable, load_checkpoint, model_fingerprint, run_directory,
                            run_identity, save_checkpoint, unwrap)
from .config import dataclass_from_dict, load_params, model_config_from_params
from .data.shards import parse_shard_mixture
from .zeroshot import DEFAULT_PRECISION as DEFAULT_EVAL_PRECISION
from .losses import POSITIVES, ClipLoss, clamp_logit_scale, make_loss
from .training_index import training_data, write_training_index
from .training import (SCHEDULES, LRSchedule, Precision, RngReplay, Runtime, ScheduleConfig,
                       frozen_batchnorm_statistics, make_optimizer, maybe_compile, param_groups, runtime_problems,
                       setup_runtime)

__all__ = ["TrainConfig", "build_model", "load_encoder_weights", "train", "train_step"]


@dataclass
class TrainConfig:
    """Block ``train:`` of params.yaml (comments there say why each value)."""

    prepared: str = "prepared"
    # None: index prepared/ directly.  `clapkit shards build` folders to stream: one folder, or a weighted mixture
    # ({folder: weight} or [{path, weight}]; weight = upsampling factor, clapkit.data.shards.ShardSet)
    shards: str | list | dict | None = None
    shuffle_buffer: int = 1000  # streaming only: samples in the shuffle buffer
    out: str = "models/clap"
    checkpoint_dir: str = "checkpoints/train"
    metrics: str = "metrics/train.json"
    live_dir: str = "dvclive/train"
    timings: str | None = "reports/timings/train.json"  # wall-clock figures (not a DVC output: they vary per run)
    max_steps: int = 300
    batch_size: int = 64  # global: clips per optimiser step over all ranks and accumulation micro-batches
    accum_steps: int = 1
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.1
    schedule: str = "cosine"  # cosine | constant | plateau
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05
    plateau_factor: float = 0.1
    plateau_patience: int = 15
    grad_clip_norm: float | None = 1.0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the model
    threads: int = 0  # torch intra-op threads per process; 0 = torch's default
    num_workers: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 5
    val_max_clips: int | None = None
    val_batch_size: int = 64
    init: str = "none"  # none | msclap:2023:<path> | msclap:2022:<path>: the whole CLAP (clapkit.init_weights)
    audio_init: str = "pretrain"  # none | pretrain | <path>
    pretrain_dir: str = "models/pretrain"
    text_init: str = "none"  # none (the tower's own: random, or its packaged pretrained weights) | <path>
    freeze_audio: bool | None = None  # None: frozen when the tower is packaged pretrained (aisfx), else trained
    freeze_text: bool | None = None  # None: frozen when the tower is packaged pretrained (minilm), else trained
    text_lr_scale: float = 1.0  # the text encoder's lr = lr * this (its projection keeps lr)
    text_cache_dir: str | None = "~/.cache/clapkit/text-features"  # frozen text's caption features; None = off
    audio_cache_dir: str | None = "~/.cache/clapkit/audio-features"  # frozen waveform tower's feature store (aisfx)
    temperature: float | None = None  # initial softmax temperature; None = the model config's (msclap: 0.07)
    learn_temperature: bool = True  # False: keep it fixed
    local_loss: bool = False
    gather_with_grad: bool = True
    sync_batchnorm: bool = False
    positives: str = "pair"  # pair | caption: every clip of an identical caption text is a positive (losses.py)

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        problems = []
        if self.optimizer not in ("adam", "adamw"):
            problems.append(f"optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.positives not in POSITIVES:
            problems.append(f"positives must be one of {POSITIVES}, got {self.positives!r}")
        problems += runtime_problems(self.device, self.precision)
        if self.temperature is not None and not 0 < self.temperature <= 1:
            problems.append(f"temperature must be in (0, 1] or null, got {self.temperature}")
        if self.text_lr_scale < 0:
            problems.append(f"text_lr_scale must be >= 0, got {self.text_lr_scale}")
        if self.max_steps < 1 or self.batch_size < 2 or self.accum_steps < 1:
            problems.append("max_steps >= 1, batch_size >= 2 and accum_steps >= 1 are required")
        problems += self._init_problems()
        try:
            parse_shard_mixture(self.shards)
        except ValueError as err:
            problems.append(str(err).removeprefix("train."))
        if problems:
            raise ValueError("params.yaml train: " + "; ".join(problems))

    def _init_problems(self) -> list[str]:
        """``init`` parses; it sets every weight, so no tower may name another source (``audio_init: pretrain``,
        the default, is superseded and said so in the init report)."""
        from .init_weights import parse_init

        try:
            init = parse_init(self.init)
        except ValueError as err:
            return [str(err).removeprefix("train.")]
        if init.kind == "none":
            return []
        allowed = {"audio_init": ("none", "pretrain"), "text_init": ("none",)}
        return [f"init {self.init} sets every weight: {key} must be none, not {getattr(self, key)!r}"
                for key, values in allowed.items() if getattr(self, key) not in values]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "TrainConfig":
        return dataclass_from_dict(cls, params.get("train"), "train")

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(lr=self.lr, total_steps=self.max_steps, warmup_steps=self.warmup_steps,
                              kind=self.schedule, min_lr_ratio=self.min_lr_ratio, plateau_factor=self.plateau_factor,
                              plateau_patience=self.plateau_patience)

    def identity_params(self) -> dict[str, Any]:
        """The fields that change what a run computes (paths, logging, threads and the device do not)."""
        c = asdict(self)
        for key in ("threads", "checkpoint_every", "keep_checkpoints", "log_every", "out", "metrics", "live_dir",
                    "checkpoint_dir", "prepared", "shards", "timings", "device", "compile", "text_cache_dir",
                    "audio_cache_dir"):
            c.pop(key)
        if not self.shards:  # indexed batches do not depend on the workers; a shard stream's order does
            c.pop("num_workers")
        else:  # the folders' contents are the corpus hash; their weights are settings
            c["shard_weights"] = [weight for _, weight in parse_shard_mixture(self.shards)]
        return c


# --- model -----------------------------------------------------------------------------------------------------------

def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a clapkit training checkpoint or msclap's {"model": ...}
    return state


def _find_weights(path: Path, tower: str) -> Path:
    """A weights file from a file or a directory (the pretrain output, a save_pretrained dir, a checkpoint dir)."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory (encoder initialisation for the {tower} tower)")
    for name in (f"{tower}_encoder.safetensors", "encoder.safetensors", "model.safetensors"):
        if (path / name).is_file():
            return path / name
    from .training_state import list_checkpoints

    ckpts = list_checkpoints(path)
    if ckpts:
        return ckpts[-1][1]
    raise FileNotFoundError(f"{path}: no {tower}_encoder.safetensors, encoder.safetensors, model.safetensors "
                            "or step_*.pt checkpoint in it")


def load_encoder_weights(encoder: nn.Module, source: str | Path, tower: str) -> dict[str, Any]:
    """Load ``source`` into ``encoder`` strictly.  Keys may be bare or carry a CLAP / pretrain prefix
    (``audio.encoder.``, ``audio_encoder.``, ``encoder.``); keys of the other tower or of heads are ignored
    only if they carry a prefix that is not this encoder's.  Returns a small report."""
    path = _find_weights(Path(source), tower)
    state = _read_state(path)
    own = (f"{tower}.encoder.", f"{tower}_encoder.", "encoder.")
    wanted = set(encoder.state_dict())
    picked: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        stripped = next((key[len(p):] for p in own if key.startswith(p)), key)
        if stripped in wanted:
            picked[stripped] = value
    missing = sorted(wanted - set(picked))
    if missing:
        raise ValueError(f"{path}: cannot initialise the {tower} encoder, {len(missing)} tensor(s) missing "
                         f"(e.g. {missing[:3]}); is it the same encoder config?")
    try:
        encoder.load_state_dict(picked, strict=True)
    except RuntimeError as err:  # shape mismatches: another geometry of the same architecture
        raise ValueError(f"{path}: does not fit the {tower} encoder of this model config: {err}") from err
    return {"tower": tower, "path": str(path), "tensors": len(picked)}


def check_pretrain_config(directory: Path, model_config: Mapping[str, Any]) -> None:
    """The pretrain stage writes ``config.json`` beside its weights: refuse an encoder pretrained with another
    encoder config or another audio frontend (the weights could load and still mean something else)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return
    info = json.loads(path.read_text(encoding="utf-8"))
    for key in ("audio_encoder", "frontend"):
        if key in info and info[key] != model_config[key]:
            raise ValueError(f"{path}: the pretrained audio encoder was made with another {key} than this model "
                             f"config ({info[key]} != {model_config[key]}); rerun the pretrain stage")


def corpus_tokenizer(model_config: Mapping[str, Any], prepared: str | Path):
    """The tokenizer of a BERT (WordPiece) or RoBERTa (byte-level BPE) text tower that names no vocabulary file,
    trained on the captions of the corpus' training split with the tower's ``vocab_size`` (deterministic: the
    same corpus gives the same ids); None for GPT-2 (the real BPE ships with clapkit) or a given or packaged
    vocabulary."""
    from .data.prepare import PreparedCorpus
    from .text import TextTokenizer, train_bytelevel_bpe, train_wordpiece

    spec = model_config["tokenizer"]
    kind = spec.get("kind", "gpt2")
    if kind == "gpt2" or spec.get("file") or spec.get("vocab") or spec.get("packaged"):
        return None
    texts = [c for r in PreparedCorpus(prepared).rows if r["split"] == "train" for c in r.get("captions", [])]
    if not texts:
        raise ValueError(f"{prepared}: no training captions to train the {kind} tokenizer on")
    size = int(model_config["text_encoder"]["vocab_size"])
    trained = train_wordpiece(texts, size) if kind == "wordpiece" else train_bytelevel_bpe(texts, size)
    return TextTokenizer(trained, kind=kind, max_length=int(spec.get("max_length", 77)))


def build_model(cfg: TrainConfig, model_config: Mapping[str, Any], seed: int):
    """A seeded ``clapkit.CLAP`` with its weights initialised (``init``: the whole model from an official
    checkpoint, else ``audio_init`` / ``text_init`` per tower) and frozen as ``cfg`` says, and the init report."""
    from .api import CLAP
    from .init_weights import load_init, parse_init, read_init

    init = parse_init(cfg.init)
    state = read_init(init, model_config) if init.kind != "none" else None  # file and config checked first
    tokenizer = corpus_tokenizer(model_config, cfg.prepared)
    clap = CLAP.from_config(dict(model_config), tokenizer=tokenizer, seed=seed, device="cpu")
    model = clap.model
    if state is not None:
        entry = load_init(model, init, state, model_config)
        del state
        if cfg.audio_init == "pretrain":
            entry["audio_init"] = "pretrain: superseded by train.init (every weight from the checkpoint)"
        report = [entry]
    else:
        report = _init_towers(cfg, clap)
    for frozen, encoder in ((cfg.freeze_audio, model.audio.encoder), (cfg.freeze_text, model.text.encoder)):
        if frozen:
            encoder.requires_grad_(False)
    if cfg.temperature is not None:  # logits = exp(logit_scale) * cosine, logit_scale = ln(1 / temperature)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1.0 / cfg.temperature))
    model.logit_scale.requires_grad_(cfg.learn_temperature)
    return clap, report


def _init_towers(cfg: TrainConfig, clap) -> list[dict[str, Any]]:
    """``audio_init`` / ``text_init``: each encoder from its own source (the projections stay as drawn)."""
    model = clap.model
    report = []
    audio_init = cfg.audio_init
    if audio_init == "pretrain":
        audio_init = cfg.pretrain_dir
    if audio_init != "none":
        if Path(audio_init).is_dir():
            check_pretrain_config(Path(audio_init), clap.model.config)
        report.append(load_encoder_weights(model.audio.encoder, audio_init, "audio"))
    elif getattr(model.audio.encoder, "pretrained", None):  # a pretrained tower (aisfx): its packaged weights
        from .models.aisfx_encoder import load_packaged_audio_encoder

        report.append(load_packaged_audio_encoder(model.audio.encoder))
    if cfg.text_init != "none":
        report.append(load_encoder_weights(model.text.encoder, cfg.text_init, "text"))
    elif model.text.encoder.pretrained:  # a pretrained tower (minilm) starts from its packaged, verified weights
        from .pretrained import load_packaged_text_encoder

        report.append(load_packaged_text_encoder(model.text.encoder, model.text.encoder.pretrained))
    return report


def resolve_freezes(cfg: TrainConfig, model_config: Mapping[str, Any]) -> TrainConfig:
    """``freeze_audio`` / ``freeze_text`` null: a packaged pretrained tower (one with ``pretrained`` in its config:
    aisfx, minilm) is frozen, a tower this pipeline trains from scratch or from the pretrain stage is not.  So the
    embedded default (both packaged) trains only the projections and the temperature, while ``preset: paper``
    (msclap-2023's HTSAT + GPT-2) trains everything, with no knob to flip."""
    def packaged(tower: Any) -> bool:
        return isinstance(tower, Mapping) and bool(tower.get("pretrained"))

    audio = cfg.freeze_audio if cfg.freeze_audio is not None else packaged(model_config.get("audio_encoder"))
    text = cfg.freeze_text if cfg.freeze_text is not None else packaged(model_config.get("text_encoder"))
    return replace(cfg, freeze_audio=audio, freeze_text=text)


def text_lr_scale(cfg: TrainConfig):
    """``param_groups``' lr rule: the text encoder at ``lr * text_lr_scale`` (fine-tuning a pretrained tower gently),
    everything else (projections, audio tower, temperature) at ``lr``."""
    return lambda name: cfg.text_lr_scale if name.startswith("text.encoder.") else 1.0


def attach_text_cache(cfg: TrainConfig, model: nn.Module, tokenizer, corpus, indices, device) -> dict | None:
    """A frozen text encoder answers from caption features computed once per corpus (``clapkit.text_cache``) when
    ``text_cache_dir`` is set; returns the cache's report (None when there is none)."""
    if not (cfg.freeze_text and cfg.text_cache_dir):
        return None
    from .text_cache import caption_feature_cache, corpus_captions

    encoder = unwrap(model).text.encoder
    cache, report = caption_feature_cache(encoder, tokenizer, corpus_captions(corpus, indices), cfg.text_cache_dir,
                                          device)
    encoder.attach_cache(cache)
    return report


def detach_text_cache(model: nn.Module, report: dict | None) -> dict | None:
    """Detach the cache; the report gains its row counts (``hits`` looked up, ``misses`` computed)."""
    encoder = unwrap(model).text.encoder
    cache = encoder.feature_cache
    encoder.attach_cache(None)
    if report is None or cache is None:
        return report
    return {**report, "hits": cache.hits, "misses": cache.misses}


def set_train_mode(model: nn.Module, cfg: TrainConfig) -> None:
    """Train mode, except frozen encoders (no dropout, BatchNorm statistics kept)."""
    model.train()
    if cfg.freeze_audio:
        model.audio.encoder.eval()
    if cfg.freeze_text:
        model.text.encoder.eval()



# --- one optimiser step ----------------------------------------------------------------------------------------------

def _features(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out = model(batch["wave"], batch["input_ids"], batch["attention_mask"])
    return out["audio_embeds"], out["text_embeds"], out["logit_scale"]


def train_step(model: nn.Module, batch: Mapping[str, torch.Tensor], loss_fn: ClipLoss, accum_steps: int,
               precision: Precision) -> float:
    """Forward + backward of one optimiser step (no optimiser call); returns this rank's loss.

    A loss with ``uses_groups`` (caption positives) also gets ``batch["caption_ids"]``: those of the rank's whole
    batch, never of one micro-batch, because every pass below scores the whole batch, so the positives are counted
    over the same clips as the negatives (and the loss gathers them over the ranks as it gathers the features).

    With ``accum_steps = k > 1`` the rank's batch is cut into k micro-batches, OpenCLIP-style: pass 1 embeds
    every micro-batch without gradients; pass 2 re-embeds each with gradients and computes the loss of the whole
    batch with the other micro-batches' features as constants, and backpropagates it.  The summed gradients equal
    those of one graph over the k micro-batches (every pair keeps all its negatives), at the cost of a second
    forward.  Pass 2 replays pass 1's random state on every device involved, so dropout, drop-path and
    SpecAugment draw the same masks.  BatchNorm normalises each micro-batch with its own statistics, as each
    rank does under DDP; its running statistics are updated once per step, by the first micro-batch of pass 2
    (pass 1 and the other micro-batches restore them), as DDP keeps rank 0's.
    """
    device = precision.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
    groups = (batch["caption_ids"],) if loss_fn.uses_groups else ()
    if accum_steps == 1:
        with precision.autocast():
            audio, text, scale = _features(model, batch)
        loss = loss_fn(audio, text, scale, *groups)
        precision.backward(loss)
        return float(loss.detach())
    n = batch["wave"].shape[0]
    if n % accum_steps:
        raise ValueError(f"per-rank batch {n} is not divisible by accum_steps {accum_steps}")
    size = n // accum_steps
    micro = [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(accum_steps)]
    replays, cached_audio, cached_text = [], [], []
    inner = unwrap(model)
    with torch.no_grad(), frozen_batchnorm_statistics(inner):
        for mb in micro:
            replays.append(RngReplay(device))
            with precision.autocast():
                a, t, _ = _features(inner, mb)
            cached_audio.append(a)
            cached_text.append(t)
    after = RngReplay(device)
    loss_value = 0.0
    for i, mb in enumerate(micro):
        replays[i].restore()
        # DDP must sync gradients only on the last micro-batch.
        sync = model.no_sync() if (i < accum_steps - 1 and hasattr(model, "no_sync")) else nullcontext()
        # BatchNorm running statistics follow the first micro-batch only: under DDP that is what rank 0's slice
        # gives every rank (buffers are broadcast from rank 0), so every (ranks x accum_steps) layout of the same
        # global batch ends with the same statistics.
        stats = frozen_batchnorm_statistics(inner) if i > 0 else nullcontext()
        with sync, stats:
            with precision.autocast():
                a, t, scale = _features(model, mb)
            audio = torch.cat(cached_audio[:i] + [a] + cached_audio[i + 1:])
            text = torch.cat(cached_text[:i] + [t] + cached_text[i + 1:])
            # Every pass computes the whole batch's loss: the temperature's gradient is taken from one of them, the
            # last, because DDP reduces gradients in that pass only and waits there for every parameter's: taken
            # from the first, the temperature had none in the last pass, its bucket (and every later one) was never
            # averaged, and each rank stepped on its own gradients (tests/test_ddp.py, 2 ranks x 2 micro-batches).
            loss = loss_fn(audio, text, scale if i == accum_steps - 1 else scale.detach(), *groups)
            precision.backward(loss)
        loss_value = float(loss.detach())
    after.restore()
    return loss_value


# --- logging ---------------------------------------------------------------------------------------------------------

def _trim_live_logs(live_dir: Path, last_step: int) -> None:
    """After a resume from step ``last_step``, drop dvclive rows logged after it (they will be recomputed)."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv") if (live_dir / "plots").is_dir() else []:
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        if not rows:
            continue
        header, body = rows[0], rows[1:]
        col = header.index("step") if "step" in header else None
        kept = [r for r in body if col is None or int(r[col]) <= last_step]
        with replacing(tsv) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows([header] + kept)


class _NoLive:
    """Stands in for dvclive on ranks other than 0."""

    step = 0

    def log_metric(self, *a, **k):
        pass

    def end(self):
        pass


def _open_live(live_dir: str, resumed_step: int | None, rank: int):
    if rank != 0:
        return _NoLive()
    from dvclive import Live

    path = Path(live_dir)
    if resumed_step is None and path.exists():
        import shutil

        shutil.rmtree(path)  # a fresh run: no curves from an earlier one
    if resumed_step is not None:
        _trim_live_logs(path, resumed_step)
    # dvcyaml=False / save_dvc_exp=False: the stage's plots and metrics are declared in the project's dvc.yaml.
    live = Live(dir=live_dir, resume=resumed_step is not None, save_dvc_exp=False, dvcyaml=False)
    return live



# --- the loop --------------------------------------------------------------------------------------------------------

def _in_step(loader: Iterable, runtime: Runtime) -> Iterator:
    """The loader's batches, ending on every rank at once.  Under DDP a rank with one batch more than another
    would wait forever in the gradient all-reduce; the data split is built to give every rank the same count, and
    this checks it each step (one scalar all-reduce) and fails with a clear error instead of hanging."""
    if not runtime.distributed:
        yield from loader
        return
    it = iter(loader)
    while True:
        batch = next(it, None)
        have = runtime.all_reduce_sum(batch is not None)
        if have == 0:
            return
        if have != runtime.world:
            raise RuntimeError(f"rank {runtime.rank}: the ranks ran out of training batches at different steps "
                               f"({int(have)} of {runtime.world} still had one): the data is not split evenly")
        yield batch


def _identity(cfg: TrainConfig, model_config: Mapping[str, Any], seed: int, world: int,
              initial_weights: str, eval_precision: str) -> dict[str, Any]:
    memo = Path(cfg.checkpoint_dir) / "corpus-hashes.json"
    corpus = corpus_hash(cfg.prepared, memo)
    for k, (folder, _) in enumerate(parse_shard_mixture(cfg.shards)):
        corpus += "+" + corpus_hash(folder, memo.with_name(f"shard-hashes-{k}.json"))
    # the validation precision is part of a run: the validation loss drives the plateau schedule
    return run_identity({"train": cfg.identity_params(), "model": dict(model_config), "seed": seed,
                         "eval_precision": eval_precision},
                        corpus=corpus, initial_weights=initial_weights, world=world)


def train(cfg: TrainConfig, model_config: Mapping[str, Any], seed: int = 0, resume: str = "latest",
          progress: bool = True, allow_other_identity: bool = False,
          eval_precision: str = DEFAULT_EVAL_PRECISION) -> dict[str, Any]:
    """Run the stage; returns the metrics written to ``cfg.metrics``.  ``eval_precision``: the precision of the
    validation (params.yaml ``evaluate.precision``: validation is the evaluate stage's zero-shot protocol)."""
    from .data.loader import ClipCaptionDataset, EpochBatches, make_loader
    from .data.prepare import PreparedCorpus
    from .validation import validate

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg = resolve_freezes(cfg, model_config)
    runtime = setup_runtime(cfg.device)
    rank, world, device = runtime.rank, runtime.world, runtime.device
    if cfg.batch_size % (world * cfg.accum_steps):
        raise ValueError(f"train.batch_size {cfg.batch_size} must be divisible by ranks x accum_steps = "
                         f"{world} x {cfg.accum_steps}")
    torch.manual_seed(seed)
    corpus = PreparedCorpus(cfg.prepared)
    train_idx, val_idx = corpus.split("train"), corpus.split("val")
    if cfg.val_max_clips is not None:
        val_idx = val_idx[: cfg.val_max_clips]
    if len(train_idx) < cfg.batch_size and not cfg.shards:
        raise ValueError(f"{cfg.prepared}: {len(train_idx)} training clips, fewer than one batch of {cfg.batch_size}")
    tasks = {k: v for k, v in corpus.tasks.items() if len(v.get("classes", [])) >= 2}
    # the clips this run trains on, listed before training so that an unlistable input fails now (zero-shot hygiene)
    trained_on = training_data(cfg, [corpus.rows[i] for i in train_idx], model_config) if rank == 0 else None

    clap, init_report = build_model(cfg, model_config, seed)
    model = clap.model
    identity = _identity(cfg, clap.model.config, seed, world, model_fingerprint({}, model.state_dict()),
                         Precision(eval_precision, device).name)
    model = model.to(device)
    clap.device = device
    if world > 1 and cfg.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        clap.model = model
    set_train_mode(model, cfg)
    text_cache = attach_text_cache(cfg, model, clap.tokenizer, corpus, train_idx + val_idx, device)
    # a frozen waveform tower (aisfx) answers from its feature store, kept across runs (clapkit.audio_feature_cache)
    audio_cache = attach_feature_store(unwrap(model).audio.encoder, cfg.audio_cache_dir) if cfg.freeze_audio else None
    precision = Precision(cfg.precision, device)
    eval_prec = Precision(eval_precision, device)
    optimizer = make_optimizer(param_groups(model, cfg.weight_decay, text_lr_scale(cfg)), cfg.optimizer, cfg.lr,
                               cfg.betas, cfg.eps, device)
    schedule = LRSchedule(optimizer, cfg.schedule_config())
    loss_fn = make_loss(cfg.positives, local_loss=cfg.local_loss, gather_with_grad=cfg.gather_with_grad)
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    wrapped = maybe_compile(wrapped, cfg.compile)

    run_dir = run_directory(cfg.checkpoint_dir, identity)
    step, epoch, batch_in_epoch, history = 0, 0, 0, []
    ckpt = None
    if resume in ("latest", "auto"):  # rank 0 decides (it may clear a finished run's folder) and tells the others
        ckpt = find_resumable(cfg.checkpoint_dir, identity) if rank == 0 else None
    elif resume not in ("none", None):
        ckpt = Path(resume)
    if world > 1:  # rank 0 may have cleared a finished run's folder: every rank decides on the same file
        box = [str(ckpt) if ckpt is not None else None]
        dist.broadcast_object_list(box, src=0)
        ckpt = Path(box[0]) if box[0] is not None else None
    if ckpt is not None:
        info = load_checkpoint(ckpt, model, optimizer, schedule, precision.scaler, identity=identity,
                               allow_other_identity=allow_other_identity)
        step = info["step"]
        epoch, batch_in_epoch = info["extra"]["epoch"], info["extra"]["batch_in_epoch"]
        history = json.loads(info["extra"].get("history", "[]"))
        if rank == 0:
            print(f"resumed from {ckpt} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
    live = _open_live(cfg.live_dir, step if ckpt is not None else None, rank)
    live.step = step

    per_rank_batch = cfg.batch_size // world
    if cfg.shards:  # stream WebDataset shards: every rank takes the same number of whole batches per epoch
        from .data.loader import make_stream_loader
        from .data.shards import ShardStream

        dataset = ShardStream.from_mixture(parse_shard_mixture(cfg.shards), "train", clap.clip_samples,
                                           sample_rate=clap.sample_rate, seed=seed, train=True,
                                           shuffle_buffer=cfg.shuffle_buffer, rank=rank, world=world,
                                           per_rank_batch=per_rank_batch)
        per_epoch = dataset.batches_per_epoch  # from the index: the same on every rank
        if per_epoch < 1:
            raise ValueError(f"{cfg.shards}: fewer training clips than one batch of {cfg.batch_size}")
    else:
        dataset = ClipCaptionDataset(corpus, train_idx, clap.clip_samples, train=True, seed=seed)
        per_epoch = len(train_idx) // cfg.batch_size

    def checkpoint(finished: bool = False) -> None:
        if rank == 0:
            save_checkpoint(run_dir, step, model, identity, optimizer, schedule, precision.scaler,
                            keep=cfg.keep_checkpoints, finished=finished,
                            extra={"epoch": epoch, "batch_in_epoch": batch_in_epoch, "history": json.dumps(history)})
        runtime.barrier()

    def run_validation() -> dict[str, Any]:
        result = validate(clap, corpus, val_idx, tasks, cfg.val_batch_size, runtime, eval_prec)
        set_train_mode(model, cfg)
        return result

    trainable = [p for p in model.parameters() if p.requires_grad]
    t_start = time.perf_counter()
    start_step, skipped = step, 0
    last_eval_step = history[-1]["step"] if history else -1
    while step < cfg.max_steps:
        if cfg.shards:  # the stream is a pure function of (seed, epoch): resuming starts at the next batch
            dataset.set_epoch(epoch, start_batch=batch_in_epoch)
            loader = make_stream_loader(dataset, clap.tokenizer, cfg.num_workers)
        else:
            dataset.set_epoch(epoch)
            batches = EpochBatches(len(train_idx), cfg.batch_size, seed, epoch, rank, world, start=batch_in_epoch)
            loader = make_loader(dataset, batches, clap.tokenizer, cfg.num_workers)
        stopped = False
        for batch in _in_step(loader, runtime):
            optimizer.zero_grad(set_to_none=True)
            loss = train_step(wrapped, batch, loss_fn, cfg.accum_steps, precision)
            if not precision.step(optimizer, trainable, cfg.grad_clip_norm):
                skipped += 1  # fp16 overflow: the scaler lowered its scale; the step still counts, as in OpenCLIP
            clamp_logit_scale(unwrap(model).logit_scale)
            lr = schedule.lr()  # the base rate of this step (groups run at lr * their lr_scale)
            schedule.step()
            step += 1
            batch_in_epoch += 1
            if world > 1 and cfg.local_loss:  # each rank holds part of the loss: log the global one
                loss = runtime.all_reduce_sum(loss) / world
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                live.step = step
                live.log_metric("train/loss", loss)
                live.log_metric("train/lr", lr)
                live.log_metric("train/temperature", float(1.0 / unwrap(model).logit_scale.detach().exp()))
                # throughput is wall time: in reports/timings/train.json (untracked), not in the committed curves
                if progress and rank == 0:
                    print(f"step {step}/{cfg.max_steps} epoch {epoch} loss {loss:.4f} lr {lr:.2e}", flush=True)
            if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                checkpoint()
            if step >= cfg.max_steps:
                stopped = True
                break
        # The epoch is over when its batches ran out (whatever their count), or when the budget ended on its last.
        if not stopped or batch_in_epoch >= per_epoch:
            if batch_in_epoch == 0:
                raise RuntimeError(f"epoch {epoch} yielded no training batch: nothing to train on")
            result = run_validation()
            schedule.validation(result["loss"])
            history.append(_log_validation(live, step, epoch, result, progress and rank == 0))
            last_eval_step = step
            epoch, batch_in_epoch = epoch + 1, 0
            if step < cfg.max_steps:
                checkpoint()
    if last_eval_step != step:
        history.append(_log_validation(live, step, epoch, run_validation(), progress and rank == 0))
    checkpoint(finished=True)
    text_cache = detach_text_cache(model, text_cache)
    audio_cache = detach_feature_store(unwrap(model).audio.encoder, audio_cache)
    metrics = {}
    if rank == 0:
        final = history[-1]
        metrics = {"step": step, "epochs": round(step / per_epoch, 3), "clips_seen": step * cfg.batch_size,
                   "val_loss": final["loss"], "val_mean_accuracy": final["mean_accuracy"],
                   "temperature": float(1.0 / unwrap(model).logit_scale.detach().exp()),
                   "val_zeroshot": final["zeroshot"], "init": init_report}
        if skipped:
            metrics["fp16_skipped_steps"] = skipped
        if not cfg.shards:  # a shard stream's order comes from its shuffle buffers: no replay from the rows
            from .data.loader import caption_repeats

            # the false negatives plain InfoNCE met in this run's batches (whichever `positives` trained)
            metrics["caption_repeats"] = caption_repeats(corpus, train_idx, cfg.batch_size, seed, clap.clip_samples,
                                                         step)
        clap.model = unwrap(model).to("cpu").eval()
        clap.device = torch.device("cpu")
        clap.save_pretrained(cfg.out)
        index = write_training_index(cfg.out, trained_on)
        metrics["training_index"] = {"clips": index["clips"], "provenance": index["provenance"]}
        Path(cfg.metrics).parent.mkdir(parents=True, exist_ok=True)
        write_text(cfg.metrics, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if cfg.timings:
            seconds = time.perf_counter() - t_start
            timing = {"seconds_this_run": round(seconds, 1), "steps_this_run": step - start_step,
                      "resumed_from_step": start_step, "world": world, "threads": torch.get_num_threads(),
                      "clips_per_s": round((step - start_step) * cfg.batch_size / max(seconds, 1e-9), 1),
                      "precision": precision.name, "device": str(device), "compile": cfg.compile}
            if text_cache is not None:
                timing["text_cache"] = text_cache
            if audio_cache is not None:
                timing["audio_cache"] = audio_cache
            if device.type == "cuda":
                timing["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
            Path(cfg.timings).parent.mkdir(parents=True, exist_ok=True)
            write_text(cfg.timings, json.dumps(timing, indent=2) + "\n")
        live.end()
    runtime.barrier()
    return metrics


def _log_validation(live, step: int, epoch: int, result: Mapping[str, Any], verbose: bool) -> dict[str, Any]:
    live.step = step
    live.log_metric("val/loss", result["loss"])
    live.log_metric("val/zeroshot_mean_accuracy", result["mean_accuracy"])
    for task, r in result["zeroshot"].items():
        live.log_metric(f"val/zeroshot/{task}", r["accuracy"])
    if verbose:
        accs = " ".join(f"{t}={r['accuracy']:.2f}" for t, r in result["zeroshot"].items())
        print(f"validation at step {step} (epoch {epoch}): loss {result['loss']:.4f} mean acc "
              f"{result['mean_accuracy']:.3f} [{accs}]", flush=True)
    return {"step": step, "epoch": epoch, **copy.deepcopy(dict(result))}


# --- command line ----------------------------------------------------------------------------------------------------

def _cmd_train(args) -> int:
    params = load_params(args.params)
    cfg = TrainConfig.from_params(params)
    train(cfg, model_config_from_params(params)[1], seed=int(params.get("seed", 0)), resume=args.resume,
          progress=not args.no_progress, allow_other_identity=args.resume_any_identity,
          eval_precision=(params.get("evaluate") or {}).get("precision", DEFAULT_EVAL_PRECISION))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _cmd_caption_repeats(args) -> int:
    from .config import frontend_config
    from .data.loader import caption_repeats
    from .data.prepare import PreparedCorpus

    params = load_params(args.params)
    cfg = TrainConfig.from_params(params)
    corpus = PreparedCorpus(args.prepared or cfg.prepared)
    result = caption_repeats(corpus, corpus.split("train"), cfg.batch_size, int(params.get("seed", 0)),
                             frontend_config(params).clip_samples, args.steps or cfg.max_steps)
    print(json.dumps(result, indent=2))
    return 0


def register(subparsers) -> None:
    q = subparsers.add_parser("caption-repeats",
                              help="how often the train stage's batches hold identical captions (false negatives)")
    q.add_argument("--params", default="params.yaml")
    q.add_argument("--prepared", default=None, help="default: params.yaml train.prepared")
    q.add_argument("--steps", type=int, default=None, help="batches to replay (default: train.max_steps)")
    q.set_defaults(func=_cmd_caption_repeats)
    p = subparsers.add_parser("train", help="stage train: contrastive training (torchrun for several processes)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--resume", default="latest",
                   help="latest (default: the newest unfinished checkpoint of the same run identity, if any), none, "
                        "or a checkpoint path (its identity must match)")
    p.add_argument("--resume-any-identity", action="store_true",
                   help="with --resume PATH: load it even if it was written by another run identity (warned)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_train)
