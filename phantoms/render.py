"""One view of one breast with its findings: anatomy (``phantoms.anatomy``), then lesions
(``phantoms.lesions``), then noise and display orientation. Its own module because it needs both
parts and the lesions need the anatomy's types.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from phantoms.anatomy import BreastModel, BreastShape, PixelGrid, ViewRender, finalize, mirror_box, render_anatomy
from phantoms.labels import Finding
from phantoms.lesions import draw_findings


def render_view(
    model: BreastModel, view: str, findings: Sequence[Finding], grid: PixelGrid,
    shape: BreastShape | None = None,
) -> ViewRender:
    """Render one view of one breast with its findings, in display orientation."""
    shape = shape or model.shape(view)
    att, mask, pmask, fraction = render_anatomy(model, view, grid, shape)
    proj_view = "MLO" if view == "MLO" else "CC"
    boxes = draw_findings(att, mask, grid, shape, proj_view, model, findings)
    rng = np.random.default_rng([model.seed, ("CC", "MLO", "XCCL").index(view), 99, grid.rows])
    image = finalize(att, grid, model.laterality, rng)
    if model.laterality == "R":
        mask, pmask = mask[:, ::-1], pmask[:, ::-1]
    boxes = {k: mirror_box(b, grid.cols, model.laterality) for k, b in boxes.items()}
    return ViewRender(image, mask, pmask, fraction, boxes)
