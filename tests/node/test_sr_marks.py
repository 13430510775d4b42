"""CAD marks in every output that carries them: Mammography CAD SR single-image findings (TID 4006
with TID 4021 geometry), TID 1500 planar ROI groups (TID 1410), and a Grayscale Softcopy
Presentation State per source image. Each is valid (dciodvfy; dsrdump for the CAD SR), read back
(our walker, highdicom's TID 1500 reader without warnings, the GSPS's annotation sequences) to the
marks of the result, on the image they were found on, where the phantom's lesion is."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.outputs.common import NotApplicable
from node.outputs.gsps import SOP_CLASS_UID as GSPS_CLASS
from node.outputs.gsps import build_presentation_state, planned_states, read_presentation_state
from node.outputs.sr_cad import ATTEMPTED, build_mammography_cad_sr, read_mammography_cad_sr
from node.outputs.sr_tid1500 import build_tid1500_sr, read_tid1500_sr
from node.study_result import StudyResult
from tests.node.marks_helpers import lesion_boxes, near, oracle_marks
from tests.node.outputs_helpers import phantom_case
from tests.tools import require_tool

CREATED = 1_764_000_000.0
DEVICE = "2.25.1234"


def _lesion_study(phantom_dir: Path) -> Path:
    """The first phantom study with a boxed lesion (seed 11: a calcification on the right)."""
    return next(p for p in sorted(phantom_dir.iterdir()) if p.is_dir() and lesion_boxes(p))


def _case(phantom_dir: Path) -> tuple[Any, dict[str, Any], Path]:
    study = _lesion_study(phantom_dir)
    source, result = phantom_case(study)
    result.update(oracle_marks(study))
    assert result["marks"], "the oracle map gives marks"
    return source, result, study


def _dciodvfy(path: Path) -> str:
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    assert "Error" not in report, report
    return report


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _same(a: list[float], b: list[float], tol: float = 0.05) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


def _overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _on_the_lesions(drawn: list[list[float]], lesions: list[list[float]]) -> bool:
    """Every drawn region overlaps a lesion box and every lesion's centre is inside a drawn region."""
    return all(any(_overlaps(d, b) for b in lesions) for d in drawn) and all(
        any(near([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], d, 0) for d in drawn) for b in lesions)


def _texts(ds: Dataset) -> str:
    """Every TEXT value of the content tree."""
    return "\n".join([str(i.TextValue) for i in ds.get("ContentSequence", []) if "TextValue" in i]
                     + [_texts(i) for i in ds.get("ContentSequence", [])])


def _uid_of(source: Any, position: str) -> str:
    return next(i.sop_instance_uid for i in source.images if i.position == position)


def test_cad_sr_has_a_single_image_finding_with_center_and_outline_per_mark(phantom_dir: Path, tmp_path: Path) -> None:
    source, result, study = _case(phantom_dir)
    path = _save(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED),
                 tmp_path / "cad.dcm")
    _dciodvfy(path)
    proc = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "E:" not in proc.stderr, proc.stderr
    back = read_mammography_cad_sr(pydicom.dcmread(path))
    assert back["summary"] == "All algorithms succeeded; with findings"
    assert len(back["marks"]) == len(result["marks"])
    boxes = lesion_boxes(study)
    for want, got in zip(result["marks"], back["marks"]):
        assert got["position"] == want["position"] and got["sop_instance_uid"] == _uid_of(source, want["position"])
        assert got["kind"] == want["kind"] == "mass" and abs(got["score"] - want["score"]) < 1e-4
        assert _same(got["center"], want["center"]) and _same(got["box"], want["box"])
    for position in {m["position"] for m in back["marks"]}:
        assert _on_the_lesions([m["box"] for m in back["marks"] if m["position"] == position], boxes[position])
    assert {m["position"] for m in back["marks"]} == set(boxes)  # every boxed image, and only those
    # what was attempted, and the breasts' values, are as before
    assert back["breasts"]["R"]["density"] == result["breasts"]["R"]["density"]
    text = _texts(pydicom.dcmread(path))
    assert f"were attempted and succeeded: {len(result['marks'])} CAD marks at lesion-map probability >= 0.2" in text


def test_cad_sr_of_a_package_without_lesion_map_says_localisation_was_not_attempted(phantom_dir: Path) -> None:
    source, result, _ = _case(phantom_dir)
    result.update(localization={"attempted": False, "why": "the VersaMammo package has no lesion map"}, marks=[])
    ds = build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED)
    back = read_mammography_cad_sr(ds)
    assert back["marks"] == [] and back["summary"] == "All algorithms succeeded; without findings"
    assert ATTEMPTED in _texts(ds)
    result.update(localization={"attempted": True, "mark_threshold": 0.5, "max_marks_per_image": 3})
    back = read_mammography_cad_sr(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED))
    assert back["summary"] == "All algorithms succeeded; without findings"  # attempted, nothing found


def test_tid1500_has_a_planar_roi_group_per_mark_read_by_highdicom(phantom_dir: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    source, result, _ = _case(phantom_dir)
    path = _save(build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path / "tid1500.dcm")
    _dciodvfy(path)
    with caplog.at_level(logging.WARNING):
        back = read_tid1500_sr(pydicom.dcmread(path))
    assert [r for r in caplog.records if r.name.startswith("highdicom")] == []
    assert len(back["marks"]) == len(result["marks"])
    for want, got in zip(result["marks"], back["marks"]):
        assert got["sop_instance_uid"] == _uid_of(source, want["position"]) and got["kind"] == want["kind"]
        assert _same(got["box"], want["box"]) and abs(got["score"] - want["score"]) < 1e-4
    assert back["breasts"]["R"]["birads"] == result["breasts"]["R"]["birads"]


def test_a_presentation_state_per_image_puts_the_marks_on_their_image(phantom_dir: Path, tmp_path: Path) -> None:
    source, result, study = _case(phantom_dir)
    planned = planned_states(source, StudyResult.from_json(result), CREATED, DEVICE)
    assert [p for p, _ in planned] == [i.position for i in source.images]
    assert len({uid for _, uid in planned}) == 4
    boxes = lesion_boxes(study)
    for position, uid in planned:
        ds = build_presentation_state(source, StudyResult.from_json(result), created_at=CREATED, device_uid=DEVICE,
                                      identity=uid)
        path = _save(ds, tmp_path / f"{position}.dcm")
        assert "GrayscaleSoftcopyPresentationState" in _dciodvfy(path)
        back = read_presentation_state(pydicom.dcmread(path))
        assert ds.SOPClassUID == GSPS_CLASS and ds.StudyInstanceUID == source.study_uid
        assert list(back["images"]) == [_uid_of(source, position)]
        drawn = back["images"][_uid_of(source, position)]
        marks = [m for m in result["marks"] if m["position"] == position]
        assert len(drawn["boxes"]) == len(drawn["points"]) == len(marks)
        assert drawn["texts"][0].startswith("AI CAD marks, preliminary, not for diagnosis")
        for mark, box, point in zip(marks, drawn["boxes"], drawn["points"]):
            assert _same(box, mark["box"]) and _same(point, mark["center"])
        assert not marks if position not in boxes else _on_the_lesions(drawn["boxes"], boxes[position])
        # byte-identical when rebuilt; another result, another instance
        again = build_presentation_state(source, StudyResult.from_json(result), created_at=CREATED,
                                         device_uid=DEVICE, identity=uid)
        assert _save(again, tmp_path / "again.dcm").read_bytes() == path.read_bytes()
    other = dict(result, marks=result["marks"][:-1])
    assert set(planned_states(source, StudyResult.from_json(other), CREATED, DEVICE)).isdisjoint(planned)
    with pytest.raises(LookupError):
        build_presentation_state(source, StudyResult.from_json(other), created_at=CREATED, device_uid=DEVICE,
                                 identity=planned[0][1])


def test_no_presentation_state_without_localisation(phantom_dir: Path) -> None:
    source, result = phantom_case(_lesion_study(phantom_dir))
    with pytest.raises(NotApplicable):
        planned_states(source, StudyResult.from_json(result), CREATED, DEVICE)
