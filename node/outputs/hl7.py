"""HL7 v2.5.1 ORU^R01 for one result, and the reader that proves what it says.

The RIS gets the same content as the SRs: per breast BI-RADS, density and findings (coded), the
generated report one line per OBX (findings, impression and recommendation coded apart), the model
versions and the disclaimer. By default (``order_mode = "ai_result"``) the message is a distinct
AI result, its own service (OBR-4) and filler order number, linked to the exam's order (OBR-29)
and accession (OBR-18), so it never lands on the radiologist's order. The message is a pure
function of (source study, result, settings, created_at), so a resend is byte-identical and its
control ID (MSH-10) is the same; a changed result gets a new one, with the same filler order
number, so the RIS replaces the earlier preliminary AI result. Every message is checked with
hl7apy's STRICT validation before it leaves here. docs/hl7-interface.md is the specification.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from models.report import lexicon
from models.report.parse import _HEADER as _SECTION_HEADER
from node.config import HL7Output
from node.outputs.common import DISCLAIMER, MANUFACTURER, SOFTWARE_VERSION, NotApplicable, model_label
from node.outputs.identity import control_id, filler_order_number, replaced_control_id
from node.outputs.source import SourceStudy
from node.study_result import Breast, Disagreement, StudyResult

HL7_VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
LOCAL = "99MAMMO"  # our local coding system (HL7 table 0396 "99zzz": locally defined codes)
UTF8 = "UNICODE UTF-8"  # MSH-18 when the message has any non-ASCII character
REPORT_CODE = ("18782-3", "Radiology Study observation (narrative)", "LN")  # findings, other lines
IMPRESSION_CODE = ("19005-8", "Radiology Imaging study [Impression] (narrative)", "LN")
RECOMMENDATION_CODE = ("18783-1", "Radiology Study recommendation (narrative)", "LN")
_REPORT_CODES = {REPORT_CODE[0]: "findings", IMPRESSION_CODE[0]: "impression",
                 RECOMMENDATION_CODE[0]: "recommendation"}
STUDY_UID_CODE = ("113014", "Study", "DCM")  # PS3.16 DCM 113014 "Study"; OBX-5 its Study Instance UID
# OBR-26 of an AI result: the parent result is the exam's radiology report (narrative).
PARENT_RESULT = "&".join(REPORT_CODE)
PATIENT_ID_TYPE = "MR"  # CX.5 (HL7 table 0203): medical record number
_RECOMMEND = re.compile(r"\s*(recommend|suggest|continue|follow[- ]?up|return|建议)", re.IGNORECASE)
_REPLACES = re.compile(r"replaces the one sent in message (\w+)")
# Lexicon schemes -> HL7 table 0396 coding system names.
_SCHEMES = {"SCT": "SCT", "DCM": "DCM", "LN": "LN", "NCIt": "NCIT"}
_SIDES = {"R": ("1", "right"), "L": ("2", "left")}
_SEXES = {"M", "F", "O"}
_METHODS = {
    "report": ("MAMMORG", "AI report generator (MammoRG)"),
    "classifier": ("VERSAMAMMO", "AI image classifier (VersaMammo)"),
}
_MODEL_NAMES = {"versamammo": "AI image classifier model", "mammorg": "AI report generator model"}
_STATUS_TEXT = {
    "complete": "Complete: all four views processed",
    "partial": "Partial: processed with views missing",
    "incomplete": "No AI result: views missing",
}
_CERTAINTY = {"POS": "Present", "UNC": "Possible (uncertain)"}
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNESCAPE = re.compile(r"\\([EFSTR])\\")


# ---------------------------------------------------------------------- encoding helpers
def escape(text: Any) -> str:
    """Free text as an HL7 field value: the delimiters become escape sequences and control
    characters (CR, LF, the MLLP framing bytes) a space, so text can never break the message."""
    out = str(text)
    for raw, seq in _ESCAPES:
        out = out.replace(raw, seq)
    return _CONTROL.sub(" ", out)


def unescape(text: str) -> str:
    """The inverse of :func:`escape` for the sequences it writes."""
    table = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}
    return _UNESCAPE.sub(lambda m: table[m.group(1)], text)


@dataclass(frozen=True)
class Coded:
    """A CE/CWE value: a code, optionally with an alternate code in another coding system."""

    code: str
    text: str
    system: str
    alt_code: str = ""
    alt_text: str = ""
    alt_system: str = ""

    def er7(self) -> str:
        parts = [self.code, self.text, self.system, self.alt_code, self.alt_text, self.alt_system]
        return "^".join(escape(p) for p in parts).rstrip("^")


def _segment(name: str, *fields: str) -> str:
    return "|".join((name, *fields)).rstrip("|")


def message_zone(setting: str) -> tzinfo | None:
    """The zone of ``[outputs.hl7] timezone`` ("local", "UTC", "+0530", "Europe/Berlin"); None is the
    node's local zone, taken per instant so daylight saving time gets its own offset."""
    if setting == "local":
        return None
    if setting == "UTC":
        return timezone.utc
    if re.fullmatch(r"[+-]\d{4}", setting):
        minutes = int(setting[1:3]) * 60 + int(setting[3:])
        return timezone(timedelta(minutes=minutes if setting[0] == "+" else -minutes))
    return ZoneInfo(setting)


def _ts(created_at: float, zone: tzinfo | None) -> str:
    """HL7 TS (DTM to the second) in the message's zone with its offset, so the RIS never guesses
    the zone; a pure function of the journal time, so a resend is byte-identical."""
    when = datetime.fromtimestamp(created_at, tz=zone) if zone else datetime.fromtimestamp(created_at).astimezone()
    return when.strftime("%Y%m%d%H%M%S%z")


def _study_ts(source: SourceStudy, zone: tzinfo | None) -> str:
    """StudyDate/StudyTime as HL7 DTM: the modality's local time with the offset DICOM gives
    (TimezoneOffsetFromUTC), else with the message zone's offset for that date and time (the node
    takes the modality's clock to be in its zone, as the SRs do); a date alone has no offset."""
    date = str(source.get("StudyDate", "")).strip()
    if not re.fullmatch(r"\d{8}", date):
        return ""
    time_digits = str(source.get("StudyTime", "")).strip().split(".")[0]
    if not re.fullmatch(r"(\d\d){0,3}", time_digits):
        time_digits = ""
    offset = str(source.get("TimezoneOffsetFromUTC", "")).strip()
    if re.fullmatch(r"[+-]\d{4}", offset):
        return date + time_digits + offset
    if not time_digits:
        return date
    try:
        wall = datetime.strptime(date + time_digits.ljust(6, "0"), "%Y%m%d%H%M%S")
    except ValueError:  # not a real date or time (month 13, hour 25): sent as the images have it
        return date + time_digits
    return date + time_digits + (wall.replace(tzinfo=zone) if zone else wall.astimezone()).strftime("%z")


def _term_code(term_id: str) -> Coded:
    """A lexicon term: its standard code (SNOMED CT, DICOM ...) with our term id as the alternate
    local code, or only the local code when the lexicon has no standard one (BI-RADS 4A ...)."""
    try:
        term = lexicon.get(term_id)
    except KeyError:
        return Coded(term_id, term_id.replace("_", " "), LOCAL)
    if term.category == "density":
        local_text = f"ACR density {term.value}"
    else:
        local_text = term.name
    code = lexicon.code_for(term_id)
    if code is None:
        return Coded(term.id, local_text, LOCAL)
    return Coded(code["value"], code["meaning"], _SCHEMES.get(code["scheme"], code["scheme"]),
                 term.id, local_text, LOCAL)


def _local(code: str, text: str) -> Coded:
    return Coded(code, text, LOCAL)


class _Observations:
    """Collects OBX segments, numbering OBX-1 in order; ``analysed`` (the result's time, as MSH-7)
    is OBX-19, date/time of the analysis."""

    def __init__(self, status: str = "P", analysed: str = "") -> None:
        self.segments: list[str] = []
        self._count = 0
        self.status = status  # OBX-11: P preliminary (also when it replaces an earlier AI result)
        self.analysed = analysed

    def add(self, value_type: str, ident: Coded, sub_id: str, value: str,
            method: Coded | None = None) -> None:
        self._count += 1
        fields = [str(self._count), value_type, ident.er7(), sub_id, value,
                  "", "", "", "", "", self.status, "", "", "", "", "", method.er7() if method else "",
                  "", self.analysed]
        self.segments.append(_segment("OBX", *fields))


# ---------------------------------------------------------------------- the message
def _exam_orders(source: SourceStudy) -> tuple[str, str]:
    """(placer, filler) order numbers of the exam, (0040,2016) and (0040,2017), from the image
    header or its first Request Attributes Sequence item that has them; "" when absent."""
    keywords = ("PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest")
    found = [str(source.get(k, "") or "").strip() for k in keywords]
    if not any(found):
        for item in source.get("RequestAttributesSequence", None) or []:
            found = [str(item.get(k, "") or "").strip() for k in keywords]
            if any(found):
                break
    return found[0], found[1]


def build_oru(source: SourceStudy, result: StudyResult, settings: HL7Output, *, created_at: float) -> str:
    """The ORU^R01 (ER7, segments ended by CR) for one result; ``created_at`` (the result's journal
    time) fills MSH-7 and OBR-22 so that a resend is byte-identical.

    Raises NotApplicable when the study lacks what the RIS needs to file it (PatientID: the SRs
    still go out) and ValueError when the message would not pass hl7apy STRICT validation
    (messages never name patient data).
    """
    patient_id = str(source.get("PatientID", "")).strip()
    if not patient_id:
        raise NotApplicable("the source study has no PatientID; an ORU^R01 needs PID-3")
    zone = message_zone(settings.timezone)
    now = _ts(created_at, zone)
    accession = escape(str(source.get("AccessionNumber", "")).strip())
    # Always preliminary: a changed result replaces the earlier preliminary AI result (same filler
    # order number in ai_result mode, an NTE naming the replaced message); C is for final results.
    status = "P"
    if settings.order_mode == "exam_order":  # the old shape: filed on the exam's own order
        placer = filler = accession
        service = _procedure(source, settings)
        parent = parent_result = ""
    else:
        placer = ""
        filler = f"{filler_order_number(source.study_uid, result)}^{escape(settings.sending_application)}"
        service = Coded(*settings.service_id.split("^"))
        exam_placer, exam_filler = _exam_orders(source)
        parent = "^".join((escape(exam_placer), escape(exam_filler))).rstrip("^")
        parent_result = PARENT_RESULT if parent else ""
    body = [
        _segment("SFT", escape(MANUFACTURER), escape(SOFTWARE_VERSION), escape(MANUFACTURER),
                 escape(SOFTWARE_VERSION)),
        _pid(source, patient_id),
        _segment("ORC", "RE", placer, filler, "", "", "", "", "", now),
        _obr(source, placer, filler, service, accession, now, status, parent_result, parent, zone),
        *_notes(result),
        *_observations(source, result, status, now),
    ]
    text = "\r".join(body)
    charset = "" if text.isascii() else UTF8
    msh = _segment(
        "MSH", "^~\\&", escape(settings.sending_application), escape(settings.sending_facility),
        escape(settings.receiving_application), escape(settings.receiving_facility), now, "",
        MESSAGE_TYPE, control_id(source.study_uid, result), settings.processing_id, HL7_VERSION,
        # MSH-13..17 empty: original acknowledgment mode (the RIS answers AA/AE/AR).
        "", "", "", "", "", charset)
    message = msh + "\r" + text + "\r"
    if settings.validate_messages:
        validate_oru(message)
    return message


def _cx(patient_id: str, issuer: str) -> str:
    """CX: ID^^^assigning authority (namespace ID)^identifier type code."""
    return f"{escape(patient_id)}^^^{escape(issuer)}^{PATIENT_ID_TYPE}"


def _pid(source: SourceStudy, patient_id: str) -> str:
    issuer = str(source.get("IssuerOfPatientID", "")).strip()
    ids = [(patient_id, issuer)]
    for item in source.get("OtherPatientIDsSequence", None) or []:  # (0010,1002)
        other = (str(item.get("PatientID", "") or "").strip(), str(item.get("IssuerOfPatientID", "") or "").strip())
        if other[0] and other not in ids:
            ids.append(other)
    cx = "~".join(_cx(*pair) for pair in ids)
    name = source.get("PatientName", "")
    parts = [getattr(name, attr, "") or "" for attr in
             ("family_name", "given_name", "middle_name", "name_suffix", "name_prefix")]
    # XPN order: family^given^middle^suffix^prefix (DICOM PN has prefix before suffix).
    xpn = "^".join(escape(p) for p in parts).rstrip("^") or "^^^^^^U"  # U: unspecified, no name
    birth = str(source.get("PatientBirthDate", "")).strip()
    sex = str(source.get("PatientSex", "")).strip().upper()
    return _segment("PID", "1", "", cx, "", xpn, "", birth if re.fullmatch(r"\d{8}", birth) else "",
                    sex if sex in _SEXES else "U")


def _procedure(source: SourceStudy, settings: HL7Output) -> Coded:
    """OBR-4 in exam_order mode: the study's own procedure code when DICOM has one, else
    ``exam_service_id`` with the StudyDescription as its text."""
    for item in source.get("ProcedureCodeSequence", None) or []:
        value = item.get("CodeValue", None) or item.get("LongCodeValue", None)
        if value:
            scheme = str(item.get("CodingSchemeDesignator", "") or LOCAL)
            return Coded(str(value), str(item.get("CodeMeaning", "")), _SCHEMES.get(scheme, scheme))
    code, text, system = settings.exam_service_id.split("^")
    description = str(source.get("StudyDescription", "")).strip()
    return Coded(code, description or text, system)


def _obr(source: SourceStudy, placer: str, filler: str, service: Coded, accession: str, now: str,
         status: str, parent_result: str, parent: str, zone: tzinfo | None = None) -> str:
    fields = [""] * 29
    fields[0] = "1"
    fields[1] = placer  # OBR-2 placer order number (empty for an AI result: nobody ordered it)
    fields[2] = filler  # OBR-3 filler order number
    fields[3] = service.er7()  # OBR-4 universal service ID
    fields[6] = _study_ts(source, zone)  # OBR-7 observation date/time
    fields[17] = accession  # OBR-18 placer field 1: the exam's accession number
    fields[21] = now  # OBR-22 results report/status change
    fields[24] = status  # OBR-25 result status: P preliminary (node.outputs.amend)
    fields[25] = parent_result  # OBR-26 parent result: the exam's report
    fields[28] = parent  # OBR-29 parent: the exam's placer^filler order numbers
    return _segment("OBR", *fields)


def _notes(result: StudyResult) -> list[str]:
    notes = [DISCLAIMER]
    missing = ", ".join(result.missing_views)
    status = result.status
    if status == "incomplete":
        notes.append(f"No AI result: the study is missing the views {missing or '(unknown)'}.")
    elif status == "partial":
        notes.append(f"Partial AI result: processed without the views {missing}.")
    if replaced := replaced_control_id(result):
        notes.append(f"This AI result replaces the one sent in message {replaced}; it is preliminary too.")
    return [_segment("NTE", str(i), "L", escape(text)) for i, text in enumerate(notes, 1)]


def _observations(source: SourceStudy, result: StudyResult, status: str = "P", analysed: str = "") -> list[str]:
    obs = _Observations(status, analysed)
    status = result.status
    obs.add("CWE", _local("AI-STATUS", "AI result status"), "",
            _local(status, _STATUS_TEXT.get(status, status)).er7())
    for i, view in enumerate(result.missing_views, 1):
        obs.add("ST", _local("MISSING-VIEW", "Missing view"), str(i), escape(view))
    for side, (sub_id, word) in _SIDES.items():
        if side in result.breasts:
            _breast(obs, side, sub_id, word, result.breasts[side], result.disagreements)
    text = result.report.text if result.report is not None else ""
    for code, line in _report_lines(text):
        obs.add("TX", Coded(*code), "", escape(line))
    for kind, _ in sorted(result.models.items()):
        name, version = model_label(result.models, kind)
        obs.add("ST", _local(f"MODEL-{kind.upper()}", _MODEL_NAMES.get(kind, f"AI model ({kind})")), "",
                escape(f"{name} {version}"))
    obs.add("ST", Coded(*STUDY_UID_CODE), "", escape(source.study_uid))
    return obs.segments


def _report_lines(text: str) -> list[tuple[tuple[str, str, str], str]]:
    """Each report line with its OBX-3: a section heading (FINDINGS, IMPRESSION, RECOMMENDATION,
    their Chinese forms ... as models.report.parse reads them) starts a section; impression lines are
    19005-8, recommendation lines 18783-1 (also a line of the impression that starts with
    Recommend, Suggest, Continue, Follow-up, Return or 建议), every other line 18782-3."""
    out = []
    section = "findings"
    for line in text.splitlines():
        header = _SECTION_HEADER.match(line.strip())
        if header:
            section = (header.lastgroup or "other").replace("x_", "")
        if section == "recommendation" or (section == "impression" and _RECOMMEND.match(line)):
            code = RECOMMENDATION_CODE
        elif section == "impression":
            code = IMPRESSION_CODE
        else:
            code = REPORT_CODE
        out.append((code, line))
    return out


def _method(source: str | None) -> Coded | None:
    return _local(*_METHODS[source]) if source in _METHODS else None


def _breast(obs: _Observations, side: str, sub_id: str, word: str, breast: Breast,
            disagreements: Iterable[Disagreement]) -> None:
    """One breast's OBX group: sub-ID "1" (right) or "2" (left), finding k as "1.k"."""
    if breast.birads:
        obs.add("CWE", _local(f"BIRADS-{side}", f"BI-RADS assessment, {word} breast"), sub_id,
                _term_code(lexicon.birads_term(breast.birads)).er7(), _method(breast.birads_source))
    if breast.density:
        obs.add("CWE", _local(f"DENSITY-{side}", f"Breast composition (ACR), {word} breast"), sub_id,
                _term_code(lexicon.density_term(breast.density)).er7(), _method(breast.density_source))
    for k, finding in enumerate(breast.findings, 1):
        group = f"{sub_id}.{k}"  # the finding and its certainty, sites and descriptors
        obs.add("CWE", _local(f"FINDING-{side}", f"Finding, {word} breast"), group,
                _term_code(finding.kind).er7(), _method("report"))
        certainty = finding.status
        obs.add("CWE", _local(f"CERTAINTY-{side}", f"Finding certainty, {word} breast"), group,
                _local(certainty, _CERTAINTY.get(certainty, certainty)).er7())
        for location in finding.locations:
            obs.add("CWE", _local(f"SITE-{side}", f"Finding site, {word} breast"), group,
                    _term_code(location).er7())
        for descriptor in finding.descriptors:
            obs.add("CWE", _local(f"DESCRIPTOR-{side}", f"Finding descriptor, {word} breast"), group,
                    _term_code(descriptor).er7())
    for item in disagreements:
        if item.breast == side:
            label = "BI-RADS" if item.field == "birads" else "Density"
            obs.add("ST", _local(f"DISAGREE-{side}", f"Report and classifier disagree, {word} breast"), sub_id,
                    escape(f"{label}: report {item.report}, classifier {item.classifier}"))


# ---------------------------------------------------------------------- checking and reading back
def validate_oru(message: str) -> None:
    """Parse and validate with hl7apy STRICT (structure, cardinality, datatypes); ValueError if not.

    hl7apy's copy of the v2.5.1 tables lacks CWE (table 0125) and SCT (table 0396), so those
    give table warnings, never errors; warnings are not raised here."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    try:
        parse_message(message, validation_level=VALIDATION_LEVEL.STRICT).validate()
    except Exception as exc:  # hl7apy raises its own errors and plain ValueErrors (bad dates ...)
        # hl7apy's text may quote a value (patient data): report only the element names it gives.
        elements = ", ".join(dict.fromkeys(re.findall(r"\b[A-Z][A-Z0-9]{2}(?:_\d+)+\b", str(exc))))
        raise ValueError(f"ORU^R01 fails HL7 v2.5.1 STRICT validation: {type(exc).__name__}"
                         + (f" at {elements}" if elements else "")) from None


def _fields(segment: str) -> list[str]:
    return segment.split("|")


def _field(fields: list[str], n: int) -> str:
    return fields[n] if len(fields) > n else ""


def _components(field: str) -> list[str]:
    return [unescape(c) for c in field.split("^")]


def _local_term(field: str) -> str:
    """Our lexicon id from a CWE: the 99MAMMO code, primary or alternate."""
    parts = _components(field) + [""] * 6
    if parts[2] == LOCAL:
        return parts[0]
    if parts[5] == LOCAL:
        return parts[3]
    return parts[0]


def parse_oru(message: str) -> dict[str, Any]:
    """Read one of our ORUs back: control ID, processing ID, patient ID (and every PID-3 identifier
    as (id, issuer, type)), accession (OBR-18), order numbers (placer, filler: OBR-2/3), service
    (OBR-4 code), parent order (OBR-29 placer, filler), per-breast BI-RADS, density and finding
    kinds, status, OBR-25 result status, the control ID it replaces (NTE), models, the Study
    Instance UID, the report text (lines joined by "\\n") and its lines per section."""
    out: dict[str, Any] = {"control_id": "", "processing_id": "", "patient_id": "", "patient_ids": [],
                           "accession": "", "placer_order": "", "filler_order": "", "service": "",
                           "parent": ("", ""), "breasts": {}, "status": "", "result_status": "",
                           "replaces": None, "models": {}, "study_uid": "", "report_text": "",
                           "sections": {"findings": [], "impression": [], "recommendation": []}}
    lines: list[str] = []
    for segment in re.split(r"[\r\n]+", message.strip()):
        f = _fields(segment)
        if f[0] == "MSH":
            out["control_id"] = unescape(_field(f, 9))
            out["processing_id"] = _field(f, 10)
        elif f[0] == "PID":
            for cx in _field(f, 3).split("~"):
                parts = _components(cx) + [""] * 5
                out["patient_ids"].append((parts[0], parts[3], parts[4]))
            out["patient_id"] = out["patient_ids"][0][0]
        elif f[0] == "OBR":
            out["placer_order"] = _components(_field(f, 2))[0]
            out["filler_order"] = _components(_field(f, 3))[0]
            out["service"] = _components(_field(f, 4))[0]
            # OBR-18 since the AI-result shape; exam_order messages also carry it in OBR-2/3.
            out["accession"] = unescape(_field(f, 18))
            out["result_status"] = _field(f, 25)  # P (preliminary AI result)
            parent = _components(_field(f, 29)) + [""]
            out["parent"] = (parent[0], parent[1])
        elif f[0] == "NTE":
            if match := _REPLACES.search(unescape(_field(f, 3))):
                out["replaces"] = match.group(1)
        elif f[0] == "OBX":
            _read_obx(f, out, lines)
    out["report_text"] = "\n".join(lines)
    return out


def _read_obx(f: list[str], out: dict[str, Any], lines: list[str]) -> None:
    code = _components(_field(f, 3))
    value = _field(f, 5)
    if code[0] in _REPORT_CODES:
        lines.append(unescape(value))
        out["sections"][_REPORT_CODES[code[0]]].append(unescape(value))
        return
    if code[0] == STUDY_UID_CODE[0] and code[2:3] == [STUDY_UID_CODE[2]]:
        out["study_uid"] = unescape(value)
        return
    if code[0] == "AI-STATUS":
        out["status"] = _components(value)[0]
        return
    if code[0].startswith("MODEL-"):
        name, _, version = unescape(value).rpartition(" ")
        out["models"][code[0][6:].lower()] = f"{name}@{version}"
        return
    kind, _, side = code[0].rpartition("-")
    if side not in _SIDES or kind not in ("BIRADS", "DENSITY", "FINDING"):
        return
    breast = out["breasts"].setdefault(side, {"birads": None, "density": None, "findings": []})
    term_id = _local_term(value)
    if kind == "BIRADS":
        breast["birads"] = lexicon.get(term_id).value
    elif kind == "DENSITY":
        breast["density"] = lexicon.get(term_id).value
    else:
        breast["findings"].append(term_id)


__all__ = ["HL7_VERSION", "LOCAL", "MESSAGE_TYPE", "Coded", "build_oru", "escape", "parse_oru", "unescape", "validate_oru"]
