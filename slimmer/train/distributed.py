"""Running the fine-tuning loop under ``torchrun`` with DistributedDataParallel.

``torchrun --nproc_per_node N`` starts N copies of the same program and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the environment. Each copy calls
:func:`init_from_env` (gloo on CPU, nccl on CUDA), wraps the student with :func:`wrap_ddp` and
calls :func:`slimmer.train.finetune.finetune` as usual: the loop shards the batches by rank
(:func:`slimmer.train.data.iterate_batches`), DDP averages the gradients (Li et al., "PyTorch
Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020), so every rank holds the
same weights after every step. Only rank 0 writes files: see :func:`main_process_only`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from slimmer.errors import ConfigError

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its GPU index ``local_rank``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    is_main: bool = True
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group described by the ``torchrun`` environment; a single process otherwise.

    ``backend`` defaults to nccl when CUDA is available and gloo otherwise. Calling it again after
    the group exists returns the same answer without re-initializing.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world} do not describe a valid process group")
    if world == 1:
        return DistInfo()
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen not in ("gloo", "nccl"):
        raise ConfigError(f"distributed backend {chosen!r} is not one of gloo, nccl")
    if chosen == "nccl":
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise ConfigError(f"the nccl backend needs a CUDA device for LOCAL_RANK={local_rank}")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=chosen)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, is_main=rank == 0, backend=chosen)


def current() -> DistInfo:
    """The process group this process belongs to (a single process when none was initialized)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, _env_int("LOCAL_RANK", 0), rank == 0, str(dist.get_backend()))


def cuda_index(spec: str) -> int | None:
    """N for ``cuda:N``, None for anything else."""
    head, _, index = spec.partition(":")
    return int(index) if head == "cuda" and index.isdigit() else None


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` → this rank's GPU when CUDA is available, else the CPU; asking for a missing GPU raises."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available on this machine", hint="use --device cpu")
    index = local_rank if spec in ("auto", "cuda") else cuda_index(spec)
    if index is None or index >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def device_for(info: DistInfo) -> torch.device:
    """The device a rank trains on: its own GPU under nccl, the CPU under gloo."""
    if info.backend == "nccl":
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    """Move ``model`` to this rank's device and wrap it in DDP; unchanged in a single process.

    Buffers (BatchNorm running statistics) are broadcast from rank 0 at every forward, so they stay
    identical on every rank too.
    """
    if not info.distributed:
        return model
    if not dist.is_initialized():
        raise ConfigError("wrap_ddp needs the process group: call init_from_env() first")
    device = device_for(info)
    model.to(device)
    ids = [info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=info.local_rank if ids else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (hooks and masks work on parameter names without ``module.``)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return current().is_main


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean_grads(params: Iterable[nn.Parameter]) -> None:
    """Average gradients DDP does not see (hooks' extra parameters) across ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def all_reduce_mean(value: float, device: torch.device) -> float:
    """The mean of a scalar over ranks (the reported loss); the value itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / dist.get_world_size()


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank. DDP broadcasts them before each
    forward, so after the last forward they differ; call this once training ends."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf, src=0)


def main_process_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Run ``fn`` on rank 0 only (returns None elsewhere): writing files, reports, checkpoints."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return fn(*args, **kwargs) if is_main() else None

    return wrapper


def shutdown() -> None:
    """Leave the process group (safe to call in a single process).

    With gloo, call it only when no peer may exit meanwhile: destroying the group while another
    rank is tearing down has aborted a process here. The pipeline ends with a barrier instead.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
