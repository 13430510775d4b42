"""The one training loop (training/loop.py): precision rule, plan guard, resume, best record."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from training.checkpoint import latest_checkpoint
from training.data.sampling import SeededBatchSampler
from training.loop import Loop, autocast, effective_precision, improves, iteration_plan

CPU = torch.device("cpu")


def test_precision_rule_is_one_rule(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.loop"):
        assert effective_precision("fp16", CPU) == "fp32"
    assert "needs CUDA" in caplog.text
    assert effective_precision("bf16", CPU) == "bf16" and effective_precision("fp32", CPU) == "fp32"
    assert effective_precision("fp16", torch.device("cuda", 0)) == "fp16"
    with pytest.raises(ValueError, match="run.precision"):
        effective_precision("fp8", CPU)
    assert isinstance(autocast(CPU, "fp32"), contextlib.nullcontext)
    assert isinstance(autocast(CPU, "fp16"), contextlib.nullcontext)      # fp16 off CUDA runs fp32
    with autocast(CPU, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_plan_guard_and_best_rule() -> None:
    assert iteration_plan(10, 2, 1, 3, None, "images") == (5, 15)
    assert iteration_plan(10, 2, 2, 3, 4, "images") == (2, 4)
    with pytest.raises(ValueError, match="3 are fewer than one batch of 2 per rank x 2 ranks"):
        iteration_plan(3, 2, 2, 1, None, "images")
    assert improves({"score": -1.0}, {"score": -5.0})                       # the first validation counts
    assert not improves({"score": 0.5, "epoch": 0}, {"score": 0.5})         # ties keep the earlier
    assert improves({"score": 0.5, "epoch": 0}, {"score": 0.6})


def _loop(out: Path, total: int, seed: int = 0, scores: list[float] | None = None,
          chosen: list[dict] | None = None, loss_scale: float = 1.0) -> tuple[Loop, nn.Module]:
    data = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, generator=data), torch.randn(16, 1, generator=data)
    torch.manual_seed(seed)                  # the model's start (resume replaces it)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    per_epoch = 4
    validations = iter(scores or [])

    def batches(start: int) -> SeededBatchSampler:
        return SeededBatchSampler(16, 4, total, seed=0, start_iteration=start)

    def step(batch: list[tuple[int, int]], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        idx = torch.tensor([i for i, _ in batch])
        loss = ((model(x[idx]) - y[idx]) ** 2).mean() * loss_scale
        return loss, {"mse": loss.item()}

    loop = Loop("toy", out, model, optimizer, per_epoch, total, batches, step, CPU,
                lr_at=lambda i: [0.05 * (1 - i / total)],
                clip=lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0),
                validate=(lambda: {"score": next(validations)}) if scores else None,
                on_best=chosen.append if chosen is not None else None, log_every=2, keep=1)
    return loop, model


def test_a_stopped_and_resumed_run_ends_where_an_unbroken_one_does(tmp_path: Path) -> None:
    whole, model = _loop(tmp_path / "whole", 12)
    whole.run()
    part, _ = _loop(tmp_path / "parts", 12)
    part.total = 6                           # "killed" after iteration 6 (an epoch boundary is not needed)
    part.checkpoint_every = 6
    part.run()
    assert latest_checkpoint(tmp_path / "parts").name.endswith("06.pt")
    resumed, again = _loop(tmp_path / "parts", 12, seed=1)      # a fresh process: other RNG state, same run
    best, done = resumed.run()
    assert done == 12
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)
    records = [json.loads(l) for l in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 6, 8, 10, 12]        # no record lost or repeated
    assert {"stage", "epoch", "lr", "loss", "mse", "seconds_per_iteration"} <= set(records[-1])


def test_best_record_is_kept_by_validation_score(tmp_path: Path) -> None:
    chosen: list[dict] = []
    loop, _ = _loop(tmp_path, 12, scores=[0.2, 0.7, 0.5], chosen=chosen)
    best, _ = loop.run()
    assert best["score"] == 0.7 and best["epoch"] == 1 and best["iteration"] == 8
    assert [c["score"] for c in chosen] == [0.2, 0.7]
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_score"] for r in records if "val_score" in r] == [0.2, 0.7, 0.5]


def test_a_non_finite_loss_stops_the_run(tmp_path: Path) -> None:
    loop, _ = _loop(tmp_path, 8, loss_scale=float("nan"))
    with pytest.raises(FloatingPointError, match="toy: loss is nan at iteration 0"):
        loop.run()
