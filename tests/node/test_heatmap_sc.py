"""The heatmap Secondary Capture: one per source image with a lesion map, valid (dciodvfy), labelled
derived and not for diagnosis in every attribute a PACS shows and in its pixels, and hot where the
phantom's lesion is (the map goes back through the inverse of the model geometry)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.outputs.common import NotApplicable
from node.outputs.heatmap_sc import (HEADER, SOP_CLASS_UID, build_secondary_capture, heat_on_source,
                                     planned_captures, read_secondary_capture)
from node.study_result import LesionMap, StudyResult
from tests.node.marks_helpers import lesion_boxes, oracle_marks
from tests.node.outputs_helpers import phantom_case
from tests.tools import require_tool

CREATED = 1_764_000_000.0
DEVICE = "2.25.1234"


def _lesion_study(phantom_dir: Path) -> Path:
    return next(p for p in sorted(phantom_dir.iterdir()) if p.is_dir() and lesion_boxes(p))


def test_a_capture_per_image_labelled_derived_valid_and_hot_on_the_lesion(phantom_dir: Path, tmp_path: Path) -> None:
    study = _lesion_study(phantom_dir)
    source, result = phantom_case(study)
    result.update(oracle_marks(study))
    planned = planned_captures(source, StudyResult.from_json(result), CREATED, DEVICE)
    assert [p for p, _ in planned] == [i.position for i in source.images] and len({u for _, u in planned}) == 4
    boxes = lesion_boxes(study)
    for position, uid in planned:
        ds = build_secondary_capture(source, StudyResult.from_json(result), created_at=CREATED, device_uid=DEVICE,
                                     identity=uid)
        path = tmp_path / f"{position}.dcm"
        ds.save_as(path, enforce_file_format=True)
        proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
        report = proc.stdout + proc.stderr
        assert "Error" not in report and "SCImage" in report, report
        back = pydicom.dcmread(path)
        image = next(i for i in source.images if i.position == position)
        read = read_secondary_capture(back)
        assert read["sop_class_uid"] == SOP_CLASS_UID and read["image_type"] == ["DERIVED", "SECONDARY"]
        assert read["burned_in_annotation"] == "YES" and "NOT FOR DIAGNOSIS" in read["series_description"]
        assert read["source"] == image.sop_instance_uid and back.StudyInstanceUID == source.study_uid
        assert back.Modality == "OT" and back.ConversionType == "WSD" and back.PhotometricInterpretation == "RGB"
        assert back.PatientID == image.dataset.PatientID and back.Laterality == image.laterality
        assert "not for diagnosis" in back.DerivationDescription
        # same rows/cols ratio as the source, downsampled at most
        rows, cols = int(image.dataset.Rows), int(image.dataset.Columns)
        assert read["shape"][2] == 3 and abs(read["shape"][0] / read["shape"][1] - rows / cols) < 0.01
        # the header text is burnt into the top-left corner (white on black)
        corner = back.pixel_array[:20, :200]
        assert (corner == 0).all(axis=-1).mean() > 0.3 and (corner == 255).all(axis=-1).any()
        # hot where the lesion is, cold elsewhere (the map back on the source geometry)
        heat = heat_on_source(LesionMap.from_json(result["lesion_maps"][position]), (rows, cols), 1.0)
        if position in boxes:
            for x0, y0, x1, y1 in boxes[position]:
                cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
                assert heat[cy, cx] > 0.3 and heat[cy, cx] >= 0.5 * heat.max(), position
        else:
            assert heat.max() == 0.0
        again = build_secondary_capture(source, StudyResult.from_json(result), created_at=CREATED, device_uid=DEVICE,
                                        identity=uid)
        again.save_as(tmp_path / "again.dcm", enforce_file_format=True)
        assert (tmp_path / "again.dcm").read_bytes() == path.read_bytes()
    assert HEADER == "AI HEATMAP - DERIVED - NOT FOR DIAGNOSIS"
    with pytest.raises(LookupError):
        other = dict(result, marks=result["marks"][:-1])
        build_secondary_capture(source, StudyResult.from_json(other), created_at=CREATED, device_uid=DEVICE,
                                identity=planned[0][1])


def test_no_capture_without_a_lesion_map(phantom_dir: Path) -> None:
    source, result = phantom_case(_lesion_study(phantom_dir))
    with pytest.raises(NotApplicable):
        planned_captures(source, StudyResult.from_json(result), CREATED, DEVICE)
    result.update(localization={"attempted": False, "why": "the VersaMammo package has no lesion map"})
    with pytest.raises(NotApplicable):
        planned_captures(source, StudyResult.from_json(result), CREATED, DEVICE)


def test_heat_follows_a_mirrored_geometry() -> None:
    """A hot cell on the left of a mirrored model image is on the right of the source."""
    prob = np.zeros((4, 4))
    prob[1, 0] = 1.0
    geometry = {"crop_x0": 0.0, "crop_y0": 0.0, "crop_w": 40.0, "flipped": True, "scale_x": 1.0,
                "scale_y": 1.0, "offset_x": 0.0, "offset_y": 0.0, "inner_w": 40.0}
    heat = heat_on_source(LesionMap.from_json({"map": prob.tolist(), "geometry": geometry, "model_size": [40, 40]}),
                          (40, 40), 1.0)
    assert heat[15, 35] > 0.8 and heat[15, 5] == 0.0 and heat[35, 35] == 0.0
