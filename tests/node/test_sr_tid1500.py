"""TID 1500 Comprehensive SR: valid (dciodvfy), faithful (read back), in the source study, idempotent."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from node.outputs.common import NotApplicable
from node.outputs.sr_tid1500 import build_tid1500_sr, read_tid1500_sr
from tests.node.outputs_helpers import phantom_case, phantom_source, sample_result
from tests.tools import require_tool

CREATED = 1_764_000_000.0


def _studies(phantom_dir: Path) -> list[Path]:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())


def _dciodvfy(path: Path) -> str:
    tool = require_tool("dciodvfy")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def _save(sr, tmp_path: Path, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    sr.save_as(path, enforce_file_format=True)
    return path


def _texts(ds) -> list[str]:
    """Every TEXT value in the content tree."""
    out = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "TEXT":
            out.append(str(item.TextValue))
        out.extend(_texts(item))
    return out


def _expected(result: dict) -> dict:
    return {side: {"birads": b["birads"], "density": b["density"],
                   "findings": [{"kind": f["kind"], "status": f["status"], "locations": f["locations"],
                                 "descriptors": f["descriptors"]} for f in b["findings"]]}
            for side, b in result["breasts"].items()}


def test_every_phantom_study_gives_a_valid_sr_that_reads_back(phantom_dir: Path, tmp_path: Path) -> None:
    for study_dir in _studies(phantom_dir):
        source, result = phantom_case(study_dir)
        path = _save(build_tid1500_sr(source, result, created_at=CREATED), tmp_path)
        report = _dciodvfy(path)
        assert "Error" not in report, report
        back = read_tid1500_sr(pydicom.dcmread(path))
        assert back["breasts"] == _expected(result)
        assert back["findings_text"] == result["report"]["findings"]
        assert back["impression_text"] == result["report"]["impression"]
        assert "versamammo-demo 1.0.0" in back["models"] and "mammorg-demo 1.0.0" in back["models"]


def test_sr_is_in_the_source_study_with_evidence_and_unverified(phantom_dir: Path) -> None:
    source, result = phantom_case(_studies(phantom_dir)[0])
    sr = build_tid1500_sr(source, result, created_at=CREATED)
    assert sr.StudyInstanceUID == source.study_uid
    assert sr.SeriesInstanceUID not in {i.series_instance_uid for i in source.images}
    assert sr.PatientID == source.header.PatientID and sr.AccessionNumber == source.header.AccessionNumber
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "PARTIAL"
    referenced = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert referenced == {i.sop_instance_uid for i in source.images}
    assert any("Preliminary AI output" in t for t in _texts(sr))
    text = str(sr)
    # the image library says which breast and view each image is
    assert text.count("Image Laterality") == 4 and text.count("Image View") == 4


def test_resend_is_byte_identical_and_new_models_make_a_new_instance(phantom_dir: Path, tmp_path: Path) -> None:
    source, result = phantom_case(_studies(phantom_dir)[0])
    a = _save(build_tid1500_sr(source, result, created_at=CREATED), tmp_path, "a.dcm").read_bytes()
    b = _save(build_tid1500_sr(source, result, created_at=CREATED), tmp_path, "b.dcm").read_bytes()
    assert a == b
    first = build_tid1500_sr(source, result, created_at=CREATED)
    result2 = dict(result, models={**result["models"], "mammorg": "mammorg-demo@1.1.0"})
    second = build_tid1500_sr(source, result2, created_at=CREATED)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID != first.SeriesInstanceUID


def test_suspicious_uncertain_and_subcategory_findings(phantom_dir: Path, tmp_path: Path) -> None:
    text = ("FINDINGS:\nHeterogeneously dense breasts.\nLeft breast, upper outer quadrant: an irregular mass with "
            "spiculated margins.\nRight breast: possible architectural distortion, cannot exclude.\n\n"
            "IMPRESSION:\nLeft breast: BI-RADS 4B - suspicious.\nRight breast: BI-RADS 0 - incomplete.\n")
    result = sample_result(text, birads=(3, 4), density=2)
    source = phantom_source(_studies(phantom_dir)[0])
    path = _save(build_tid1500_sr(source, result, created_at=CREATED), tmp_path)
    assert "Error" not in _dciodvfy(path)
    back = read_tid1500_sr(pydicom.dcmread(path))
    assert back["breasts"] == _expected(result)
    assert back["breasts"]["L"]["birads"] == "4B" and back["breasts"]["L"]["density"] == "C"
    assert any(f["kind"] == "mass" for f in back["breasts"]["L"]["findings"])
    assert [f["status"] for f in back["breasts"]["R"]["findings"]] == ["UNC"]


def test_partial_result_references_the_views_present(phantom_dir: Path, tmp_path: Path) -> None:
    study = _studies(phantom_dir)[1]
    source = phantom_source(study, ("R-CC", "R-MLO", "L-CC"))
    result = sample_result((study / "report.txt").read_text(), missing=("L-MLO",))
    path = _save(build_tid1500_sr(source, result, created_at=CREATED), tmp_path)
    report = _dciodvfy(path)
    assert "Error" not in report, report
    ds = pydicom.dcmread(path)
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3
    assert read_tid1500_sr(ds)["breasts"] == _expected(result)


def test_no_sr_when_no_model_ran(phantom_dir: Path) -> None:
    source = phantom_source(_studies(phantom_dir)[1], ("R-CC", "R-MLO", "L-CC"))
    result = {"status": "incomplete", "missing_views": ["L-MLO"], "breasts": {}, "disagreements": [],
              "report": None, "models": {}, "preliminary": True}
    with pytest.raises(NotApplicable):
        build_tid1500_sr(source, result, created_at=CREATED)


def test_chinese_report_and_birads_6_stay_valid(phantom_dir: Path, tmp_path: Path) -> None:
    text = ("检查所见：\n双侧乳腺不均匀致密型。\n右乳外上象限见不规则肿块，边缘毛刺。\n\n"
            "诊断意见：\n右乳 BI-RADS 6。\n左乳 BI-RADS 1。\n")
    result = sample_result(text, birads=(5, 1), density=2)
    result["breasts"]["R"]["birads"] = "6"
    source = phantom_source(_studies(phantom_dir)[0])
    path = _save(build_tid1500_sr(source, result, created_at=CREATED), tmp_path)
    report = _dciodvfy(path)
    assert "Error" not in report, report
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MAMMO"
    back = read_tid1500_sr(ds)
    assert back["breasts"]["R"]["birads"] == "6"
    assert back["impression_text"] == result["report"]["impression"]
