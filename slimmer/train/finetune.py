"""The fine-tuning loop: knowledge distillation from the original model, cosine learning rate, hooks.

A pruned network recovers best when it learns to match the network it was cut from: the default
loss is Hinton, Vinyals and Dean's distillation ("Distilling the Knowledge in a Neural Network",
2015), ``alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha)·CE(s, y)``, and pure distillation
when the data has no labels (text without labels: the embedding loss of :mod:`slimmer.train.embedding`,
cosine + MSE to the original's states). The learning rate follows a linear warm-up (Goyal et al.,
"Accurate, Large Minibatch SGD", 2017) then a cosine decay (Loshchilov & Hutter, "SGDR", ICLR 2017).

The loop knows nothing of how masks are chosen: masks, schedules and regularizers are
:class:`~slimmer.train.hooks.TrainHook` objects, called at ``on_start``, ``loss``,
``after_backward``, ``after_step`` and ``on_end``; they always receive the unwrapped module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimmer.errors import ConfigError, InputError, VerificationError
from slimmer.inputs import fresh
from slimmer.outputs import logits_of
from slimmer.train import distributed
from slimmer.train.data import Augment, Dataset, iterate_batches
from slimmer.train.distributed import cuda_index, resolve_device
from slimmer.train.embedding import embedding_distillation_loss
from slimmer.train.hooks import TrainHook

OPTIMIZERS = ("sgd", "adamw")
Progress = Callable[[dict[str, Any]], None]


class TrainingDiverged(VerificationError):
    """The fine-tuning loss became NaN or infinite (exit 5): the weights are no longer usable."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(
            f"fine-tuning diverged: the loss is {value} at step {step}",
            hint="lower --lr, raise the warm-up, or disable --amp",
        )
        self.step = step


def _bad(name: str, value: object, expected: str) -> ConfigError:
    return ConfigError(f"{name} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Every option of the loop. ``warmup_steps`` None means 3% of ``steps`` (rounded)."""

    steps: int
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_steps: int | None = None
    kd_temperature: float = 4.0
    kd_alpha: float = 0.5  # compress --kd-weight; measured in docs/BENCHMARKS.md (Accuracy)
    device: str = "auto"
    amp: bool = False
    seed: int = 0
    progress_every_s: float = 10.0
    augment: Augment | None = field(default=None, compare=False, repr=False)
    output_name: str | None = None  # the output leaf trained as logits (slimmer.outputs.logits_of)

    def __post_init__(self) -> None:
        def finite(v: object) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not isinstance(self.steps, int) or self.steps < 1:
            raise _bad("steps", self.steps, "an integer ≥ 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise _bad("batch_size", self.batch_size, "an integer ≥ 1")
        if not finite(self.lr) or self.lr <= 0:
            raise _bad("lr", self.lr, "a finite number > 0")
        if self.optimizer not in OPTIMIZERS:
            raise _bad("optimizer", self.optimizer, " or ".join(OPTIMIZERS))
        if not finite(self.momentum) or not 0 <= self.momentum < 1:
            raise _bad("momentum", self.momentum, "a number in [0, 1)")
        if self.nesterov and self.optimizer == "sgd" and self.momentum == 0:
            raise ConfigError("nesterov needs momentum > 0")
        if not finite(self.weight_decay) or self.weight_decay < 0:
            raise _bad("weight_decay", self.weight_decay, "a finite number ≥ 0")
        if self.warmup_steps is not None and (
            not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.steps
        ):
            raise _bad("warmup_steps", self.warmup_steps, f"an integer in [0, {self.steps})")
        if not finite(self.kd_temperature) or self.kd_temperature <= 0:
            raise _bad("kd_temperature", self.kd_temperature, "a finite number > 0")
        if not finite(self.kd_alpha) or not 0 <= self.kd_alpha <= 1:
            raise _bad("kd_alpha", self.kd_alpha, "a number in [0, 1]")
        if not (self.device in ("auto", "cpu", "cuda") or cuda_index(self.device) is not None):
            raise _bad("device", self.device, "auto, cpu, cuda or cuda:N")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer ≥ 0")
        if not finite(self.progress_every_s) or self.progress_every_s < 0:
            raise _bad("progress_every_s", self.progress_every_s, "a finite number ≥ 0")

    @property
    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(self.steps - 1, int(round(0.03 * self.steps)))


@dataclass
class FinetuneResult:
    """What the loop did. Losses are means over ranks; ``final_loss`` and ``initial_loss`` average the
    last and first ~10% of steps (at most 10), ``loss_curve`` is the history in ≤ 32 chunk means."""

    steps_done: int
    final_loss: float
    initial_loss: float
    min_loss: float
    loss_curve: list[float]
    seconds: float
    samples_per_s: float
    device: str
    amp: bool
    world_size: int = 1
    kd_weight: float = 0.0  # distillation's share of the loss as run (1 without labels, 0 without a teacher)
    augmented: bool = False
    lr: float = 0.0  # the peak learning rate as run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Multiplier of the base learning rate at ``step``: linear warm-up, then cosine decay toward 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. 2015: ``alpha·T²·KL(p_t ‖ p_s) + (1−alpha)·CE``; pure KD without labels, pure CE
    without a teacher. Computed in float32 whatever the autocast dtype."""
    s = student_logits.float()
    ce = F.cross_entropy(s, labels) if labels is not None else None
    if teacher_logits is None:
        if ce is None:
            raise ConfigError("fine-tuning without a teacher needs labels")
        return ce
    t = teacher_logits.float()
    kd = F.kl_div(
        F.log_softmax(s / temperature, dim=1),
        F.log_softmax(t / temperature, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)
    return kd if ce is None else alpha * kd + (1.0 - alpha) * ce


def _optimizer(params: list[nn.Parameter], extra: list[nn.Parameter], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """Hook parameters get no weight decay: the hook adds its own penalty through ``loss``."""
    groups: list[dict[str, Any]] = [{"params": params, "weight_decay": cfg.weight_decay}]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _summary(history: list[float]) -> tuple[float, float, list[float]]:
    k = max(1, min(10, len(history) // 10))
    chunk = max(1, math.ceil(len(history) / 32))
    curve = [sum(history[i : i + chunk]) / len(history[i : i + chunk]) for i in range(0, len(history), chunk)]
    return sum(history[:k]) / k, sum(history[-k:]) / k, curve


def _check_logits(out: object, labels: torch.Tensor | None) -> None:
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"fine-tuning needs (batch, classes) logits from the model, got {shape}")
    if labels is not None and (int(labels.min()) < 0 or int(labels.max()) >= out.shape[1]):
        raise InputError(f"labels range {int(labels.min())}..{int(labels.max())}, the model has {out.shape[1]} classes")


def finetune(
    student: nn.Module,
    teacher: nn.Module | None,
    train: Dataset,
    cfg: FinetuneConfig,
    hooks: list[TrainHook],
    progress: Progress | None = None,
) -> FinetuneResult:
    """Train ``student`` in place for ``cfg.steps`` optimizer steps, distilling from ``teacher``.

    ``student`` may be DDP-wrapped (:func:`slimmer.train.distributed.wrap_ddp`): batches are then
    sharded by rank and the reported losses are means over ranks. The teacher runs in eval mode
    without gradients and is put back where it was. The student comes back in eval mode on the CPU.
    A non-finite loss raises :class:`TrainingDiverged`; KeyboardInterrupt propagates.
    """
    module = distributed.unwrap(student)
    info = distributed.current()
    if module is not student:
        device = next(module.parameters()).device
        wanted = resolve_device(cfg.device, info.local_rank)
        if wanted != device:
            raise ConfigError(f"the DDP-wrapped student lives on {device}, but --device resolves to {wanted}")
    elif info.distributed:
        raise ConfigError("under torchrun the student must be wrapped with distributed.wrap_ddp()")
    else:
        device = resolve_device(cfg.device, info.local_rank)
    if cfg.amp and device.type != "cuda":
        raise ConfigError("--amp needs a CUDA device", hint="drop --amp or use --device cuda")
    if teacher is None and train.y is None:
        raise ConfigError("fine-tuning needs labels or a teacher to distil from")
    torch.manual_seed(cfg.seed + info.rank)
    teacher_state: tuple[torch.device, bool] | None = None
    if teacher is not None:
        first = next(iter([*teacher.parameters(), *teacher.buffers()]), None)
        teacher_state = (first.device if first is not None else torch.device("cpu"), teacher.training)
        teacher.to(device).eval()
    use_teacher = teacher is not None and (cfg.kd_alpha > 0 or train.y is None)
    try:
        student.to(device)
        return _loop(student, module, teacher if use_teacher else None, train, cfg, hooks, progress, device, info)
    finally:
        module.eval().to("cpu")
        if teacher is not None and teacher_state is not None:
            teacher.to(teacher_state[0]).train(teacher_state[1])


def _loop(
    student: nn.Module,
    module: nn.Module,
    teacher: nn.Module | None,
    train: Dataset,
    cfg: FinetuneConfig,
    hooks: list[TrainHook],
    progress: Progress | None,
    device: torch.device,
    info: distributed.DistInfo,
) -> FinetuneResult:
    for hook in hooks:
        hook.on_start(module, cfg.steps)
    extra = list({id(p): p for h in hooks for p in h.extra_parameters()}.values())
    extra_ids = {id(p) for p in extra}
    params = [p for p in module.parameters() if p.requires_grad and id(p) not in extra_ids]
    optimizer = _optimizer(params, extra, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp else None
    alpha = cfg.kd_alpha if train.y is not None else 1.0
    embedding = train.feed is not None and train.y is None  # slimmer.train.embedding: cosine + MSE
    batches = iterate_batches(
        train, cfg.batch_size, cfg.seed, augment=cfg.augment, rank=info.rank, world_size=info.world_size
    )
    history: list[float] = []
    samples = 0
    start = last_report = time.perf_counter()

    def report(step: int, loss: float, lr: float) -> None:
        if progress is None or not info.is_main:
            return
        elapsed = max(time.perf_counter() - start, 1e-9)
        progress({"step": step, "total": cfg.steps, "loss": loss, "lr": lr, "samples_per_s": samples / elapsed})

    student.train()
    for step in range(cfg.steps):
        lr = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True) if y is not None else None
        args = train.args(x)
        with torch.autocast(device.type, dtype=torch.float16, enabled=cfg.amp):
            out = logits_of(student(*(fresh(args) if teacher is not None else args)), cfg.output_name)
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = logits_of(teacher(*args), cfg.output_name)
        if embedding and t_out is not None:  # text without labels: the original's embeddings and states
            loss = embedding_distillation_loss(out, t_out, train.feed.mask(x))  # type: ignore[union-attr]
        else:
            if step == 0:
                _check_logits(out, y)
            loss = distillation_loss(out, t_out, y, cfg.kd_temperature, alpha)
        for hook in hooks:
            term = hook.loss(module, step)
            if term is not None:
                loss = loss + term
        value = distributed.all_reduce_mean(float(loss.detach()), device)
        if not math.isfinite(value):
            raise TrainingDiverged(step, value)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        distributed.all_reduce_mean_grads(extra)
        for hook in hooks:
            hook.after_backward(module, step)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        for hook in hooks:
            hook.after_step(module, step)
        history.append(value)
        samples += x.shape[0] * info.world_size
        now = time.perf_counter()
        if now - last_report >= cfg.progress_every_s and step + 1 < cfg.steps:
            last_report = now
            report(step + 1, value, lr)
    distributed.broadcast_buffers(module)
    for hook in hooks:
        hook.on_end(module)
    seconds = time.perf_counter() - start
    report(cfg.steps, history[-1], lr)
    initial, final, curve = _summary(history)
    return FinetuneResult(
        steps_done=cfg.steps,
        final_loss=final,
        initial_loss=initial,
        min_loss=min(history),
        loss_curve=curve,
        seconds=seconds,
        samples_per_s=samples / max(seconds, 1e-9),
        device=str(device),
        amp=cfg.amp,
        world_size=info.world_size,
        kd_weight=alpha if teacher is not None else 0.0,
        augmented=cfg.augment is not None,
        lr=cfg.lr,
    )


BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def recalibrate_bn(
    model: nn.Module,
    data: Dataset,
    batches: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``batches`` batches of ``data``, weights untouched.

    Pruning changes the activations every BatchNorm sees, so its stored statistics go stale
    (Li et al., "EagleEye", ECCV 2020, call this adaptive BN). Statistics are reset and re-estimated
    as a cumulative average (``momentum=None``); only the BatchNorm layers run in train mode (no
    dropout). Returns ``model`` in eval mode on the CPU.
    """
    if batches < 1 or batch_size < 1:
        raise ConfigError(f"recalibrate_bn needs batches ≥ 1 and batch_size ≥ 1, got {batches}, {batch_size}")
    module = distributed.unwrap(model)
    norms = [m for m in module.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
    if not norms:
        return module.eval()
    dev = resolve_device(device)
    module.eval().to(dev)
    saved = [m.momentum for m in norms]
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        stream = iterate_batches(data, min(batch_size, len(data)), seed, drop_last=False)
        with torch.no_grad():
            for _, (x, _y) in zip(range(batches), stream, strict=False):
                module(*data.args(x.to(dev)))
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
    return module.eval().to("cpu")
