"""Lesion patches: crops of the model image around annotated findings, and of normal tissue.

Why (Shen et al., "Deep learning to improve breast cancer detection on screening mammography",
Sci Rep 2019): a whole-image classifier trained from scratch on a few hundred images sees a
lesion as a handful of pixels among a quarter of a million and memorises the training images
instead of learning what a lesion looks like. Patches centred on the annotated lesions, against
patches of normal tissue, give the network hundreds of direct examples per lesion (jittered,
flipped) at a fraction of the cost, which grows lesion filters; whole-image training then starts
from them. The patches are cut from the same prepared model image the student sees (same crop,
squash and resolution), so the filters are at the scale they will be used at.

A patch's targets: ``kind`` 0 = normal tissue, 1 + FINDING_CLASSES index = that finding;
``birads`` = the finding's own category index (-1 when the annotation has none), BI-RADS 1 for
normal tissue. Every sample is a pure function of (index, seed): resumable and reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from models.preprocess import PreprocessConfig
from models.preprocess.geometry import ModelGeometry, clip_box
from training.data.cache import PreprocessedCache
from training.data.datasets import MammoImageDataset
from training.data.image_record import ImageRecord

NORMAL_BIRADS = 1   # a patch of normal tissue is "negative"
FOREGROUND = 20     # 8-bit level above which a model-image pixel is breast (PreprocessConfig.threshold)


@dataclass(frozen=True)
class PatchLesion:
    """One annotated finding in model-image coordinates."""

    image: int                 # index into the dataset's records
    box: tuple[float, float, float, float]
    kind: int                  # 1 + FINDING_CLASSES index
    birads: int                # -1 = not annotated


@dataclass(frozen=True)
class PatchSettings:
    """How patches are drawn (``[patches]`` of the training config)."""

    size: int = 64                 # patch side in model-image pixels
    positive_fraction: float = 0.5  # share of lesion patches in a batch
    jitter: float = 0.25           # lesion centre moves up to this fraction of the patch side
    max_overlap: float = 0.1       # a normal patch may cover at most this share of any lesion box
    brightness: float = 0.1        # +-, on [0, 1] intensities
    contrast: float = 0.1


class LesionPatchDataset(Dataset):
    """``dataset[(index, seed)]`` -> {"image": (3,S,S) normalised, "kind", "birads"}.

    ``index`` only sets the length of an epoch; what is drawn depends on (index, seed).
    """

    def __init__(self, records: Sequence[ImageRecord], cfg: PreprocessConfig, cache: PreprocessedCache | None,
                 settings: PatchSettings, samples_per_epoch: int) -> None:
        self.images = MammoImageDataset(records, cfg, cache)
        self.cfg = cfg
        self.settings = settings
        self.samples_per_epoch = int(samples_per_epoch)
        self._prepared: dict[int, np.ndarray] = {}
        self._foreground: dict[int, np.ndarray] = {}
        self.lesions = self._lesions(records)
        self.boxes_by_image: dict[int, list[tuple[float, float, float, float]]] = {}
        for lesion in self.lesions:
            self.boxes_by_image.setdefault(lesion.image, []).append(lesion.box)

    def _lesions(self, records: Sequence[ImageRecord]) -> list[PatchLesion]:
        out = []
        rows, cols = self.cfg.size
        for i, rec in enumerate(records):
            if not rec.boxes:
                continue
            geometry = ModelGeometry.of(self.images.prepared(i), self.cfg)
            for b in rec.boxes:
                box = clip_box(geometry.box_to_model((b.x0, b.y0, b.x1, b.y1)), cols, rows)
                if box is not None:
                    out.append(PatchLesion(i, box, 1 + b.finding, -1 if b.birads is None else b.birads))
        return out

    def __len__(self) -> int:
        return self.samples_per_epoch

    def image(self, i: int) -> np.ndarray:
        """The prepared uint8 model image of record ``i`` (kept in memory: a few MB per hundred)."""
        if i not in self._prepared:
            img = self.images.prepared(i).image
            self._prepared[i] = img
            ys, xs = np.nonzero(img > FOREGROUND)
            self._foreground[i] = np.stack([xs, ys], axis=1) if len(xs) else np.zeros((0, 2), np.int64)
        return self._prepared[i]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        _, seed = key
        rng = np.random.default_rng(int(seed))
        s = self.settings
        if self.lesions and rng.random() < s.positive_fraction:
            lesion = self.lesions[int(rng.integers(len(self.lesions)))]
            x0, y0, x1, y1 = lesion.box
            cx = (x0 + x1) / 2 + rng.uniform(-s.jitter, s.jitter) * s.size
            cy = (y0 + y1) / 2 + rng.uniform(-s.jitter, s.jitter) * s.size
            img, kind, birads = self.image(lesion.image), lesion.kind, lesion.birads
        else:
            index, (cx, cy) = self._normal_centre(rng)
            img, kind, birads = self.image(index), 0, NORMAL_BIRADS
        patch = crop_patch(img, cx, cy, s.size).astype(np.float32) / 255.0
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1, :]
        patch = patch * (1.0 + rng.uniform(-s.contrast, s.contrast)) + rng.uniform(-s.brightness, s.brightness)
        patch = np.clip(patch, 0.0, 1.0)
        mean = np.broadcast_to(np.asarray(self.cfg.mean, np.float32), (self.cfg.channels,))
        std = np.broadcast_to(np.asarray(self.cfg.std, np.float32), (self.cfg.channels,))
        x = (patch[None] - mean[:, None, None]) / std[:, None, None]
        return {"image": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                "kind": int(kind), "birads": int(birads)}

    def _normal_centre(self, rng: np.random.Generator) -> tuple[int, tuple[float, float]]:
        """A random breast location of a random image whose patch barely touches any lesion."""
        n = len(self.images)
        for _ in range(20):
            i = int(rng.integers(n))
            self.image(i)
            fg = self._foreground[i]
            if not len(fg):
                continue
            x, y = fg[int(rng.integers(len(fg)))] + 0.5
            if _overlap_ok((x, y), self.settings, self.boxes_by_image.get(i, [])):
                return i, (float(x), float(y))
        rows, cols = self.cfg.size
        return int(rng.integers(n)), (cols / 2, rows / 2)


def _overlap_ok(centre: tuple[float, float], s: PatchSettings,
                boxes: list[tuple[float, float, float, float]]) -> bool:
    half = s.size / 2
    px0, py0, px1, py1 = centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half
    for x0, y0, x1, y1 in boxes:
        iw, ih = min(px1, x1) - max(px0, x0), min(py1, y1) - max(py0, y0)
        if iw > 0 and ih > 0 and iw * ih > s.max_overlap * (x1 - x0) * (y1 - y0):
            return False
    return True


def crop_patch(img: np.ndarray, cx: float, cy: float, size: int) -> np.ndarray:
    """``size`` x ``size`` window centred at (cx, cy); outside the image is background (0)."""
    rows, cols = img.shape
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    out = np.zeros((size, size), dtype=img.dtype)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(cols, x0 + size), min(rows, y0 + size)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out
