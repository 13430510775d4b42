"""Does the tiny VersaMammo pipeline learn on phantoms? Both stages, measured side by side.

``run_proof`` trains stage 1 (SSL) and stage 2 (distillation from that teacher) with the tiny
configuration on phantom studies and returns:

- ``ssl``: the SSL loss over the first and last ``window`` logged iterations;
- ``probe``: the density linear probe of the SSL teacher and of a random-init teacher of the
  same architecture, with all labels and with ``shots`` labels per class (mean of 20 draws);
- ``student``: density accuracy and BI-RADS macro-F1 on the held-out test split, each beside its
  majority-class baseline, and the AUC of "a lesion is present" (BI-RADS 0, 3, 4, 5) from the
  BI-RADS head.

``bench/versamammo_proof.py`` runs it at a size that takes about half an hour on 2 cores and
prints the table; ``tests/training/test_versamammo_proof.py`` runs a small size and asserts
conservative floors.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import load_train_config
from training.config import TrainConfig

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "versamammo_tiny.toml"
LESION_CLASSES = (0, 3, 4, 5)  # BI-RADS heads' classes that mean "something is there"
SUSPICIOUS_CLASSES = (4, 5)    # BI-RADS 4 and 5: biopsy recommended


def proof_config(out_dir: Path, cache_dir: Path, studies: int, ssl_iterations: int, distill_epochs: int,
                 **extra: Any) -> Any:
    overrides = {
        "run.out_dir": str(out_dir), "data.cache_dir": str(cache_dir), "data.phantom_studies": studies,
        "ssl.centering": "sinkhorn_knopp", "ssl.iterations_per_epoch": 15,
        "ssl.epochs": max(1, ssl_iterations // 15), "ssl.warmup_epochs": 1, "ssl.warmup_teacher_temp_epochs": 2,
        "distill.epochs": distill_epochs, "eval.bootstrap": 200,
    }
    overrides.update(extra)
    return load_train_config(TINY_CONFIG, overrides)


def ssl_loss_windows(metrics_file: Path, window: int) -> tuple[float, float]:
    from training.metrics_log import read_metrics

    losses = [r["loss"] for r in read_metrics(metrics_file) if "loss" in r and "val_loss" not in r]
    if len(losses) < 2 * window:
        raise ValueError(f"only {len(losses)} SSL loss records; need {2 * window}")
    return float(np.mean(losses[:window])), float(np.mean(losses[-window:]))


def probe_teachers(cfg: TrainConfig, teacher_path: Path, shots: int, seed: int = 0) -> dict[str, Any]:
    from models.versamammo.checkpoint import build_teacher, config_for, load_checkpoint
    from training.data.records import load_records
    from training.versamammo.ssl.data import RecordImageSource
    from training.versamammo.ssl.probe import few_shot_probe, linear_probe_details

    records = load_records(cfg.data)
    train = RecordImageSource([r for r in records if r.split == "train"], cfg.data.cache_dir)
    val = RecordImageSource([r for r in records if r.split in ("val", "test")], cfg.data.cache_dir)
    trained = load_checkpoint(teacher_path, kind="teacher").backbone
    torch.manual_seed(seed)
    random = build_teacher(config_for(cfg.model.size)).backbone
    out: dict[str, Any] = {"shots": shots}
    for name, backbone in (("ssl", trained), ("random", random)):
        full = linear_probe_details(backbone, train, val, "density")
        few = few_shot_probe(backbone, train, val, "density", shots=shots, seed=seed)
        out[name] = {"all_labels": full.accuracy, "few_shot": few.accuracy, "few_shot_stderr": few.stderr}
        out["majority"] = full.majority_accuracy
    return out


def student_metrics(cfg: TrainConfig) -> dict[str, Any]:
    from training.eval.classification import binary_auc, macro_f1
    from training.versamammo.evaluate import evaluate_student

    report, pred = evaluate_student(cfg)
    yb, pb = pred["y_birads"], pred["birads"]
    keep = yb >= 0
    majority = int(np.bincount(yb[keep]).argmax())
    lesion = np.isin(yb[keep], LESION_CLASSES).astype(int)
    return {
        "test_images": int(report["images"]),
        "density_accuracy": report["density"]["accuracy"]["value"],
        "density_majority_accuracy": report["chance"]["density_accuracy"],
        "birads_macro_f1": report["birads"]["macro_f1"]["value"],
        "birads_majority_macro_f1": macro_f1(yb[keep], np.full(keep.sum(), majority), pb.shape[1]),
        "lesion_auc": binary_auc(lesion, pb[keep][:, list(LESION_CLASSES)].sum(1)),
        "suspicious_auc": binary_auc(np.isin(yb[keep], SUSPICIOUS_CLASSES).astype(int),
                                     pb[keep][:, list(SUSPICIOUS_CLASSES)].sum(1)),
        "report": report,
    }


def run_proof(out_dir: Path, cache_dir: Path, *, studies: int, ssl_iterations: int, distill_epochs: int,
              shots: int = 8, window: int = 3, **extra: Any) -> dict[str, Any]:
    """SSL, probes, distillation, evaluation; see the module docstring."""
    from training.versamammo.distill.train import run_distill
    from training.versamammo.ssl.train import run_ssl

    cfg = proof_config(out_dir, cache_dir, studies, ssl_iterations, distill_epochs, **extra)
    teacher = run_ssl(cfg)
    first, last = ssl_loss_windows(Path(cfg.run.out_dir) / "ssl" / "metrics.jsonl", window)
    probe = probe_teachers(cfg, teacher, shots, seed=cfg.run.seed)
    if cfg.model.student_init == "lesion_patches":
        from training.versamammo.patches.train import run_patches

        run_patches(cfg)
    student = run_distill(cfg)
    return {"config": {"studies": studies, "ssl_iterations": ssl_iterations, "distill_epochs": distill_epochs, **extra},
            "ssl": {"loss_first": first, "loss_last": last}, "probe": probe,
            "student": {"checkpoint": str(student), **student_metrics(cfg)}}
