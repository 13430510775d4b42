"""Box targets on the feature grid: in the right cells after crop, mirror and resize."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from models.preprocess import prepare_uint8
from models.preprocess.geometry import ModelGeometry
from models.versamammo.checkpoint import config_for
from models.versamammo.config import student_preprocess_config
from training.data.lesion_map import lesion_grid_target
from phantoms.study import generate_study, write_study
from training.data.phantom_records import study_records
from training.data.image_record import ImageRecord, LesionBox


def _study_with_a_boxed_lesion(tmp_path: Path) -> list[ImageRecord]:
    for index in range(40):
        folder = tmp_path / f"s{index}"
        write_study(generate_study(3, index), folder)
        records = [r for r in study_records(folder) if r.boxes]
        if records:
            return records
        import shutil

        shutil.rmtree(folder)
    raise AssertionError("no phantom with a lesion in 40 studies")


def test_the_target_lights_the_cells_that_hold_each_box_on_both_sides(tmp_path: Path) -> None:
    records = _study_with_a_boxed_lesion(tmp_path)
    cfg = student_preprocess_config(config_for("tiny"))
    rows, cols = cfg.size
    for record in records:
        prepared = prepare_uint8(pydicom.dcmread(record.path), cfg, record.laterality)
        target, known = lesion_grid_target(record, prepared, cfg, 8)
        assert known and target.shape == (8, 8) and target.max() > 0.5
        geometry = ModelGeometry.of(prepared, cfg)
        for box in record.boxes:
            x0, y0, x1, y1 = geometry.box_to_model((box.x0, box.y0, box.x1, box.y1))
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            assert target[int(cy // (rows / 8)), int(cx // (cols / 8))] > 0
        # cells far from every box stay 0
        lit = np.argwhere(target > 0)
        assert len(lit) < 64


def test_negative_images_are_known_zero_and_unboxed_findings_are_left_out(tmp_path: Path) -> None:
    records = _study_with_a_boxed_lesion(tmp_path)
    cfg = student_preprocess_config(config_for("tiny"))
    record = records[0]
    prepared = prepare_uint8(pydicom.dcmread(record.path), cfg, record.laterality)
    from dataclasses import replace

    negative = replace(record, boxes=(), birads=1)
    target, known = lesion_grid_target(negative, prepared, cfg, 8)
    assert known and not target.any()
    unboxed = replace(record, boxes=(), birads=4)
    assert lesion_grid_target(unboxed, prepared, cfg, 8)[1] is False
    outside = replace(record, boxes=(LesionBox(0, -50.0, -50.0, -10.0, -10.0),))
    target, known = lesion_grid_target(outside, prepared, cfg, 8)
    assert known and not target.any()
