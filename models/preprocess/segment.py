"""Breast segmentation for the preprocessing pipeline: threshold + largest connected component.

Why this shape: the official notebooks crop to the bounding box of the largest 8-connected
component of ``pixels > threshold`` (OpenCV). We have neither OpenCV nor SciPy, and a full-size
mammogram has 8.5 million pixels, so labelling works on a *strided sample grid* (at most about
512 cells along the long side) and on horizontal *runs* instead of pixels: a breast is one or
two runs per row, so a few thousand nodes are merged by a vectorised union-find (hook + pointer
jumping, no Python loop per pixel or per run). The box found on the grid is then refined at full
resolution in the thin bands between the outermost sample lines and the next ones, so the box
is pixel-exact up to how a protrusion thinner than the grid step is connected.

Everything reads pixels through ``region(rows, cols) -> uint8 array``, so the same code runs on
an in-memory 8-bit image (``breast_crop``) and on the lazy LUT view of the stored pixels that
``prepare_uint8`` uses (only the sampled pixels and the bands are ever mapped to 8 bits there).
numpy only, no randomness, no threads: the result is a pure function of the pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

Region = Callable[[slice, slice], np.ndarray]
Box = tuple[int, int, int, int]          # (y0, x0, y1, x1), ends exclusive

GRID_CELLS = 512                          # max sample-grid cells along the long side


@dataclass(frozen=True)
class Component:
    """The largest component on the sample grid: cell (i, j) is pixel (y0 + i*step, x0 + j*step)."""

    y0: int
    x0: int
    step: int
    mask: np.ndarray                      # bool (rows, cols) of the grid, True inside the component

    def pixel_rows(self) -> slice:
        return slice(self.y0, self.y0 + self.mask.shape[0] * self.step, self.step)

    def pixel_cols(self) -> slice:
        return slice(self.x0, self.x0 + self.mask.shape[1] * self.step, self.step)


def trimmed_bounds(shape: tuple[int, int], trim: int) -> Box:
    """The image minus ``trim`` pixels on each border (never empty: trim shrinks on tiny images)."""
    h, w = shape
    ty = min(trim, (h - 1) // 2)
    tx = min(trim, (w - 1) // 2)
    return ty, tx, h - ty, w - tx


def grid_step(height: int, width: int) -> int:
    """Sampling step so the grid has at most GRID_CELLS cells on the long side (1 for small images)."""
    return max(1, math.ceil(max(height, width) / GRID_CELLS))


def largest_component(fg: np.ndarray) -> np.ndarray | None:
    """Largest 8-connected component of a boolean image (ties: the one starting first in raster order).

    Returns a boolean mask of the same shape, or None when ``fg`` has no True pixel.
    """
    h, w = fg.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = fg
    edges = np.diff(padded, axis=1)                       # +1 at run starts, -1 one past run ends
    run_row, run_start = np.nonzero(edges == 1)
    _, run_end = np.nonzero(edges == -1)                  # same raster order as the starts
    n = run_row.size
    if n == 0:
        return None
    a, b = _touching_runs(run_row, run_start, run_end, w)
    root = _union_find(n, a, b)
    sizes = np.bincount(root, weights=(run_end - run_start).astype(np.float64), minlength=n)
    best = int(np.argmax(sizes))                          # first maximum: smallest root, deterministic
    keep = root == best
    marks = np.zeros((h, w + 1), dtype=np.int8)
    marks[run_row[keep], run_start[keep]] = 1
    marks[run_row[keep], run_end[keep]] = -1              # ends never coincide with starts (gap >= 1)
    return np.cumsum(marks, axis=1, dtype=np.int8)[:, :w] > 0


def _touching_runs(row: np.ndarray, start: np.ndarray, end: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of runs on consecutive rows that touch under 8-connectivity.

    Runs are [start, end) in raster order, so per row both starts and ends are increasing and a
    global key row*(width+2)+col is sorted. Run j on row r+1 touches run i on row r when
    start_j <= end_i and start_i <= end_j (diagonal contact included).
    """
    stride = width + 2
    start_key = row.astype(np.int64) * stride + start
    end_key = row.astype(np.int64) * stride + end
    nxt = (row.astype(np.int64) + 1) * stride
    hi = np.searchsorted(start_key, nxt + end, side="right")   # runs on r+1 with start <= end_i
    lo = np.searchsorted(end_key, nxt + start, side="left")    # runs on r+1 with end >= start_i
    lo = np.maximum(lo, np.searchsorted(start_key, nxt, side="left"))
    count = np.maximum(hi - lo, 0)
    total = int(count.sum())
    if total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    a = np.repeat(np.arange(row.size, dtype=np.int64), count)
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    b = np.repeat(lo, count) + offsets
    return a, b


def _union_find(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root (smallest member index) of every node after merging the edges (a, b); vectorised.

    Hook: every root that an edge links to a smaller root points to the smallest such root
    (``np.minimum.at``: order-independent, so deterministic). Then pointer jumping until every
    node points at its root. Pointers only ever decrease, so there are no cycles.
    """
    parent = np.arange(n, dtype=np.int64)
    while a.size:
        pa, pb = parent[a], parent[b]
        differ = pa != pb
        if not differ.any():
            break
        a, b, pa, pb = a[differ], b[differ], pa[differ], pb[differ]
        np.minimum.at(parent, np.maximum(pa, pb), np.minimum(pa, pb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def coarse_component(region: Region, shape: tuple[int, int], trim: int, threshold: int) -> Component | None:
    """Largest component of ``pixel > threshold`` on the strided grid inside the trimmed image."""
    ty, tx, by, bx = trimmed_bounds(shape, trim)
    step = grid_step(by - ty, bx - tx)
    sample = region(slice(ty, by, step), slice(tx, bx, step))
    mask = largest_component(sample > threshold)
    if mask is None:
        return None
    return Component(ty, tx, step, mask)


def find_box(region: Region, shape: tuple[int, int], trim: int, threshold: int,
             component: Component | None = None) -> tuple[Box, Component | None]:
    """Bounding box (y0, x0, y1, x1) of the breast, in the coordinates of the full image.

    No foreground at all: the trimmed image. ``component`` may be passed when already computed
    on the same region and threshold.
    """
    bounds = trimmed_bounds(shape, trim)
    comp = component if component is not None else coarse_component(region, shape, trim, threshold)
    if comp is None:
        return bounds, None
    ty, tx, by, bx = bounds
    s, mask = comp.step, comp.mask
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    i0, i1, j0, j1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    y0, y1 = comp.y0 + i0 * s, comp.y0 + i1 * s + 1
    x0, x1 = comp.x0 + j0 * s, comp.x0 + j1 * s + 1
    if s > 1:
        y0, y1, x0, x1 = _refine(region, comp, bounds, threshold, (i0, i1, j0, j1), (y0, y1, x0, x1))
    return (y0, x0, y1, x1), comp


def _refine(region: Region, comp: Component, bounds: Box, threshold: int,
            cells: tuple[int, int, int, int], box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Extend each side of the grid box through the band up to the next sample line.

    A band pixel counts when it is foreground and lies within one step of the component's cells
    on the outermost sample line of that side, i.e. where the component itself continues.
    """
    ty, tx, by, bx = bounds
    s, mask, oy, ox = comp.step, comp.mask, comp.y0, comp.x0
    i0, i1, j0, j1 = cells
    y0, y1, x0, x1 = box

    def span(line: np.ndarray, origin: int, lo: int, hi: int) -> tuple[int, int]:
        idx = np.flatnonzero(line)
        return max(lo, origin + int(idx[0]) * s - s + 1), min(hi, origin + int(idx[-1]) * s + s)

    def fg_lines(rows: slice, cols: slice, axis: int) -> np.ndarray:
        block = region(rows, cols)
        return np.flatnonzero((block > threshold).any(axis=axis))

    c0, c1 = span(mask[i0], ox, tx, bx)
    top = slice(max(ty, y0 - s + 1), y0)
    if top.start < top.stop and (hit := fg_lines(top, slice(c0, c1), 1)).size:
        y0 = top.start + int(hit[0])
    c0, c1 = span(mask[i1], ox, tx, bx)
    bottom = slice(y1, min(by, y1 + s - 1))
    if bottom.start < bottom.stop and (hit := fg_lines(bottom, slice(c0, c1), 1)).size:
        y1 = bottom.start + int(hit[-1]) + 1
    r0, r1 = span(mask[:, j0], oy, ty, by)
    left = slice(max(tx, x0 - s + 1), x0)
    if left.start < left.stop and (hit := fg_lines(slice(r0, r1), left, 0)).size:
        x0 = left.start + int(hit[0])
    r0, r1 = span(mask[:, j1], oy, ty, by)
    right = slice(x1, min(bx, x1 + s - 1))
    if right.start < right.stop and (hit := fg_lines(slice(r0, r1), right, 0)).size:
        x1 = right.start + int(hit[-1]) + 1
    return y0, y1, x0, x1


def chest_wall_from_pixels(comp: Component | None) -> str | None:
    """'L' or 'R': the side where the breast is tallest (it meets the chest wall there), or None.

    Compares the component's cell counts in the outer tenth of its columns on each side.
    """
    if comp is None:
        return None
    cols = np.flatnonzero(comp.mask.any(axis=0))
    j0, j1 = int(cols[0]), int(cols[-1])
    k = max(1, (j1 - j0 + 1) // 10)
    left = int(comp.mask[:, j0:j0 + k].sum())
    right = int(comp.mask[:, j1 - k + 1:j1 + 1].sum())
    if left == right:
        return None
    return "L" if left > right else "R"
