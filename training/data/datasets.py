"""PyTorch dataset of image records: the exact preprocessing the node runs, plus the labels.

Images go through ``models.preprocess.prepare_uint8`` (optionally via ``PreprocessedCache``),
the same code the node serves with, so training and serving see identical inputs.

``transform``: when given, it receives the prepared **uint8 (H, W) numpy image** (breast
bright, already cropped, mirrored and resized per the config) and must return the model input
tensor; it then owns augmentation *and* normalisation (e.g. ``models.preprocess.normalize`` at
its end). Without it the image is ``normalize(image, cfg)``: float32 (C, H, W).

Item: ``image``, ``birads`` (int, -1 = unlabelled), ``density`` (int, -1), ``findings`` (float32
(10,) multi-hot), ``findings_mask`` (float32 scalar, 0 when findings are unlabelled), ``index``;
with ``lesion_grid`` also ``lesion_map`` (float32 (g, g), training.data.lesion_map) and
``lesion_map_known`` (float32 scalar).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pydicom
import torch
from torch.utils.data import Dataset

from models.package.labels import FINDING_CLASSES
from models.preprocess import PreparedImage, PreprocessConfig, normalize, prepare_uint8
from training.data.cache import PreprocessedCache
from training.data.lesion_map import lesion_grid_target
from training.data.image_record import ImageRecord


class MammoImageDataset(Dataset):
    """Records -> dict items (see the module docstring). Picklable for DataLoader workers."""

    def __init__(self, records: Sequence[ImageRecord], cfg: PreprocessConfig,
                 cache: PreprocessedCache | None = None,
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None,
                 lesion_grid: int | None = None) -> None:
        self.records = list(records)
        self.lesion_grid = lesion_grid
        self.cfg = cfg
        self.cache = cache
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def prepared(self, index: int) -> PreparedImage:
        """The 8-bit model image of record ``index`` (cached when a cache is set)."""
        rec = self.records[index]
        if self.cache is not None:
            return self.cache.get_or_prepare(rec.path, self.cfg, rec.laterality)
        return prepare_uint8(pydicom.dcmread(rec.path), self.cfg, rec.laterality)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        prepared = self.prepared(index)
        img8 = prepared.image
        if self.transform is not None:
            image = self.transform(img8)
        else:
            image = torch.from_numpy(normalize(img8, self.cfg))
        findings = torch.zeros(len(FINDING_CLASSES), dtype=torch.float32)
        if rec.findings:
            findings[list(rec.findings)] = 1.0
        item: dict[str, Any] = {
            "image": image,
            "birads": -1 if rec.birads is None else int(rec.birads),
            "density": -1 if rec.density is None else int(rec.density),
            "findings": findings,
            "findings_mask": torch.tensor(0.0 if rec.findings is None else 1.0, dtype=torch.float32),
            "index": index,
        }
        if self.lesion_grid:
            target, known = lesion_grid_target(rec, prepared, self.cfg, self.lesion_grid)
            item["lesion_map"] = torch.from_numpy(target)
            item["lesion_map_known"] = torch.tensor(1.0 if known else 0.0, dtype=torch.float32)
        return item
