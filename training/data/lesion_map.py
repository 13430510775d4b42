"""Box supervision on the student's feature grid: which cells of the model image hold a lesion.

Why: an image label ("BI-RADS 4") says a lesion is somewhere among a quarter of a million
pixels; a box says where. Supervising one logit per feature-grid cell with the boxes (the
student's lesion map) gives the backbone a direct, local signal per lesion, which grows lesion
features from a few hundred images where image labels alone do not (docs/training.md).

A cell's target is its overlap with the nearest-fitting box: intersection area divided by the
smaller of the cell's and the box's area, so a small lesion inside one cell makes that cell 1
and a large mass makes every cell it covers 1 (max over boxes). Boxes come on the source pixel
array (``LesionBox``) and go through ``ModelGeometry`` (the exact crop, mirror and resize of
``prepare_uint8``). An image's map is *known* when it has boxes, or when it is BI-RADS 1
(negative: every cell 0); otherwise (a finding without boxes, no label) it is left out of the loss.
Plain numpy: torch-free.
"""
from __future__ import annotations

import numpy as np

from models.preprocess import PreparedImage, PreprocessConfig
from models.preprocess.geometry import ModelGeometry, clip_box
from training.data.image_record import ImageRecord

NEGATIVE_BIRADS = 1  # BI-RADS index of "1": nothing there, so every cell is 0


def lesion_grid_target(record: ImageRecord, prepared: PreparedImage, cfg: PreprocessConfig,
                       grid: int) -> tuple[np.ndarray, bool]:
    """(grid x grid float32 target in [0, 1], known) for one prepared image."""
    target = np.zeros((grid, grid), dtype=np.float32)
    boxes = record.boxes or ()
    if not boxes:
        return target, record.birads == NEGATIVE_BIRADS
    rows, cols = cfg.size
    geometry = ModelGeometry.of(prepared, cfg)
    cell_w, cell_h = cols / grid, rows / grid
    edges_x = np.arange(grid + 1) * cell_w
    edges_y = np.arange(grid + 1) * cell_h
    for lesion in boxes:
        box = clip_box(geometry.box_to_model((lesion.x0, lesion.y0, lesion.x1, lesion.y1)), cols, rows)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        overlap_x = np.clip(np.minimum(edges_x[1:], x1) - np.maximum(edges_x[:-1], x0), 0, None)
        overlap_y = np.clip(np.minimum(edges_y[1:], y1) - np.maximum(edges_y[:-1], y0), 0, None)
        area = np.outer(overlap_y, overlap_x)
        scale = min(cell_w * cell_h, (x1 - x0) * (y1 - y0))
        if scale > 0:
            np.maximum(target, np.clip(area / scale, 0.0, 1.0).astype(np.float32), out=target)
    return target, True
