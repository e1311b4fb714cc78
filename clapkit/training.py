"""Training support shared by the ``pretrain`` and ``train`` stages: one implementation of each concern.

* ``Runtime`` / ``setup_runtime``: the device (``auto | cpu | cuda``) and, under ``torchrun``, the process group
  (NCCL on GPUs, gloo on CPUs), TF32 matmuls on GPUs.
* ``resolve_precision`` / ``Precision``: autocast in bf16 or fp16, and for fp16 a real loss scale
  (``torch.amp.GradScaler``): the loss is multiplied before ``backward``, the gradients are unscaled before
  clipping, a step whose gradients overflowed is skipped and the scale moves.
* ``param_groups`` / ``make_optimizer``: weight decay on weight matrices only (not gains, biases, token and
  position embeddings or the temperature), an ``lr_scale`` per group, AdamW or Adam, fused kernels.
* ``LRSchedule``: linear warmup, then cosine to a floor, constant, or reduce-on-plateau; its whole state is in
  ``state_dict`` so a resumed run continues exactly.
* ``maybe_compile``: ``torch.compile`` of a module when asked.
* ``RngReplay``: capture and restore the RNG of every device a step draws from (gradient accumulation's second
  pass must draw the same dropout / SpecAugment masks as the first).
* ``frozen_batchnorm_statistics``: a context in which BatchNorm layers normalise with batch statistics as in
  training but leave their running statistics untouched (accumulation's no-grad pass).

The checkpoint format, the run identity and the resume rules are in ``clapkit.training_state``.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DEVICES", "PRECISIONS", "LRSchedule", "Precision", "RngReplay", "Runtime", "ScheduleConfig",
           "frozen_batchnorm_statistics", "make_optimizer", "maybe_compile", "param_groups", "resolve_precision",
           "runtime_problems", "setup_runtime"]

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "constant", "plateau")


# --- device and processes --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Runtime:
    """Where this process computes: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, value: float) -> float:
        """The sum of ``value`` over ranks (the value itself in one process)."""
        if not self.distributed:
            return float(value)
        box = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(box)
        return float(box.item())

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics).  DDP broadcasts them only at the start
        of each forward, so after a step every rank holds the statistics of its own slice: evaluating in eval
        mode on several ranks needs one set."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer.data, src=0)

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (picklable objects; tensors should be on the CPU)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _collective_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def runtime_problems(device: str, precision: str) -> list[str]:
    """What is wrong with a stage's ``device`` and ``precision`` knobs (empty when both are valid): the stages'
    configs report these with their other problems; ``resolve_device`` / ``resolve_precision`` raise them."""
    return [f"{name} must be one of {allowed}, got {value!r}"
            for name, value, allowed in (("device", device, DEVICES), ("precision", precision, PRECISIONS))
            if value not in allowed]


def resolve_device(device: str) -> torch.device:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def setup_runtime(device: str = "auto") -> Runtime:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1) and pick this rank's device.

    The backend follows the device: NCCL for CUDA, gloo for the CPU (the CPU tests run 2 gloo processes).  On a
    GPU, each rank takes ``cuda:LOCAL_RANK`` and float32 matmuls may use TF32 (about 8x the fp32 rate on Ampere
    and later; autocast covers most of the compute anyway)."""
    kind = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if kind.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        kind = torch.device("cuda", local)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if kind.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return Runtime(rank, world, kind)


# --- precision -------------------------------------------------------------------------------------------------------

def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32).  ``auto``: bf16 on GPUs that have it, fp16 (with loss scaling) on GPUs
    that do not; on CPUs bf16 only with native bf16 matrix units (AMX / AVX512-BF16), where emulated bf16 would
    be slower than fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_native_bf16() else None


class Precision:
    """Autocast plus, for fp16, dynamic loss scaling.

    fp16 has 5 exponent bits: small gradients underflow to zero unless the loss is scaled up before ``backward``.
    ``backward`` scales; ``step`` unscales (so clipping sees true gradients), skips the optimiser step when a
    gradient is inf/NaN and lets the scaler move its scale.  bf16 and fp32 need no scaling (the scaler is off).
    """

    def __init__(self, precision: str, device: torch.device, init_scale: float = 2.0 ** 16):
        self.device = device
        self.dtype = resolve_precision(precision, device)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale) if self.dtype == torch.float16 else None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor],
             clip_norm: float | None) -> bool:
        """Unscale, clip and step; returns False when fp16 gradients overflowed and the step was skipped."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(dict(state))


# --- optimiser and schedule ------------------------------------------------------------------------------------------

def _decays(name: str, p: torch.Tensor) -> bool:
    """CLIP's rule: decay weight matrices, not gains, biases, embeddings (token / position) or the temperature."""
    if p.ndim < 2 or "logit_scale" in name:
        return False
    return not any(k in name for k in ("wte", "wpe", "embeddings"))


def param_groups(model: nn.Module, weight_decay: float,
                 lr_scale: Callable[[str], float] | None = None) -> list[dict[str, Any]]:
    """Trainable parameters in groups of equal (weight decay, lr scale), in a fixed order.  Each group carries
    ``lr_scale`` (the schedule sets ``lr = schedule lr * lr_scale``)."""
    groups: dict[tuple[float, bool], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = float(lr_scale(name)) if lr_scale is not None else 1.0
        groups.setdefault((scale, _decays(name, p)), []).append(p)
    return [{"params": ps, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
            for (scale, decays), ps in sorted(groups.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))]


def make_optimizer(groups: list[dict[str, Any]], kind: str, lr: float, betas: Sequence[float], eps: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay) or Adam (coupled: the paper's optimiser; its groups get no decay).

    ``fused``: one kernel over all tensors, on CUDA and on the CPU (here 14x faster than the per-tensor loop for
    GPT-2's 13M-entry token embedding, which Adam updates in full every step)."""
    if kind not in ("adamw", "adam"):
        raise ValueError(f"optimizer must be adam or adamw, got {kind!r}")
    if kind == "adam":
        groups = [{**g, "weight_decay": 0.0} for g in groups]
    opt_cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return opt_cls(groups, lr=lr, betas=tuple(betas), eps=eps, fused=device.type in ("cuda", "cpu"))


@dataclass(frozen=True)
class ScheduleConfig:
    lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"  # cosine | constant | plateau
    min_lr_ratio: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 15

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.kind!r}")


class LRSchedule:
    """Learning rate per optimiser step: linear warmup from ``lr / warmup_steps``, then cosine down to
    ``min_lr_ratio * lr`` at ``total_steps``, constant, or reduce-on-plateau (x ``plateau_factor`` after more than
    ``plateau_patience`` validations without a better loss: the paper's recipe).  Call ``step()`` after each
    optimiser step and ``validation(loss)`` after each validation.  Every group gets ``lr * group["lr_scale"]``."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig):
        self.optimizer, self.cfg = optimizer, cfg
        self.steps = 0
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_epochs = 0
        self._apply()

    def lr(self) -> float:
        cfg = self.cfg
        if cfg.warmup_steps and self.steps < cfg.warmup_steps:
            return cfg.lr * (self.steps + 1) / cfg.warmup_steps
        if cfg.kind == "cosine":
            span = max(1, cfg.total_steps - cfg.warmup_steps)
            progress = min(1.0, (self.steps - cfg.warmup_steps) / span)
            return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        if cfg.kind == "plateau":
            return cfg.lr * self.plateau_scale
        return cfg.lr

    def _apply(self) -> None:
        lr = self.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def validation(self, loss: float) -> None:
        if self.cfg.kind != "plateau":
            return
        if loss < self.best:
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.cfg.plateau_patience:
                self.plateau_scale *= self.cfg.plateau_factor
                self.bad_epochs = 0
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "plateau_scale": self.plateau_scale, "best": self.best,
                "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.steps, self.plateau_scale = int(state["steps"]), float(state["plateau_scale"])
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self._apply()


# --- compilation -----------------------------------------------------------------------------------------------------

def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` when ``enabled`` (the compiled wrapper shares the parameters; checkpoints are
    written from the unwrapped module, ``clapkit.training_state.unwrap``)."""
    return torch.compile(model) if enabled else model


# --- exact replays ---------------------------------------------------------------------------------------------------

class RngReplay:
    """The state of the CPU generator and of ``device``'s generator, to draw the same random numbers twice
    (dropout, drop-path and SpecAugment draw on the tensor's device)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.accel = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.accel is not None:
            torch.cuda.set_rng_state(self.accel, self.device)


_BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)


@contextmanager
def frozen_batchnorm_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep normalising with the batch's statistics (train mode) but leave their running mean
    and variance as they are (momentum 0: ``running * 1 + batch * 0``) and get their batch counter back on exit:
    a pass that is replayed later must not update them twice.  Momentum 0 rather than restoring the tensors
    afterwards, because autograd saved them for backward, which may run after the context."""
    saved = []
    for module in model.modules():
        if isinstance(module, _BATCHNORMS) and module.track_running_stats and module.running_mean is not None:
            saved.append((module, module.momentum, module.num_batches_tracked.clone()))
            module.momentum = 0.0
    try:
        yield
    finally:
        with torch.no_grad():
            for module, momentum, count in saved:
                module.momentum = momentum
                module.num_batches_tracked.copy_(count)
