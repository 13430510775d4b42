"""TID 1500 Comprehensive SR: valid (dciodvfy), faithful (read back), in the source study, idempotent."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from node.outputs.common import NotApplicable
from node.outputs.sr_tid1500 import build_tid1500_sr, read_tid1500_sr
from node.study_result import StudyResult
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
                   "findings": [{"kind": f["kind"], "status": f["status"], "locations": sorted(f["locations"]),
                                 "descriptors": f["descriptors"]} for f in b["findings"]]}
            for side, b in result["breasts"].items()}


def _read(ds) -> dict:
    """read_tid1500_sr, locations compared as sets (the SR orders them part of the breast first)."""
    back = read_tid1500_sr(ds)
    for breast in back["breasts"].values():
        for finding in breast["findings"]:
            finding["locations"] = sorted(finding["locations"])
    return back


def test_every_phantom_study_gives_a_valid_sr_that_reads_back(phantom_dir: Path, tmp_path: Path) -> None:
    for study_dir in _studies(phantom_dir):
        source, result = phantom_case(study_dir)
        path = _save(build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
        report = _dciodvfy(path)
        assert "Error" not in report, report
        back = _read(pydicom.dcmread(path))
        assert back["breasts"] == _expected(result)
        assert back["findings_text"] == result["report"]["findings"]
        assert back["impression_text"] == result["report"]["impression"]
        assert "versamammo-demo 1.0.0" in back["models"] and "mammorg-demo 1.0.0" in back["models"]


def test_sr_is_in_the_source_study_with_evidence_and_unverified(phantom_dir: Path) -> None:
    source, result = phantom_case(_studies(phantom_dir)[0])
    sr = build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED)
    assert sr.StudyInstanceUID == source.study_uid
    assert sr.SeriesInstanceUID not in {i.series_instance_uid for i in source.images}
    assert sr.PatientID == source.header.PatientID and sr.AccessionNumber == source.header.AccessionNumber
    # unsigned (UNVERIFIED), yet complete in content (PS3.3 C.17.2), like the CAD SR of the same result
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR, as IHE AIR asks
    referenced = {ref.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert referenced == {i.sop_instance_uid for i in source.images}
    assert any("Preliminary AI output" in t for t in _texts(sr))
    text = str(sr)
    # the image library says which breast and view each image is
    assert text.count("Image Laterality") == 4 and text.count("Image View") == 4


def test_resend_is_byte_identical_and_new_models_make_a_new_instance(phantom_dir: Path, tmp_path: Path) -> None:
    source, result = phantom_case(_studies(phantom_dir)[0])
    typed = StudyResult.from_json(result)
    a = _save(build_tid1500_sr(source, typed, created_at=CREATED), tmp_path, "a.dcm").read_bytes()
    b = _save(build_tid1500_sr(source, typed, created_at=CREATED), tmp_path, "b.dcm").read_bytes()
    assert a == b
    first = build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED)
    result2 = dict(result, models={**result["models"], "mammorg": "mammorg-demo@1.1.0"})
    second = build_tid1500_sr(source, StudyResult.from_json(result2), created_at=CREATED)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID != first.SeriesInstanceUID


def test_suspicious_uncertain_and_subcategory_findings(phantom_dir: Path, tmp_path: Path) -> None:
    text = ("FINDINGS:\nHeterogeneously dense breasts.\nLeft breast, upper outer quadrant: an irregular mass with "
            "spiculated margins.\nRight breast: possible architectural distortion, cannot exclude.\n\n"
            "IMPRESSION:\nLeft breast: BI-RADS 4B - suspicious.\nRight breast: BI-RADS 0 - incomplete.\n")
    result = sample_result(text, birads=(3, 4), density=2)
    source = phantom_source(_studies(phantom_dir)[0])
    path = _save(build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    assert "Error" not in _dciodvfy(path)
    back = _read(pydicom.dcmread(path))
    assert back["breasts"] == _expected(result)
    assert back["breasts"]["L"]["birads"] == "4B" and back["breasts"]["L"]["density"] == "C"
    assert any(f["kind"] == "mass" for f in back["breasts"]["L"]["findings"])
    assert [f["status"] for f in back["breasts"]["R"]["findings"]] == ["UNC"]


def test_partial_result_references_the_views_present(phantom_dir: Path, tmp_path: Path) -> None:
    study = _studies(phantom_dir)[1]
    source = phantom_source(study, ("R-CC", "R-MLO", "L-CC"))
    result = sample_result((study / "report.txt").read_text(), missing=("L-MLO",))
    path = _save(build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    report = _dciodvfy(path)
    assert "Error" not in report, report
    ds = pydicom.dcmread(path)
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 3
    assert _read(ds)["breasts"] == _expected(result)


def test_no_sr_when_no_model_ran(phantom_dir: Path) -> None:
    source = phantom_source(_studies(phantom_dir)[1], ("R-CC", "R-MLO", "L-CC"))
    result = {"status": "incomplete", "missing_views": ["L-MLO"], "breasts": {}, "disagreements": [],
              "report": None, "models": {}, "preliminary": True}
    with pytest.raises(NotApplicable):
        build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED)


def test_chinese_report_and_birads_6_stay_valid(phantom_dir: Path, tmp_path: Path) -> None:
    text = ("检查所见：\n双侧乳腺不均匀致密型。\n右乳外上象限见不规则肿块，边缘毛刺。\n\n"
            "诊断意见：\n右乳 BI-RADS 6。\n左乳 BI-RADS 1。\n")
    result = sample_result(text, birads=(5, 1), density=2)
    result["breasts"]["R"]["birads"] = "6"
    source = phantom_source(_studies(phantom_dir)[0])
    path = _save(build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    report = _dciodvfy(path)
    assert "Error" not in report, report
    ds = pydicom.dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MAMMO"
    back = _read(ds)
    assert back["breasts"]["R"]["birads"] == "6"
    assert back["impression_text"] == result["report"]["impression"]


MULTI_FINDING_REPORT = (
    "FINDINGS:\nScattered fibroglandular densities.\nLeft breast, lower outer quadrant, 5 o'clock, anterior depth: "
    "a round circumscribed mass.\nLeft breast, upper outer quadrant: grouped fine pleomorphic calcifications.\n"
    "Left breast: possible architectural distortion.\nRight breast: coarse calcifications.\n\n"
    "IMPRESSION:\nLeft breast: BI-RADS 4A - suspicious.\nRight breast: BI-RADS 2 - benign.\n")


def test_each_finding_is_its_own_group_that_highdicom_reads_without_warnings(
        phantom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 18.4: TID 1501 row 3b allows one Finding per group; several in one group made
    highdicom's reader warn and drop all but the first. One group per finding (own tracking
    identifier and UID, finding site with laterality and topographical modifiers), plus the
    breast's assessment group; highdicom finds every finding, silently."""
    import highdicom as hd

    result = sample_result(MULTI_FINDING_REPORT, birads=(2, 4), density=1)
    assert len(result["breasts"]["L"]["findings"]) >= 3 and result["breasts"]["R"]["findings"]
    results = [result] + [phantom_case(d)[1] for d in _studies(phantom_dir)]
    sources = [phantom_source(_studies(phantom_dir)[0])] + [phantom_source(d) for d in _studies(phantom_dir)]
    for n, (source, res) in enumerate(zip(sources, results)):
        path = _save(build_tid1500_sr(source, StudyResult.from_json(res), created_at=CREATED), tmp_path, f"sr{n}.dcm")
        assert "Error" not in _dciodvfy(path)
        caplog.clear()
        with caplog.at_level("WARNING"):
            sr = hd.sr.srread(path)
            groups = sr.content.get_image_measurement_groups()
            seen = {side: [] for side in res["breasts"]}
            for group in groups:  # every property highdicom's reader has
                finding, sites = group.finding_type, group.finding_sites
                _ = (group.tracking_identifier, group.tracking_uid, group.finding_category, group.method,
                     group.get_qualitative_evaluations(), group.get_measurements())
                for site in sites:
                    _ = (site.laterality, site.topographical_modifier)
                side = {s.laterality.value for s in sites}
                assert len(side) == 1
                if finding.value != "76752008":  # not the breast's assessment group
                    seen["R" if side == {"24028007"} else "L"].append(finding.value)
            back = _read(pydicom.dcmread(path))
        assert [r for r in caplog.records if r.name.startswith("highdicom")] == []
        assert back["breasts"] == _expected(res)
        for side, breast in res["breasts"].items():
            assert len(seen[side]) == len(breast["findings"])
        uids = [g.tracking_uid for g in groups]
        assert len(set(uids)) == len(uids) == len(res["breasts"]) + sum(len(b["findings"]) for b in res["breasts"].values())
    # the mass at LOQ, 5 o'clock, anterior: its site is the quadrant, with laterality, one modifier per site
    ds = pydicom.dcmread(tmp_path / "sr0.dcm")
    mass = next(f for f in _read(ds)["breasts"]["L"]["findings"] if f["kind"] == "mass")
    assert mass["locations"] == sorted(["loq", "clock_5", "anterior"])
    sr = hd.sr.srread(tmp_path / "sr0.dcm")
    mass_group = next(g for g in sr.content.get_image_measurement_groups() if g.finding_type.value == "129788004")
    assert {s.value.value for s in mass_group.finding_sites} == {"33564002"}  # lower outer quadrant of breast
    assert {s.topographical_modifier.value for s in mass_group.finding_sites} == {"129776001", "255549009"}
    assert {s.laterality.value for s in mass_group.finding_sites} == {"7771000"}  # left


def test_no_probability_of_cancer_only_what_the_classifier_gives(phantom_dir: Path, tmp_path: Path) -> None:
    """Issue 18.5: P(BI-RADS 4) + P(BI-RADS 5) is not a probability of cancer (DCM 111047); it is
    sent under our declared local concept that says what it is."""
    source, result = phantom_case(_studies(phantom_dir)[0])
    path = _save(build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED), tmp_path)
    assert "Error" not in _dciodvfy(path)
    ds = pydicom.dcmread(path)
    names = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptNameCodeSequence[0].CodingSchemeDesignator,
              i.ConceptNameCodeSequence[0].CodeMeaning) for i in _items(ds) if i.get("ConceptNameCodeSequence")]
    assert not [n for n in names if n[0] == "111047"]
    probs = [n for n in names if n[:2] == ("PBIRADS45", "99MAMMO")]
    assert len(probs) == 2 and "BI-RADS 4 or 5" in probs[0][2]
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MAMMO"
    expected = {s: round(sum(float(b["classifier"]["birads_probabilities"][k]) for k in ("4", "5")), 4)
                for s, b in result["breasts"].items()}
    values = [float(i.MeasuredValueSequence[0].NumericValue) for i in _items(ds)
              if i.get("ConceptNameCodeSequence") and i.ConceptNameCodeSequence[0].CodeValue == "PBIRADS45"]
    assert values == [expected["R"], expected["L"]]


def test_language_is_the_reports(phantom_dir: Path) -> None:
    """Issue 18.6: the language of the content is the report's (zh for a Chinese report)."""
    source, result = phantom_case(_studies(phantom_dir)[0])
    chinese = sample_result("检查所见：\n双侧乳腺散在纤维腺体。\n\n诊断意见：\n双乳 BI-RADS 1。\n")
    for res, tag in ((result, "en-US"), (chinese, "zh")):
        sr = build_tid1500_sr(source, StudyResult.from_json(res), created_at=CREATED)
        [language] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "121049"]
        assert language.ConceptCodeSequence[0].CodeValue == tag


def _items(ds) -> list:
    out = []
    for item in ds.get("ContentSequence", []):
        out.append(item)
        out.extend(_items(item))
    return out


def test_ihe_air_content_checks(phantom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What we could check of IHE AI Results (AIR) content (docs/dicom-sr.md, "IHE AIR"): TID 1500
    as the root template; the device as observer (its UID, name, manufacturer, model); in every
    measurement group a tracking identifier and a unique tracking UID, the algorithm (TID 4019 name,
    version, manufacturer) and references to the source images it was read from (the breast's views,
    each also in the image library and the evidence), all through highdicom's reader, silently."""
    import highdicom as hd

    device = "2.25.123456789"
    result = sample_result(MULTI_FINDING_REPORT, birads=(2, 4), density=1)
    source = phantom_source(_studies(phantom_dir)[0])
    path = _save(build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED, device_uid=device),
                 tmp_path)
    assert "Error" not in _dciodvfy(path)
    with caplog.at_level("WARNING"):
        sr = hd.sr.srread(path)
        [template] = sr.ContentTemplateSequence
        assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
        [observer] = sr.content.get_observer_contexts()
        attrs = observer.observer_identifying_attributes
        assert observer.observer_type.value == "121007"  # Device
        assert (attrs.uid, attrs.name, attrs.manufacturer_name) == (device, "mammo-node", "mammo-node")
        assert "versamammo-demo 1.0.0" in attrs.model_name
        library = {i.sop_instance_uid for i in source.images}
        evidence = {ref.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0]
                    .ReferencedSeriesSequence for ref in s.ReferencedSOPSequence}
        assert evidence == library
        groups = sr.content.get_image_measurement_groups()
        assert len(groups) == 2 + sum(len(b["findings"]) for b in result["breasts"].values())
        for group in groups:
            assert group.tracking_identifier and group.tracking_uid
            [side] = {"R" if s.laterality.value == "24028007" else "L" for s in group.finding_sites}
            referenced = {ref.referenced_sop_instance_uid for ref in group.source_images}
            assert referenced == {i.sop_instance_uid for i in source.images if i.laterality == side}
            names = {item.ConceptNameCodeSequence[0].CodeValue: item.TextValue for item in group[0].ContentSequence
                     if item.ValueType == "TEXT" and item.RelationshipType == "HAS CONCEPT MOD"}
            assert names["111001"] and names["111003"] and names["122405"] == "mammo-node"  # TID 4019
        assert len({g.tracking_uid for g in groups}) == len(groups)
    assert [r for r in caplog.records if r.name.startswith("highdicom")] == []
    library_items = [i for i in _items(pydicom.dcmread(path)) if i.get("ValueType") == "IMAGE"
                     and i.ConceptNameCodeSequence[0].CodeValue != "121112"]
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in library_items} == library
