"""The papers' evaluation beyond the student's own heads: frozen-backbone linear probes and
feature retrieval, with bootstrap 95% intervals.

VersaMammo is judged on detection, segmentation, retrieval and VQA as well as classification
(shared/research/versamammo.md, section 4). This module covers the two of them that need no
extra trained decoder and run at any size:

- **Linear probe** (official ``downstream/classification``, ``finetune='lp'``): a linear layer on
  the frozen 2048-d (tiny: its own width) pooled feature, fitted on the training split, its L2
  strength chosen on the validation split, scored on the test split with accuracy, macro-F1 and
  macro one-vs-rest AUC. Deviation: an L2-regularised multinomial logistic regression solved
  exactly (L-BFGS on standardised features), not AdamW 1e-3 with early stopping; and the
  backbone is really frozen (the official "linear probing" leaves BatchNorm and dropout in
  train mode).
- **Retrieval** (official ``downstream/retrieval/test_retrieval_final.py``): the database is the
  non-test images, the queries the test images; cosine similarity of the pooled features; top-K
  accuracy = the share of queries with an image of the same label among their K nearest
  (K = 1, 2, 3 as the official script, with a bootstrap over queries).

Features are the student's ``features`` (global average pool of the conv-head grid, no
dropout) of its serving preprocessing (squash, 0.3089/0.2505: the official retrieval
extraction's normalisation). Detection, segmentation and VQA are not reproduced here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from training.eval.classification import bootstrap, classification_report
from training.config import TrainConfig

L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
TOP_K: tuple[int, ...] = (1, 2, 3)


@torch.no_grad()
def pooled_features(student: Any, dataset: Any, device: torch.device, batch: int = 32) -> dict[str, np.ndarray]:
    """``feature`` (N, D) pooled features of the frozen student and the ``birads``/``density``
    labels (-1 = unknown) of a ``MammoImageDataset``."""
    student.eval()
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    out: dict[str, list[np.ndarray]] = {"feature": [], "birads": [], "density": []}
    for item in loader:
        image = item["image"]["high"] if isinstance(item["image"], dict) else item["image"]
        out["feature"].append(student.features(image.to(device)).float().cpu().numpy())
        out["birads"].append(item["birads"].numpy())
        out["density"].append(item["density"].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float) -> tuple[np.ndarray, np.ndarray]:
    from training.versamammo.distill.refit import fit_linear

    fit = fit_linear(torch.from_numpy(x).float(), torch.from_numpy(y).long(), n_classes, l2, None)
    return fit.weight.numpy(), fit.bias.numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None,
                 test: tuple[np.ndarray, np.ndarray], n_classes: int, resamples: int = 1000, seed: int = 0,
                 l2_grid: Sequence[float] = L2_GRID) -> dict[str, Any]:
    """Fit on ``train`` (features, labels; labels < 0 ignored), choose L2 on ``val`` by macro-F1
    (the first of the grid without one), score ``test``: ``classification_report`` plus ``l2``."""
    from training.eval.classification import macro_f1

    x_tr, y_tr = train
    if (y_tr >= 0).sum() == 0:
        raise ValueError("no labelled training features for the probe")
    best: tuple[float, float] | None = None
    fits = {}
    for l2 in (l2_grid if val is not None else l2_grid[:1]):
        fits[l2] = _fit(x_tr, y_tr, n_classes, l2)
        if val is not None:
            x_va, y_va = val
            keep = y_va >= 0
            if not keep.any():
                best = best or (l2, 0.0)
                continue
            pred = (x_va[keep] @ fits[l2][0].T + fits[l2][1]).argmax(1)
            score = macro_f1(y_va[keep], pred, n_classes)
            if best is None or score > best[1]:
                best = (l2, score)
    l2 = best[0] if best is not None else l2_grid[0]
    w, b = fits[l2]
    x_te, y_te = test
    report = classification_report(y_te, _softmax(x_te @ w.T + b), resamples, seed)
    return {**report, "l2": l2, "train_n": int((y_tr >= 0).sum())}


def retrieval_topk(database: tuple[np.ndarray, np.ndarray], queries: tuple[np.ndarray, np.ndarray],
                   ks: Sequence[int] = TOP_K, resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Top-K accuracy of cosine retrieval: a query hits when one of its K nearest database items
    has its label. Unlabelled items (label < 0) are left out of both sides."""
    db_x, db_y = database
    q_x, q_y = queries
    db_x, db_y = db_x[db_y >= 0], db_y[db_y >= 0]
    q_x, q_y = q_x[q_y >= 0], q_y[q_y >= 0]
    if not len(db_y) or not len(q_y):
        raise ValueError("retrieval needs labelled database and query features")

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = unit(q_x) @ unit(db_x).T
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :max(ks)]
    neighbour_labels = db_y[order]                                     # (Q, max K)
    out: dict[str, Any] = {"queries": int(len(q_y)), "database": int(len(db_y))}
    for k in ks:
        hits = (neighbour_labels[:, :k] == q_y[:, None]).any(1).astype(np.float64)
        out[f"top{k}"] = bootstrap(lambda i, h=hits: float(h[i].mean()), len(hits), resamples, seed).to_dict()
    # the floor: a random database item has the query's label this often
    shares = np.bincount(db_y, minlength=int(max(db_y.max(), q_y.max())) + 1) / len(db_y)
    out["chance_top1"] = float(shares[q_y].mean())
    return out


def run_probe_eval(cfg: TrainConfig, checkpoint: Path | None = None) -> dict[str, Any]:
    """Linear probes (BI-RADS, density) and retrieval (by BI-RADS, by density) of a student's
    frozen features: train split fits, val chooses, ``eval.split`` scores; retrieval's database
    is every image outside ``eval.split``."""
    from models.package.labels import BIRADS_CLASSES, DENSITY_CLASSES
    from models.versamammo.checkpoint import load_checkpoint
    from training import distributed as du
    from training.data.cache import PreprocessedCache
    from training.data.datasets import MammoImageDataset
    from training.data.records import load_records
    from training.versamammo.distill.data import student_preprocess_config
    from training.versamammo.distill.train import BEST

    path = Path(checkpoint) if checkpoint else Path(cfg.run.out_dir) / "distill" / BEST
    if not path.exists():
        raise FileNotFoundError(f"no student checkpoint at {path} (run versamammo-distill first)")
    student = load_checkpoint(path, kind="student")
    device = du.resolve_device(cfg.run.device)
    student = student.to(device)
    records = load_records(cfg.data)
    cache = PreprocessedCache(cfg.data.cache_dir) if cfg.data.cache_dir else None
    pre = student_preprocess_config(student.cfg)
    splits = {"train": "train", "val": "val", "eval": cfg.eval.split}
    feats = {name: pooled_features(student, MammoImageDataset([r for r in records if r.split == split], pre, cache),
                                   device)
             for name, split in splits.items()}
    outside = [r for r in records if r.split != cfg.eval.split]
    database = pooled_features(student, MammoImageDataset(outside, pre, cache), device)
    resamples, seed = cfg.eval.bootstrap, cfg.run.seed
    report: dict[str, Any] = {"checkpoint": str(path), "split": cfg.eval.split, "probe": {}, "retrieval": {}}
    for label, classes in (("birads", BIRADS_CLASSES), ("density", DENSITY_CLASSES)):
        val = (feats["val"]["feature"], feats["val"][label]) if len(feats["val"][label]) else None
        report["probe"][label] = linear_probe((feats["train"]["feature"], feats["train"][label]), val,
                                              (feats["eval"]["feature"], feats["eval"][label]), len(classes),
                                              resamples, seed)
        report["retrieval"][label] = retrieval_topk((database["feature"], database[label]),
                                                    (feats["eval"]["feature"], feats["eval"][label]),
                                                    resamples=resamples, seed=seed)
    return report
