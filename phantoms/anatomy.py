"""Phantom anatomy: breast silhouette, thickness fall-off, skin, pectoral muscle, parenchyma.

Everything is modelled in millimetres in a *canonical frame*: chest wall at the left edge
(x = 0, x grows toward the nipple), y grows downward. For CC views the top of the image is
the lateral side, for MLO views it is the superolateral side (axilla). Right-breast images
are the canonical frame mirrored left-right, so in the stored pixels R images have the chest
wall on the right edge and L images on the left edge (the back-to-back hanging convention).
See ``PATIENT_ORIENTATION`` for the matching DICOM Patient Orientation values.

Images are float32 in [0, 1] (MONOCHROME2 sense: brighter = more attenuating). The
parenchyma is low-pass filtered noise made on a fixed coarse millimetre grid (the same
anatomy for "small" and "full"), thresholded to the density class's fraction, upsampled.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from phantoms.labels import BreastLabels

# (row direction, column direction) for the stored pixel layout described above.
PATIENT_ORIENTATION: dict[tuple[str, str], tuple[str, str]] = {
    ("R", "CC"): ("P", "L"),
    ("L", "CC"): ("A", "R"),
    ("R", "MLO"): ("P", "FL"),
    ("L", "MLO"): ("A", "FR"),
    ("R", "XCCL"): ("P", "L"),
    ("L", "XCCL"): ("A", "R"),
}

# Texture grids cover a fixed field so both sizes show the same anatomy.
_FIELD_MM = (240.0, 200.0)           # rows (y) x cols (x)
_GLAND_CELL_MM = (0.5, 0.8)          # coarser along x: parenchyma streaks toward the nipple
_BACKGROUND = 0.03

# Tissue attenuation per unit of the thickness profile, in the image's for-presentation-like
# units (0 = air, 1 = full scale). The lesions are calibrated against these steps (see
# docs/phantom.md, "Calibration and sources (version 2)").
FAT_ATTENUATION = 0.26      # adipose tissue: the floor a radiolucent (fat-containing) lesion cannot go below
GLANDULAR_STEP = 0.30       # fully fibroglandular tissue above fat: "fibroglandular density" in the image
PECTORAL_STEP = 0.17        # pectoral muscle above the breast tissue it overlies
MLO_THICKNESS_SCALE = 0.95  # the MLO view compresses the breast a little thinner than the CC
SKIN_FALLOFF_MM = 14.0      # the projected thickness falls off (sqrt profile) over this rim toward the skin
# Power-law exponent of the parenchyma (1/f^beta); mammographic backgrounds measure beta ~ 3
# (Burgess, Jacobson & Judy, Med Phys 2001;28:419-437).
PARENCHYMA_BETA = 3.0


@dataclass(frozen=True)
class PixelGrid:
    rows: int
    cols: int
    spacing_mm: float
    bits_stored: int

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1


GRIDS: dict[str, PixelGrid] = {
    "small": PixelGrid(512, 416, 0.455, 12),
    "full": PixelGrid(3328, 2560, 0.07, 14),
}


@dataclass(frozen=True)
class BreastShape:
    """Silhouette of one view in canonical mm.

    Inside the breast when (x/D)^p + ((y - axis(x))/b)^2 < 1, with separate b and p above
    (lateral/axillary side) and below the nipple axis.
    """

    depth_mm: float          # chest wall to nipple tip (D)
    axis_y_mm: float         # nipple axis height at the chest wall
    droop: float             # dy/dx of the nipple axis (MLO breasts sag)
    half_up_mm: float
    half_down_mm: float
    power_up: float
    power_down: float
    pectoral: tuple[float, float, float] | None  # (width at top edge, height at chest wall, bulge)
    nipple_mm: float

    def axis_y(self, x: float) -> float:
        return self.axis_y_mm + self.droop * x

    def half_height(self, x: float, upper: bool) -> float:
        """Half-height of the silhouette at depth x, above (upper) or below the axis."""
        t = min(max(x / self.depth_mm, 0.0), 1.0)
        p, b = (self.power_up, self.half_up_mm) if upper else (self.power_down, self.half_down_mm)
        return b * math.sqrt(max(0.0, 1.0 - t ** p))


@dataclass(frozen=True)
class BreastModel:
    laterality: str
    density: str
    target_fraction: float
    cc: BreastShape
    mlo: BreastShape
    mlo_angle_deg: float
    thickness_mm: float
    compression_n: float
    seed: int

    def shape(self, view: str) -> BreastShape:
        return self.mlo if view == "MLO" else self.cc


def sample_breast(rng: np.random.Generator, labels: BreastLabels, mlo_angle_deg: float) -> BreastModel:
    """Random but plausible silhouettes for the CC and MLO of one breast."""
    depth = float(rng.uniform(80.0, 128.0))
    half = float(rng.uniform(62.0, 88.0))
    cc = BreastShape(
        depth_mm=depth, axis_y_mm=float(rng.uniform(112.0, 122.0)), droop=float(rng.uniform(-0.04, 0.04)),
        half_up_mm=half * float(rng.uniform(1.0, 1.12)), half_down_mm=half,
        power_up=float(rng.uniform(1.8, 2.4)), power_down=float(rng.uniform(1.8, 2.4)),
        pectoral=None, nipple_mm=float(rng.uniform(3.5, 5.5)),
    )
    axis = float(rng.uniform(110.0, 128.0))
    mlo = BreastShape(
        depth_mm=depth * float(rng.uniform(1.0, 1.08)), axis_y_mm=axis, droop=float(rng.uniform(0.08, 0.25)),
        half_up_mm=axis + float(rng.uniform(25.0, 50.0)), half_down_mm=float(rng.uniform(70.0, 90.0)),
        power_up=float(rng.uniform(1.15, 1.5)), power_down=float(rng.uniform(2.0, 2.8)),
        pectoral=(float(rng.uniform(25.0, 50.0)), float(rng.uniform(70.0, 120.0)), float(rng.uniform(-0.25, 0.35))),
        nipple_mm=cc.nipple_mm,
    )
    return BreastModel(
        laterality=labels.laterality, density=labels.density, target_fraction=labels.target_fraction,
        cc=cc, mlo=mlo, mlo_angle_deg=mlo_angle_deg, thickness_mm=float(rng.uniform(35.0, 70.0)),
        compression_n=float(rng.uniform(60.0, 140.0)), seed=int(rng.integers(0, 2**31 - 1)),
    )


def xccl_shape(shape: BreastShape, rng: np.random.Generator) -> BreastShape:
    """CC exaggerated laterally: the breast is rotated so its lateral part and axillary tail
    fill the field (reaching the top edge at the chest wall, with a sliver of pectoral
    muscle there) while the medial part runs off the bottom edge."""
    axis = shape.axis_y_mm + float(rng.uniform(25.0, 40.0))
    return replace(shape, axis_y_mm=axis, half_up_mm=axis + float(rng.uniform(3.0, 12.0)),
                   power_up=float(rng.uniform(1.4, 1.7)),
                   pectoral=(float(rng.uniform(10.0, 18.0)), float(rng.uniform(25.0, 45.0)), 0.0))


# ----------------------------------------------------------------------------- noise fields

def _power_law_field(rng: np.random.Generator, shape: tuple[int, int], cell: tuple[float, float],
                     beta: float, lo_mm: float, hi_mm: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian field with a 1/f^beta power spectrum band-limited to
    wavelengths between hi_mm and lo_mm (made directly in the Fourier domain)."""
    fy = np.fft.fftfreq(shape[0], d=cell[0])[:, None]
    fx = np.fft.rfftfreq(shape[1], d=cell[1])[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f_lo, f_hi = 1.0 / lo_mm, 1.0 / hi_mm
    amp = np.where(f > 0, np.maximum(f, f_lo) ** (-beta / 2.0), 0.0) * np.exp(-((f / f_hi) ** 2))
    spec = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    out = np.fft.irfft2(spec, s=shape)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out.astype(np.float32)


def _resample(grid: np.ndarray, cell: tuple[float, float], ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Bilinear sample of a cell-centred grid at mm coordinates ys (rows) x xs (cols)."""
    def axis(coords: np.ndarray, step: float, n: int) -> tuple[np.ndarray, np.ndarray]:
        g = np.clip(coords.astype(np.float64) / step - 0.5, 0.0, n - 1.0)
        i0 = np.minimum(np.floor(g).astype(np.intp), n - 2)
        return i0, (g - i0).astype(np.float32)

    i0, wy = axis(ys, cell[0], grid.shape[0])
    j0, wx = axis(xs, cell[1], grid.shape[1])
    rows = grid[i0] * (1.0 - wy)[:, None] + grid[i0 + 1] * wy[:, None]
    return rows[:, j0] * (1.0 - wx)[None, :] + rows[:, j0 + 1] * wx[None, :]


# ----------------------------------------------------------------------------- silhouette

def _skin_distance(shape: BreastShape, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Approximate distance (mm) inside the skin line; negative outside the breast."""
    t = np.clip(xs / shape.depth_mm, 0.0, None)[None, :].astype(np.float32)
    axis = (shape.axis_y_mm + shape.droop * xs)[None, :].astype(np.float32)
    dy = ys[:, None].astype(np.float32) - axis
    upper = dy < 0
    p = np.where(upper, t ** np.float32(shape.power_up), t ** np.float32(shape.power_down))
    b = np.where(upper, np.float32(shape.half_up_mm), np.float32(shape.half_down_mm))
    rho2 = p + (dy / b) ** 2
    scale = np.float32(0.25 * (shape.depth_mm + 0.5 * (shape.half_up_mm + shape.half_down_mm)))
    dist = (1.0 - rho2) * scale
    # Nipple: a small bump in front of the tip of the silhouette.
    nx, ny, rn = shape.depth_mm, shape.axis_y(shape.depth_mm), shape.nipple_mm
    cols = np.nonzero(np.abs(xs - nx) < rn + 1.0)[0]
    rows = np.nonzero(np.abs(ys - ny) < rn + 1.0)[0]
    if cols.size and rows.size:
        win = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        nip = rn - np.sqrt((xs[win[1]][None, :] - nx) ** 2 + (ys[win[0]][:, None] - ny) ** 2)
        dist[win] = np.maximum(dist[win], (0.6 * nip).astype(np.float32))
    return dist


def _pectoral(shape: BreastShape, ys: np.ndarray, xs: np.ndarray, soft_mm: float) -> np.ndarray:
    """Soft pectoral-muscle mask (1 inside) for the upper chest-wall corner, else zeros."""
    if shape.pectoral is None:
        return np.zeros((ys.size, xs.size), np.float32)
    w, h, bulge = shape.pectoral
    a = (xs / w)[None, :].astype(np.float32)
    c = (ys / h)[:, None].astype(np.float32)
    s = a + c + np.float32(bulge) * a * c - 1.0         # < 0 inside the (slightly curved) triangle
    return np.clip(0.5 - s * np.float32(min(w, h) / soft_mm), 0.0, 1.0)


# ----------------------------------------------------------------------------- rendering

@dataclass
class ViewRender:
    """One rendered view in display orientation plus what the tests and labels need."""

    image: np.ndarray          # float32 [0,1], rows x cols
    breast_mask: np.ndarray    # bool, tissue (including pectoral muscle)
    pectoral_mask: np.ndarray  # bool
    dense_fraction: float      # achieved fibroglandular fraction (breast minus pectoral)
    boxes: dict[str, list[int]]


def _smoothstep(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _glandular_map(model: BreastModel, shape: BreastShape, rng: np.random.Generator) -> np.ndarray:
    """Soft fibroglandular map on the coarse grid, thresholded to the target fraction."""
    ny, nx = int(_FIELD_MM[0] / _GLAND_CELL_MM[0]), int(_FIELD_MM[1] / _GLAND_CELL_MM[1])
    ys = (np.arange(ny) + 0.5) * _GLAND_CELL_MM[0]
    xs = (np.arange(nx) + 0.5) * _GLAND_CELL_MM[1]
    field = _power_law_field(rng, (ny, nx), _GLAND_CELL_MM, beta=PARENCHYMA_BETA, lo_mm=60.0, hi_mm=2.5)
    dist = _skin_distance(shape, ys, xs)
    inside = dist > 0
    pect = _pectoral(shape, ys, xs, 1.0)
    # Parenchyma lies under a subcutaneous fat layer, in front of the retromammary fat,
    # and is richest around the nipple axis.
    env = _smoothstep(dist, 3.0, 16.0) * _smoothstep(xs, 4.0, 16.0)[None, :] * (1.0 - pect)
    axis = shape.axis_y_mm + shape.droop * xs
    rel = (ys[:, None] - axis[None, :]) / np.float32(0.5 * (shape.half_up_mm + shape.half_down_mm))
    env = env * (1.0 - 0.35 * np.clip(rel * rel, 0.0, 1.0))
    score = field + 2.5 * (env - 1.0) - 10.0 * pect
    region = inside & (pect < 0.5)
    thr = np.quantile(score[region], 1.0 - model.target_fraction) if region.any() else 0.0
    return (1.0 / (1.0 + np.exp(-(score - thr) / 0.3))).astype(np.float32)


def _texture(model: BreastModel, shape: BreastShape, grid: PixelGrid, rng: np.random.Generator,
             ) -> tuple[np.ndarray, tuple[float, float], float]:
    """Tissue attenuation per unit thickness on the texture grid (0.25 mm, or the pixel
    grid when that is coarser), and the achieved dense fraction measured on that grid.

    Compositing here and upsampling once keeps full-size rendering fast.
    """
    gland_c = _glandular_map(model, shape, rng)
    lig_cell = (1.0, 1.0)
    lig_field = _power_law_field(rng, (int(_FIELD_MM[0]), int(_FIELD_MM[1])), lig_cell, 2.0, 25.0, 4.0)
    lig_c = np.exp(-(lig_field / 0.12) ** 2).astype(np.float32)
    cell = (max(0.25, grid.spacing_mm),) * 2
    n = (int(_FIELD_MM[0] / cell[0]), int(_FIELD_MM[1] / cell[1]))
    fine = _power_law_field(rng, n, cell, 2.0, 8.0, 0.9)
    ys = ((np.arange(n[0]) + 0.5) * cell[0]).astype(np.float32)
    xs = ((np.arange(n[1]) + 0.5) * cell[1]).astype(np.float32)
    gland = _resample(gland_c, _GLAND_CELL_MM, ys, xs)
    lig = _resample(lig_c, lig_cell, ys, xs)
    tex = (FAT_ATTENUATION + GLANDULAR_STEP * gland * np.clip(1.0 + 0.22 * fine, 0.4, 1.6)
           + 0.05 * lig * (1.0 - gland) + 0.008 * fine)
    region = (_skin_distance(shape, ys, xs) > 0) & (_pectoral(shape, ys, xs, 1.0) < 0.5)
    fraction = float(np.count_nonzero(gland[region] > 0.5) / max(1, np.count_nonzero(region)))
    return tex.astype(np.float32), cell, fraction


def thickness_profile(dist: np.ndarray) -> np.ndarray:
    """Relative projected thickness (1 inside, a sqrt fall-off over the outer rim to the skin)."""
    return np.sqrt(np.clip(dist * np.float32(1.0 / SKIN_FALLOFF_MM), 0.0, 1.0))


def tissue_floor(shape: BreastShape, ps: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Attenuation of the anatomy with every glandular element replaced by fat (fat plus the
    pectoral muscle), at mm coordinates ys x xs: the darkest a radiolucent lesion can make a
    pixel, because it displaces breast tissue but not the muscle in front of or behind it."""
    dist = _skin_distance(shape, ys.astype(np.float32), xs.astype(np.float32))
    thick = thickness_profile(dist)
    floor = FAT_ATTENUATION * thick
    if shape.pectoral is not None:
        floor = floor + PECTORAL_STEP * _pectoral(shape, ys, xs, max(0.8, ps)) * thick
    return (floor * np.clip(dist * np.float32(1.0 / ps) + 0.5, 0.0, 1.0)).astype(np.float32)


def render_anatomy(
    model: BreastModel, view: str, grid: PixelGrid, shape: BreastShape | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Canonical-frame attenuation image (no lesions) with breast and pectoral masks.

    Returns (att float32, breast_mask, pectoral_mask, dense_fraction).
    """
    shape = shape or model.shape(view)
    rng = np.random.default_rng([model.seed, ("CC", "MLO", "XCCL").index(view)])
    ps = grid.spacing_mm
    tex, cell, dense_fraction = _texture(model, shape, grid, rng)

    # Only the columns up to the nipple tip hold tissue.
    ncols = min(grid.cols, int(math.ceil((shape.depth_mm + shape.nipple_mm + 2.0) / ps)))
    ys = ((np.arange(grid.rows) + 0.5) * ps).astype(np.float32)
    xs = ((np.arange(ncols) + 0.5) * ps).astype(np.float32)
    dist = _skin_distance(shape, ys, xs)
    if cell[0] == ps:
        sub = tex[: grid.rows, :ncols]
    else:
        sub = _resample(tex, cell, ys, xs)
    breast = np.clip(dist * np.float32(1.0 / ps) + 0.5, 0.0, 1.0)    # anti-aliased edge
    thick = thickness_profile(dist)
    skin = np.clip(1.0 - (dist * np.float32(1.0 / 2.2)) ** 2, 0.0, 1.0)
    skin *= skin
    att_sub = thick * sub
    att_sub += 0.06 * skin
    mask = dist > 0
    pmask = np.zeros((grid.rows, grid.cols), bool)
    if shape.pectoral is not None:
        pr = min(grid.rows, int(math.ceil(shape.pectoral[1] * 1.5 / ps)))
        pc = min(ncols, int(math.ceil(shape.pectoral[0] * 1.5 / ps)))
        pect = _pectoral(shape, ys[:pr], xs[:pc], max(0.8, ps))
        att_sub[:pr, :pc] += PECTORAL_STEP * pect * thick[:pr, :pc]
        pmask[:pr, :pc] = (pect > 0.5) & mask[:pr, :pc]
    att_sub *= breast
    att = np.zeros((grid.rows, grid.cols), np.float32)
    att[:, :ncols] = att_sub
    full_mask = np.zeros((grid.rows, grid.cols), bool)
    full_mask[:, :ncols] = mask
    return att, full_mask, pmask, dense_fraction


def finalize(att: np.ndarray, grid: PixelGrid, laterality: str, rng: np.random.Generator) -> np.ndarray:
    """Add the background level and quantum noise, and mirror right-breast images
    (returned as a mirrored view; quantisation makes the contiguous copy)."""
    noise = rng.random(att.shape, dtype=np.float32)
    noise -= np.float32(0.5)
    noise *= np.float32(0.006 / 0.2887)          # uniform noise with std 0.006
    att += noise
    att += np.float32(_BACKGROUND)
    np.clip(att, 0.0, 1.0, out=att)
    return att[:, ::-1] if laterality == "R" else att


def mirror_box(box: list[int], cols: int, laterality: str) -> list[int]:
    """Canonical-frame box [x0, y0, x1, y1] (pixel edges) to display orientation."""
    if laterality != "R":
        return box
    x0, y0, x1, y1 = box
    return [cols - x1, y0, cols - x0, y1]
