"""What the three MammoRG stages share, over the one training loop (training/loop.py).

AdamW over the parameters a stage trains, cosine learning rate with linear warm-up (the
official ``--lr_scheduler_type cosine --warmup_ratio 0.03``), batches of study indices as a pure
function of the iteration (``SeededBatchSampler``: exact resume, any world size), gradients
clipped at norm 1 (FSDP2-sharded parameters beside replicated ones included), DDP under torchrun.
Validation after every epoch keeps the best state by the stage's score (the official stage 1
selects on its test split; we never look at test).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from training import distributed as du
from training.data.sampling import SeededBatchSampler
from training.loop import Loop, autocast, effective_precision, iteration_plan
from training.schedules import cosine_schedule

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class StageSpec:
    """What one stage trains and how (sections of the training config supply the numbers)."""

    name: str
    module: nn.Module                 # holds every trainable parameter (and is what resume restores)
    parameters: list[nn.Parameter]
    n_items: int                      # training studies
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    step: StepFn                      # (module or its DDP wrapper, study indices) -> (loss, parts)
    validate: Callable[[], dict[str, float]] | None = None   # returns {"score": ..., ...}; rank 0 only
    on_best: Callable[[dict[str, float]], None] | None = None
    # Parameters sharded with FSDP2 (DTensors) beside replicated ones: no DDP wrapper, replicated
    # gradients averaged by hand, validation and on_best on every rank (the forward is collective).
    sharded: bool = False


def _dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def average_replicated_grads(parameters: list[nn.Parameter], world_size: int) -> None:
    """All-reduce (mean) the gradients of the parameters FSDP does not manage."""
    import torch.distributed as dist

    for p in parameters:
        if p.grad is not None and not _dtensor(p):
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` over a mix of sharded (DTensor) and plain gradients: the global norm."""
    total = torch.zeros((), dtype=torch.float64)
    for p in parameters:
        if p.grad is None:
            continue
        norm = torch.linalg.vector_norm(p.grad.detach().float())
        if _dtensor(norm):
            norm = norm.full_tensor()
        total = total + norm.double().cpu() ** 2
    total_norm = float(total.sqrt())
    coef = max_norm / (total_norm + 1e-6)
    if coef < 1.0:
        for p in parameters:
            if p.grad is not None:
                p.grad.detach().mul_(coef)
    return total_norm


def run_stage(spec: StageSpec, out_dir: Path, info: du.DistInfo, seed: int, precision: str,
              log_every: int = 10, max_iterations: int | None = None) -> dict[str, Any]:
    """Train ``spec`` with the shared loop (training/loop.py); returns the best validation record
    (``{"score": -1}`` when never validated)."""
    per_epoch, total = iteration_plan(spec.n_items, spec.batch_size, info.world_size, spec.epochs, max_iterations,
                                      f"{spec.name}: training studies")
    precision = effective_precision(precision, info.device)
    optimizer = torch.optim.AdamW(spec.parameters, lr=spec.lr, weight_decay=spec.weight_decay)
    lr_at = cosine_schedule(spec.lr, 0.0, total, warmup_iters=int(round(spec.warmup_ratio * total)))
    module: nn.Module = spec.module
    if info.distributed and not spec.sharded:
        module = nn.parallel.DistributedDataParallel(
            spec.module, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True)

    def batches(start: int) -> SeededBatchSampler:
        return SeededBatchSampler(spec.n_items, spec.batch_size, total, seed=seed, rank=info.rank,
                                  world_size=info.world_size, start_iteration=start)

    def step(batch: list[tuple[int, int]], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(info.device, precision):
            return spec.step(module, torch.tensor([i for i, _ in batch], dtype=torch.long))

    def clip() -> None:
        if spec.sharded:
            if info.distributed:
                average_replicated_grads(spec.parameters, info.world_size)
            clip_grad_norm(spec.parameters, 1.0)
        else:
            torch.nn.utils.clip_grad_norm_(spec.parameters, 1.0)

    loop = Loop(spec.name, out_dir, spec.module, optimizer, per_epoch, total, batches, step, info.device,
                precision=precision, lr_at=lambda i: [lr_at[i]], clip=clip, validate=spec.validate,
                on_best=spec.on_best, validate_on_every_rank=spec.sharded, log_every=log_every, keep=1)
    best, _ = loop.run()
    return best
