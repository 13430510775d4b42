"""Stage-2 inputs: a high-resolution view and a *different* low-resolution view of each image.

Both come from the prepared 8-bit image that ``models.preprocess`` makes for the node (same
crop, same squash to ``student_input``), so what the student learns on is what it will see
in service. Training augmentation (official stage 2): horizontal flip, rotation up to 15
degrees, brightness/contrast jitter 0.2 (saturation and hue do nothing on grey images), and a
RandomResizedCrop to ``low_res_size`` with scale (0.8, 1.0) for the low-resolution view; the
high-resolution view is only flipped. The official dataset returned the 512 tensor as the
"low-res" view too (a bug): here the two views differ.

With ``teacher_features = "online"`` a third view at the teacher's global size, normalised
with the teacher's statistics, goes to the frozen teacher each step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
import torch.nn.functional as F
from torchvision.transforms import v2

from models.preprocess import PreprocessConfig
from models.versamammo.checkpoint import VersaMammoConfig
from models.versamammo.config import student_preprocess_config  # noqa: F401 (re-exported)


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """float (1,H,W) in [0,1] -> (3,H,W) normalised (grey replicated, as models.preprocess does)."""
    x = x.expand(3, -1, -1)
    m = torch.tensor(mean if len(mean) == 3 else mean * 3, dtype=x.dtype).view(3, 1, 1)
    s = torch.tensor(std if len(std) == 3 else std * 3, dtype=x.dtype).view(3, 1, 1)
    return (x - m) / s


@dataclass
class TwoViewTransform:
    """uint8 (H, W) -> {"high": (3,S,S), "high_flipped": bool, "low": (3,L,L)[, "teacher": (3,T,T)]}."""

    model: VersaMammoConfig
    low_res_size: int
    train: bool = True
    online_teacher: bool = False

    def __post_init__(self) -> None:
        self._low = v2.Compose([
            v2.RandomHorizontalFlip(0.5),
            v2.RandomRotation(15),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.RandomResizedCrop(self.low_res_size, scale=(0.8, 1.0), antialias=True),
        ])

    def __call__(self, img8: np.ndarray) -> dict[str, torch.Tensor]:
        base = torch.from_numpy(np.ascontiguousarray(img8)).unsqueeze(0)  # (1,H,W) uint8
        mean, std = self.model.student_norm
        high = base
        flipped = bool(self.train and torch.rand(()) < 0.5)
        if flipped:
            high = torch.flip(high, dims=[2])
        # "high_flipped": box targets (lesion map) follow the mirror of the high-resolution view
        views = {"high": _normalise(high.float() / 255.0, mean, std), "high_flipped": torch.tensor(flipped)}
        if self.train:
            low = self._low(base)
        else:
            low = v2.functional.resize(base, [self.low_res_size, self.low_res_size], antialias=True)
        views["low"] = _normalise(low.float() / 255.0, mean, std)
        if self.online_teacher:
            size = self.model.teacher_global
            t = F.interpolate(base.float().unsqueeze(0) / 255.0, size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
            views["teacher"] = _normalise(t, *self.model.teacher_norm)
        return views


def teacher_input(img8: np.ndarray, model: VersaMammoConfig) -> torch.Tensor:
    """The teacher's view of a prepared image (offline feature extraction): (3,T,T) normalised."""
    base = torch.from_numpy(np.ascontiguousarray(img8)).float().div(255.0)[None, None]
    size = model.teacher_global
    resized = F.interpolate(base, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return _normalise(resized, *model.teacher_norm)


class SeededDataset(Dataset):
    """``dataset[(index, seed)]``: item ``index`` of ``base`` with its augmentation drawn from ``seed``.

    The random draws of the transforms happen inside a forked RNG seeded per sample, so an
    item depends only on (index, seed): a resumed run sees exactly the batches and views the
    uninterrupted run would have, whatever the number of loader workers.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.base[int(index)]
