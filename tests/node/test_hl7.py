"""HL7 ORU^R01 builder and MLLP client: STRICT validation, escaping, determinism, round trip, and
delivery against a real hl7apy MLLP server and raw sockets that misbehave."""
from __future__ import annotations

import copy
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
from pydicom.dataset import Dataset

from node.config import HL7Output
from node.outputs.common import DISCLAIMER, NotApplicable
from node.outputs.hl7 import build_oru, escape, parse_oru, unescape, validate_oru
from node.outputs.identity import control_id, filler_order_number
from node.outputs.mllp import MAX_ACK_BYTES, Ack, MLLPClient, MLLPError, message_charset
from node.outputs.source import SourceStudy
from node.study_result import StudyResult
from tests.node.conftest import free_port
from tests.node.outputs_helpers import phantom_case, phantom_source, sample_result

CREATED = 1_717_243_200.25  # 2024-06-01 12:00:00.25 UTC
SETTINGS = HL7Output(host="127.0.0.1", port=2575, sending_application="MAMMO_NODE", sending_facility="RADIOLOGY",
                     receiving_application="RIS", receiving_facility="HOSPITAL", validate_messages=True,
                     timezone="UTC")  # the timestamps below, whatever the test machine's zone
EXAM_ORDER = SETTINGS.model_copy(update={"order_mode": "exam_order"})
# hl7apy's copy of the v2.5.1 tables lacks CWE (0125) and SCT (0396); our local codes are 99MAMMO.
KNOWN_TABLE_GAPS = {("CWE", "HL70125"), ("SCT", "HL70396"), ("99MAMMO", "HL70396"), ("NCIT", "HL70396")}


def study_dirs(phantom_dir: Path) -> list[Path]:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())


def strict(message: str, tmp_path: Path) -> Any:
    """Parse and validate with hl7apy STRICT; fail on errors and on any warning but the known gaps."""
    parsed = parse_message(message, validation_level=VALIDATION_LEVEL.STRICT)
    report = tmp_path / "hl7apy-report.txt"
    assert parsed.validate(report_file=str(report)) is True
    for line in report.read_text().splitlines():
        assert line.startswith("Warning: Value "), line
        words = line.split()
        assert (words[2], words[6]) in KNOWN_TABLE_GAPS, line
    return parsed


def segments(message: str, name: str) -> list[list[str]]:
    return [s.split("|") for s in message.split("\r") if s.startswith(name + "|")]


def obx_by_code(message: str, code: str) -> list[list[str]]:
    return [f for f in segments(message, "OBX") if f[3].split("^")[0] == code]


def with_header(source: SourceStudy, **attributes: Any) -> SourceStudy:
    """A copy of the source whose first header has the given attributes (None deletes one)."""
    header = copy.deepcopy(source.header)
    for keyword, value in attributes.items():
        if value is None:
            if keyword in header:
                delattr(header, keyword)
        else:
            setattr(header, keyword, value)
    first = type(source.images[0])(source.images[0].position, header)
    return SourceStudy(source.study_uid, (first, *source.images[1:]))


def incomplete_result(missing: list[str]) -> dict[str, Any]:
    # Exactly what node.pipeline journals for policy "report".
    return {"status": "incomplete", "missing_views": missing, "breasts": {}, "disagreements": [],
            "report": None, "models": {}, "preliminary": True, "seconds": 0.001}


# ---------------------------------------------------------------------- the message
def test_phantom_orus_pass_strict_validation(phantom_dir: Path, tmp_path: Path) -> None:
    for study in study_dirs(phantom_dir):
        source, result = phantom_case(study)
        message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
        assert message.endswith("\r") and "\n" not in message
        parsed = strict(message, tmp_path)
        msh = parsed.msh
        assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
        assert msh.msh_12.to_er7() == "2.5.1" and msh.msh_11.to_er7() == "P"
        assert msh.msh_7.to_er7() == "20240601120000+0000"
        assert msh.msh_10.to_er7() == control_id(source.study_uid, StudyResult.from_json(result))
        assert [msh.msh_3.to_er7(), msh.msh_4.to_er7(), msh.msh_5.to_er7(), msh.msh_6.to_er7()] == [
            "MAMMO_NODE", "RADIOLOGY", "RIS", "HOSPITAL"]
        header = source.header
        pid = segments(message, "PID")[0]
        assert pid[3] == f"{header.PatientID}^^^{header.get('IssuerOfPatientID', '')}^MR"
        assert pid[5].split("^")[:2] == [header.PatientName.family_name, header.PatientName.given_name]
        assert pid[7] == header.PatientBirthDate and pid[8] == header.PatientSex
        orc, obr = segments(message, "ORC")[0], segments(message, "OBR")[0]
        # A distinct AI result: its own service and filler order number, the exam's accession in OBR-18.
        filler = f"{filler_order_number(source.study_uid, StudyResult.from_json(result))}^MAMMO_NODE"
        assert orc[1] == "RE" and orc[2] == "" and orc[3] == filler
        assert obr[2] == "" and obr[3] == filler and header.AccessionNumber not in filler
        assert obr[4] == "AIMAMMO^AI mammography analysis^99MAMMO" and obr[18] == header.AccessionNumber
        assert obr[7] == header.StudyDate + header.StudyTime.split(".")[0] + "+0000"  # no offset in the images
        assert obr[22] == "20240601120000+0000" and obr[25] == "P"
        assert segments(message, "NTE")[0][1:] == ["1", "L", escape(DISCLAIMER)]
        assert all(f[11] == "P" for f in segments(message, "OBX"))
        assert [int(f[1]) for f in segments(message, "OBX")] == list(range(1, len(segments(message, "OBX")) + 1))
        # BI-RADS and density per breast, coded in SNOMED CT with our lexicon id as the alternate.
        for side, sub_id in (("R", "1"), ("L", "2")):
            birads = obx_by_code(message, f"BIRADS-{side}")
            assert len(birads) == 1 and birads[0][2] == "CWE" and birads[0][4] == sub_id
            assert birads[0][5].split("^")[2] == "SCT"
            assert birads[0][5].split("^")[3:6] == [f"birads_{result['breasts'][side]['birads']}",
                                                    f"BI-RADS {result['breasts'][side]['birads']}", "99MAMMO"]
            density = obx_by_code(message, f"DENSITY-{side}")[0]
            assert density[5].split("^")[2] == "SCT" and density[4] == sub_id
        lines = [f for f in segments(message, "OBX") if f[3].split("^")[0] in ("18782-3", "19005-8", "18783-1")]
        assert len(lines) == len(result["report"]["text"].splitlines()) and all(f[2] == "TX" for f in lines)
        assert obx_by_code(message, "18782-3")[0][5] == "FINDINGS:" and obx_by_code(message, "19005-8")
        assert [f[5] for f in obx_by_code(message, "MODEL-VERSAMAMMO")] == ["versamammo-demo 1.0.0"]
        assert [f[5] for f in obx_by_code(message, "MODEL-MAMMORG")] == ["mammorg-demo 1.0.0"]
        assert [f[5] for f in obx_by_code(message, "113014")] == [source.study_uid]
        assert obx_by_code(message, "113014")[0][3] == "113014^Study^DCM" and not obx_by_code(message, "STUDY-UID")


def test_findings_are_grouped_per_breast_with_sites_and_descriptors(phantom_dir: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    result = copy.deepcopy(result)
    result["breasts"]["L"]["findings"] = [
        {"kind": "mass", "status": "UNC", "locations": ["uoq"], "descriptors": []},
        {"kind": "architectural_distortion", "status": "POS", "locations": [], "descriptors": []},
    ]
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    validate_oru(message)
    left = obx_by_code(message, "FINDING-L")
    assert [f[4] for f in left] == ["2.1", "2.2"]
    assert left[0][5].startswith("129788004^Mammographic breast mass^SCT^mass^")
    assert [f[5] for f in obx_by_code(message, "CERTAINTY-L")] == [
        "UNC^Possible (uncertain)^99MAMMO", "POS^Present^99MAMMO"]
    sites = obx_by_code(message, "SITE-L")
    assert [(f[4], f[5].split("^")[0]) for f in sites] == [("2.1", "76365002")]
    for finding in result["breasts"]["R"]["findings"]:
        assert finding["locations"] or finding["descriptors"]  # the phantom's right breast has both
    right_groups = {f[4] for f in obx_by_code(message, "SITE-R") + obx_by_code(message, "DESCRIPTOR-R")}
    assert right_groups == {f"1.{k}" for k in range(1, len(result["breasts"]["R"]["findings"]) + 1)}


def test_incomplete_result_is_a_valid_oru_saying_no_ai_result(phantom_dir: Path, tmp_path: Path) -> None:
    source = phantom_source(study_dirs(phantom_dir)[0], ("R-CC", "L-MLO"))
    result = incomplete_result(["R-MLO", "L-CC"])
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    assert [f[5] for f in obx_by_code(message, "AI-STATUS")] == ["incomplete^No AI result: views missing^99MAMMO"]
    assert [(f[4], f[5]) for f in obx_by_code(message, "MISSING-VIEW")] == [("1", "R-MLO"), ("2", "L-CC")]
    notes = [f[3] for f in segments(message, "NTE")]
    assert notes[1] == "No AI result: the study is missing the views R-MLO, L-CC."
    assert not any(f[3].startswith(("BIRADS", "DENSITY", "FINDING", "18782-3", "MODEL"))
                   for f in segments(message, "OBX"))
    back = parse_oru(message)
    assert back["status"] == "incomplete" and back["breasts"] == {} and back["report_text"] == ""
    assert back["models"] == {}


def test_partial_result_is_valid_and_says_which_views_were_missing(phantom_dir: Path, tmp_path: Path) -> None:
    study = study_dirs(phantom_dir)[1]
    source = phantom_source(study, ("R-CC", "R-MLO", "L-CC"))
    result = sample_result((study / "report.txt").read_text(), missing=("L-MLO",))
    assert result["status"] == "partial"
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    assert obx_by_code(message, "AI-STATUS")[0][5].startswith("partial^")
    assert [f[5] for f in obx_by_code(message, "MISSING-VIEW")] == ["L-MLO"]
    assert segments(message, "NTE")[1][3] == "Partial AI result: processed without the views L-MLO."
    assert set(parse_oru(message)["breasts"]) == {"R", "L"}


def test_special_characters_are_escaped_in_names_and_report_text(phantom_dir: Path, tmp_path: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    source = with_header(source, PatientName="O|Brien&Co^Ann~Marie", PatientID="ID|7^X",
                         IssuerOfPatientID="HOSP&1", StudyDescription="MG ~ SCREEN | BILAT")
    result = copy.deepcopy(result)
    tricky = "Pipe | caret ^ tilde ~ backslash \\ amp & end"
    result["report"]["text"] = "FINDINGS:\n" + tricky + "\n\tindented\x0bline\r\nlast \\E\\ literal\n"
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    parsed = strict(message, tmp_path)

    pid = segments(message, "PID")[0]
    assert len(pid) == 9  # no delimiter leaked into a field
    assert pid[3] == "ID\\F\\7\\S\\X^^^HOSP\\T\\1^MR"
    assert pid[5] == "O\\F\\Brien\\T\\Co^Ann\\R\\Marie"
    patient = parsed.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.PID
    assert patient.pid_5.xpn_1.to_er7() == "O\\F\\Brien\\T\\Co"  # one family-name field, one component
    assert patient.pid_5.xpn_2.to_er7() == "Ann\\R\\Marie"
    exam = build_oru(source, StudyResult.from_json(result), EXAM_ORDER, created_at=CREATED)
    assert segments(exam, "OBR")[0][4] == "MGSCREEN^MG \\R\\ SCREEN \\F\\ BILAT^99MAMMO"

    lines = obx_by_code(message, "18782-3")
    assert lines[1][5] == "Pipe \\F\\ caret \\S\\ tilde \\R\\ backslash \\E\\ amp \\T\\ end"
    assert all(len(f) == 20 for f in lines)  # OBX-1..OBX-19: the escaped text adds no field
    assert b"\x0b" not in message.encode() and b"\x1c" not in message.encode()
    back = parse_oru(message)
    assert back["patient_id"] == "ID|7^X"
    assert back["report_text"].split("\n") == ["FINDINGS:", tricky, " indented", "line", "last \\E\\ literal"]
    assert unescape(escape(tricky)) == tricky


def test_non_ascii_text_declares_utf8(phantom_dir: Path, tmp_path: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    plain = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    assert plain.split("\r")[0].split("|")[-1] == "2.5.1"  # pure ASCII: MSH-18 empty (HL7 default)
    assert message_charset(plain) == "ascii"
    source = with_header(source, PatientName="Müller^Zoë")
    result = copy.deepcopy(result)
    result["report"]["text"] = "右乳外上象限见钙化。\nBI-RADS 2"
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    assert message.split("\r")[0].split("|")[17] == "UNICODE UTF-8"
    assert message_charset(message) == "utf-8"
    assert parse_oru(message)["report_text"] == "右乳外上象限见钙化。\nBI-RADS 2"


def test_procedure_code_sequence_fills_obr4(phantom_dir: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "MAMSCR", "99HOSP", "Screening mammo"
    coded = with_header(source, ProcedureCodeSequence=[item])
    message = build_oru(coded, StudyResult.from_json(result), EXAM_ORDER, created_at=CREATED)
    assert segments(message, "OBR")[0][4] == "MAMSCR^Screening mammo^99HOSP"
    # An AI result names the AI service, never the exam's procedure.
    message = build_oru(coded, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    assert segments(message, "OBR")[0][4] == "AIMAMMO^AI mammography analysis^99MAMMO"


def test_missing_or_odd_demographics(phantom_dir: Path, tmp_path: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    odd = with_header(source, PatientName="", PatientSex="X", PatientBirthDate="", AccessionNumber="",
                      StudyDescription=None)
    message = build_oru(odd, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    pid = segments(message, "PID")[0]
    assert pid[5] == "^^^^^^U" and pid[7] == "" and pid[8] == "U"
    assert segments(message, "OBR")[0][18] == ""
    assert parse_oru(message)["accession"] == ""
    exam = build_oru(odd, StudyResult.from_json(result), EXAM_ORDER, created_at=CREATED)
    strict(exam, tmp_path)
    assert segments(exam, "OBR")[0][4] == "MGSCREEN^Screening mammography, bilateral^99MAMMO"
    other = EXAM_ORDER.model_copy(update={"exam_service_id": "MGDIAG^Diagnostic mammography^99HOSP"})
    assert segments(build_oru(odd, StudyResult.from_json(result), other, created_at=CREATED), "OBR")[0][4] == (
        "MGDIAG^Diagnostic mammography^99HOSP")
    with pytest.raises(NotApplicable, match="no PatientID") as excinfo:
        build_oru(with_header(source, PatientID=""), StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    assert source.header.PatientName.family_name not in str(excinfo.value)


def test_validate_oru_rejects_a_broken_message_without_quoting_values(phantom_dir: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    patient_id = source.header.PatientID
    with pytest.raises(ValueError, match="STRICT validation: ValidationError at PID_3"):
        validate_oru(message.replace(f"PID|1||{patient_id}^^^^MR|", "PID|1|||", 1))
    obx = next(s for s in message.split("\r") if s.startswith("OBX|"))
    fields = obx.split("|")
    fields[11] = ""  # OBX-11 (result status) is required
    with pytest.raises(ValueError, match="at OBX_11"):
        validate_oru(message.replace(obx, "|".join(fields), 1))
    birth = source.header.PatientBirthDate
    with pytest.raises(ValueError, match="STRICT validation") as excinfo:
        validate_oru(message.replace(f"|{birth}|", "|1966-SECRET|", 1))  # hl7apy quotes bad values
    assert "SECRET" not in str(excinfo.value)


def test_same_result_gives_identical_message_and_changed_result_a_new_control_id(phantom_dir: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    first = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    again = build_oru(source, StudyResult.from_json(copy.deepcopy(result)), SETTINGS, created_at=CREATED)
    assert first == again
    cid = control_id(source.study_uid, StudyResult.from_json(result))
    assert len(cid) <= 20 and cid.startswith("MN") and cid.isalnum()
    assert parse_oru(first)["control_id"] == cid

    changed = copy.deepcopy(result)
    changed["breasts"]["R"]["birads"] = "3"
    assert control_id(source.study_uid, StudyResult.from_json(changed)) != cid
    assert parse_oru(build_oru(source, StudyResult.from_json(changed), SETTINGS,
                               created_at=CREATED))["control_id"] != cid
    reworded = copy.deepcopy(result)
    reworded["report"]["text"] += "Addendum.\n"
    assert control_id(source.study_uid, StudyResult.from_json(reworded)) != cid
    other_models = copy.deepcopy(result)
    other_models["models"]["versamammo"] = "versamammo-demo@1.1.0"
    assert control_id(source.study_uid, StudyResult.from_json(other_models)) != cid
    assert control_id("1.2.3.4", StudyResult.from_json(result)) != cid
    # Incomplete results differ only by their missing views: still different messages.
    assert control_id(source.study_uid, StudyResult.from_json(incomplete_result(["R-CC"]))) != control_id(
        source.study_uid, StudyResult.from_json(incomplete_result(["L-CC"])))
    # A later resend of the same result keeps its control ID (only MSH-7/ORC-9/OBR-22 move).
    later = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED + 3600)
    assert parse_oru(later)["control_id"] == cid and later != first


def test_round_trip_matches_the_result_per_breast(phantom_dir: Path) -> None:
    for study in study_dirs(phantom_dir):
        source, result = phantom_case(study)
        back = parse_oru(build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED))
        expected = {side: {"birads": b["birads"], "density": b["density"],
                           "findings": [f["kind"] for f in b["findings"]]} for side, b in result["breasts"].items()}
        assert back["breasts"] == expected
        assert back["report_text"] == "\n".join(result["report"]["text"].splitlines())
        assert back["patient_id"] == source.header.PatientID
        assert back["accession"] == source.header.AccessionNumber
        assert back["control_id"] == control_id(source.study_uid, StudyResult.from_json(result))
        assert back["models"] == result["models"] and back["status"] == "complete"


@pytest.mark.parametrize("category, code", [("0", "397138000"), ("1", "397140005"), ("2", "397141009"),
                                            ("3", "397143007"), ("4", "397144001"), ("5", "397145000")])
def test_birads_categories_use_snomed_codes(phantom_dir: Path, category: str, code: str) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    result = copy.deepcopy(result)
    result["breasts"]["L"]["birads"] = category
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    value = obx_by_code(message, "BIRADS-L")[0][5].split("^")
    assert (value[0], value[2]) == (code, "SCT") and value[1].startswith(f"BI-RADS {category}:")
    assert parse_oru(message)["breasts"]["L"]["birads"] == category


@pytest.mark.parametrize("category", ["4A", "4B", "4C", "6"])
def test_birads_subcategories_use_local_codes(phantom_dir: Path, tmp_path: Path, category: str) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    result = copy.deepcopy(result)
    result["breasts"]["R"]["birads"] = category
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    assert obx_by_code(message, "BIRADS-R")[0][5] == f"birads_{category.lower()}^BI-RADS {category}^99MAMMO"
    assert parse_oru(message)["breasts"]["R"]["birads"] == category


def test_disagreements_and_classifier_sources_are_flagged(phantom_dir: Path, tmp_path: Path) -> None:
    study = study_dirs(phantom_dir)[0]
    source = phantom_source(study)
    result = sample_result((study / "report.txt").read_text(), birads=(4, 1))
    assert result["disagreements"], "the phantom report and the classifier must disagree here"
    result["breasts"]["L"]["density_source"] = "classifier"
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    flags = obx_by_code(message, "DISAGREE-R")
    item = next(d for d in result["disagreements"] if d["breast"] == "R")
    assert [f[5] for f in flags] == [f"BI-RADS: report {item['report']}, classifier {item['classifier']}"]
    assert flags[0][4] == "1" and not obx_by_code(message, "DISAGREE-L")
    assert obx_by_code(message, "DENSITY-L")[0][17].startswith("VERSAMAMMO^")
    assert obx_by_code(message, "BIRADS-R")[0][17].startswith("MAMMORG^")


def test_ai_result_is_its_own_order_linked_to_the_exam_order(phantom_dir: Path, tmp_path: Path) -> None:
    """Issue 18.1: the AI result never lands on the exam's order: ORC/OBR-2 empty, OBR-3 the node's
    filler order number, OBR-4 the AI service, OBR-18 the accession, OBR-26/29 the exam as parent."""
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    accession = source.header.AccessionNumber
    ordered = with_header(source, PlacerOrderNumberImagingServiceRequest="PL-77",
                          FillerOrderNumberImagingServiceRequest="FI^88")
    message = build_oru(ordered, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    orc, obr = segments(message, "ORC")[0], segments(message, "OBR")[0]
    filler = filler_order_number(source.study_uid, StudyResult.from_json(result))
    assert filler.startswith("AI") and len(filler) == 18 and accession not in message.split("OBR|")[0]
    assert orc[2] == obr[2] == "" and orc[3] == obr[3] == f"{filler}^MAMMO_NODE"
    assert obr[4] == "AIMAMMO^AI mammography analysis^99MAMMO" and obr[18] == accession
    assert obr[26] == "18782-3&Radiology Study observation (narrative)&LN"
    assert obr[29] == "PL-77^FI\\S\\88" and obr[25] == "P"
    back = parse_oru(message)
    assert (back["filler_order"], back["placer_order"], back["service"]) == (filler, "", "AIMAMMO")
    assert back["parent"] == ("PL-77", "FI^88") and back["accession"] == accession
    # The order numbers may come in the Request Attributes Sequence; only a filler number is fine.
    item = Dataset()
    item.FillerOrderNumberImagingServiceRequest = "FI-9"
    requested = with_header(source, RequestAttributesSequence=[item])
    message = build_oru(requested, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    assert segments(message, "OBR")[0][29] == "^FI-9"
    # Without any exam order number there is no parent link: the RIS matches OBR-18.
    plain = segments(build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED), "OBR")[0]
    assert len(plain) == 26 and plain[18] == accession
    # A site's own code for the AI service.
    own = SETTINGS.model_copy(update={"service_id": "AI-MG^KI Mammographie^99HOSP"})
    assert segments(build_oru(source, StudyResult.from_json(result), own, created_at=CREATED),
                    "OBR")[0][4] == "AI-MG^KI Mammographie^99HOSP"


def test_filler_order_number_is_stable_per_study_and_model_set(phantom_dir: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    filler = filler_order_number(source.study_uid, StudyResult.from_json(result))
    upgraded = copy.deepcopy(result)
    upgraded["models"]["versamammo"] = "versamammo-demo@2.0.0"
    upgraded["breasts"]["R"]["birads"] = "3"
    assert filler_order_number(source.study_uid, StudyResult.from_json(upgraded)) == filler  # same models, new versions
    assert control_id(source.study_uid, StudyResult.from_json(upgraded)) != control_id(
        source.study_uid, StudyResult.from_json(result))
    assert filler_order_number("1.2.3.4", StudyResult.from_json(result)) != filler
    fewer = copy.deepcopy(result)
    del fewer["models"]["mammorg"]
    assert filler_order_number(source.study_uid, StudyResult.from_json(fewer)) != filler
    # A result replacing an earlier one keeps that one's number, whatever its own models.
    fewer["replaces"] = {"oru": {"control_id": "MN1", "filler_order_number": filler}}
    assert filler_order_number(source.study_uid, StudyResult.from_json(fewer)) == filler


def test_exam_order_mode_keeps_the_old_shape(phantom_dir: Path, tmp_path: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    header = source.header
    message = build_oru(source, StudyResult.from_json(result), EXAM_ORDER, created_at=CREATED)
    strict(message, tmp_path)
    orc, obr = segments(message, "ORC")[0], segments(message, "OBR")[0]
    assert orc[2] == orc[3] == obr[2] == obr[3] == obr[18] == header.AccessionNumber
    assert obr[4] == f"MGSCREEN^{header.StudyDescription}^99MAMMO" and len(obr) == 26
    assert parse_oru(message)["accession"] == header.AccessionNumber


def test_report_lines_are_coded_by_section(phantom_dir: Path, tmp_path: Path) -> None:
    """Issue 18.3: findings 18782-3, impression 19005-8, recommendation 18783-1."""
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    result = copy.deepcopy(result)
    result["report"]["text"] = ("FINDINGS:\nScattered fibroglandular densities.\n\nIMPRESSION:\nBI-RADS 2.\n"
                                "Recommend routine screening in 1 year.\nRECOMMENDATION:\nAnnual follow-up.")
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    strict(message, tmp_path)
    coded = [(f[3].split("^")[0], f[5]) for f in segments(message, "OBX") if f[2] == "TX"]
    assert coded == [("18782-3", "FINDINGS:"), ("18782-3", "Scattered fibroglandular densities."), ("18782-3", ""),
                     ("19005-8", "IMPRESSION:"), ("19005-8", "BI-RADS 2."),
                     ("18783-1", "Recommend routine screening in 1 year."), ("18783-1", "RECOMMENDATION:"),
                     ("18783-1", "Annual follow-up.")]
    assert obx_by_code(message, "19005-8")[0][3] == "19005-8^Radiology Imaging study [Impression] (narrative)^LN"
    assert obx_by_code(message, "18783-1")[0][3] == "18783-1^Radiology Study recommendation (narrative)^LN"
    back = parse_oru(message)
    assert back["report_text"] == result["report"]["text"]
    assert back["sections"]["impression"] == ["IMPRESSION:", "BI-RADS 2."]
    assert back["sections"]["recommendation"][0] == "Recommend routine screening in 1 year."
    # Chinese headings, and a report with no heading at all (all findings).
    result["report"]["text"] = "【影像所见】\n双乳未见异常。\n【诊断意见】\nBI-RADS 1\n建议：定期复查。"
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    assert [f[3].split("^")[0] for f in segments(message, "OBX") if f[2] == "TX"] == [
        "18782-3", "18782-3", "19005-8", "19005-8", "18783-1"]
    result["report"]["text"] = "No abnormality.\nBI-RADS 1"
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    assert {f[3].split("^")[0] for f in segments(message, "OBX") if f[2] == "TX"} == {"18782-3"}


@pytest.mark.parametrize("processing_id", ["P", "T", "D"])
def test_msh11_processing_id_from_config(phantom_dir: Path, tmp_path: Path, processing_id: str) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    settings = SETTINGS.model_copy(update={"processing_id": processing_id})
    message = build_oru(source, StudyResult.from_json(result), settings, created_at=CREATED)
    strict(message, tmp_path)
    assert message.split("|")[10] == processing_id and parse_oru(message)["processing_id"] == processing_id


def test_pid3_has_issuer_type_and_the_other_patient_ids(phantom_dir: Path, tmp_path: Path) -> None:
    """Issue 18.3: CX.4 from IssuerOfPatientID, CX.5 "MR", (0010,1002) items as PID-3 repetitions."""
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    others = []
    for pid, issuer in (("H2-555", "HOSP2"), ("X~9", ""), (source.header.PatientID, "HOSP1")):
        item = Dataset()
        item.PatientID = pid
        if issuer:
            item.IssuerOfPatientID = issuer
        others.append(item)
    merged = with_header(source, IssuerOfPatientID="HOSP1", OtherPatientIDsSequence=others)
    message = build_oru(merged, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    parsed = strict(message, tmp_path)
    patient_id = source.header.PatientID
    assert segments(message, "PID")[0][3] == f"{patient_id}^^^HOSP1^MR~H2-555^^^HOSP2^MR~X\\R\\9^^^^MR"
    pid3 = parsed.ORU_R01_PATIENT_RESULT.ORU_R01_PATIENT.PID.pid_3
    assert [cx.cx_4.to_er7() for cx in pid3] == ["HOSP1", "HOSP2", ""] and {cx.cx_5.to_er7() for cx in pid3} == {"MR"}
    back = parse_oru(message)
    assert back["patient_id"] == patient_id
    assert back["patient_ids"] == [(patient_id, "HOSP1", "MR"), ("H2-555", "HOSP2", "MR"), ("X~9", "", "MR")]


@pytest.mark.parametrize("value", ["AIMAMMO", "AI^x", "^AI mammography^99MAMMO", "AI^x^", "A|I^x^L", "A&I^x^L"])
def test_service_ids_must_be_code_text_system(value: str) -> None:
    with pytest.raises(ValueError, match="code\\^text\\^system"):
        HL7Output(host="h", port=1, service_id=value)
    with pytest.raises(ValueError, match="code\\^text\\^system"):
        HL7Output(host="h", port=1, exam_service_id=value)
    with pytest.raises(ValueError):
        HL7Output(host="h", port=1, order_mode="exam")
    with pytest.raises(ValueError):
        HL7Output(host="h", port=1, processing_id="X")


# ---------------------------------------------------------------------- MLLP against hl7apy's server
class RecordingAckHandler(AbstractHandler):
    """Answers with an ACK whose MSA-1 is ``code`` and whose MSA-2 is the incoming control ID
    (or ``control_id`` when given); records every message it receives."""

    def __init__(self, message: str, code: str, control_id: str | None, received: list[str]) -> None:
        super().__init__(message)
        self.code, self.control_id, self.received = code, control_id, received

    def reply(self) -> str:
        self.received.append(self.incoming_message)
        incoming = self.incoming_message.split("\r")[0].split("|")[9]
        msh = "MSH|^~\\&|RIS|HOSPITAL|MAMMO_NODE|RADIOLOGY|20240601120001||ACK^R01^ACK|ACK1|P|2.5.1"
        msa = f"MSA|{self.code}|{self.control_id if self.control_id is not None else incoming}"
        err = "ERR|||207^Application internal error^HL70357|E||||Unknown order \\T\\ patient" if self.code != "AA" else ""
        return "\x0b" + "\r".join(s for s in (msh, msa, err) if s) + "\r\x1c\r"


@pytest.fixture
def ris() -> Iterator[Callable[..., tuple[MLLPClient, list[str]]]]:
    """``ris(code, control_id=None)`` starts a real hl7apy MLLPServer on a free loopback port."""
    servers: list[MLLPServer] = []

    def start(code: str, control_id: str | None = None) -> tuple[MLLPClient, list[str]]:
        received: list[str] = []
        port = free_port()
        server = MLLPServer("127.0.0.1", port, {"ORU^R01^ORU_R01": (RecordingAckHandler, code, control_id, received)},
                            timeout=5)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=5), received

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def oru(phantom_dir: Path) -> tuple[str, str]:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    typed = StudyResult.from_json(result)
    return build_oru(source, typed, SETTINGS, created_at=CREATED), control_id(source.study_uid, typed)


@pytest.mark.parametrize("code, outcome", [("AA", "accepted"), ("CA", "accepted"), ("AE", "retry"),
                                           ("CE", "retry"), ("AR", "reject"), ("CR", "reject")])
def test_mllp_ack_codes_against_hl7apy_server(ris, oru, code: str, outcome: str) -> None:
    message, cid = oru
    client, received = ris(code)
    ack = client.send(message)
    assert received == [message]  # the server got our exact message, framing removed
    assert (ack.code, ack.control_id) == (code, cid)
    assert ack.outcome(cid) == outcome
    if code != "AA":
        assert ack.text == "Unknown order & patient"  # ERR-8, unescaped


def test_mllp_sends_cr_segments_even_from_a_text_mode_file(ris, oru, tmp_path: Path) -> None:
    message, cid = oru
    path = tmp_path / "oru.hl7"
    path.write_bytes(message.encode("utf-8"))
    from_file = path.read_text(encoding="utf-8")  # universal newlines: CR became LF
    assert "\r" not in from_file
    client, received = ris("AA")
    assert client.send(from_file).outcome(cid) == "accepted"
    assert received == [message]


def test_ack_describe_and_repr_leave_out_the_ris_text() -> None:
    ack = Ack("AR", "MN1", "Patient SMITH^ANN unknown")
    assert ack.describe() == "ACK AR for MN1"
    assert "SMITH" not in repr(ack) and "SMITH" not in str(ack)
    assert Ack("", "").describe() == "ACK (unreadable) for (no control ID)"


def test_mllp_ack_for_another_control_id_is_retried(ris, oru) -> None:
    message, cid = oru
    client, _ = ris("AA", control_id="SOMETHING-ELSE")
    ack = client.send(message)
    assert ack.code == "AA" and ack.outcome(cid) == "retry"
    client, _ = ris("AR", control_id="")
    assert client.send(message).outcome(cid) == "retry"


def test_mllp_sends_utf8_when_msh18_says_so(ris, phantom_dir: Path) -> None:
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    result = copy.deepcopy(result)
    result["report"]["text"] = "左乳未见异常。\n"
    message = build_oru(source, StudyResult.from_json(result), SETTINGS, created_at=CREATED)
    client, received = ris("AA")
    assert client.send(message).outcome(control_id(source.study_uid, StudyResult.from_json(result))) == "accepted"
    assert "左乳未见异常。" in received[0]


def test_mllp_refuses_to_send_what_its_charset_cannot_encode() -> None:
    client = MLLPClient("127.0.0.1", free_port())
    with pytest.raises(ValueError, match="cannot encode"):
        client.send("MSH|^~\\&|A|B|C|D|20240101||ORU^R01^ORU_R01|X|P|2.5.1\rNTE|1|L|Zoë\r")


# ---------------------------------------------------------------------- MLLP against raw sockets
def raw_server(behaviour: Callable[[socket.socket], None]) -> tuple[int, threading.Thread]:
    """One-connection loopback server: reads the framed message, then runs ``behaviour``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def run() -> None:
        with listener:
            listener.settimeout(5)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                while not data.endswith(b"\x1c\r"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                behaviour(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return port, thread


def ack_bytes(cid: str, code: str = "AA") -> bytes:
    return (f"MSH|^~\\&|RIS|H|MN|R|20240601||ACK^R01^ACK|A1|P|2.5.1\rMSA|{code}|{cid}|fine\r").encode()


def test_mllp_reads_an_ack_split_across_many_reads(oru) -> None:
    message, cid = oru
    reply = b"noise" + b"\x0b" + ack_bytes(cid) + b"\x1c\r"

    def chunks(conn: socket.socket) -> None:
        for i in range(0, len(reply), 7):
            conn.sendall(reply[i:i + 7])
            time.sleep(0.005)

    port, thread = raw_server(chunks)
    ack = MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=5).send(message)
    thread.join(5)
    assert (ack.code, ack.control_id, ack.text) == ("AA", cid, "fine")
    assert ack.outcome(cid) == "accepted"


def test_mllp_end_block_split_between_reads(oru) -> None:
    message, cid = oru

    def split_end(conn: socket.socket) -> None:
        conn.sendall(b"\x0b" + ack_bytes(cid, "AE") + b"\x1c")
        time.sleep(0.1)
        conn.sendall(b"\r")

    port, thread = raw_server(split_end)
    ack = MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=5).send(message)
    thread.join(5)
    assert ack.code == "AE" and ack.outcome(cid) == "retry"


def test_mllp_read_timeout_when_the_peer_never_answers(oru) -> None:
    message, _ = oru
    done = threading.Event()
    port, thread = raw_server(lambda conn: done.wait(5))
    start = time.monotonic()
    with pytest.raises(MLLPError, match=r"no complete acknowledgement within 0\.3 s"):
        MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=0.3).send(message)
    assert time.monotonic() - start < 2
    done.set()
    thread.join(5)


def test_mllp_read_timeout_bounds_a_trickling_peer(oru) -> None:
    message, cid = oru
    done = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"\x0b")
        for byte in ack_bytes(cid):
            if done.wait(0.05):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    port, thread = raw_server(trickle)
    start = time.monotonic()
    with pytest.raises(MLLPError, match="no complete acknowledgement"):
        MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=0.4).send(message)
    assert time.monotonic() - start < 2
    done.set()
    thread.join(5)


def test_mllp_peer_closing_before_the_end_block(oru) -> None:
    message, cid = oru
    port, thread = raw_server(lambda conn: conn.sendall(b"\x0b" + ack_bytes(cid)))  # no FS CR, then close
    with pytest.raises(MLLPError, match="closed before the end of the acknowledgement"):
        MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=5).send(message)
    thread.join(5)
    port, thread = raw_server(lambda conn: None)  # closes without a byte
    with pytest.raises(MLLPError, match="closed before"):
        MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=5).send(message)
    thread.join(5)


def test_mllp_oversize_ack_is_refused(oru) -> None:
    message, _ = oru

    def flood(conn: socket.socket) -> None:
        try:
            conn.sendall(b"\x0b" + b"x" * (MAX_ACK_BYTES + 70000))
        except OSError:
            pass

    port, thread = raw_server(flood)
    with pytest.raises(MLLPError, match="larger than"):
        MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=5).send(message)
    thread.join(5)


def test_mllp_unparsable_ack_is_retried(oru) -> None:
    message, cid = oru
    port, thread = raw_server(lambda conn: conn.sendall(b"\x0bHELLO\x1c\r"))
    ack = MLLPClient("127.0.0.1", port, connect_timeout=2, read_timeout=5).send(message)
    thread.join(5)
    assert ack.code == "" and ack.outcome(cid) == "retry"


def test_mllp_connection_refused(oru, phantom_dir: Path) -> None:
    message, _ = oru
    port = free_port()
    with pytest.raises(MLLPError, match=f"127.0.0.1:{port}: connection refused") as excinfo:
        MLLPClient("127.0.0.1", port, connect_timeout=1, read_timeout=1).send(message)
    assert isinstance(excinfo.value, OSError)
    header = phantom_source(study_dirs(phantom_dir)[0]).header
    for secret in (header.PatientID, header.PatientName.family_name, header.AccessionNumber):
        assert secret not in str(excinfo.value)


# ---------------------------------------------------------------------- ACK parsing and outcomes
@pytest.mark.parametrize("code, control, expected", [
    ("AA", "MN1", "accepted"), ("CA", "MN1", "accepted"), ("AE", "MN1", "retry"), ("CE", "MN1", "retry"),
    ("AR", "MN1", "reject"), ("CR", "MN1", "reject"), ("AA", "MN2", "retry"), ("AR", "MN2", "retry"),
    ("", "", "retry"), ("XX", "MN1", "retry"),
])
def test_ack_outcome(code: str, control: str, expected: str) -> None:
    assert Ack(code, control).outcome("MN1") == expected


def test_ack_parse_variants() -> None:
    ack = Ack.parse("MSH|^~\\&|RIS|H|A|B|2024||ACK|1|P|2.5.1\nMSA|ae|MN1|Bad \\F\\ field^x\nERR|||207^Oops^HL70357|E")
    assert (ack.code, ack.control_id, ack.text) == ("AE", "MN1", "Bad | field")
    ack = Ack.parse("MSH|^~\\&|RIS|H|A|B|2024||ACK|1|P|2.5.1\rMSA|AR|MN1\rERR|||207^Application error^HL70357|E\r")
    assert (ack.code, ack.text) == ("AR", "Application error")
    assert Ack.parse("").code == "" and Ack.parse("MSH|^~\\&|X\rPID|1").text == "no MSA segment"
    assert Ack.parse("garbage").outcome("MN1") == "retry"


# ---------------------------------------------------------------------- time zone
@pytest.fixture
def node_zone(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Set the node's local time zone (TZ) for the test; restored after."""
    def _set(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()
    yield _set
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("setting, zone, expected", [
    ("local", "America/New_York", "-0400"),      # the node's zone, daylight saving time in June
    ("local", "Asia/Kolkata", "+0530"),
    ("UTC", "Asia/Kolkata", "+0000"),
    ("+0100", "America/New_York", "+0100"),      # a fixed offset
    ("Asia/Shanghai", "America/New_York", "+0800"),  # an IANA zone, whatever the node's own
])
def test_every_timestamp_is_in_one_zone_with_its_offset(phantom_dir: Path, tmp_path: Path, node_zone,
                                                         setting: str, zone: str, expected: str) -> None:
    """Issue 18: HL7 timestamps were stamped +0000 whatever the site's zone. MSH-7, ORC-9, OBR-22
    and OBX-19 (the analysis) are the result's time in ``[outputs.hl7] timezone`` (default: the
    node's), each with its offset; OBR-7 is the study's time with the offset the images give, else
    the zone's; the message stays valid under hl7apy STRICT."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    node_zone(zone)
    source, result = phantom_case(study_dirs(phantom_dir)[0])
    settings = SETTINGS.model_copy(update={"timezone": setting})
    message = build_oru(source, StudyResult.from_json(result), settings, created_at=CREATED)
    strict(message, tmp_path)
    [msh], [orc], [obr] = segments(message, "MSH"), segments(message, "ORC"), segments(message, "OBR")
    stamps = {msh[6], orc[9], obr[22]} | {f[19] for f in segments(message, "OBX")}
    [stamp] = stamps
    assert stamp.endswith(expected)
    assert datetime.strptime(stamp, "%Y%m%d%H%M%S%z").timestamp() == int(CREATED)  # the same instant
    header = source.header
    study_time = header.StudyDate + header.StudyTime.split(".")[0]
    zone_info = ZoneInfo(zone if setting == "local" else "Etc/GMT-1" if setting == "+0100" else setting)
    study_offset = datetime.strptime(study_time, "%Y%m%d%H%M%S").replace(tzinfo=zone_info).strftime("%z")
    assert obr[7] == study_time + study_offset  # that date's offset (daylight saving time or not)
    assert build_oru(source, StudyResult.from_json(result), settings,
                     created_at=CREATED) == message  # a resend is identical
    # the images' own offset wins for the study's time; a date without a time has no offset
    offset = build_oru(with_header(source, TimezoneOffsetFromUTC="-0300"), StudyResult.from_json(result), settings,
                       created_at=CREATED)
    assert segments(offset, "OBR")[0][7].endswith("-0300") and segments(offset, "MSH")[0][6] == stamp
    dateless = build_oru(with_header(source, StudyTime=None), StudyResult.from_json(result), settings,
                         created_at=CREATED)
    assert segments(dateless, "OBR")[0][7] == header.StudyDate
    strict(offset, tmp_path)


def test_a_bad_timezone_is_refused_at_start() -> None:
    for bad in ("Mars/Olympus", "+2500", "CET+1", ""):
        with pytest.raises(ValueError, match="timezone"):
            HL7Output(host="127.0.0.1", port=2575, timezone=bad)
