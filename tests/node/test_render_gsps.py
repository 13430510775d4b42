"""bench.render_gsps draws what a presentation state says: the node's state for a phantom study with
a lesion, rendered from the DICOM files alone, has the layer's colour on the lesion's box outline and
nowhere in the breast far from it; an image without marks gets only the header line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from bench.render_gsps import _lab_to_rgb, main
from node.outputs.gsps import LAYER_COLOR, build_presentation_state, planned_states
from node.study_result import StudyResult
from tests.node.marks_helpers import lesion_boxes, oracle_marks
from tests.node.outputs_helpers import phantom_case


def _lesion_study(phantom_dir: Path) -> Path:
    return next(p for p in sorted(phantom_dir.iterdir()) if p.is_dir() and lesion_boxes(p))


def test_the_rendered_state_draws_the_mark_on_the_lesion(phantom_dir: Path, tmp_path: Path) -> None:
    study = _lesion_study(phantom_dir)
    source, result = phantom_case(study)
    result.update(oracle_marks(study))
    boxes = lesion_boxes(study)
    color = np.array(_lab_to_rgb(LAYER_COLOR.value))
    for position, uid in planned_states(source, StudyResult.from_json(result), 1_764_000_000.0, "2.25.1"):
        state = build_presentation_state(source, StudyResult.from_json(result), created_at=1_764_000_000.0,
                                         device_uid="2.25.1", identity=uid)
        state.save_as(tmp_path / "state.dcm", enforce_file_format=True)
        out = tmp_path / f"{position}.png"
        assert main([str(study / f"{position}.dcm"), str(tmp_path / "state.dcm"), str(out), "--max-side", "4096"]) == 0
        from PIL import Image

        rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
        assert rgb.shape[:2] == (int(pydicom.dcmread(study / f"{position}.dcm").Rows),
                                 int(pydicom.dcmread(study / f"{position}.dcm").Columns))
        drawn = (np.abs(rgb - color).sum(axis=-1) < 60)
        drawn[:40, :] = False  # the header text line
        ys, xs = np.nonzero(drawn)
        if position not in boxes:
            assert len(xs) == 0, position
            continue
        assert len(xs) > 100
        # every drawn pixel (outlines, centre crosses, score text just above) is at the lesion
        for x0, y0, x1, y1 in boxes[position]:
            assert xs.min() >= x0 - 40 and xs.max() <= x1 + 40 and ys.min() >= y0 - 40 and ys.max() <= y1 + 40
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            assert xs.min() < cx < xs.max() and ys.min() < cy < ys.max()
