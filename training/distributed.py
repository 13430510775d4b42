"""Distributed-training helpers shared by the training stages (torchrun / single process).

Every training entry point calls :func:`init_distributed` first. Under ``torchrun`` the
environment carries ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; the process group is created with NCCL when the run uses CUDA and gloo
otherwise. Without those variables the run is a single process and every helper below
degrades to the obvious local behaviour (rank 0 of 1, barriers and reductions are no-ops),
so the same code runs in a notebook, a test and a multi-node job.
"""
from __future__ import annotations

import datetime as dt
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Literal, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from training.config import TrainConfig


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def resolve_device(device: Literal["auto", "cpu", "cuda"] | str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: the local rank's GPU when CUDA is available, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("run.device = 'cuda' but CUDA is not available")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device(device)


def init_distributed(device: str = "auto", backend: Literal["auto", "nccl", "gloo"] | str = "auto",
                     timeout_s: float = 1800.0, force: bool = False) -> DistInfo:
    """Initialise the process group from the torchrun environment (idempotent).

    ``backend='auto'`` picks NCCL for CUDA runs and gloo for CPU runs. A single process
    (``WORLD_SIZE`` unset or 1) gets no process group at all, unless ``force`` (FSDP needs
    one even for one rank; then MASTER_ADDR/PORT must be set, as torchrun does).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size <= 1 and not force and not dist.is_initialized():
        return DistInfo(rank=0, world_size=1, local_rank=0, device=dev, backend=None)
    if not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise RuntimeError("a process group needs MASTER_ADDR/MASTER_PORT (launch with torchrun)")
        kwargs: dict[str, Any] = {}
        if backend == "nccl" and dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=dt.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    device=dev, backend=dist.get_backend())


T = TypeVar("T")


def launched(cfg: TrainConfig, body: Callable[[DistInfo], T]) -> T:
    """Run one training stage: join the process group of ``cfg.run`` (torchrun or single process),
    run ``body(info)``, and leave the group whatever happens."""
    info = init_distributed(cfg.run.device, cfg.run.distributed_backend)
    try:
        return body(info)
    finally:
        cleanup()


def cleanup() -> None:
    """Destroy the process group if this process created one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_dist() else 0


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op for one process); returns the tensor."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks; returns the tensor."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def _collective_device() -> torch.device:
    """Where small tensors for a collective must live: the current GPU under NCCL, else the CPU."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_dict_mean(values: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Mean over ranks of a dict of scalars (same keys on every rank, sorted for the collective)."""
    keys = sorted(values)
    if not keys:
        return {}
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    all_reduce_mean(flat)
    return {k: float(v) for k, v in zip(keys, flat.tolist())}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def rank_seed(seed: int, rank: int | None = None) -> int:
    """The seed a rank uses: ``seed + rank`` (different augmentation/drop-path streams per rank)."""
    return int(seed) + (get_rank() if rank is None else int(rank))


def seed_everything(seed: int, rank: int | None = None) -> int:
    """Seed python, numpy and torch (CPU and CUDA) with :func:`rank_seed`; returns that seed."""
    value = rank_seed(seed, rank)
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(value)
    return value
