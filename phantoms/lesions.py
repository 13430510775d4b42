"""Drawing the labelled findings into a canonical-frame view.

Each finding has one hidden 3-D placement (depth fraction, radial offset, clock angle) and
its sub-structures (calcification particles, spicules, asymmetry lobules) are generated as
3-D offsets from its centre (a = toward the chest wall, lat = lateral, sup = superior) with
the finding's own seed. Both views project the same 3-D objects - CC along the
superior-inferior axis, MLO along the oblique axis at the study's MLO angle - so a lesion
lands at geometrically consistent positions (same distance from the nipple, vertical offset
according to its clock position) in the CC and the MLO.

Boxes are taken from the drawn contribution itself ([x0, y0, x1, y1], pixel edges, x1/y1
exclusive), so they always enclose what was drawn and lie inside the breast; a mass's box is
the extent of its own attenuation, because the tissue it displaces can cancel its net
contribution. Mass contrast is set against the anatomy's glandular step by the BI-RADS mass
density descriptor (docs/phantom.md, "Calibration and sources (version 2)").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from phantoms.anatomy import (
    GLANDULAR_STEP,
    MLO_THICKNESS_SCALE,
    PARENCHYMA_BETA,
    BreastModel,
    BreastShape,
    PixelGrid,
    tissue_floor,
)
from phantoms.labels import Finding, lateral_superior

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

    def commit(self, threshold: float, support: np.ndarray | None = None) -> list[int] | None:
        """Add the contribution (inside the breast only) and return its box: where ``support``
        (the lesion's own extent; the contribution itself when None) exceeds threshold x peak."""
        h, w = self.val.shape
        window = (slice(self.i0, self.i0 + h), slice(self.j0, self.j0 + w))
        self.val *= self.mask[window]
        self.att[window] += self.val
        extent = self.val if support is None else support * self.mask[window]
        peak = float(extent.max()) if extent.size else 0.0
        if peak <= 0:
            return None
        ys, xs = np.nonzero(extent > threshold * peak)
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


# ----------------------------------------------------------------------------- masses
# Calibration and sources: docs/phantom.md, "Calibration and sources (version 2)".
#
# A mass's own projected attenuation at its centre, relative to GLANDULAR_STEP, for a mass of
# the reference diameter, per BI-RADS mass density ("density of the mass relative to an equal
# volume of fibroglandular tissue"). Equal: within the parenchyma's own +-22 % texture
# modulation; high: clearly above it, at most ~2x because fibroglandular tissue, whose
# attenuation is close to a carcinoma's, rarely fills more than half of a ray (Nelson et al.,
# Med Phys 2008;35:1078; Yaffe et al., Med Phys 2009;36:5437); low: clearly below, still tissue.
MASS_DENSITY_CONTRAST: dict[str, tuple[float, float]] = {
    "high": (1.3, 2.0), "equal": (0.85, 1.15), "low": (0.4, 0.7)}
# An equal-size piece of parenchyma with a 1/f^beta spectrum has a projected contrast growing
# as size^((beta-2)/2), so a mass keeps its density descriptor at every size with this law.
MASS_REF_DIAMETER_MM = 15.0          # middle of the phantom's mass sizes (5-30 mm)
MASS_CHORD_EXPONENT = (PARENCHYMA_BETA - 2.0) / 2.0
# Fat-containing masses (lipoma, oil cyst): fat density inside a thin water-density capsule.
CAPSULE_MM = (0.5, 1.0)
# Margins at physical scale (BI-RADS Atlas 5th ed.): circumscribed = abrupt transition;
# indistinct = no clear demarcation; microlobulated = short-cycle undulations of a few mm;
# obscured = more than 25 % of the margin hidden by superimposed tissue. MARGIN_EDGE_MM is the
# edge's tanh scale (the 10-90 % rise spans 4.4 x it), the version-1 values at a 20 mm mass.
# Microlobules: six random harmonics of 2-4 mm wavelength along the margin, each 15-45 % of a
# 0.4-0.8 mm depth.
MARGIN_EDGE_MM = {"circumscribed": 0.3, "obscured": 0.3, "microlobulated": 0.5, "spiculated": 1.2, "indistinct": 2.2}
MICROLOBULE_WAVELENGTH_MM = (2.0, 4.0)
MICROLOBULE_DEPTH_MM = (0.4, 0.8)
OBSCURED_FRACTION = (0.3, 0.5)       # share of the margin hidden
OBSCURED_EDGE_MM = 3.0
OBSCURING_VEIL = 0.07                # superimposed fibroglandular strand (about a quarter step)
# Spicules: maximum length beyond the tumour margin 9.5 +- 5.1 mm (Tuomainen et al., Radiol
# Oncol 2025;59:168-175); each spicule 30-100 % of that. Base width (Gaussian half-width)
# 0.09 x radius within 0.5-1.4 mm, tapering, kept from version 1 (no measurement found).
SPICULE_MAX_MM = (9.5, 5.1, 3.0, 20.0)   # mean, sd, clip low, clip high
SPICULE_WIDTH_MM = (0.5, 1.4)
SPICULE_CONTRAST = 0.3               # x GLANDULAR_STEP: a fibrous strand about 1 mm across


def mass_peak(contrast_ratio: float, beam_diameter_mm: float) -> float:
    """Own projected attenuation at the centre of a mass of that diameter along the beam whose
    density is ``contrast_ratio`` x that of an equal volume of fibroglandular tissue."""
    scale = (beam_diameter_mm / MASS_REF_DIAMETER_MM) ** MASS_CHORD_EXPONENT
    return GLANDULAR_STEP * contrast_ratio * scale


def _mass_outline(f: Finding, rng: np.random.Generator, view_rng: np.random.Generator,
                  ) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """Axis ratio, orientation and boundary harmonics (k, amplitude, phase) of one view."""
    shape_d, margin = f.descriptors["shape"], f.descriptors["margin"]
    radius = f.size_mm / 2.0
    ratio = {"round": (0.88, 1.0), "oval": (0.55, 0.8)}.get(shape_d, (0.65, 0.9))
    ratio = float(rng.uniform(*ratio))
    orient = float(view_rng.uniform(0, math.pi))
    if shape_d == "irregular":
        ks = np.arange(2, 7)
        amps = view_rng.uniform(0.05, 0.13, ks.size)
    elif margin == "microlobulated":
        # Random harmonics whose wavelengths along the margin span the undulation range,
        # so the lobules are short-cycle but irregular.
        lo, hi = MICROLOBULE_WAVELENGTH_MM
        k_lo = max(6, int(round(2 * math.pi * radius / hi)))
        k_hi = max(k_lo + 5, int(round(2 * math.pi * radius / lo)))
        ks = np.concatenate([np.sort(rng.choice(np.arange(k_lo, k_hi + 1), 6, replace=False)), [3]])
        depth = rng.uniform(*MICROLOBULE_DEPTH_MM) / radius
        amps = np.concatenate([depth * rng.uniform(0.15, 0.45, 6), [0.02]])
    else:
        ks, amps = np.array([3]), np.array([0.02])
    phases = view_rng.uniform(0, 2 * math.pi, ks.size)
    return ratio, orient, ks, amps, phases


def _spicules(f: Finding, rng: np.random.Generator, proj: Projector) -> np.ndarray:
    """Projected spicule end points (mm from the centre); empty unless spiculated."""
    if f.descriptors["margin"] != "spiculated":
        return np.zeros((0, 2))
    mean, sd, lo, hi = SPICULE_MAX_MM
    longest = float(np.clip(rng.normal(mean, sd), lo, hi))
    dirs = _unit_vectors(rng, int(rng.integers(12, 24)))
    lengths = f.size_mm / 2.0 + longest * rng.uniform(0.3, 1.0, len(dirs))
    return proj(dirs * lengths[:, None])


def _draw_mass(att, mask, ps, cx, cy, f: Finding, proj: Projector, view: str,
               shape: BreastShape, thickness_mm: float) -> list[int] | None:
    """A mass: its own attenuation, set by its density descriptor against the glandular step,
    in place of the tissue its chord displaces; a fat-containing mass is a fat-density centre
    inside a thin capsule."""
    rng = np.random.default_rng([f.seed, 1])
    view_rng = np.random.default_rng([f.seed, 2, ("CC", "MLO").index(view)])
    margin, density = f.descriptors["margin"], f.descriptors.get("density", "equal")
    radius = f.size_mm / 2.0
    ratio, orient, ks, amps, phases = _mass_outline(f, rng, view_rng)
    spic = _spicules(f, rng, proj)
    fat = density == "fat_containing"
    contrast = 1.0 if fat else float(rng.uniform(*MASS_DENSITY_CONTRAST[density]))
    capsule = float(rng.uniform(*CAPSULE_MM))
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
    ew = np.float32(max(MARGIN_EDGE_MM[margin], 0.7 * ps) / radius)
    veil = None
    if margin == "obscured":  # a sector of the margin hidden by superimposed tissue
        phi0 = view_rng.uniform(-math.pi, math.pi)
        width = math.pi * view_rng.uniform(*OBSCURED_FRACTION) / math.sqrt(math.log(2.0))
        sector = np.exp(-((np.angle(np.exp(1j * (phi - phi0)))) / width) ** 2)
        ew = np.maximum(ew, (OBSCURED_EDGE_MM / radius) * sector).astype(np.float32)
        ox, oy = radius * math.cos(phi0), radius * math.sin(phi0)
        veil = OBSCURING_VEIL * np.exp(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * (0.8 * radius) ** 2))
    beam_mm = f.size_mm * math.sqrt(ratio)          # diameter along the beam (third axis)
    edge = 0.5 + 0.5 * np.tanh((1.0 - q) / (2.0 * ew))
    core = np.sqrt(np.clip(1.0 - q * q, 0.0, 1.0))
    rows = slice(canvas.i0 + sl[0].start, canvas.i0 + sl[0].stop)
    cols = slice(canvas.j0 + sl[1].start, canvas.j0 + sl[1].stop)
    ys = (np.arange(rows.start, rows.stop) + 0.5) * ps
    xs = (np.arange(cols.start, cols.stop) + 0.5) * ps
    excess = np.maximum(att[rows, cols] - tissue_floor(shape, ps, ys, xs), 0.0)   # glandular part
    equal_volume = mass_peak(1.0, beam_mm)             # an equal volume of fibroglandular tissue
    support = np.zeros_like(canvas.val)                 # the mass's own extent, for its box
    if fat:
        # Fat density inside: the glandular tissue in the mass's place (at most an equal volume
        # of fully glandular tissue) is removed, so no pixel goes below fat (plus muscle).
        tau = min(0.5, capsule / radius)
        inner = np.sqrt(np.clip((1.0 - tau) ** 2 - q * q, 0.0, None)) / (1.0 - tau)
        shell = core - (1.0 - tau) * inner              # projected capsule chord / diameter
        canvas.val[sl] += (equal_volume * shell - np.minimum(excess, equal_volume * inner)) * edge
        support[sl] = equal_volume * (0.5 + 0.5 * core) * edge
    else:
        # A solid mass adds its own attenuation and displaces the tissue its chord occupies,
        # so the parenchyma in front of and behind it still shows through.
        occupied = min(0.9, beam_mm / thickness_mm)
        own = mass_peak(contrast, beam_mm) * (0.5 + 0.5 * core) * edge
        canvas.val[sl] += own - excess * occupied * core * edge
        support[sl] = own
    if len(spic):
        lines = _Canvas(att, mask, ps, canvas.i0, canvas.j0, np.zeros_like(canvas.val))
        width = float(np.clip(0.09 * radius, *SPICULE_WIDTH_MM))
        _lines(lines, cx, cy, spic, width=width, amp=SPICULE_CONTRAST * GLANDULAR_STEP, start=0.0)
        canvas.val += lines.val
        support += lines.val
    box = canvas.commit(0.25, support)
    if veil is not None:  # superimposed normal tissue: drawn, but not part of the finding's box
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
# Checked against the BI-RADS Atlas 5th ed. (docs/phantom.md): round >= 0.5 mm, punctate
# < 0.5 mm, coarse ("popcorn") clumps > 2-3 mm, coarse heterogeneous generally 0.5-1 mm, fine
# pleomorphic < 0.5 mm, fine linear < 0.5 mm wide; grouped = at least 5 calcifications within
# 1 cm, extent up to 2 cm; regional > 2 cm. Version 2 changed the two entries that disagreed:
# round grouped had 3-4 calcifications, coarse heterogeneous reached down to 0.4 mm.
_CALC = {
    "round": ({"grouped": (5, 8), "regional": (8, 18), "diffuse": (15, 35)}, (0.5, 1.5), (1.0, 1.15), 0.42),
    "coarse": ({"grouped": (1, 3), "regional": (3, 6), "diffuse": (4, 8)}, (0.8, 1.6), (1.0, 1.6), 0.45),
    "punctate": ({"grouped": (5, 12), "regional": (15, 30), "diffuse": (25, 50)}, (0.2, 0.45), (1.0, 1.2), 0.36),
    "amorphous": ({"grouped": (10, 22), "regional": (25, 50), "segmental": (20, 40)}, (0.1, 0.25), (1.0, 1.3), 0.16),
    "coarse_heterogeneous": ({"grouped": (6, 15), "regional": (15, 30)}, (0.5, 1.0), (1.2, 2.0), 0.3),
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
    thickness = model.thickness_mm * (MLO_THICKNESS_SCALE if view == "MLO" else 1.0)
    boxes: dict[str, list[int]] = {}
    for f in findings:
        if view not in f.seen_in:
            continue
        radius = min(f.size_mm / 2.0, 20.0) if f.kind != "calcification" else min(f.size_mm / 2.0, 8.0)
        cx, cy = lesion_center(shape, view, model, f.u, f.r, f.angle_deg, f.laterality, radius)
        if f.kind == "mass":
            box = _draw_mass(att, mask, ps, cx, cy, f, proj, view, shape, thickness)
        elif f.kind == "calcification":
            box = _draw_calcifications(att, mask, ps, cx, cy, f, proj, view, shape, model)
        elif f.kind == "architectural_distortion":
            box = _draw_distortion(att, mask, ps, cx, cy, f, proj)
        else:
            box = _draw_asymmetry(att, mask, ps, cx, cy, f, proj)
        if box is not None:
            boxes[f.id] = box
    return boxes
