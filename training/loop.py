"""The one training loop of every iterated stage: VersaMammo's lesion-patch start and distillation,
and MammoRG's three stages (training/mammorg/loop.py adapts it to their common shape).

Written once here, so a fix reaches every stage:
- the precision rule (``effective_precision``, ``autocast``, ``grad_scaler``): fp16 runs only on
  CUDA (elsewhere fp32, with a warning), bf16 wherever torch autocasts it, fp32 never autocasts;
- the iteration plan and its guard (``iteration_plan``): fewer items than one batch is an error,
  not a silent empty run;
- resume from the latest training state (model, optimizer, scaler, RNG, best record), then the
  stage's batches from that iteration on (each stage's sampler is a pure function of the iteration:
  exact resume at any world size);
- per iteration: learning rates, the step, a finite-loss check, scaled backward, optional clipping,
  optimizer and scaler steps, JSON-lines metrics and a rich progress bar;
- at every epoch end: validation and the best record by one rule (``improves``: the first
  validation always counts, later ones when their ``score`` is strictly higher), then a resumable
  training state (also every ``checkpoint_every`` iterations), keeping the newest ``keep``.

VersaMammo's stage 1 (DINOv2 self-distillation with its EMA teacher and per-iteration schedules)
keeps its own loop but the same precision rule.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from training import distributed as du
from training.checkpoint import (
    checkpoint_path, latest_checkpoint, load_training_state, prune_checkpoints, save_training_state,
)
from training.metrics_log import MetricsLogger

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


def effective_precision(requested: str, device: torch.device) -> str:
    """The precision a run gets on ``device``: fp16 needs CUDA (its gradient scaler), so elsewhere
    fp32 with a warning; bf16 and fp32 as asked."""
    if requested not in PRECISIONS:
        raise ValueError(f"run.precision must be one of {PRECISIONS}, not {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        log.warning("run.precision = fp16 needs CUDA; running fp32 on %s", device.type)
        return "fp32"
    return requested


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass under ``effective_precision``'s rule (fp32: none)."""
    if effective_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """The loss scaler fp16 needs (disabled, a no-op, for every other precision)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")


def iteration_plan(items: int, batch_size: int, world_size: int, epochs: int, max_iterations: int | None,
                   what: str) -> tuple[int, int]:
    """(iterations per epoch, iterations in all) for ``epochs`` passes over ``items``; raises when
    ``items`` do not fill one batch on every rank. ``max_iterations`` cuts the run short."""
    per_epoch = items // (batch_size * world_size)
    if per_epoch == 0:
        raise ValueError(f"{what}: {items} are fewer than one batch of {batch_size} per rank x {world_size} ranks")
    total = epochs * per_epoch
    return per_epoch, total if max_iterations is None else min(total, max_iterations)


def improves(best: dict[str, Any], scores: dict[str, float]) -> bool:
    """Whether a validation record replaces the best: the first one always, later ones when strictly higher."""
    return "epoch" not in best or scores["score"] > best.get("score", float("-inf"))


def progress_bar(label: str) -> Any:
    """The rich progress bar every stage shows (rank 0 only)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(label, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), "{task.fields[loss]}",
                    disable=not du.is_main())


Step = Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class Loop:
    """One stage's loop: what it trains, how it steps, and what it keeps (see the module docstring)."""

    name: str                                   # the stage in metrics, logs and checkpoints
    out_dir: Path
    model: nn.Module                            # what a training state saves and resume restores
    optimizer: torch.optim.Optimizer
    per_epoch: int
    total: int
    batches: Callable[[int], Iterable[Any]]     # start iteration -> the batches from there on
    step: Step                                  # (batch, iteration) -> (loss, its parts as floats)
    device: torch.device
    precision: str = "fp32"                     # an effective precision (its scaler is made here)
    lr_at: Callable[[int], Sequence[float]] | None = None   # iteration -> one rate per parameter group
    clip: Callable[[], None] | None = None      # after unscaling, before the optimizer step
    validate: Callable[[], dict[str, float]] | None = None  # {"score": ..., ...}
    on_best: Callable[[dict[str, Any]], None] | None = None
    validate_on_every_rank: bool = False        # a collective validation (sharded parameters)
    label: str | None = None                    # the progress bar's label (default: name)
    log_every: int = 10
    checkpoint_every: int = 0
    keep: int = 2
    config: dict[str, Any] | None = None        # stored in every training state
    items_per_iteration: int | None = None      # logged as ``throughput_key`` per second
    throughput_key: str = "items_per_s"
    extra_state: Callable[[], dict[str, Any]] | None = None  # more to store beside "best"

    def run(self) -> tuple[dict[str, Any], int]:
        """Train to ``total`` (resuming); returns (best validation record, iterations done)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        scaler = grad_scaler(self.device, self.precision)
        start, best = 0, {"score": -1.0}
        resume = latest_checkpoint(self.out_dir)
        if resume is not None:
            state = load_training_state(resume, model=self.model, optimizer=self.optimizer, scaler=scaler)
            start, best = int(state["iteration"]), state["extra"].get("best", best)
            if du.is_main():
                log.info("resumed %s from %s at iteration %d", self.name, resume, start)
        iteration = start
        # A record carries the 1-based count of completed iterations, so the checkpointed iteration's
        # own records (its loss, its validation) belong to the run being continued: keep them.
        with progress_bar(self.label or self.name) as progress, \
                MetricsLogger(self.out_dir / "metrics.jsonl", resume_from=start + 1) as metrics:
            task = progress.add_task(self.name, total=self.total, completed=start, loss="")
            self.model.train()
            tick, since = time.perf_counter(), 0
            for batch in self.batches(start):
                if iteration >= self.total:
                    break
                epoch = iteration // self.per_epoch
                if self.lr_at is not None:
                    for group, lr in zip(self.optimizer.param_groups, self.lr_at(iteration)):
                        group["lr"] = lr
                loss, parts = self.step(batch, iteration)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.name}: loss is {loss.item()} at iteration {iteration}")
                self.optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if self.clip is not None:
                    scaler.unscale_(self.optimizer)
                    self.clip()
                scaler.step(self.optimizer)
                scaler.update()
                iteration += 1
                since += 1
                progress.update(task, advance=1, loss=f"loss {loss.item():.3f}")
                if iteration % self.log_every == 0 or iteration == self.total:
                    seconds = (time.perf_counter() - tick) / since
                    record = {"stage": self.name, "iteration": iteration, "epoch": epoch,
                              "lr": self.optimizer.param_groups[-1]["lr"], "loss": loss.item(),
                              **du.reduce_dict_mean(parts), "seconds_per_iteration": seconds}
                    if self.items_per_iteration:
                        record[self.throughput_key] = self.items_per_iteration / max(seconds, 1e-9)
                    metrics.log(record)
                    tick, since = time.perf_counter(), 0
                end_of_epoch = iteration % self.per_epoch == 0 or iteration == self.total
                if end_of_epoch:
                    best = self._validate(metrics, iteration, epoch, best)
                if end_of_epoch or (self.checkpoint_every and iteration % self.checkpoint_every == 0):
                    save_training_state(checkpoint_path(self.out_dir, iteration), model=self.model,
                                        optimizer=self.optimizer, scaler=scaler, iteration=iteration, epoch=epoch,
                                        config=self.config,
                                        extra={"best": best, **(self.extra_state() if self.extra_state else {})})
                    if du.is_main():
                        prune_checkpoints(self.out_dir, keep=self.keep)
                    tick, since = time.perf_counter(), 0
        return best, iteration

    def _validate(self, metrics: MetricsLogger, iteration: int, epoch: int, best: dict[str, Any]) -> dict[str, Any]:
        if self.validate is None:
            return best
        if du.is_main() or self.validate_on_every_rank:
            self.model.eval()
            with torch.no_grad():
                scores = self.validate()
            self.model.train()
            metrics.log({"stage": self.name, "iteration": iteration, "epoch": epoch,
                         **{f"val_{k}": v for k, v in scores.items()}})
            if improves(best, scores):
                best = {**scores, "epoch": epoch, "iteration": iteration}
                if self.on_best is not None:
                    self.on_best(best)
        return du.broadcast_object(best)
