"""Where a source pixel lands in the model image, and back: the geometry of ``prepare_uint8``.

Why: annotations (lesion boxes of VinDr-Mammo, CBIS-DDSM or the phantom) are given on the
source pixel array, while the model sees the cropped, possibly mirrored, resized image. Training
needs boxes in model coordinates (lesion patches, box supervision); a CAD output needs model
coordinates back on the source image. Both directions come from the same ``ModelGeometry``, built
from a ``PreparedImage`` and its ``PreprocessConfig``, so they can never disagree.

Coordinates are continuous pixel-edge coordinates: (0, 0) is the top-left corner of the first
pixel, a box ``(x0, y0, x1, y1)`` has exclusive ends. Plain arithmetic, torch-free (the node may import it).
"""
from __future__ import annotations

from dataclasses import dataclass

from models.preprocess import PreparedImage, PreprocessConfig
from models.preprocess.resize import cover_size, crop_offsets, fit_size

BoxXYXY = tuple[float, float, float, float]


@dataclass(frozen=True)
class ModelGeometry:
    """Affine map source -> model image: crop, optional mirror, scale and offset per axis."""

    crop_x0: float
    crop_y0: float
    crop_w: float            # crop size in source pixels
    flipped: bool
    scale_x: float           # model pixels per source pixel
    scale_y: float
    offset_x: float          # model-image position of the crop's left (or, mirrored, right) edge
    offset_y: float
    inner_w: float           # width of the resized crop inside the model image

    @classmethod
    def of(cls, prepared: PreparedImage, cfg: PreprocessConfig) -> "ModelGeometry":
        """The geometry ``prepare_uint8`` applied to make ``prepared`` under ``cfg``."""
        y0, x0, y1, x1 = prepared.crop_box
        h, w = y1 - y0, x1 - x0
        rows, cols = cfg.size
        if cfg.resize == "squash":
            nh, nw, oy, ox = rows, cols, 0, 0
        elif cfg.resize == "crop":                 # covered, then centre-cropped: negative offsets
            nh, nw = cover_size((h, w), (rows, cols))
            top, left = crop_offsets((nh, nw), (rows, cols))
            oy, ox = -top, -left
        else:
            nh, nw = fit_size((h, w), (rows, cols))
            oy = (rows - nh) // 2
            side = (cfg.flip_to if prepared.flipped else prepared.chest_wall) or "center"
            ox = 0 if side == "L" else (cols - nw) if side == "R" else (cols - nw) // 2
        return cls(crop_x0=float(x0), crop_y0=float(y0), crop_w=float(w), flipped=prepared.flipped,
                   scale_x=nw / w, scale_y=nh / h, offset_x=float(ox), offset_y=float(oy), inner_w=float(nw))

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """A source point (pixel-edge coordinates) in model-image coordinates."""
        cx = x - self.crop_x0
        if self.flipped:
            cx = self.crop_w - cx
        return self.offset_x + cx * self.scale_x, self.offset_y + (y - self.crop_y0) * self.scale_y

    def to_source(self, x: float, y: float) -> tuple[float, float]:
        """A model-image point back on the source pixel array (inverse of ``to_model``)."""
        cx = (x - self.offset_x) / self.scale_x
        if self.flipped:
            cx = self.crop_w - cx
        return cx + self.crop_x0, (y - self.offset_y) / self.scale_y + self.crop_y0

    def box_to_model(self, box: BoxXYXY) -> BoxXYXY:
        """A source box in model coordinates (corners reordered after a mirror)."""
        ax, ay = self.to_model(box[0], box[1])
        bx, by = self.to_model(box[2], box[3])
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)

    def box_to_source(self, box: BoxXYXY) -> BoxXYXY:
        """A model-image box back on the source pixel array."""
        ax, ay = self.to_source(box[0], box[1])
        bx, by = self.to_source(box[2], box[3])
        return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)


def clip_box(box: BoxXYXY, width: float, height: float) -> BoxXYXY | None:
    """``box`` clipped to a width x height image; None when nothing of it is left inside."""
    x0, y0 = max(0.0, box[0]), max(0.0, box[1])
    x1, y1 = min(float(width), box[2]), min(float(height), box[3])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1
