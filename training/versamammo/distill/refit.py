"""Refit the student's BI-RADS and density heads on its frozen features (``distill.head_refit``).

Decoupled classifier retraining (Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020): once the backbone is trained, a linear classifier fitted
on its frozen features, with class balancing, beats the classifier trained jointly with it on
imbalanced data. Our stage-2 heads are trained beside the KD, contrastive and lesion-map terms,
under dropout 0.4 and a backbone that keeps moving; on a few hundred phantom studies a linear fit
of the same head inputs was measured better (docs/training.md, "Head refit"). Not in the paper.

Each head is an L2-regularised multinomial logistic regression on standardised head inputs
(``VersaMammoStudent.head_input``, eval mode, no augmentation), fitted with L-BFGS from zero
(convex, so deterministic). The L2 strength and class weighting are chosen on the validation
split, and a refitted head replaces the trained one only if it scores better there. The
standardisation is folded into the linear layer, so the exported graph is unchanged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from models.versamammo.checkpoint import VersaMammoStudent
from training.data.datasets import MammoImageDataset
from training.eval.classification import accuracy, binary_auc, macro_f1
from training.versamammo.distill.losses import class_weights

log = logging.getLogger(__name__)

L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
LESION_CLASSES = (0, 3, 4, 5)   # BI-RADS classes that mean "something is there"
SUSPICIOUS_CLASSES = (4, 5)


@dataclass(frozen=True)
class LinearFit:
    """A fitted head in the student's own input space: logits = x @ weight.T + bias."""

    weight: torch.Tensor  # (classes, head_dim)
    bias: torch.Tensor    # (classes,)
    l2: float
    weighted: bool


@torch.no_grad()
def head_inputs(student: VersaMammoStudent, dataset: MammoImageDataset, device: torch.device,
                batch: int = 32) -> dict[str, torch.Tensor]:
    """``x`` (N, head_dim) head inputs and the ``birads``/``density`` labels (-1 = unknown)."""
    student.eval()
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    xs, birads, density = [], [], []
    for item in loader:
        image = item["image"]["high"] if isinstance(item["image"], dict) else item["image"]
        xs.append(student.head_input(student.feature_grid(image.to(device))).float().cpu())
        birads.append(item["birads"])
        density.append(item["density"])
    return {"x": torch.cat(xs), "birads": torch.cat(birads), "density": torch.cat(density)}


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float,
               weight: torch.Tensor | None) -> LinearFit:
    """Multinomial logistic regression on standardised ``x`` (rows with y < 0 ignored), folded back."""
    keep = y >= 0
    x, y = x[keep].double(), y[keep]
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    cw = weight.double() if weight is not None else None
    optimizer = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, y, weight=cw) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    folded = (w / std).detach()
    return LinearFit(weight=folded.float(), bias=(b - folded @ mean).detach().float(), l2=l2,
                     weighted=weight is not None)


def birads_score(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """What the BI-RADS head is chosen by: mean of macro-F1, lesion AUC and suspicious AUC."""
    keep = y >= 0
    y, prob = y[keep], prob[keep]
    parts = {"macro_f1": macro_f1(y, prob.argmax(1), prob.shape[1]),
             "lesion_auc": binary_auc(np.isin(y, LESION_CLASSES).astype(int), prob[:, list(LESION_CLASSES)].sum(1)),
             "suspicious_auc": binary_auc(np.isin(y, SUSPICIOUS_CLASSES).astype(int),
                                          prob[:, list(SUSPICIOUS_CLASSES)].sum(1))}
    known = [v for v in parts.values() if not np.isnan(v)]
    return {**parts, "score": float(np.mean(known)) if known else 0.0}


def density_score(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    keep = y >= 0
    acc = accuracy(y[keep], prob[keep].argmax(1))
    return {"accuracy": acc, "score": 0.0 if np.isnan(acc) else acc}


def _probabilities(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    return (x @ weight.T + bias).softmax(1).numpy()


def refit_heads(student: VersaMammoStudent, train_set: MammoImageDataset, val_set: MammoImageDataset,
                device: torch.device) -> dict[str, Any]:
    """Refit the BI-RADS and density heads in place; returns what was chosen and the validation
    scores before and after (a head is replaced only where the refit is better on validation)."""
    train, val = head_inputs(student, train_set, device), head_inputs(student, val_set, device)
    summary: dict[str, Any] = {}
    for name, head, scorer in (("birads", student.birads_head, birads_score),
                               ("density", student.density_head, density_score)):
        n_classes = head.out_features
        trained = scorer(val[name].numpy(), _probabilities(val["x"], head.weight.detach().cpu(),
                                                           head.bias.detach().cpu()))
        balanced = class_weights([int(v) for v in train[name] if v >= 0], n_classes, "balanced")
        best: tuple[float, LinearFit, dict[str, float]] | None = None
        for l2 in L2_GRID:
            for weight in (None, balanced):
                fit = fit_linear(train["x"], train[name], n_classes, l2, weight)
                scores = scorer(val[name].numpy(), _probabilities(val["x"], fit.weight, fit.bias))
                if best is None or scores["score"] > best[0]:
                    best = (scores["score"], fit, scores)
        assert best is not None
        replaced = best[0] > trained["score"]
        if replaced:
            with torch.no_grad():
                head.weight.copy_(best[1].weight.to(head.weight))
                head.bias.copy_(best[1].bias.to(head.bias))
        summary[name] = {"replaced": replaced, "l2": best[1].l2, "balanced": best[1].weighted,
                         "val_trained": trained, "val_refit": best[2]}
        log.info("head refit %s: val score %.3f -> %.3f (%s)", name, trained["score"], best[0],
                 "replaced" if replaced else "kept the trained head")
    return summary
