"""HL7 v2.5.1 ORU^R01 for one result, and the reader that proves what it says.

The RIS gets the same content as the SRs: per breast BI-RADS, density and findings (coded), the
generated report one line per OBX, the model versions and the disclaimer. The message is a pure
function of (source study, result, settings, created_at), so a resend is byte-identical and its
control ID (MSH-10) is the same; a changed result gets a new one. Every message is checked with
hl7apy's STRICT validation before it leaves here. docs/hl7-interface.md is the specification.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from models import lexicon
from node.config import HL7Output
from node.outputs.amend import replaced_control_id
from node.outputs.common import DISCLAIMER, MANUFACTURER, SOFTWARE_VERSION, NotApplicable, model_label, utc
from node.outputs.source import SourceStudy, output_identity

HL7_VERSION = "2.5.1"
MESSAGE_TYPE = "ORU^R01^ORU_R01"
LOCAL = "99MAMMO"  # our local coding system (HL7 table 0396 "99zzz": locally defined codes)
UTF8 = "UNICODE UTF-8"  # MSH-18 when the message has any non-ASCII character
REPORT_CODE = ("18782-3", "Radiology Study observation (narrative)", "LN")
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


def _ts(created_at: float) -> str:
    """HL7 TS in UTC with an explicit offset, so the RIS never guesses the zone."""
    return utc(created_at).strftime("%Y%m%d%H%M%S") + "+0000"


def _study_ts(source: SourceStudy) -> str:
    """StudyDate/StudyTime as HL7 DTM (local time of the modality, offset when DICOM gives one)."""
    date = str(source.get("StudyDate", "")).strip()
    if not re.fullmatch(r"\d{8}", date):
        return ""
    time_digits = str(source.get("StudyTime", "")).strip().split(".")[0]
    if not re.fullmatch(r"(\d\d){0,3}", time_digits):
        time_digits = ""
    offset = str(source.get("TimezoneOffsetFromUTC", "")).strip()
    return date + time_digits + (offset if re.fullmatch(r"[+-]\d{4}", offset) else "")


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
    """Collects OBX segments, numbering OBX-1 in order."""

    def __init__(self, status: str = "P") -> None:
        self.segments: list[str] = []
        self._count = 0
        self.status = status  # OBX-11: P preliminary, C correction of an earlier result

    def add(self, value_type: str, ident: Coded, sub_id: str, value: str,
            method: Coded | None = None) -> None:
        self._count += 1
        fields = [str(self._count), value_type, ident.er7(), sub_id, value,
                  "", "", "", "", "", self.status, "", "", "", "", "", method.er7() if method else ""]
        self.segments.append(_segment("OBX", *fields))


# ---------------------------------------------------------------------- the message
def control_id(study_uid: str, result: dict[str, Any]) -> str:
    """MSH-10: "MN" + 16 hex digits, equal for an identical resend and new for a changed result
    (the result fingerprint the SR UIDs use, plus status and missing views, which the ORU states)."""
    fingerprint = output_identity(study_uid, result, "hl7").fingerprint
    extra = json.dumps([fingerprint, result.get("status"), sorted(result.get("missing_views") or [])])
    return "MN" + hashlib.sha256(extra.encode()).hexdigest()[:16]


def build_oru(source: SourceStudy, result: dict[str, Any], settings: HL7Output, *, created_at: float) -> str:
    """The ORU^R01 (ER7, segments ended by CR) for one result; ``created_at`` (the result's journal
    time) fills MSH-7 and OBR-22 so that a resend is byte-identical.

    Raises NotApplicable when the study lacks what the RIS needs to file it (PatientID: the SRs
    still go out) and ValueError when the message would not pass hl7apy STRICT validation
    (messages never name patient data).
    """
    patient_id = str(source.get("PatientID", "")).strip()
    if not patient_id:
        raise NotApplicable("the source study has no PatientID; an ORU^R01 needs PID-3")
    now = _ts(created_at)
    accession = escape(str(source.get("AccessionNumber", "")).strip())
    # A changed result of a study whose ORU the RIS already has is sent as a correction of it.
    status = "C" if replaced_control_id(result) else "P"
    body = [
        _segment("SFT", escape(MANUFACTURER), escape(SOFTWARE_VERSION), escape(MANUFACTURER),
                 escape(SOFTWARE_VERSION)),
        _pid(source, patient_id),
        _segment("ORC", "RE", accession, accession, "", "", "", "", "", now),
        _obr(source, accession, now, status),
        *_notes(result),
        *_observations(source, result, status),
    ]
    text = "\r".join(body)
    charset = "" if text.isascii() else UTF8
    msh = _segment(
        "MSH", "^~\\&", escape(settings.sending_application), escape(settings.sending_facility),
        escape(settings.receiving_application), escape(settings.receiving_facility), now, "",
        MESSAGE_TYPE, control_id(source.study_uid, result), "P", HL7_VERSION,
        # MSH-13..17 empty: original acknowledgment mode (the RIS answers AA/AE/AR).
        "", "", "", "", "", charset)
    message = msh + "\r" + text + "\r"
    if settings.validate_messages:
        validate_oru(message)
    return message


def _pid(source: SourceStudy, patient_id: str) -> str:
    issuer = str(source.get("IssuerOfPatientID", "")).strip()
    cx = escape(patient_id) + (f"^^^{escape(issuer)}" if issuer else "")
    name = source.get("PatientName", "")
    parts = [getattr(name, attr, "") or "" for attr in
             ("family_name", "given_name", "middle_name", "name_suffix", "name_prefix")]
    # XPN order: family^given^middle^suffix^prefix (DICOM PN has prefix before suffix).
    xpn = "^".join(escape(p) for p in parts).rstrip("^") or "^^^^^^U"  # U: unspecified, no name
    birth = str(source.get("PatientBirthDate", "")).strip()
    sex = str(source.get("PatientSex", "")).strip().upper()
    return _segment("PID", "1", "", cx, "", xpn, "", birth if re.fullmatch(r"\d{8}", birth) else "",
                    sex if sex in _SEXES else "U")


def _procedure(source: SourceStudy) -> Coded:
    """OBR-4: the study's own procedure code when DICOM has one, else our screening code."""
    for item in source.get("ProcedureCodeSequence", None) or []:
        value = item.get("CodeValue", None) or item.get("LongCodeValue", None)
        if value:
            scheme = str(item.get("CodingSchemeDesignator", "") or LOCAL)
            return Coded(str(value), str(item.get("CodeMeaning", "")), _SCHEMES.get(scheme, scheme))
    description = str(source.get("StudyDescription", "")).strip()
    return _local("MGSCREEN", description or "Screening mammography, bilateral")


def _obr(source: SourceStudy, accession: str, now: str, status: str = "P") -> str:
    fields = [""] * 25
    fields[0] = "1"
    fields[1] = accession  # OBR-2 placer order number
    fields[2] = accession  # OBR-3 filler order number
    fields[3] = _procedure(source).er7()  # OBR-4
    fields[6] = _study_ts(source)  # OBR-7 observation date/time
    fields[21] = now  # OBR-22 results report/status change
    fields[24] = status  # OBR-25 result status: P preliminary, C correction (node.outputs.amend)
    return _segment("OBR", *fields)


def _notes(result: dict[str, Any]) -> list[str]:
    notes = [DISCLAIMER]
    missing = ", ".join(result.get("missing_views") or [])
    status = result.get("status")
    if status == "incomplete":
        notes.append(f"No AI result: the study is missing the views {missing or '(unknown)'}.")
    elif status == "partial":
        notes.append(f"Partial AI result: processed without the views {missing}.")
    if replaced := replaced_control_id(result):
        notes.append(f"This AI result replaces the one sent in message {replaced}; it is preliminary too.")
    return [_segment("NTE", str(i), "L", escape(text)) for i, text in enumerate(notes, 1)]


def _observations(source: SourceStudy, result: dict[str, Any], status: str = "P") -> list[str]:
    obs = _Observations(status)
    status = str(result.get("status") or "complete")
    obs.add("CWE", _local("AI-STATUS", "AI result status"), "",
            _local(status, _STATUS_TEXT.get(status, status)).er7())
    for i, view in enumerate(result.get("missing_views") or [], 1):
        obs.add("ST", _local("MISSING-VIEW", "Missing view"), str(i), escape(view))
    breasts = result.get("breasts") or {}
    for side, (sub_id, word) in _SIDES.items():
        if side in breasts:
            _breast(obs, side, sub_id, word, breasts[side], result.get("disagreements") or [])
    report = result.get("report") or {}
    for line in str(report.get("text") or "").splitlines():
        obs.add("TX", Coded(*REPORT_CODE), "", escape(line))
    for kind, _ in sorted((result.get("models") or {}).items()):
        name, version = model_label(result["models"], kind)
        obs.add("ST", _local(f"MODEL-{kind.upper()}", _MODEL_NAMES.get(kind, f"AI model ({kind})")), "",
                escape(f"{name} {version}"))
    obs.add("ST", _local("STUDY-UID", "DICOM Study Instance UID"), "", escape(source.study_uid))
    return obs.segments


def _method(source: str | None) -> Coded | None:
    return _local(*_METHODS[source]) if source in _METHODS else None


def _breast(obs: _Observations, side: str, sub_id: str, word: str, breast: dict[str, Any],
            disagreements: Iterable[dict[str, Any]]) -> None:
    """One breast's OBX group: sub-ID "1" (right) or "2" (left), finding k as "1.k"."""
    if breast.get("birads"):
        obs.add("CWE", _local(f"BIRADS-{side}", f"BI-RADS assessment, {word} breast"), sub_id,
                _term_code(lexicon.birads_term(breast["birads"])).er7(), _method(breast.get("birads_source")))
    if breast.get("density"):
        obs.add("CWE", _local(f"DENSITY-{side}", f"Breast composition (ACR), {word} breast"), sub_id,
                _term_code(lexicon.density_term(breast["density"])).er7(), _method(breast.get("density_source")))
    for k, finding in enumerate(breast.get("findings") or [], 1):
        group = f"{sub_id}.{k}"  # the finding and its certainty, sites and descriptors
        obs.add("CWE", _local(f"FINDING-{side}", f"Finding, {word} breast"), group,
                _term_code(finding["kind"]).er7(), _method("report"))
        certainty = str(finding.get("status") or "POS")
        obs.add("CWE", _local(f"CERTAINTY-{side}", f"Finding certainty, {word} breast"), group,
                _local(certainty, _CERTAINTY.get(certainty, certainty)).er7())
        for location in finding.get("locations") or []:
            obs.add("CWE", _local(f"SITE-{side}", f"Finding site, {word} breast"), group,
                    _term_code(location).er7())
        for descriptor in finding.get("descriptors") or []:
            obs.add("CWE", _local(f"DESCRIPTOR-{side}", f"Finding descriptor, {word} breast"), group,
                    _term_code(descriptor).er7())
    for item in disagreements:
        if item.get("breast") == side:
            label = "BI-RADS" if item.get("field") == "birads" else "Density"
            obs.add("ST", _local(f"DISAGREE-{side}", f"Report and classifier disagree, {word} breast"), sub_id,
                    escape(f"{label}: report {item.get('report')}, classifier {item.get('classifier')}"))


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
    """Read one of our ORUs back: control ID, patient ID, accession, per-breast BI-RADS, density and
    finding kinds, status, OBR-25 result status, models and the report text (lines joined by "\\n")."""
    out: dict[str, Any] = {"control_id": "", "patient_id": "", "accession": "", "breasts": {},
                           "status": "", "result_status": "", "models": {}, "report_text": ""}
    lines: list[str] = []
    for segment in re.split(r"[\r\n]+", message.strip()):
        f = _fields(segment)
        if f[0] == "MSH":
            out["control_id"] = unescape(_field(f, 9))
        elif f[0] == "PID":
            out["patient_id"] = _components(_field(f, 3))[0]
        elif f[0] == "OBR":
            out["accession"] = unescape(_field(f, 3))
            out["result_status"] = _field(f, 25)  # P, or C for a correction
        elif f[0] == "OBX":
            _read_obx(f, out, lines)
    out["report_text"] = "\n".join(lines)
    return out


def _read_obx(f: list[str], out: dict[str, Any], lines: list[str]) -> None:
    code = _components(_field(f, 3))
    value = _field(f, 5)
    if code[0] == REPORT_CODE[0]:
        lines.append(unescape(value))
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


__all__ = ["HL7_VERSION", "LOCAL", "MESSAGE_TYPE", "Coded", "build_oru", "control_id", "escape",
           "parse_oru", "unescape", "validate_oru"]
