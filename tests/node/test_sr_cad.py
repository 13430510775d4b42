"""Mammography CAD SR (TID 4000): valid (dciodvfy, dsrdump), faithful (read back), in the source
study, idempotent, and honest about what it could not do (partial and incomplete results)."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from node.outputs.sr_cad import SOP_CLASS_UID, build_mammography_cad_sr, read_mammography_cad_sr
from node.study_result import StudyResult
from tests.node.outputs_helpers import phantom_case, phantom_source, sample_result
from tests.tools import require_tool

CREATED = 1_764_000_000.0
SUSPICIOUS_REPORT = (
    "FINDINGS:\nHeterogeneously dense breasts.\nLeft breast, upper outer quadrant: an irregular mass with "
    "spiculated margins.\nRight breast: possible architectural distortion, cannot exclude.\n\n"
    "IMPRESSION:\nLeft breast: BI-RADS 4B - suspicious.\nRight breast: BI-RADS 0 - incomplete.\n")


def _studies(phantom_dir: Path) -> list[Path]:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())


def _save(ds: Dataset, tmp_path: Path, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _assert_valid(path: Path) -> None:
    """dciodvfy: no errors (warnings allowed); dsrdump (DCMTK, which checks the Mammography CAD SR
    relationship constraints of PS3.3 Table A.35.5-2) reads it without errors."""
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    assert "Error" not in report, report
    proc = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "E:" not in proc.stderr, proc.stderr
    assert "Mammography CAD SR Document" in proc.stdout


def _expected(result: dict[str, Any]) -> dict[str, Any]:
    return {side: {"birads": b["birads"], "density": b["density"], "findings": [f["kind"] for f in b["findings"]]}
            for side, b in result["breasts"].items()}


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item of the tree, depth first."""
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_items(item))
    return out


def _values(ds: Dataset, concept: str) -> list[str]:
    """Coded values (or text) of the items named ``concept`` (a code value)."""
    out = []
    for item in _items(ds):
        if item.get("ConceptNameCodeSequence") and item.ConceptNameCodeSequence[0].CodeValue == concept:
            out.append(item.ConceptCodeSequence[0].CodeValue if "ConceptCodeSequence" in item else item.TextValue)
    return out


def test_every_phantom_study_gives_a_valid_sr_that_reads_back(phantom_dir: Path, tmp_path: Path) -> None:
    for study_dir in _studies(phantom_dir):
        source, result = phantom_case(study_dir)
        path = _save(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
        _assert_valid(path)
        back = read_mammography_cad_sr(pydicom.dcmread(path))
        assert back["breasts"] == _expected(result)
        assert back["models"] == result["models"]
        assert back["images"] == [{"position": i.position, "sop_instance_uid": i.sop_instance_uid}
                                  for i in source.images]
        # no CAD mark is encoded, whatever the report text says (issue 18.7)
        assert back["summary"] == "All algorithms succeeded; without findings"


def test_sr_is_in_the_source_study_with_evidence_unverified_and_the_disclaimer(phantom_dir: Path) -> None:
    source, result = phantom_case(_studies(phantom_dir)[0])
    ds = build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED)
    assert ds.SOPClassUID == SOP_CLASS_UID and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.StudyInstanceUID == source.study_uid and ds.Modality == "SR"
    assert ds.SeriesInstanceUID not in {i.series_instance_uid for i in source.images}
    assert ds.PatientID == source.header.PatientID and ds.AccessionNumber == source.header.AccessionNumber
    assert ds.VerificationFlag == "UNVERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "4000"
    assert ds.ReferencedPerformedProcedureStepSequence == [] and len(ds.PerformedProcedureCodeSequence) == 1
    referenced = {ref.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert referenced == {i.sop_instance_uid for i in source.images}
    descriptions = _values(ds, "111033")  # Impression Description
    assert descriptions[0].startswith("Preliminary AI output")
    assert result["report"]["impression"] in descriptions[0]
    # the image library says which breast and view each image is; density is a coded finding
    assert _values(ds, "111027") == ["73056007", "73056007", "80248007", "80248007"]
    assert _values(ds, "111031") == ["399162004", "399368009", "399162004", "399368009"]
    assert _values(ds, "111059") == ["129715009", "129715009"]  # Single Image Finding: Breast composition


def test_resend_is_byte_identical_and_new_models_make_a_new_instance(phantom_dir: Path, tmp_path: Path) -> None:
    source, result = phantom_case(_studies(phantom_dir)[0])
    first = build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED)
    a = _save(first, tmp_path, "a.dcm").read_bytes()
    b = _save(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path,
              "b.dcm").read_bytes()
    assert a == b
    result2 = dict(result, models={**result["models"], "versamammo": "versamammo-demo@1.1.0"})
    second = build_mammography_cad_sr(source, StudyResult.from_json(result2), created_at=CREATED)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID != first.SeriesInstanceUID
    assert second.StudyInstanceUID == first.StudyInstanceUID


def test_birads_4b_mass_and_uncertain_finding(phantom_dir: Path, tmp_path: Path) -> None:
    result = sample_result(SUSPICIOUS_REPORT, birads=(3, 4), density=2)
    source = phantom_source(_studies(phantom_dir)[0])
    path = _save(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    _assert_valid(path)
    ds = pydicom.dcmread(path)
    back = read_mammography_cad_sr(ds)
    assert back["breasts"] == _expected(result)
    assert back["breasts"]["L"] == {"birads": "4B", "density": "C", "findings": ["mass"]}
    assert back["breasts"]["R"]["findings"] == ["architectural_distortion"]
    meanings = [i.ConceptCodeSequence[0].CodeMeaning for i in _items(ds)
                if i.get("ConceptNameCodeSequence") and i.ConceptNameCodeSequence[0].CodeValue == "111005"]
    assert "BI-RADS 4B: Moderate suspicion for malignancy" in meanings
    assert any("uncertain" in text for text in _values(ds, "111033"))


def test_partial_result_lists_the_views_present(phantom_dir: Path, tmp_path: Path) -> None:
    study = _studies(phantom_dir)[1]
    source = phantom_source(study, ("R-CC", "R-MLO", "L-CC"))
    result = sample_result((study / "report.txt").read_text(), missing=("L-MLO",))
    path = _save(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    _assert_valid(path)
    ds = pydicom.dcmread(path)
    assert ds.CompletionFlag == "PARTIAL" and "L-MLO" in ds.CompletionFlagDescription
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3
    back = read_mammography_cad_sr(ds)
    assert [i["position"] for i in back["images"]] == ["R-CC", "R-MLO", "L-CC"]
    assert back["breasts"] == _expected(result)
    assert "views missing (L-MLO)" in _values(ds, "111033")[0]


def test_incomplete_result_says_cad_was_not_attempted(phantom_dir: Path, tmp_path: Path) -> None:
    source = phantom_source(_studies(phantom_dir)[1], ("R-CC", "R-MLO", "L-CC"))
    result = {"status": "incomplete", "missing_views": ["L-MLO"], "breasts": {}, "disagreements": [],
              "report": None, "models": {}, "preliminary": True}
    path = _save(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    _assert_valid(path)
    ds = pydicom.dcmread(path)
    assert ds.CompletionFlag == "PARTIAL"
    assert _values(ds, "111064") == ["111225"] and _values(ds, "111065") == ["111225"]  # Not Attempted
    assert _values(ds, "111017") == ["111245"]  # No algorithms succeeded; without findings
    back = read_mammography_cad_sr(ds)
    assert back["breasts"] == {} and back["models"] == {} and len(back["images"]) == 3
    assert "no model ran" in _values(ds, "111033")[0]


def test_breast_without_composition_birads_6_and_chinese_text(phantom_dir: Path, tmp_path: Path) -> None:
    """A breast without a density has no Single Image Finding to hang a TID 4003 on: its BI-RADS and
    findings go in the overall impression. Category 6 uses our declared local code; Chinese report
    text switches the document to UTF-8."""
    source, result = phantom_case(_studies(phantom_dir)[1])
    result["breasts"]["L"].update(density=None, density_source=None, birads="6", birads_source="report")
    result["report"] = dict(result["report"], impression=result["report"]["impression"] + "\n左乳：BI-RADS 6类。")
    path = _save(build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    _assert_valid(path)
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MAMMO"
    back = read_mammography_cad_sr(ds)
    assert back["breasts"] == _expected(result)
    assert back["breasts"]["L"]["birads"] == "6" and back["breasts"]["L"]["density"] is None
    assert _values(ds, "111059") == ["129715009"]  # only the right breast has a composition finding
