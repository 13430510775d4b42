"""Evaluate a VersaMammo student on a held-out split with bootstrap 95% intervals.

BI-RADS and density: accuracy, macro-F1, macro one-vs-rest AUC (the official downstream
metrics); findings: macro AUC and macro-F1 at 0.5 over the labelled cases. The split is
``eval.split`` (test by default); model selection never looks at it (stage 2 selects on val).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.package.labels import BIRADS_CLASSES, DENSITY_CLASSES
from models.versamammo.checkpoint import config_for, load_checkpoint
from training import distributed as du
from training.data.cache import PreprocessedCache
from training.data.datasets import MammoImageDataset
from training.data.records import load_records
from training.eval.classification import classification_report, multilabel_report
from training.versamammo.distill.data import TwoViewTransform, student_preprocess_config
from training.versamammo.distill.train import BEST, predict
from training.config import TrainConfig


def run_eval(cfg: TrainConfig, checkpoint: Path | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` (default: this run's best student) on ``eval.split``."""
    return evaluate_student(cfg, checkpoint)[0]


def evaluate_student(cfg: TrainConfig, checkpoint: Path | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``run_eval``'s report and the per-image predictions behind it (``distill.train.predict``)."""
    path = Path(checkpoint) if checkpoint else Path(cfg.run.out_dir) / "distill" / BEST
    if not path.exists():
        raise FileNotFoundError(f"no student checkpoint at {path} (run versamammo-distill first)")
    student = load_checkpoint(path, kind="student")
    model_cfg = student.cfg
    device = du.resolve_device(cfg.run.device)
    records = [r for r in load_records(cfg.data) if r.split == cfg.eval.split]
    cache = PreprocessedCache(cfg.data.cache_dir) if cfg.data.cache_dir else None
    dataset = MammoImageDataset(records, student_preprocess_config(model_cfg), cache,
                                TwoViewTransform(model_cfg, cfg.distill.low_res_size, train=False))
    pred = predict(student.to(device), dataset, device)
    resamples, seed = cfg.eval.bootstrap, cfg.run.seed
    report: dict[str, Any] = {
        "checkpoint": str(path), "split": cfg.eval.split, "images": len(records),
        "birads": classification_report(pred["y_birads"], pred["birads"], resamples, seed),
        "density": classification_report(pred["y_density"], pred["density"], resamples, seed),
        "findings": multilabel_report(pred["y_findings"], pred["findings"], pred["findings_mask"], resamples, seed),
        "chance": {
            "birads_accuracy": _majority(pred["y_birads"]), "density_accuracy": _majority(pred["y_density"]),
        },
        "classes": {"birads": list(BIRADS_CLASSES), "density": list(DENSITY_CLASSES)},
    }
    return report, pred


def _majority(y: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent class (the floor to beat)."""
    y = y[y >= 0]
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['images']} images, split {report['split']}  ({report['checkpoint']})")
    for column in ("task", "metric", "value", "95% CI"):
        table.add_column(column)
    for task in ("birads", "density", "findings"):
        for metric, estimate in report[task].items():
            if metric == "n":
                continue
            low, high = estimate["ci95"]
            table.add_row(task, metric, f"{estimate['value']:.3f}", f"{low:.3f} - {high:.3f}")
    Console().print(table)
    chance = report["chance"]
    Console().print(f"majority-class accuracy: BI-RADS {chance['birads_accuracy']:.3f}, "
                    f"density {chance['density_accuracy']:.3f}")
