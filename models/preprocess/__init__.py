"""DICOM mammogram -> model input: the ONE implementation, shared by training and the node.

Pipeline (docs/preprocessing.md has the why and the differences from the official code):

1. ``decode``: stored pixels of any supported transfer syntax, then the Modality LUT
   (rescale slope/intercept or a LUT), float32. MONOCHROME1 is not yet inverted.
2. ``to_uint8``: VOI LUT / first window of the file (or min-max when the file has none, or when
   ``intensity="minmax"``), scaled to 0..255, MONOCHROME1 inverted so the breast is bright.
3. ``breast_crop``: trim the border, threshold, keep the largest connected component, crop to
   its bounding box.
4. optional mirror (``flip_to``), then ``resize`` to the model input size (squash, pad or crop).
5. ``normalize``: /255, (x - mean) / std per channel, 1 or 3 channels.

``prepare_uint8`` runs 1-4 and is what caches store; ``preprocess`` adds 5. For integer pixel
data (every mammogram) ``prepare_uint8`` evaluates steps 1-2 per possible stored value and
maps only the pixels it needs, which gives the same bytes as composing the public functions
(the tests check it) at a fraction of the cost.

numpy + pydicom only: the node imports this module and must never import torch. No randomness,
no threads: the same input gives the same bytes in any process.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from models.preprocess.intensity import (
    ArraySource,
    PixelSource,
    StoredSource,
    Window,
    apply_window,
    has_voi,
    is_monochrome1,
    modality,
    stored_pixels,
    voi_window,
)
from models.preprocess.resize import crop_resize, pad_resize, resample
from models.preprocess.segment import (
    Box,
    Component,
    chest_wall_from_pixels,
    coarse_component,
    find_box,
    trimmed_bounds,
)

# Bump when the bytes prepare_uint8 produces change for the same config (invalidates caches).
PREPROCESS_VERSION = 1

INTENSITIES = ("voi", "minmax")
RESIZE_MODES = ("squash", "pad", "crop")

# The three normalisation sets of the official code, after /255 (see docs/preprocessing.md).
NORM_DOWNSTREAM = ((0.5,), (0.5,))                                  # downstream tasks (official student use)
NORM_STAGE2 = ((0.3089,), (0.2505,))                                # stage-2 training and retrieval
NORM_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))      # stage-1 ViT teacher


@dataclass(frozen=True)
class PreprocessConfig:
    """How a DICOM image becomes a model input; saved in model package manifests (JSON)."""

    size: tuple[int, int] = (512, 512)        # (rows, cols) of the model input
    intensity: str = "voi"                    # "voi": VOI LUT / first window, min-max when none; "minmax"
    resize: str = "squash"                    # "squash" (official VersaMammo: aspect not kept) | "pad" (keep
                                              # aspect) | "crop" (official MammoRG: shortest side, centre crop)
    flip_to: str | None = None                # None (official) | "L" | "R": chest wall on that side's edge
    trim: int = 5                             # pixels trimmed from each border before segmentation
    threshold: int = 20                       # 8-bit background threshold: foreground is value > threshold
    channels: int = 3                         # 1 or 3 (grey replicated)
    mean: tuple[float, ...] = (0.5,)          # after /255; one value (broadcast) or one per channel
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if len(self.size) != 2 or min(self.size) < 1:
            problems.append(f"size must be two positive integers, not {self.size}")
        if self.intensity not in INTENSITIES:
            problems.append(f"intensity must be one of {INTENSITIES}, not {self.intensity!r}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {RESIZE_MODES}, not {self.resize!r}")
        if self.flip_to not in (None, "L", "R"):
            problems.append(f"flip_to must be None, 'L' or 'R', not {self.flip_to!r}")
        if not isinstance(self.trim, int) or self.trim < 0:
            problems.append(f"trim must be an integer >= 0, not {self.trim!r}")
        if not isinstance(self.threshold, int) or not 0 <= self.threshold <= 254:
            problems.append(f"threshold must be an integer in 0..254, not {self.threshold!r}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, not {self.channels!r}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, self.channels):
                problems.append(f"{name} needs 1 or {self.channels} values, not {getattr(self, name)}")
        if any(not s > 0 for s in self.std):
            problems.append(f"std values must be > 0, not {self.std}")
        if problems:
            raise ValueError("invalid PreprocessConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PreprocessConfig":
        """From ``to_dict`` output (JSON lists become tuples); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PreprocessConfig keys: {unknown}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: tuples as lists."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def official_mammorg_config(side: int = 512) -> PreprocessConfig:
    """What the official MammoRG encoder was trained on: shortest side to ``side``, centre crop,
    mean = std = 0.5 (``efficientnet_custom.py``). For imported official weights only: ours are
    trained on the student's own preprocessing (squash, 0.3089/0.2505)."""
    return PreprocessConfig(size=(side, side), resize="crop", mean=NORM_DOWNSTREAM[0], std=NORM_DOWNSTREAM[1])


@dataclass(frozen=True)
class PreparedImage:
    """Output of ``prepare_uint8``: the resized 8-bit image and where it came from."""

    image: np.ndarray                  # (rows, cols) uint8, breast bright
    crop_box: Box                      # (y0, x0, y1, x1) in the source pixel array, ends exclusive
    flipped: bool                      # mirrored left-right after cropping
    source_shape: tuple[int, int]      # (Rows, Columns) of the source
    chest_wall: str | None = None      # side of the chest wall in the source: "L", "R" or None (unknown)


# ---------------------------------------------------------------------------- public steps

def decode(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel data (any supported transfer syntax) after the Modality LUT, float32, 2-D.

    MONOCHROME1 is not inverted here. Colour and multi-frame images raise ValueError.
    """
    return modality(stored_pixels(ds), ds)


def to_uint8(ds: pydicom.Dataset, pixels: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Modality values (``decode``'s output) -> uint8 with the breast bright."""
    source = ArraySource(ds, pixels)
    window = _choose_window(ds, source, cfg)
    return source.display(slice(None), slice(None), window)


def breast_crop(img8: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, Box]:
    """Crop to the largest connected component of ``img8 > threshold`` inside the trimmed image.

    Returns (cropped image, (y0, x0, y1, x1) in ``img8``'s coordinates). With no foreground at
    all the crop is the trimmed image.
    """
    box, _ = find_box(lambda r, c: img8[r, c], img8.shape, cfg.trim, cfg.threshold)
    y0, x0, y1, x1 = box
    return img8[y0:y1, x0:x1], box


def resize(img8: np.ndarray, size: tuple[int, int], mode: str = "squash", align: str = "center") -> np.ndarray:
    """uint8 -> uint8 of ``size`` (rows, cols): block means + bilinear; deterministic, numpy only.

    ``mode`` "squash" stretches to the size; "pad" keeps the aspect and pads with 0, placing the
    image against ``align`` ("L"/"R") or centred; "crop" scales the shortest side to the size and
    keeps the centre (official MammoRG: ``Resize(512)`` + ``CenterCrop(512)``).
    """
    if mode == "squash":
        return resample(img8, size)
    if mode == "pad":
        return pad_resize(img8, size, align)
    if mode == "crop":
        return crop_resize(img8, size)
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")


def prepare_uint8(ds: pydicom.Dataset, cfg: PreprocessConfig, laterality: str | None = None, *,
                  timings: dict[str, float] | None = None) -> PreparedImage:
    """Decode, window, crop, mirror and resize: the 8-bit model image (what caches store).

    ``laterality`` ("L"/"R") overrides the file's ImageLaterality/Laterality; it only matters for
    ``flip_to`` on files without PatientOrientation (see ``chest_wall_side``). ``timings``, when
    given, receives seconds per stage (decode, to_uint8, crop, resize) for the benchmark.
    """
    clock = _Clock(timings)
    stored = stored_pixels(ds)
    clock.lap("decode")
    source: PixelSource
    if StoredSource.eligible(stored):
        source = StoredSource(ds, stored)
    else:
        source = ArraySource(ds, modality(stored, ds))
    window = _choose_window(ds, source, cfg)

    def region(rows: slice, cols: slice) -> np.ndarray:
        return source.display(rows, cols, window)

    region(slice(0, 1), slice(0, 1))                  # builds the display LUT (counted as to_uint8)
    clock.lap("to_uint8")
    box, comp = find_box(region, source.shape, cfg.trim, cfg.threshold)
    y0, x0, y1, x1 = box
    crop = region(slice(y0, y1), slice(x0, x1))
    chest = chest_wall_side(ds, laterality, comp)
    flipped = cfg.flip_to is not None and chest is not None and chest != cfg.flip_to
    if flipped:
        crop = crop[:, ::-1]
    clock.lap("crop")
    side = (cfg.flip_to if flipped else chest) or "center"
    image = resize(crop, cfg.size, cfg.resize, align=side)
    clock.lap("resize")
    return PreparedImage(image=image, crop_box=box, flipped=flipped,
                         source_shape=tuple(source.shape), chest_wall=chest)


def normalize(img8: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """uint8 (H, W) -> float32 (C, H, W): x / 255, then (x - mean) / std, as torchvision does."""
    x = img8.astype(np.float32) / np.float32(255.0)
    mean = np.broadcast_to(np.asarray(cfg.mean, dtype=np.float32), (cfg.channels,))
    std = np.broadcast_to(np.asarray(cfg.std, dtype=np.float32), (cfg.channels,))
    out = np.empty((cfg.channels, *x.shape), dtype=np.float32)
    for c in range(cfg.channels):
        np.subtract(x, mean[c], out=out[c])
        out[c] /= std[c]
    return out


def preprocess(ds_or_path: pydicom.Dataset | str | Path, cfg: PreprocessConfig,
               laterality: str | None = None) -> np.ndarray:
    """DICOM dataset or file -> float32 (C, rows, cols), normalised."""
    ds = ds_or_path if isinstance(ds_or_path, pydicom.Dataset) else pydicom.dcmread(ds_or_path)
    return normalize(prepare_uint8(ds, cfg, laterality).image, cfg)


class _Clock:
    """Adds elapsed seconds per stage into ``sink`` (no-op without one)."""

    def __init__(self, sink: dict[str, float] | None) -> None:
        self.sink = sink
        self.t = time.perf_counter() if sink is not None else 0.0

    def lap(self, name: str) -> None:
        if self.sink is not None:
            now = time.perf_counter()
            self.sink[name] = self.sink.get(name, 0.0) + now - self.t
            self.t = now


# ---------------------------------------------------------------------------- orientation

def chest_wall_side(ds: pydicom.Dataset, laterality: str | None = None,
                    component: Component | None = None) -> str | None:
    """Edge of the pixel array the chest wall is on: "L" (column 0), "R" or None.

    1. PatientOrientation (0020,0020), first value: the direction of increasing column index.
       "P..." means columns run toward the chest wall (it is on the right), "A..." the reverse.
       It describes the pixels themselves, so it wins.
    2. Laterality (argument, else ImageLaterality, else Laterality) with the standard display
       convention: a right breast faces left (chest wall on the right), a left breast the reverse.
    3. The pixels: the side where the breast is tallest.
    """
    orientation = ds.get("PatientOrientation")
    if orientation:
        values = [orientation] if isinstance(orientation, str) else list(orientation)
        first = str(values[0]).strip().upper() if values else ""
        if first[:1] == "P":
            return "R"
        if first[:1] == "A":
            return "L"
    side = laterality or ds.get("ImageLaterality") or ds.get("Laterality")
    side = str(side).strip().upper() if side else ""
    if side in ("L", "R"):
        return side
    return chest_wall_from_pixels(component)


# ---------------------------------------------------------------------------- intensity choice

def _choose_window(ds: pydicom.Dataset, source: PixelSource, cfg: PreprocessConfig) -> Window:
    """The file's VOI when asked for and present; otherwise min-max.

    Min-max runs from the background (the extreme of the trimmed image) to the extreme inside
    the breast (the largest component of a provisional whole-image min-max), so burned-in
    markers or collimator glare outside the breast do not compress the tissue range.
    """
    m1 = is_monochrome1(ds)
    if cfg.intensity == "voi" and has_voi(ds):
        try:
            return voi_window(ds, m1)
        except (ValueError, NotImplementedError):
            pass                      # malformed window (e.g. width < 1) or table: min-max instead
    ty, tx, by, bx = trimmed_bounds(source.shape, cfg.trim)
    lo, hi = source.min_max(slice(ty, by), slice(tx, bx))
    provisional = Window(voi=False, lo=lo, hi=hi, invert=m1)
    comp = coarse_component(lambda r, c: source.display(r, c, provisional), source.shape, cfg.trim, cfg.threshold)
    if comp is None:
        return provisional
    breast = source.values(comp.pixel_rows(), comp.pixel_cols())[comp.mask]
    if m1:
        return Window(voi=False, lo=float(breast.min()), hi=hi, invert=True)
    return Window(voi=False, lo=lo, hi=float(breast.max()), invert=False)


__all__ = [
    "NORM_DOWNSTREAM", "NORM_IMAGENET", "NORM_STAGE2", "PREPROCESS_VERSION", "PreparedImage",
    "PreprocessConfig", "apply_window", "breast_crop", "chest_wall_side", "decode", "normalize",
    "prepare_uint8", "preprocess", "resize", "to_uint8",
]
