"""CAD marks: the lesion map of a VersaMammo package turned into findings on the source images.

Why: radiologists read *where* a CAD looked (a region with a score on each image), not a grid of
probabilities on a cropped, squashed copy of it. A VersaMammo package with a lesion map gives one
probability per cell of the student's feature grid over the model image (8 x 8 for the tiny
student, 16 x 16 for the full one). A mark is a local maximum of that map at or above the mark
threshold; its region is the cells connected to the peak that hold at least half the peak (within a
quarter of the grid of its plateau), its centre the probability-weighted centre of those cells; a maximum
inside a better mark's region is that mark (one large lesion, one mark). Region and centre are
mapped back through the inverse of the crop, mirror and resize that made the model image
(``models.preprocess.geometry``, the code training uses for lesion boxes), so they are in pixel
coordinates of the source image the SR references.

The map is class-agnostic; a mark's kind is the lesion kind (mass, calcification, distortion,
asymmetry) the classifier gives the highest probability on the same image, and both scores are
kept. Pure numpy, torch-free (the node imports it); ``bench.froc`` measures it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from models.preprocess.geometry import ModelGeometry, clip_box

# Lesion kinds of a mark and the classifier findings (models.package.labels.FINDING_CLASSES) behind each.
KINDS: dict[str, tuple[str, ...]] = {
    "mass": ("Mass",),
    "calcification": ("Suspicious Calcification",),
    "distortion": ("Architectural Distortion",),
    "asymmetry": ("Asymmetry", "Focal Asymmetry", "Global Asymmetry"),
}
REGION_FRACTION = 0.5  # a neighbour cell is part of a mark's region at >= this fraction of its peak


@dataclass(frozen=True)
class Mark:
    """One CAD mark on one source image (pixel-edge coordinates: (0, 0) is the top-left corner)."""

    position: str                                 # "R-CC", "R-MLO", "L-CC", "L-MLO"
    kind: str                                     # a key of KINDS
    score: float                                  # lesion-map probability at the peak
    kind_score: float                             # the classifier's probability of that kind on the image
    center: tuple[float, float]                   # (x = column, y = row) on the source pixel array
    box: tuple[float, float, float, float]        # (x0, y0, x1, y1) on the source pixel array

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, rounded to what the encoders write (0.1 pixel, 4 digits of probability)."""
        d = asdict(self)
        d["score"], d["kind_score"] = round(self.score, 4), round(self.kind_score, 4)
        d["center"] = [round(v, 1) for v in self.center]
        d["box"] = [round(v, 1) for v in self.box]
        return d


def _radius(shape: tuple[int, ...]) -> int:
    """How far (in cells) a mark's region may reach from its peak: a quarter of the grid side (2 cells
    on the tiny student's 8 x 8, 4 on the full one's 16 x 16), about the largest mass the phantom and
    screening images hold, so a diffuse map cannot make one region of the whole breast."""
    return max(1, round(max(shape) / 4))


def _connected(prob: np.ndarray, seeds: list[tuple[int, int]], floor: float,
               near: list[tuple[int, int]] | None = None, reach: int = 0) -> set[tuple[int, int]]:
    """Cells 8-connected to ``seeds`` at >= ``floor`` (and, with ``near``, within ``reach`` cells of one of them)."""
    seen, todo = set(seeds), list(seeds)
    while todo:
        rr, cc = todo.pop()
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                y, x = rr + dy, cc + dx
                if ((y, x) in seen or not (0 <= y < prob.shape[0] and 0 <= x < prob.shape[1])
                        or float(prob[y, x]) < floor):
                    continue
                if near is not None and min(max(abs(y - ny), abs(x - nx)) for ny, nx in near) > reach:
                    continue
                seen.add((y, x))
                todo.append((y, x))
    return seen


def _component(prob: np.ndarray, r: int, c: int) -> list[tuple[int, int]]:
    """The peak's region: the cells connected to the peak (r, c) (8-neighbours) at >= REGION_FRACTION
    of its value, within _radius cells of the peak's plateau (the connected cells as high as it: a
    saturated map's peak is a plateau over the whole lesion)."""
    peak = float(prob[r, c])
    plateau = sorted(_connected(prob, [(r, c)], peak - 1e-6 * max(peak, 1.0)))
    return sorted(_connected(prob, plateau, REGION_FRACTION * peak, plateau, _radius(prob.shape)))


def peaks(prob: np.ndarray, threshold: float, limit: int) -> list[tuple[int, int, float]]:
    """(row, col, value) of the local maxima of a 2-D map at or above ``threshold``, best first, at
    most ``limit``; a maximum inside the region of a better one (a plateau, the shoulder of one large
    lesion) is the same lesion and not kept."""
    g = np.asarray(prob, dtype=np.float64)
    padded = np.pad(g, 1, constant_values=-np.inf)
    neighbours = np.stack([padded[1 + dy:1 + dy + g.shape[0], 1 + dx:1 + dx + g.shape[1]]
                           for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    candidates = np.argwhere((g >= neighbours.max(axis=0)) & (g >= threshold))
    ordered = sorted(((int(r), int(c), float(g[r, c])) for r, c in candidates), key=lambda t: (-t[2], t[0], t[1]))
    kept: list[tuple[int, int, float]] = []
    covered: set[tuple[int, int]] = set()
    for r, c, v in ordered:
        if len(kept) >= limit:
            break
        if (r, c) not in covered:
            kept.append((r, c, v))
            covered.update(_component(g, r, c))
    return kept


def _region(prob: np.ndarray, r: int, c: int) -> tuple[list[tuple[int, int]], tuple[float, float]]:
    """The peak's region (_component) and its probability-weighted centre (in cell units, cell
    centres at +0.5)."""
    cells = _component(prob, r, c)
    w = np.asarray([float(prob[rr, cc]) for rr, cc in cells])
    if not w.sum() > 0:  # a flat zero map (threshold 0): the peak cell's centre
        return [(r, c)], (c + 0.5, r + 0.5)
    cy = float(np.dot(w, [rr + 0.5 for rr, _ in cells]) / w.sum())
    cx = float(np.dot(w, [cc + 0.5 for _, cc in cells]) / w.sum())
    return cells, (cx, cy)


def lesion_kind(findings: np.ndarray | None, labels: Sequence[str]) -> tuple[str, float]:
    """(kind, probability): the lesion kind with the highest classifier probability on the image."""
    if findings is None:
        return "mass", 0.0
    index = {name: i for i, name in enumerate(labels)}
    best = ("mass", -1.0)
    for kind, names in KINDS.items():
        p = max((float(findings[index[n]]) for n in names if n in index), default=-1.0)
        if p > best[1]:
            best = (kind, p)
    return best[0], max(best[1], 0.0)


def image_marks(position: str, prob: np.ndarray, geometry: ModelGeometry, model_size: tuple[int, int],
                source_shape: tuple[int, int], findings: np.ndarray | None, labels: Sequence[str],
                threshold: float, limit: int) -> list[Mark]:
    """The marks of one image: ``prob`` is its (G, G) lesion map over the ``model_size`` (rows,
    cols) model image that ``geometry`` made from a source of ``source_shape`` (rows, cols)."""
    prob = np.asarray(prob, dtype=np.float64)
    rows, cols = model_size
    cell_h, cell_w = rows / prob.shape[0], cols / prob.shape[1]
    height, width = source_shape
    kind, kind_score = lesion_kind(findings, labels)
    out = []
    for r, c, value in peaks(prob, threshold, limit):
        cells, (cx, cy) = _region(prob, r, c)
        model_box = (min(cc for _, cc in cells) * cell_w, min(rr for rr, _ in cells) * cell_h,
                     (max(cc for _, cc in cells) + 1) * cell_w, (max(rr for rr, _ in cells) + 1) * cell_h)
        box = clip_box(geometry.box_to_source(model_box), width, height)
        if box is None:  # the region lies in the padding of a "pad" resize: nothing of the breast
            continue
        x, y = geometry.to_source(cx * cell_w, cy * cell_h)
        center = (min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3]))
        out.append(Mark(position=position, kind=kind, score=value, kind_score=kind_score, center=center, box=box))
    return out


def lesion_map_record(prob: np.ndarray, geometry: ModelGeometry, model_size: tuple[int, int]) -> dict[str, Any]:
    """One image's lesion map as the result keeps it (JSON): the probabilities (3 digits), the
    geometry that maps them back onto the source image, and the model image size
    (node.outputs.heatmap_sc draws it)."""
    return {"map": np.round(np.asarray(prob, dtype=np.float64), 3).tolist(), "geometry": asdict(geometry),
            "model_size": [int(v) for v in model_size]}


def mark_settings(localization: dict[str, Any] | None, threshold: float | None,
                  limit: int) -> dict[str, Any]:
    """What the result records about localisation: attempted or not (and why), and the settings."""
    if localization is None:
        return {"attempted": False, "why": "the VersaMammo package has no lesion map"}
    chosen = threshold if threshold is not None else float(localization.get("mark_threshold", 0.5))
    return {"attempted": True, "mark_threshold": round(float(chosen), 4), "max_marks_per_image": int(limit)}


__all__ = ["KINDS", "Mark", "image_marks", "lesion_kind", "lesion_map_record", "mark_settings", "peaks"]
