"""Both SRs (TID 1500 and Mammography CAD SR), issue 18.8-18.12 and 18.6: what they copy from the
source (whole modules, type 2 present when the source lacks them, dciodvfy 0 errors), their time
zone, their UIDs (same content, same UID; different content, another), the completion flag and
the revision numbers."""
from __future__ import annotations

import subprocess
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from node.outputs.source import SourceImage, SourceStudy
from node.outputs.sr_cad import build_mammography_cad_sr, read_mammography_cad_sr
from node.outputs.sr_tid1500 import build_tid1500_sr, read_tid1500_sr
from node.study_result import StudyResult
from tests.node.outputs_helpers import phantom_case, sample_result
from tests.tools import require_tool

CREATED = 1_764_000_000.0
BUILDERS = {"tid1500": build_tid1500_sr, "tid4000": build_mammography_cad_sr}
# What the writers copy from the source that a real modality may leave out.
OPTIONAL = ("InstitutionName", "StationName", "ReferringPhysicianName", "AccessionNumber", "StudyTime", "StudyDate",
            "StudyID", "PatientBirthDate", "PatientSex", "ContentDate", "ContentTime", "PatientOrientation",
            "PixelSpacing", "ImagerPixelSpacing", "ProcedureCodeSequence", "StudyDescription", "PatientName",
            "SpecificCharacterSet", "TimezoneOffsetFromUTC")


@pytest.fixture(scope="module")
def case(phantom_dir: Path) -> tuple[SourceStudy, dict]:
    return phantom_case(sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0])


def _edited(source: SourceStudy, edit) -> SourceStudy:
    images = []
    for image in source.images:
        ds = deepcopy(image.dataset)
        edit(ds)
        images.append(SourceImage(image.position, ds))
    return SourceStudy(source.study_uid, tuple(images))


def _without(*keywords: str):
    def edit(ds: Dataset) -> None:
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)
    return edit


def _valid(ds: Dataset, tmp_path: Path, name: str) -> Dataset:
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    assert "Error" not in report, report
    return pydicom.dcmread(path)


@pytest.mark.parametrize("keyword", OPTIONAL)
def test_a_source_without_an_optional_attribute_gives_valid_srs(case, tmp_path: Path, keyword: str) -> None:
    """Issue 18.12: type 2 elements present (empty) when the source lacks them, in every module."""
    source, result = case
    source = _edited(source, _without(keyword))
    for kind, build in BUILDERS.items():
        ds = _valid(build(source, StudyResult.from_json(result), created_at=CREATED), tmp_path, f"{kind}.dcm")
        if kind == "tid4000":
            assert ds.AuthorObserverSequence[0].InstitutionName == (source.get("InstitutionName") or "")
            assert read_mammography_cad_sr(ds)["breasts"]
        else:
            assert read_tid1500_sr(ds)["breasts"]


def test_a_source_without_any_of_them_gives_valid_srs(case, tmp_path: Path) -> None:
    source, result = case
    source = _edited(source, _without(*OPTIONAL))
    for kind, build in BUILDERS.items():
        ds = _valid(build(source, StudyResult.from_json(result), created_at=CREATED), tmp_path, f"{kind}.dcm")
        for keyword in ("ReferringPhysicianName", "AccessionNumber", "StudyDate", "StudyTime", "StudyID",
                        "PatientName", "PatientBirthDate", "PatientSex"):
            assert keyword in ds and not ds[keyword].value, keyword
        assert "ReferencedRequestSequence" not in ds  # nothing names a request


def test_whole_patient_and_study_modules_and_the_request_are_copied(case, tmp_path: Path) -> None:
    """Issue 18.11: other patient IDs, issuers, the referring physician's identification ... and a
    Referenced Request Sequence from the source's Request Attributes Sequence."""
    source, result = case

    def edit(ds: Dataset) -> None:
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = "OTHER-7", "HOSP-B", "TEXT"
        ds.OtherPatientIDsSequence = [other]
        ds.IssuerOfPatientID = "HOSP-A"
        ds.PatientAge, ds.PatientWeight = "051Y", 61
        request = Dataset()
        request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP-1", "SPS-1"
        request.PlacerOrderNumberImagingServiceRequest = "PLACER-9"
        ds.RequestAttributesSequence = [request]

    source = _edited(source, edit)
    for kind, build in BUILDERS.items():
        ds = _valid(build(source, StudyResult.from_json(result), created_at=CREATED), tmp_path, f"{kind}.dcm")
        assert ds.OtherPatientIDsSequence[0].PatientID == "OTHER-7" and ds.IssuerOfPatientID == "HOSP-A"
        assert ds.PatientAge == "051Y"
        [request] = ds.ReferencedRequestSequence
        assert (request.StudyInstanceUID, request.RequestedProcedureID, request.PlacerOrderNumberImagingServiceRequest,
                request.AccessionNumber) == (source.study_uid, "RP-1", "PLACER-9", source.header.AccessionNumber)


def test_time_zone_is_the_sources(case) -> None:
    """Issue 18.8: one offset for every date and time of the SR: the source's, or none."""
    source, result = case

    def east(ds: Dataset) -> None:
        ds.TimezoneOffsetFromUTC = "+0800"

    for kind, build in BUILDERS.items():
        ds = build(_edited(source, east), StudyResult.from_json(result), created_at=CREATED)  # 2025-11-24 16:00:00 UTC
        assert ds.TimezoneOffsetFromUTC == "+0800" and (ds.ContentDate, ds.ContentTime) == ("20251125", "000000")
        ds = build(_edited(source, _without("TimezoneOffsetFromUTC")), StudyResult.from_json(result),
                   created_at=CREATED)
        assert "TimezoneOffsetFromUTC" not in ds  # local times, as the source's own


def test_same_content_same_uid_different_content_another(case) -> None:
    """Issue 18.10: the instance UID covers everything the bytes depend on."""
    source, result = case
    other_image = _edited(source, lambda ds: setattr(ds, "SOPInstanceUID", ds.SOPInstanceUID + ".9"))
    renamed = _edited(source, lambda ds: setattr(ds, "PatientName", "Other^Name"))
    changes = {
        "creation time": (source, result, CREATED + 1, None),
        "source images": (other_image, result, CREATED, None),
        "source headers": (renamed, result, CREATED, None),
        "status": (source, dict(result, status="partial", missing_views=["L-MLO"]), CREATED, None),
        "models": (source, dict(result, models={**result["models"], "mammorg": "mammorg-demo@1.0.1"}), CREATED, None),
        "disagreements": (source, dict(result, disagreements=[{"breast": "R", "field": "birads", "report": "2",
                                                                "classifier": "3"}]), CREATED, None),
        "device": (source, result, CREATED, "2.25.42"),
    }
    for kind, build in BUILDERS.items():
        first = build(source, StudyResult.from_json(result), created_at=CREATED)
        again = build(source, StudyResult.from_json(dict(result, seconds=99.0)),
                      created_at=CREATED)  # not in the bytes
        assert again.SOPInstanceUID == first.SOPInstanceUID
        for what, (src, res, when, device) in changes.items():
            other = build(src, StudyResult.from_json(res), created_at=when, device_uid=device)
            assert other.SOPInstanceUID != first.SOPInstanceUID, (kind, what)


def test_completion_flag_is_the_same_in_both_srs(case) -> None:
    """Issue 18.6: PS3.3 C.17.2, the flag is about the content, not the signature."""
    source, result = case
    partial = sample_result("FINDINGS:\nFatty breasts.\n\nIMPRESSION:\nBI-RADS 1.\n", missing=("L-MLO",))
    for res, flag in ((result, "COMPLETE"), (partial, "PARTIAL")):
        srs = [build(source, StudyResult.from_json(res), created_at=CREATED) for build in BUILDERS.values()]
        assert {ds.CompletionFlag for ds in srs} == {flag}
        assert all(ds.VerificationFlag == "UNVERIFIED" for ds in srs)
        if flag == "PARTIAL":
            assert {ds.CompletionFlagDescription for ds in srs} == {srs[0].CompletionFlagDescription}


def test_device_uid_is_the_installations(case, tmp_path: Path) -> None:
    """Issue 18.9: made once per data directory, kept there, used by both SRs."""
    from node.outputs.common import installation_device_uid

    source, result = case
    uid = installation_device_uid(tmp_path / "a")
    assert uid == installation_device_uid(tmp_path / "a") != installation_device_uid(tmp_path / "b")
    assert (tmp_path / "a" / "device-uid").read_text().strip() == uid
    cad = build_mammography_cad_sr(source, StudyResult.from_json(result), created_at=CREATED, device_uid=uid)
    assert cad.AuthorObserverSequence[0].DeviceUID == uid
    tid = build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED, device_uid=uid)
    assert str(tid).count(uid) == 1  # the Device Observer UID of the observer context
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "device-uid").write_text("not a uid\n")
    with pytest.raises(ValueError):
        installation_device_uid(tmp_path / "c")
