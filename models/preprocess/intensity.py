"""Intensity for the preprocessing pipeline: stored values -> modality values -> 8-bit display.

Why a lookup table: a full-size mammogram is 8.5 million 14-bit pixels, and running pydicom's
windowing over them in float64 costs far more than the whole 150 ms budget. But the stored
values are integers of at most 16 bits, so every step (Modality LUT, VOI LUT/window, scaling to
0..255, MONOCHROME1 inversion) is evaluated once per *possible stored value* (a 65,536-entry
ramp) and the image is mapped with one gather. The per-value arithmetic is the very code the
direct path (``to_uint8`` on a float array from ``decode``) runs on every pixel, so both paths
give the same bytes by construction; the tests check it.

Inversion is folded into the scaling (``hi - y`` instead of ``255 - round(y - lo)``): a
MONOCHROME1 image stored as ``max - v`` then gives bit-identical output to its MONOCHROME2 twin
under min-max (exact integer differences), not an off-by-one after rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import JPEGLSLossless, JPEGLSNearLossless


@dataclass(frozen=True)
class Window:
    """uint8 = clip(rint(255 * (y - lo) / (hi - lo))), y = VOI(g) when ``voi`` else g; inverted: hi - y."""

    voi: bool
    lo: float
    hi: float
    invert: bool


def check_greyscale(ds: pydicom.Dataset) -> None:
    """Refuse what the pipeline cannot mean: colour images and multi-frame (e.g. tomosynthesis)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"not a greyscale image: PhotometricInterpretation {photometric!r}")
    frames = ds.get("NumberOfFrames", 1)
    if frames not in (None, "") and int(frames) > 1:
        raise ValueError(f"multi-frame image ({int(frames)} frames): one 2-D mammogram expected")


def is_monochrome1(ds: pydicom.Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"


# Plugins to try first where pydicom's default order picks a slow one: for JPEG-LS pydicom
# tries pylibjpeg (libjpeg) before pyjpegls (CharLS), which is about 4x faster on mammograms.
_PREFERRED_PLUGINS = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}


def stored_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values of any supported transfer syntax (pydicom decoders), 2-D.

    Decoded with ``pydicom.pixels.pixel_array`` (nothing is cached on ``ds``), preferring the
    fastest installed plugin; lossless decoders agree, so the choice never changes the bytes.
    """
    check_greyscale(ds)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    plugin = _PREFERRED_PLUGINS.get(tsyntax, "")
    arr = None
    if plugin and plugin in get_decoder(tsyntax).available_plugins:
        try:
            arr = pixel_array(ds, decoding_plugin=plugin)
        except Exception:                       # noqa: BLE001 - any plugin failure: let pydicom choose
            arr = None
    if arr is None:
        arr = pixel_array(ds)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got pixel array of shape {arr.shape}")
    return arr


def modality(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT or rescale (pydicom), as float32: what ``decode`` returns per pixel."""
    return np.asarray(apply_modality_lut(values, ds), dtype=np.float32)


def has_voi(ds: pydicom.Dataset) -> bool:
    """Whether the file has a usable VOI: a VOI LUT Sequence or a (non-empty) window."""
    if _uses_voi_table(ds):
        return True
    return ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")


def _uses_voi_table(ds: pydicom.Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None


def voi(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's VOI LUT (table preferred) or first window, as float64."""
    if _uses_voi_table(ds):
        values = np.rint(values).astype(np.int64)        # table lookups index integers
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)


def voi_window(ds: pydicom.Dataset, monochrome1: bool) -> Window:
    """The VOI output range as the 0..255 range.

    Window: pydicom's own output range (obtained by evaluating it at -inf/+inf, so it cannot
    drift from pydicom's rules for rescaled or signed data). Table: the range the table
    actually uses (many vendors fill a 16-bit descriptor with 12-bit values).
    """
    if _uses_voi_table(ds):
        item = ds.VOILUTSequence[0]
        nr, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
        out = voi(np.arange(first, first + nr, dtype=np.float64), ds)
    else:
        out = voi(np.array([-1e300, 1e300]), ds)
    lo, hi = float(out.min()), float(out.max())
    return Window(voi=True, lo=lo, hi=hi, invert=monochrome1)


def apply_window(values: np.ndarray, ds: pydicom.Dataset, window: Window) -> np.ndarray:
    """Map modality values (float32) to uint8 display values; elementwise, hence path-independent."""
    y = voi(values, ds) if window.voi else np.asarray(values, dtype=np.float64)
    span = window.hi - window.lo
    if not span > 0:
        return np.zeros(y.shape, dtype=np.uint8)
    t = (window.hi - y) if window.invert else (y - window.lo)
    t *= 255.0
    t /= span
    np.rint(t, out=t)
    np.clip(t, 0.0, 255.0, out=t)
    return t.astype(np.uint8)


class PixelSource:
    """Lazy access to modality values and display values of regions of one image.

    ``ArraySource`` holds float32 modality values (the reference path); ``StoredSource`` holds
    the stored integers plus per-value tables (the fast path). Both answer the same questions
    with the same per-pixel arithmetic.
    """

    shape: tuple[int, int]

    def values(self, rows: slice, cols: slice) -> np.ndarray:   # float32 modality values
        raise NotImplementedError

    def min_max(self, rows: slice, cols: slice) -> tuple[float, float]:
        raise NotImplementedError

    def display(self, rows: slice, cols: slice, window: Window) -> np.ndarray:  # uint8
        raise NotImplementedError


class ArraySource(PixelSource):
    def __init__(self, ds: pydicom.Dataset, pixels: np.ndarray) -> None:
        if pixels.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
        self.ds, self.pixels, self.shape = ds, np.asarray(pixels, dtype=np.float32), pixels.shape

    def values(self, rows: slice, cols: slice) -> np.ndarray:
        return self.pixels[rows, cols]

    def min_max(self, rows: slice, cols: slice) -> tuple[float, float]:
        region = self.pixels[rows, cols]
        return float(region.min()), float(region.max())

    def display(self, rows: slice, cols: slice, window: Window) -> np.ndarray:
        return apply_window(self.pixels[rows, cols], self.ds, window)


class StoredSource(PixelSource):
    """Stored integers (8 or 16 bits) with the modality values and display LUTs per stored value."""

    def __init__(self, ds: pydicom.Dataset, stored: np.ndarray) -> None:
        self.ds, self.stored, self.shape = ds, stored, stored.shape
        info = np.iinfo(stored.dtype)
        self._offset = -int(info.min)                           # value v sits at table[v + offset]
        by_value = np.arange(info.min, info.max + 1, dtype=np.int64).astype(stored.dtype)
        self.g = modality(by_value, ds)                         # float32 per stored value, value order
        unsigned = np.dtype(f"u{stored.dtype.itemsize}")
        self._index = stored.view(unsigned)                     # gather index without a pass
        # index order: entry k holds the value whose bit pattern is k (two's complement for signed)
        self._perm = (np.arange(info.max - info.min + 1, dtype=np.int64).astype(unsigned)
                      .view(stored.dtype).astype(np.int64) + self._offset)
        diffs = np.diff(self.g)
        self._monotonic = bool(np.all(diffs >= 0) or np.all(diffs <= 0))
        self._g_by_index = self.g[self._perm]
        self._luts: dict[Window, np.ndarray] = {}

    @staticmethod
    def eligible(stored: np.ndarray) -> bool:
        return stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2

    def _lut(self, window: Window) -> np.ndarray:
        lut = self._luts.get(window)
        if lut is None:
            lut = apply_window(self.g, self.ds, window)[self._perm]
            self._luts[window] = lut
        return lut

    def values(self, rows: slice, cols: slice) -> np.ndarray:
        return self._g_by_index[self._index[rows, cols]]

    def min_max(self, rows: slice, cols: slice) -> tuple[float, float]:
        region = self.stored[rows, cols]
        if self._monotonic:
            ends = self.g[[int(region.min()) + self._offset, int(region.max()) + self._offset]]
            return float(ends.min()), float(ends.max())
        vals = self.values(rows, cols)
        return float(vals.min()), float(vals.max())

    def display(self, rows: slice, cols: slice, window: Window) -> np.ndarray:
        return self._lut(window)[self._index[rows, cols]]
