"""Drawing the labelled findings into a canonical-frame view.

Each finding has one hidden 3-D placement (depth fraction, radial offset, clock angle) and
its sub-structures (calcification particles, spicules, asymmetry lobules) are generated as
3-D offsets from its centre (a = toward the chest wall, lat = lateral, sup = superior) with
the finding's own seed. Both views project the same 3-D objects - CC along the
superior-inferior axis, MLO along the oblique axis at the study's MLO angle - so a lesion
lands at geometrically consistent positions (same distance from the nipple, vertical offset
according to its clock position) in the CC and the MLO.

Boxes are taken from the drawn contribution itself ([x0, y0, x1, y1], pixel edges, x1/y1
exclusive), so they always enclose what was drawn and lie inside the breast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from training.data.phantom_anatomy import BreastModel, BreastShape, PixelGrid
from training.data.phantom_labels import Finding, lateral_superior

Projector = Callable[[np.ndarray], np.ndarray]  # (n, 3) [a, lat, sup] mm -> (n, 2) [dx, dy] mm


def projector(view: str, mlo_angle_deg: float) -> Projector:
    """3-D offsets to canonical image offsets (x toward the nipple, y down)."""
    phi = math.radians(mlo_angle_deg)

    def proj(p: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(p)
        a, lat, sup = p[:, 0], p[:, 1], p[:, 2]
        vertical = lat if view == "CC" else sup * math.cos(phi) + lat * math.sin(phi)
        return np.stack([-a, -vertical], axis=1)

    return proj


def lesion_center(shape: BreastShape, view: str, model: BreastModel, u: float, r: float,
                  angle_deg: float, laterality: str, radius_mm: float = 0.0) -> tuple[float, float]:
    """Canonical-frame centre (mm) of a point at depth u, radial fraction r, clock angle."""
    lat, sup = lateral_superior(angle_deg, laterality)
    if view == "CC":
        w = lat
    else:
        phi = math.radians(model.mlo_angle_deg)
        w = sup * math.cos(phi) + lat * math.sin(phi)
    x = shape.depth_mm * (1.0 - u)
    x = min(x, shape.depth_mm - 1.3 * radius_mm - 2.0)
    x = max(x, min(radius_mm + 4.0, 0.5 * shape.depth_mm))
    upper = w >= 0
    hw = shape.half_height(x, upper)
    if view != "CC":  # the axillary tail would otherwise pull UOQ lesions into the axilla
        hw = min(hw, 1.15 * shape.half_height(x, not upper))
    off = min(r * abs(w) * hw, max(0.0, 0.85 * hw - radius_mm))
    return x, shape.axis_y(x) - math.copysign(off, w)


@dataclass
class _Canvas:
    """Accumulates one finding's contribution in a window of the canonical image."""

    att: np.ndarray
    mask: np.ndarray
    ps: float
    i0: int
    j0: int
    val: np.ndarray

    @classmethod
    def around(cls, att: np.ndarray, mask: np.ndarray, ps: float, x0: float, y0: float,
               x1: float, y1: float) -> "_Canvas | None":
        rows, cols = att.shape
        j0, j1 = max(0, int(x0 / ps)), min(cols, int(math.ceil(x1 / ps)))
        i0, i1 = max(0, int(y0 / ps)), min(rows, int(math.ceil(y1 / ps)))
        if j0 >= j1 or i0 >= i1:
            return None
        return cls(att, mask, ps, i0, j0, np.zeros((i1 - i0, j1 - j0), np.float32))

    def coords(self, cx: float, cy: float, half: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Local window of half-size ``half`` mm around (cx, cy): slices and mm offsets."""
        h, w = self.val.shape
        j0 = max(0, int((cx - half) / self.ps) - self.j0)
        j1 = min(w, int(math.ceil((cx + half) / self.ps)) - self.j0)
        i0 = max(0, int((cy - half) / self.ps) - self.i0)
        i1 = min(h, int(math.ceil((cy + half) / self.ps)) - self.i0)
        if j0 >= j1 or i0 >= i1:
            return None
        dx = ((np.arange(j0, j1) + self.j0 + 0.5) * self.ps - cx).astype(np.float32)[None, :]
        dy = ((np.arange(i0, i1) + self.i0 + 0.5) * self.ps - cy).astype(np.float32)[:, None]
        return (slice(i0, i1), slice(j0, j1)), dx, dy

    def commit(self, threshold: float) -> list[int] | None:
        """Add the contribution (inside the breast only) and return its box."""
        h, w = self.val.shape
        window = (slice(self.i0, self.i0 + h), slice(self.j0, self.j0 + w))
        self.val *= self.mask[window]
        self.att[window] += self.val
        peak = float(self.val.max()) if self.val.size else 0.0
        if peak <= 0:
            return None
        ys, xs = np.nonzero(self.val > threshold * peak)
        return [int(xs.min() + self.j0), int(ys.min() + self.i0),
                int(xs.max() + self.j0 + 1), int(ys.max() + self.i0 + 1)]


def _blob(canvas: _Canvas, cx: float, cy: float, direction: tuple[float, float], length: float,
          width: float, amp: float) -> None:
    """Elongated Gaussian (a calcification particle or a lobule); sub-pixel sizes are
    widened to about a pixel with partial loss of peak, like partial-volume blurring."""
    s_major0, s_minor0 = length / 2.355, width / 2.355
    floor = 0.45 * canvas.ps
    s_major, s_minor = max(s_major0, floor), max(s_minor0, floor)
    amp *= min(1.0, (s_major0 * s_minor0) / (s_major * s_minor)) ** 0.35
    win = canvas.coords(cx, cy, 3.5 * s_major)
    if win is None:
        return
    sl, dx, dy = win
    ux, uy = direction
    along = dx * ux + dy * uy
    across = -dx * uy + dy * ux
    canvas.val[sl] += amp * np.exp(-0.5 * ((along / s_major) ** 2 + (across / s_minor) ** 2))


def _lines(canvas: _Canvas, cx: float, cy: float, segs: np.ndarray, width: float, amp: float,
           start: float = 0.0) -> None:
    """Thin tapering lines radiating from (cx, cy); segs are (n, 2) end offsets in mm."""
    width = max(width, 0.6 * canvas.ps)
    reach = float(np.max(np.hypot(segs[:, 0], segs[:, 1]))) + 2 * width if len(segs) else 0.0
    win = canvas.coords(cx, cy, reach)
    if win is None:
        return
    sl, dx, dy = win
    acc = np.zeros(canvas.val[sl].shape, np.float32)
    for ex, ey in segs:
        length = math.hypot(ex, ey)
        if length < 1e-3:
            continue
        ux, uy = ex / length, ey / length
        t = np.clip((dx * ux + dy * uy) / length, 0.0, 1.0)
        perp2 = (dx - t * ex) ** 2 + (dy - t * ey) ** 2
        w = width * (1.0 - 0.6 * t)
        line = np.exp(-perp2 / (w * w)) * (1.0 - t) ** 0.6 * (t > start)
        np.maximum(acc, line, out=acc)
    canvas.val[sl] += amp * acc


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _draw_mass(att, mask, ps, cx, cy, f: Finding, proj: Projector, view: str) -> list[int] | None:
    rng = np.random.default_rng([f.seed, 1])
    view_rng = np.random.default_rng([f.seed, 2, ("CC", "MLO").index(view)])
    shape_d, margin = f.descriptors["shape"], f.descriptors["margin"]
    radius = f.size_mm / 2.0
    ratio = {"round": rng.uniform(0.88, 1.0), "oval": rng.uniform(0.55, 0.8)}.get(shape_d, rng.uniform(0.65, 0.9))
    orient = view_rng.uniform(0, math.pi)
    if shape_d == "irregular":
        ks = np.arange(2, 7)
        amps = view_rng.uniform(0.05, 0.13, ks.size)
    elif margin == "microlobulated":
        ks = np.array([int(rng.integers(9, 15)), 3])
        amps = np.array([0.06, 0.02])
    else:
        ks, amps = np.array([3]), np.array([0.02])
    phases = view_rng.uniform(0, 2 * math.pi, ks.size)
    spic = np.zeros((0, 2))
    if margin == "spiculated":
        dirs = _unit_vectors(rng, int(rng.integers(12, 24)))
        lengths = radius * rng.uniform(0.9, 2.2, len(dirs))
        spic = proj(dirs * lengths[:, None])
    reach = radius * (1.0 + amps.sum()) * 1.5 + (float(np.abs(spic).max()) if len(spic) else 0.0) + 3 * ps
    canvas = _Canvas.around(att, mask, ps, cx - reach, cy - reach, cx + reach, cy + reach)
    if canvas is None:
        return None
    sl, dx, dy = canvas.coords(cx, cy, reach)
    rr = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    c, s = np.cos(phi - orient), np.sin(phi - orient)
    rb = radius / np.sqrt(c * c + (s / ratio) ** 2)
    for k, a, ph in zip(ks, amps, phases):
        rb = rb * (1.0 + a * np.cos(k * phi + ph))
    q = rr / rb
    floor = 0.7 * ps / radius
    ew = {"circumscribed": 0.03, "microlobulated": 0.05, "indistinct": 0.22, "spiculated": 0.12}.get(margin, 0.03)
    ew = np.float32(max(ew, floor))
    veil = None
    if margin == "obscured":  # a sector of the margin hidden by overlapping tissue
        phi0 = view_rng.uniform(-math.pi, math.pi)
        sector = np.exp(-((np.angle(np.exp(1j * (phi - phi0)))) / 0.9) ** 2)
        ew = np.maximum(ew, 0.3 * sector).astype(np.float32)
        ox, oy = radius * math.cos(phi0), radius * math.sin(phi0)
        veil = 0.07 * np.exp(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * (0.8 * radius) ** 2))
    contrast = 0.17 + 0.08 * min(1.0, radius / 10.0)
    core = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0))
    prof = (0.5 + 0.5 * np.tanh((1.0 - q) / (2.0 * ew))) * (0.5 + 0.5 * core)
    canvas.val[sl] += contrast * prof
    if len(spic):
        _lines(canvas, cx, cy, spic, width=max(0.5, 0.09 * radius), amp=0.5 * contrast, start=0.0)
    box = canvas.commit(0.25)
    if veil is not None:  # overlapping normal tissue: drawn, but not part of the finding's box
        rows = slice(canvas.i0 + sl[0].start, canvas.i0 + sl[0].stop)
        cols = slice(canvas.j0 + sl[1].start, canvas.j0 + sl[1].stop)
        att[rows, cols] += veil * mask[rows, cols]
    return box


def _draw_distortion(att, mask, ps, cx, cy, f: Finding, proj: Projector) -> list[int] | None:
    rng = np.random.default_rng([f.seed, 1])
    dirs = _unit_vectors(rng, int(rng.integers(9, 17)))
    lengths = f.size_mm / 2.0 * rng.uniform(0.55, 1.0, len(dirs))
    segs = proj(dirs * lengths[:, None])
    reach = float(np.abs(segs).max()) + 3.0
    canvas = _Canvas.around(att, mask, ps, cx - reach, cy - reach, cx + reach, cy + reach)
    if canvas is None:
        return None
    _lines(canvas, cx, cy, segs, width=0.35, amp=0.075, start=0.04)
    return canvas.commit(0.2)


def _draw_asymmetry(att, mask, ps, cx, cy, f: Finding, proj: Projector) -> list[int] | None:
    rng = np.random.default_rng([f.seed, 1])
    n = int(rng.integers(8, 15))
    half = f.size_mm / 2.0
    pts = _unit_vectors(rng, n) * (half * rng.uniform(0.0, 0.75, n) ** 0.5)[:, None]
    sig = rng.uniform(0.12, 0.25, n) * half
    xy = proj(pts)
    reach = float(np.abs(xy).max() + 3.0 * sig.max())
    canvas = _Canvas.around(att, mask, ps, cx - reach, cy - reach, cx + reach, cy + reach)
    if canvas is None:
        return None
    sl, dx, dy = canvas.coords(cx, cy, reach)
    acc = np.zeros(canvas.val[sl].shape, np.float32)
    for (ox, oy), s in zip(xy, sig):
        acc += np.exp(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2.0 * s * s))
    canvas.val[sl] += 0.15 * (1.0 - np.exp(-acc / 0.8))
    return canvas.commit(0.35)


# Particle recipes: (count per distribution, diameter range mm, elongation range, amplitude).
_CALC = {
    "round": ({"grouped": (3, 8), "regional": (8, 18), "diffuse": (15, 35)}, (0.5, 1.5), (1.0, 1.15), 0.42),
    "coarse": ({"grouped": (1, 3), "regional": (3, 6), "diffuse": (4, 8)}, (0.8, 1.6), (1.0, 1.6), 0.45),
    "punctate": ({"grouped": (5, 12), "regional": (15, 30), "diffuse": (25, 50)}, (0.2, 0.45), (1.0, 1.2), 0.36),
    "amorphous": ({"grouped": (10, 22), "regional": (25, 50), "segmental": (20, 40)}, (0.1, 0.25), (1.0, 1.3), 0.16),
    "coarse_heterogeneous": ({"grouped": (6, 15), "regional": (15, 30)}, (0.4, 0.9), (1.2, 2.0), 0.3),
    "fine_pleomorphic": (
        {"grouped": (8, 20), "linear": (10, 24), "segmental": (20, 40)}, (0.1, 0.4), (1.0, 3.0), 0.38),
    "fine_linear_branching": (
        {"grouped": (8, 15), "linear": (12, 25), "segmental": (20, 40)}, (0.12, 0.25), (3.0, 8.0), 0.36),
}


def _calc_particles(f: Finding, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """3-D particle offsets, 3-D orientations, lengths, widths and amplitudes."""
    morph, dist = f.descriptors["morphology"], f.descriptors["distribution"]
    counts, diam, elong, amp = _CALC[morph]
    n = int(rng.integers(counts[dist][0], counts[dist][1] + 1))
    size = f.size_mm
    axis = np.array([1.0, rng.uniform(-0.35, 0.35), rng.uniform(-0.35, 0.35)])
    axis /= np.linalg.norm(axis)
    if dist == "grouped":
        pos = np.clip(rng.normal(0, size / 4.0, (n, 3)), -size / 2, size / 2)
    elif dist == "linear":
        pos = np.outer(rng.uniform(-size / 2, size / 2, n), axis) + rng.normal(0, 0.6, (n, 3))
    elif dist == "segmental":  # a wedge whose apex points to the nipple
        t = rng.uniform(0, 1, n) ** 0.7
        pos = np.outer((t - 0.5) * size, axis) + rng.normal(0, 1, (n, 3)) * (0.3 * size * t)[:, None]
    else:  # regional (diffuse particles are placed over the whole breast by the caller)
        pos = _unit_vectors(rng, n) * (size / 2 * rng.uniform(0, 1, n) ** (1 / 3))[:, None]
    d = rng.uniform(*diam, n)
    e = rng.uniform(*elong, n)
    if morph == "fine_linear_branching":
        dirs = axis + rng.normal(0, 0.35, (n, 3))
    else:
        dirs = rng.standard_normal((n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    amps = amp * rng.uniform(0.8, 1.2, n)
    if morph in ("coarse", "coarse_heterogeneous"):  # clumps of several sub-blobs
        k = 5 if morph == "coarse" else 2
        spread = 1.6 if morph == "coarse" else 0.4
        pos = np.repeat(pos, k, axis=0) + rng.normal(0, spread, (n * k, 3))
        dirs = np.repeat(dirs, k, axis=0)
        d, e, amps = np.repeat(d, k), np.repeat(e, k), np.repeat(amps, k)
    return pos, dirs, d * e, d, amps


def _draw_calcifications(att, mask, ps, cx, cy, f: Finding, proj: Projector, view: str,
                         shape: BreastShape, model: BreastModel) -> list[int] | None:
    rng = np.random.default_rng([f.seed, 1])
    pos, dirs, lengths, widths, amps = _calc_particles(f, rng)
    if f.descriptors["distribution"] == "diffuse":
        prng = np.random.default_rng([f.seed, 3])
        centers = np.array([lesion_center(shape, view, model, float(prng.uniform(0.1, 0.85)),
                                          float(prng.uniform(0, 0.8)), float(prng.uniform(0, 360)), f.laterality)
                            for _ in range(len(pos))])
    else:
        centers = proj(pos) + np.array([cx, cy])
    d2 = proj(dirs)
    norm = np.hypot(d2[:, 0], d2[:, 1]) + 1e-6
    rows, cols = mask.shape
    pix = np.clip((centers / ps).astype(int), 0, [cols - 1, rows - 1])
    keep = mask[pix[:, 1], pix[:, 0]]
    if not keep.any():  # never lose the whole finding: keep the particle nearest the centre
        keep[np.argmin(np.hypot(centers[:, 0] - cx, centers[:, 1] - cy))] = True
    centers, d2, norm = centers[keep], d2[keep], norm[keep]
    lengths, widths, amps = lengths[keep], widths[keep], amps[keep]
    margin = float(lengths.max()) + 3 * ps
    lo, hi = centers.min(axis=0) - margin, centers.max(axis=0) + margin
    canvas = _Canvas.around(att, mask, ps, lo[0], lo[1], hi[0], hi[1])
    if canvas is None:
        return None
    for (x, y), (ux, uy), n_, length, width, amp in zip(centers, d2, norm, lengths, widths, amps):
        proj_len = max(width, length * min(1.0, n_))  # foreshortened along the beam
        _blob(canvas, float(x), float(y), (ux / n_, uy / n_), proj_len, width, float(amp))
    return canvas.commit(0.3 * float(amps.min()) / float(amps.max()))


def draw_findings(att: np.ndarray, mask: np.ndarray, grid: PixelGrid, shape: BreastShape, view: str,
                  model: BreastModel, findings: Sequence[Finding]) -> dict[str, list[int]]:
    """Draw every finding visible in ``view`` into ``att``; returns canonical-frame boxes."""
    ps = grid.spacing_mm
    proj = projector(view, model.mlo_angle_deg)
    boxes: dict[str, list[int]] = {}
    for f in findings:
        if view not in f.seen_in:
            continue
        radius = min(f.size_mm / 2.0, 20.0) if f.kind != "calcification" else min(f.size_mm / 2.0, 8.0)
        cx, cy = lesion_center(shape, view, model, f.u, f.r, f.angle_deg, f.laterality, radius)
        if f.kind == "mass":
            box = _draw_mass(att, mask, ps, cx, cy, f, proj, view)
        elif f.kind == "calcification":
            box = _draw_calcifications(att, mask, ps, cx, cy, f, proj, view, shape, model)
        elif f.kind == "architectural_distortion":
            box = _draw_distortion(att, mask, ps, cx, cy, f, proj)
        else:
            box = _draw_asymmetry(att, mask, ps, cx, cy, f, proj)
        if box is not None:
            boxes[f.id] = box
    return boxes
