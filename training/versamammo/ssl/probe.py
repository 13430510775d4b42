"""Linear probe on frozen teacher features: does stage 1 learn anything useful?

``linear_probe(backbone, train, val, target="density")`` extracts the CLS feature of every
image with the backbone in eval mode (deterministic transform: the whole 256x256 stage-1
image resized to the teacher's global-crop size, bicubic, ImageNet normalisation), fits a
multinomial logistic regression with L2 penalty on the standardised training features (torch,
full-batch L-BFGS) and returns the validation accuracy. Comparing a trained teacher with a
randomly initialised one of the same architecture shows whether SSL helped.

``train`` / ``val`` are an :class:`~training.versamammo.ssl.data.ImageSource` (labels from
``source.label(i, target)``), a list of ``training.data.records.ImageRecord`` or a pair
``(uint8 images, labels)``. Images without a label for ``target`` are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.versamammo.ssl.augment import eval_transform
from training.versamammo.ssl.data import ArrayImageSource, ImageSource, RecordImageSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ProbeResult:
    accuracy: float  # validation accuracy
    train_accuracy: float
    majority_accuracy: float  # validation accuracy of always predicting the training majority class
    n_train: int
    n_val: int
    n_classes: int


def _as_source(data: Any, target: str) -> ImageSource:
    if isinstance(data, ImageSource):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        images, labels = data
        return ArrayImageSource(list(images), [{target: None if y is None else int(y)} for y in labels])
    return RecordImageSource(list(data))


def _labelled(source: ImageSource, target: str) -> tuple[list[int], list[int]]:
    idx, ys = [], []
    for i in range(len(source)):
        y = source.label(i, target)
        if y is not None and y >= 0:
            idx.append(i)
            ys.append(int(y))
    return idx, ys


@torch.no_grad()
def extract_features(backbone: nn.Module, source: ImageSource, indices: Sequence[int], image_size: int,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     batch_size: int = 32, device: str | torch.device = "cpu") -> torch.Tensor:
    """``(len(indices), D)`` float32 CLS features (backbone in eval mode, restored afterwards)."""
    was_training = backbone.training
    backbone.eval()
    feats = []
    try:
        for start in range(0, len(indices), batch_size):
            batch = torch.stack([eval_transform(source.image(i), image_size, tuple(mean), tuple(std))
                                 for i in indices[start:start + batch_size]]).to(device)
            feats.append(backbone(batch)["cls"].float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(feats) if feats else torch.zeros((0, 0))


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3,
                            max_iter: int = 300) -> nn.Linear:
    """Multinomial logistic regression by full-batch L-BFGS on ``mean CE + l2 * ||W||^2``."""
    torch.manual_seed(0)
    model = nn.Linear(x.shape[1], n_classes)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + l2 * model.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def linear_probe_details(teacher_backbone: nn.Module, train: Any, val: Any, target: str = "density", *,
                         image_size: int | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD, l2: float = 1e-3, max_iter: int = 300,
                         device: str | torch.device = "cpu") -> ProbeResult:
    """See the module docstring; returns every number of the probe."""
    if image_size is None:
        image_size = int(getattr(teacher_backbone, "grid_size", 16)) * int(getattr(teacher_backbone, "patch_size", 14))
    train_src, val_src = _as_source(train, target), _as_source(val, target)
    tr_idx, tr_y = _labelled(train_src, target)
    va_idx, va_y = _labelled(val_src, target)
    if not tr_idx or not va_idx:
        raise ValueError(f"no {target} labels in the training or validation images")
    x_tr = extract_features(teacher_backbone, train_src, tr_idx, image_size, mean, std, device=device)
    x_va = extract_features(teacher_backbone, val_src, va_idx, image_size, mean, std, device=device)
    mu, sd = x_tr.mean(0, keepdim=True), x_tr.std(0, keepdim=True).clamp_min(1e-6)
    x_tr, x_va = (x_tr - mu) / sd, (x_va - mu) / sd
    y_tr, y_va = torch.tensor(tr_y), torch.tensor(va_y)
    n_classes = int(max(max(tr_y), max(va_y))) + 1
    clf = fit_logistic_regression(x_tr, y_tr, n_classes, l2=l2, max_iter=max_iter)
    with torch.no_grad():
        acc = float((clf(x_va).argmax(1) == y_va).float().mean())
        train_acc = float((clf(x_tr).argmax(1) == y_tr).float().mean())
    majority = int(np.bincount(np.asarray(tr_y), minlength=n_classes).argmax())
    return ProbeResult(accuracy=acc, train_accuracy=train_acc,
                       majority_accuracy=float((y_va == majority).float().mean()),
                       n_train=len(tr_idx), n_val=len(va_idx), n_classes=n_classes)


def linear_probe(teacher_backbone: nn.Module, train: Any, val: Any, target: str = "density", **kwargs: Any) -> float:
    """Validation accuracy of a linear probe on frozen CLS features (see :func:`linear_probe_details`)."""
    return linear_probe_details(teacher_backbone, train, val, target, **kwargs).accuracy


@dataclass(frozen=True)
class FewShotResult:
    accuracy: float        # mean validation accuracy over the repeats
    stderr: float          # standard error of that mean
    shots: int             # labelled training images per class
    repeats: int
    n_classes: int         # classes with at least ``shots`` training images (the others are left out)


def few_shot_probe(teacher_backbone: nn.Module, train: Any, val: Any, target: str = "density", *,
                   shots: int = 8, repeats: int = 20, seed: int = 0, image_size: int | None = None,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   l2: float = 1e-2, device: str | torch.device = "cpu") -> FewShotResult:
    """Linear probe trained on ``shots`` labelled images per class, averaged over ``repeats`` draws.

    Why: on phantoms a probe with every label saturates (density from a random ViT is already
    ~97%: at the teacher's input size density is mostly global brightness), so it cannot tell
    SSL features from random ones. Label efficiency, the usual low-label linear evaluation of
    self-supervised features, can: fewer labels need features whose classes are already
    separated. Validation images of classes without enough training images are left out.
    """
    if image_size is None:
        image_size = int(getattr(teacher_backbone, "grid_size", 16)) * int(getattr(teacher_backbone, "patch_size", 14))
    train_src, val_src = _as_source(train, target), _as_source(val, target)
    tr_idx, tr_y = _labelled(train_src, target)
    va_idx, va_y = _labelled(val_src, target)
    y_tr = np.asarray(tr_y)
    classes = [c for c in sorted(set(tr_y)) if (y_tr == c).sum() >= shots]
    if len(classes) < 2:
        raise ValueError(f"fewer than two {target} classes have {shots} training images")
    x_tr = extract_features(teacher_backbone, train_src, tr_idx, image_size, mean, std, device=device)
    keep_va = [i for i, y in enumerate(va_y) if y in classes]
    x_va = extract_features(teacher_backbone, val_src, [va_idx[i] for i in keep_va], image_size, mean, std,
                            device=device)
    remap = {c: k for k, c in enumerate(classes)}
    y_va = torch.tensor([remap[va_y[i]] for i in keep_va])
    accs = []
    for rep in range(repeats):
        rng = np.random.default_rng([seed, rep])
        pick = np.concatenate([rng.choice(np.flatnonzero(y_tr == c), shots, replace=False) for c in classes])
        x = x_tr[torch.from_numpy(pick)]
        mu, sd = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
        clf = fit_logistic_regression((x - mu) / sd, torch.tensor([remap[int(c)] for c in y_tr[pick]]), len(classes), l2=l2)
        with torch.no_grad():
            accs.append(float((clf((x_va - mu) / sd).argmax(1) == y_va).float().mean()))
    return FewShotResult(accuracy=float(np.mean(accs)), stderr=float(np.std(accs) / np.sqrt(len(accs))),
                         shots=shots, repeats=repeats, n_classes=len(classes))
