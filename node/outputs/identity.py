"""How a receiver knows each output: the SRs' series and instance UIDs, the ORU's message control
ID and filler order number, and which earlier output a new one replaces.

One module so that the writers (SR, ORU, GSPS, heatmap SC), the planner (node.outputs.prepare) and
the amendment logic (node.outputs.amend) name an output the same way. Identities are derived, not
random: an identical resend carries the same identity (a PACS de-duplicates it, a RIS sees a
repeat), a changed result a new one.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Iterable, Mapping

from node.outputs.source import SourceStudy, stamp
from node.study_result import StudyResult


def result_fingerprint(study_uid: str, models: Mapping[str, str], result: StudyResult) -> str:
    """A short stable digest of what a result says (HL7 control IDs derive from it; the SRs use
    :func:`document_identity`, which covers everything their bytes depend on). A hash of the
    result's JSON form (StudyResult.to_json), so it is what it was when results were plain JSON."""
    data = result.to_json()
    text = json.dumps({"study": study_uid, "models": dict(models),
                       "breasts": data["breasts"], "report": data["report"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def derived_uid(*parts: Iterable[str] | str) -> str:
    """A deterministic UID (2.25 form, PS3.5 B.2) from the given strings: the same inputs always give
    the same UID, so a resent SR replaces itself in the PACS instead of piling up copies."""
    flat: list[str] = []
    for part in parts:
        flat.extend([part] if isinstance(part, str) else list(part))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(flat)).int}"


# A fixed namespace for our name-based (version 5) UUIDs; 2.25.<uuid as integer> is a valid UID.
_UID_NAMESPACE = uuid.UUID("6d616d6d-6f2d-4e6f-8465-2d7569647321")


@dataclass(frozen=True)
class OutputIdentity:
    """The UIDs of one output object: a series per (study, kind, model versions) and an instance per
    result content, so an identical resend carries the same UIDs (PACS de-duplicates it) while a
    result produced by other models or changed by reprocessing is a new object."""

    series_instance_uid: str
    sop_instance_uid: str
    fingerprint: str


def output_identity(study_uid: str, result: StudyResult, kind: str) -> OutputIdentity:
    """The identity from the result alone: what HL7 control IDs derive from, and what the SRs of
    results journaled before document_identity existed were named by (node.outputs.amend)."""
    models = dict(result.models)
    fingerprint = result_fingerprint(study_uid, models, result)
    versions = [f"{k}={v}" for k, v in sorted(models.items())]
    return OutputIdentity(derived_uid("series", study_uid, kind, versions),
                          derived_uid("instance", study_uid, kind, fingerprint), fingerprint)


# What of the result an SR shows (the rest, e.g. processing seconds, never reaches its bytes).
_DOCUMENT_RESULT_KEYS = ("status", "missing_views", "breasts", "disagreements", "report", "models",
                         "replaces", "preliminary")
# CAD marks (node.marks) and whether localisation was attempted: part of the identity only when the
# result has them, so results journaled before they existed keep the UIDs they were planned with.
_OPTIONAL_RESULT_KEYS = ("localization", "marks")


def document_identity(source: SourceStudy, result: StudyResult, kind: str, created_at: float,
                      *, device_uid: str, extra: Iterable[str] = ()) -> OutputIdentity:
    """The UIDs of one SR: the series per (study, kind, model versions); the instance from
    everything its bytes depend on: the result as shown, the source images and their headers, the
    creation stamp, the node's software version and device UID, and ``extra`` (the writer's own
    choices, e.g. the SOP class). Same content, same UID (a resend replaces itself in the PACS);
    different content, a different UID (a PACS never sees two versions under one UID). The result
    enters as its JSON form (StudyResult.to_json): the UIDs are those of the plain-JSON days."""
    from node.outputs.common import SOFTWARE_VERSION

    models = dict(result.models)
    data = result.to_json()
    when = stamp(created_at, source)
    text = json.dumps({
        "study": source.study_uid, "kind": kind,
        "result": {**{key: data.get(key) for key in _DOCUMENT_RESULT_KEYS},
                   **{key: data[key] for key in _OPTIONAL_RESULT_KEYS if key in data}},
        "images": [[i.position, i.sop_class_uid, i.series_instance_uid, i.sop_instance_uid] for i in source.images],
        "headers": source.header_digest(), "stamp": [when.datetime, when.offset],
        "software": SOFTWARE_VERSION, "device": device_uid, "extra": list(extra),
    }, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:32]
    versions = [f"{k}={v}" for k, v in sorted(models.items())]
    return OutputIdentity(derived_uid("series", source.study_uid, kind, versions),
                          derived_uid("instance", source.study_uid, kind, fingerprint), fingerprint)


# ---------------------------------------------------------------------- HL7
def control_id(study_uid: str, result: StudyResult) -> str:
    """MSH-10: "MN" + 16 hex digits, equal for an identical resend and new for a changed result
    (the result fingerprint the SR UIDs use, plus status and missing views, which the ORU states)."""
    fingerprint = output_identity(study_uid, result, "hl7").fingerprint
    extra = json.dumps([fingerprint, result.status, sorted(result.missing_views)])
    return "MN" + hashlib.sha256(extra.encode()).hexdigest()[:16]


def filler_order_number(study_uid: str, result: StudyResult) -> str:
    """ORC-3/OBR-3 of an AI result: "AI" + 16 hex digits, from the study and the set of models
    (their kinds, not versions), so a resend and a re-processing after a model upgrade keep it; a
    result replacing an earlier one takes the earlier one's number (``result.replaces["oru"]``),
    so the RIS replaces that result even when the model set changed."""
    link = result.replaced_message()
    if link is not None and link.filler_order_number:
        return str(link.filler_order_number)
    kinds = sorted(result.models.keys())
    return "AI" + hashlib.sha256(json.dumps(["filler", study_uid, kinds]).encode()).hexdigest()[:16].upper()


def replaced_control_id(result: StudyResult) -> str | None:
    """MSH-10 of the ORU^R01 this result's ORU replaces, or None."""
    link = result.replaced_message()
    return link.control_id if link is not None else None
