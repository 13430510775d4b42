"""Resizing for the preprocessing pipeline: exact integer block means, then one small bilinear step.

Why: shrinking a ~3000x2300 breast crop to 512x512 with plain bilinear sampling (what
``cv2.resize(INTER_LINEAR)`` does) reads only 4 source pixels per output pixel and aliases
calcification-sized detail; a full area-weighted resampling as a matrix product is slow and
goes through BLAS, whose summation order differs between CPUs. Here the crop is first reduced by
the largest integer factor that keeps it at least as large as the target (exact integer sums:
every pixel counted once), then resampled bilinearly by a factor below 2 with explicit
elementwise arithmetic (no reductions, no BLAS, no threads), so the bytes are the same on any
machine. Pixel centres are mapped with the half-pixel convention, so nothing shifts.
"""
from __future__ import annotations

import numpy as np


def block_sums(img: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Sums over fy x fx blocks (uint32); trailing rows/columns that do not fill a block are left out."""
    h, w = img.shape
    hb, wb = h // fy, w // fx
    rows = img[0:hb * fy:fy].astype(np.uint32)
    for k in range(1, fy):
        rows += img[k:hb * fy:fy]
    out = rows[:, 0:wb * fx:fx].copy()
    for k in range(1, fx):
        out += rows[:, k:wb * fx:fx]
    return out


def _taps(n_out: int, n_src: int, factor: int, n_blocks: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (i0, i1, weight of i1) on the block grid for output pixel centres.

    Output centre i sits at source coordinate (i + 0.5) * n_src / n_out - 0.5; block k's centre is
    at k * factor + (factor - 1) / 2, so in block units the position is
    (i + 0.5) * n_src / n_out / factor - 0.5, clamped to the grid.
    """
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_src / n_out) / factor - 0.5
    np.clip(pos, 0.0, n_blocks - 1, out=pos)
    i0 = np.floor(pos).astype(np.intp)
    i1 = np.minimum(i0 + 1, n_blocks - 1)
    return i0, i1, pos - i0


def resample(img8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W) -> uint8 size=(rows, cols), aspect not kept."""
    rows, cols = int(size[0]), int(size[1])
    h, w = img8.shape
    if (h, w) == (rows, cols):
        return img8.copy()
    fy, fx = max(1, h // rows), max(1, w // cols)
    means = block_sums(img8, fy, fx).astype(np.float64)
    means /= fy * fx
    hb, wb = means.shape
    y0, y1, wy = _taps(rows, h, fy, hb)
    x0, x1, wx = _taps(cols, w, fx, wb)
    wy = wy[:, None]
    vert = means[y0] * (1.0 - wy) + means[y1] * wy
    out = vert[:, x0] * (1.0 - wx) + vert[:, x1] * wx
    np.rint(out, out=out)
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)


def fit_size(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The largest (rows, cols) with the aspect of ``shape`` that fits in ``size``."""
    h, w = shape
    rows, cols = size
    scale = min(rows / h, cols / w)
    return max(1, min(rows, round(h * scale))), max(1, min(cols, round(w * scale)))


def pad_resize(img8: np.ndarray, size: tuple[int, int], align: str = "center") -> np.ndarray:
    """Keep the aspect: fit inside ``size`` and pad with 0 (background).

    Vertically centred; horizontally against ``align`` ("L"/"R": the chest-wall edge, so the
    chest wall stays at the image border as in the squashed image) or centred.
    """
    rows, cols = int(size[0]), int(size[1])
    nh, nw = fit_size(img8.shape, (rows, cols))
    inner = resample(img8, (nh, nw))
    out = np.zeros((rows, cols), dtype=np.uint8)
    y = (rows - nh) // 2
    x = 0 if align == "L" else (cols - nw) if align == "R" else (cols - nw) // 2
    out[y:y + nh, x:x + nw] = inner
    return out


def cover_size(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The smallest (rows, cols) with the aspect of ``shape`` that covers ``size``: the shortest
    side scaled to its target, the other as torchvision's ``Resize(int)`` computes it (truncated)."""
    h, w = shape
    rows, cols = size
    scale = max(rows / h, cols / w)
    if scale == rows / h:
        return rows, max(cols, int(w * scale))
    return max(rows, int(h * scale)), cols


def crop_offsets(shape: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a centred crop of ``size`` from ``shape``, rounded as torchvision's CenterCrop."""
    return int(round((shape[0] - size[0]) / 2.0)), int(round((shape[1] - size[1]) / 2.0))


def crop_resize(img8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The official MammoRG geometry: shortest side resized to the target, then a centred crop.

    The part of the breast outside the crop is lost (as in the official pipeline); use it only for
    weights trained that way.
    """
    rows, cols = int(size[0]), int(size[1])
    nh, nw = cover_size(img8.shape, (rows, cols))
    top, left = crop_offsets((nh, nw), (rows, cols))
    return resample(img8, (nh, nw))[top:top + rows, left:left + cols].copy()
