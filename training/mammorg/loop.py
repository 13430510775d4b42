"""The training loop the three MammoRG stages share.

AdamW over the parameters a stage trains, cosine learning rate with linear warm-up (the
official ``--lr_scheduler_type cosine --warmup_ratio 0.03``), batches of study indices as a pure
function of the iteration (``SeededBatchSampler``: exact resume, any world size), AMP on GPU,
DDP under torchrun, a resumable training state every epoch, JSON-lines metrics and a rich
progress bar. Validation after every epoch keeps the best state by the stage's score (the
official stage 1 selects on its test split; we never look at test).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from training import distributed as du
from training.checkpoint import (
    checkpoint_path, latest_checkpoint, load_training_state, prune_checkpoints, save_training_state,
)
from training.data.sampling import SeededBatchSampler
from training.metrics_log import MetricsLogger
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


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32" or (device.type != "cuda" and precision == "fp16"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def run_stage(spec: StageSpec, out_dir: Path, info: du.DistInfo, seed: int, precision: str,
              log_every: int = 10, max_iterations: int | None = None) -> dict[str, Any]:
    """Train ``spec``; returns the best validation record (``{"score": -1}`` when never validated)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per_epoch = spec.n_items // (spec.batch_size * info.world_size)
    if per_epoch == 0:
        raise ValueError(f"{spec.name}: {spec.n_items} training studies are fewer than one batch of "
                         f"{spec.batch_size} per rank x {info.world_size} ranks")
    total = spec.epochs * per_epoch
    if max_iterations is not None:
        total = min(total, max_iterations)
    optimizer = torch.optim.AdamW(spec.parameters, lr=spec.lr, weight_decay=spec.weight_decay)
    lr_at = cosine_schedule(spec.lr, 0.0, total, warmup_iters=int(round(spec.warmup_ratio * total)))
    scaler = torch.amp.GradScaler(info.device.type, enabled=precision == "fp16" and info.device.type == "cuda")
    module: nn.Module = spec.module
    if info.distributed and not spec.sharded:
        module = nn.parallel.DistributedDataParallel(
            spec.module, device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True)
    start, best = 0, {"score": -1.0}
    resume = latest_checkpoint(out_dir)
    if resume is not None:
        state = load_training_state(resume, model=spec.module, optimizer=optimizer, scaler=scaler)
        start, best = int(state["iteration"]), state["extra"].get("best", best)
        if du.is_main():
            log.info("resumed %s from %s at iteration %d", spec.name, resume, start)
    sampler = SeededBatchSampler(spec.n_items, spec.batch_size, total, seed=seed, rank=info.rank,
                                 world_size=info.world_size, start_iteration=start)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    progress = Progress(spec.name, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        "{task.fields[loss]}", disable=not du.is_main())
    iteration = start
    # records are logged after an iteration completes: those up to `start` stay
    with progress, MetricsLogger(out_dir / "metrics.jsonl", resume_from=start + 1) as metrics:
        task = progress.add_task(spec.name, total=total, completed=start, loss="")
        spec.module.train()
        tick = time.perf_counter()
        for batch in sampler:
            indices = torch.tensor([i for i, _ in batch], dtype=torch.long)
            for group in optimizer.param_groups:
                group["lr"] = lr_at[iteration]
            with autocast(info.device, precision):
                loss, parts = spec.step(module, indices)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{spec.name}: loss is {loss.item()} at iteration {iteration}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if spec.sharded:
                if info.distributed:
                    average_replicated_grads(spec.parameters, info.world_size)
                clip_grad_norm(spec.parameters, 1.0)
            else:
                torch.nn.utils.clip_grad_norm_(spec.parameters, 1.0)
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            progress.update(task, advance=1, loss=f"loss {loss.item():.3f}")
            if iteration % log_every == 0 or iteration == total:
                metrics.log({"stage": spec.name, "iteration": iteration, "epoch": (iteration - 1) // per_epoch,
                             "lr": lr_at[iteration - 1], **du.reduce_dict_mean(parts),
                             "seconds_per_iteration": (time.perf_counter() - tick) / log_every})
                tick = time.perf_counter()
            if iteration % per_epoch == 0 or iteration == total:
                epoch = (iteration - 1) // per_epoch
                if spec.validate is not None and (du.is_main() or spec.sharded):
                    spec.module.eval()
                    scores = spec.validate()
                    spec.module.train()
                    metrics.log({"stage": spec.name, "iteration": iteration, "epoch": epoch,
                                 **{f"val_{k}": v for k, v in scores.items()}})
                    if "epoch" not in best or scores["score"] > best["score"]:   # the first validation always counts
                        best = {**scores, "epoch": epoch, "iteration": iteration}
                        if spec.on_best is not None:
                            spec.on_best(best)
                best = du.broadcast_object(best)
                save_training_state(checkpoint_path(out_dir, iteration), model=spec.module, optimizer=optimizer,
                                    scaler=scaler, iteration=iteration, epoch=epoch, extra={"best": best})
                if du.is_main():
                    prune_checkpoints(out_dir, keep=1)
    return best
