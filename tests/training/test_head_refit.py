"""distill.head_refit and the avg_lesion head pool: heads that look where the lesion map points,
refitted on frozen features (training/versamammo/distill/refit.py)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.versamammo.checkpoint import build_student, config_for, load_checkpoint, read_checkpoint
from training.versamammo.distill.refit import birads_score, fit_linear
from training.versamammo.distill.train import BEST, run_distill
from tests.training.test_distill_run import _cfg, teacher_file  # noqa: F401  (fixture)


def test_avg_lesion_heads_look_where_the_map_points() -> None:
    """The attended part of the head input is the grid cell the lesion map singles out, not the
    average that dilutes it 64 times; the last value is the map's strongest logit."""
    torch.manual_seed(0)
    cfg = replace(config_for("tiny"), student_lesion_map=True, student_head_pool="avg_lesion")
    student = build_student(cfg).eval()
    dim = cfg.student_dim
    assert student.birads_head.in_features == 2 * dim + 1
    grid = torch.rand(1, dim, 8, 8)
    grid[0, :, 5, 2] += 3.0  # one bright "lesion" cell
    with torch.no_grad():
        student.lesion_head.weight.fill_(0.0)
        student.lesion_head.weight[0, :, 0, 0] = 1.0  # the map is the channel sum: the bright cell wins
        student.lesion_head.bias.fill_(0.0)
        x = student.head_input(grid)[0]
    assert torch.allclose(x[:dim], grid[0].mean(dim=(1, 2)))
    assert torch.allclose(x[dim:2 * dim], grid[0, :, 5, 2], atol=1e-3)
    assert torch.isclose(x[-1], grid[0].sum(0).max())
    with pytest.raises(ValueError, match="student_lesion_map"):
        replace(config_for("tiny"), student_head_pool="avg_lesion")


def test_fit_linear_folds_the_standardisation_into_the_head() -> None:
    """Features on very different scales: the fitted head separates the classes in the raw input
    space the exported graph sees, and stronger L2 shrinks it."""
    rng = np.random.default_rng(0)
    y = torch.tensor(rng.integers(0, 3, 600))
    x = torch.tensor(rng.normal(size=(600, 20)), dtype=torch.float32)
    x[:, 0] += 2.5 * (y == 1).float()
    x[:, 1] += 2.5 * (y == 2).float()
    x[:, :10] *= 1000.0  # scale must not matter
    weak, strong = (fit_linear(x, y, 3, l2, None) for l2 in (1e-3, 1.0))
    pred = (x @ weak.weight.T + weak.bias).argmax(1)
    assert (pred == y).float().mean() > 0.85
    assert strong.weight.abs().sum() < weak.weight.abs().sum()
    unknown = torch.cat([y[:500], torch.full((100,), -1)])  # unlabelled rows are ignored
    assert (x @ fit_linear(x, unknown, 3, 1e-3, None).weight.T).isfinite().all()


def test_birads_score_is_f1_and_both_aucs() -> None:
    y = np.array([1, 1, 2, 4, 5, 0, 1, 3])
    perfect = np.eye(6)[y]
    s = birads_score(y, perfect)
    assert s["macro_f1"] == 1.0 and s["lesion_auc"] == 1.0 and s["suspicious_auc"] == 1.0 and s["score"] == 1.0
    assert birads_score(np.append(y, -1), np.vstack([perfect, np.eye(6)[:1]]))["score"] == 1.0


def test_a_run_with_head_refit_and_avg_lesion_heads(tmp_path: Path, teacher_file: Path) -> None:  # noqa: F811
    """The selected student's heads are refitted once: the summary is in the checkpoint and beside
    it, a head is replaced only when validation says it is better, and a rerun changes nothing."""
    cfg = _cfg(tmp_path / "a", teacher_file, **{"distill.epochs": 1, "distill.lesion_map_weight": 1.0,
                                                "model.student_lesion_map": True,
                                                "model.student_head_pool": "avg_lesion",
                                                "distill.head_refit": True})
    best = run_distill(cfg)
    summary = read_checkpoint(best)["extra"]["head_refit"]
    assert json.loads((best.parent / "head_refit.json").read_text()) == summary
    for head in ("birads", "density"):
        s = summary[head]
        assert s["replaced"] == (s["val_refit"]["score"] > s["val_trained"]["score"])
    student = load_checkpoint(best, kind="student")
    assert student.cfg.student_head_pool == "avg_lesion"
    assert student(torch.zeros(1, 3, 256, 256))["birads"].shape == (1, 6)
    before = best.read_bytes()
    assert run_distill(cfg) == best and best.read_bytes() == before  # done once
    assert read_checkpoint(tmp_path / "a" / "run" / "distill" / BEST)["extra"]["selected_on"] == "val"
