"""Per-iteration hyper-parameter schedules (learning rate, weight decay, EMA momentum, temperature).

Every schedule is a plain ``numpy`` array with one value per training iteration, computed up
front from the configuration. A schedule therefore has no state: the position in it is the
iteration number, which is all a checkpoint needs to store to resume exactly. Indexing past
the end returns the last value (see :class:`Schedule`).

The shapes follow DINOv2's ``CosineScheduler``: ``freeze_iters`` zeros, then a linear warmup
from ``start_warmup_value`` to ``base_value`` over ``warmup_iters`` iterations, then a
half-cosine from ``base_value`` to ``final_value`` over the remaining iterations.
"""
from __future__ import annotations

import math

import numpy as np


class Schedule:
    """An array of per-iteration values; ``schedule[it]`` at or past the end gives ``final``."""

    def __init__(self, values: np.ndarray, final: float | None = None) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        if self.values.ndim != 1 or self.values.size == 0:
            raise ValueError("a schedule needs at least one value")
        self.final = float(self.values[-1] if final is None else final)

    def __len__(self) -> int:
        return int(self.values.size)

    def __getitem__(self, it: int) -> float:
        if it < 0:
            raise IndexError("negative iteration")
        return float(self.values[it]) if it < self.values.size else self.final

    def __repr__(self) -> str:
        return f"Schedule(n={len(self)}, first={self.values[0]:.6g}, last={self.values[-1]:.6g})"


def cosine_schedule(base_value: float, final_value: float, total_iters: int, warmup_iters: int = 0,
                    start_warmup_value: float = 0.0, freeze_iters: int = 0) -> Schedule:
    """Zeros for ``freeze_iters``, linear warmup, then cosine decay from base to final.

    ``total_iters`` counts all three parts. The cosine part starts exactly at ``base_value``
    and its last iteration is one step short of ``final_value`` (DINOv2 convention: the
    final value is what ``schedule[total_iters]`` and beyond return).
    """
    if total_iters < 1:
        raise ValueError("total_iters must be >= 1")
    freeze_iters = max(0, min(int(freeze_iters), total_iters))
    warmup_iters = max(0, min(int(warmup_iters), total_iters - freeze_iters))
    parts = [np.zeros(freeze_iters)]
    if warmup_iters:
        parts.append(np.linspace(start_warmup_value, base_value, warmup_iters, endpoint=False)
                     if warmup_iters > 1 else np.array([start_warmup_value], dtype=np.float64))
    n_cos = total_iters - freeze_iters - warmup_iters
    if n_cos:
        steps = np.arange(n_cos, dtype=np.float64)
        parts.append(final_value + 0.5 * (base_value - final_value) * (1.0 + np.cos(math.pi * steps / n_cos)))
    return Schedule(np.concatenate(parts), final=final_value if n_cos else None)


def linear_warmup_constant(start_value: float, final_value: float, total_iters: int, warmup_iters: int) -> Schedule:
    """Linear ramp from ``start_value`` to ``final_value`` over ``warmup_iters``, then constant."""
    if total_iters < 1:
        raise ValueError("total_iters must be >= 1")
    warmup_iters = max(0, min(int(warmup_iters), total_iters))
    ramp = np.linspace(start_value, final_value, warmup_iters, endpoint=False) if warmup_iters else np.zeros(0)
    return Schedule(np.concatenate([ramp, np.full(total_iters - warmup_iters, final_value, dtype=np.float64)]),
                    final=final_value)


def constant_schedule(value: float, total_iters: int) -> Schedule:
    return Schedule(np.full(max(1, total_iters), value, dtype=np.float64))
