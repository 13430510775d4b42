"""Which earlier outputs a new result of the same study replaces.

A study processed again (``mammo-node studies retry`` after a model upgrade, a fixed package)
gets a new result, and its SRs and ORU get new identities. Without a link, the PACS shows two
unrelated AI reports and the RIS two preliminary results. So a changed result names what the
receivers already hold:

- each SR carries a Predecessor Documents Sequence (PS3.3 C.17.2) with the earlier SR of its kind;
- the ORU^R01 is sent again as a preliminary result (OBR-25 and OBX-11 "P": HL7 table 0085 keeps
  "C" for replacing a *final* result, and an AI result never is one) with the same filler order
  number (ORC-3/OBR-3), so the RIS replaces the earlier AI result, and an NTE names the replaced
  message (its control ID).

The link goes to the newest output of each kind that was *delivered* (to any destination): a
receiver never heard of an output that was not. When the previous result's output of a kind was
not delivered, its own link is inherited, so a chain of undelivered results still points at what
the receivers have. An identical ORU (same control ID) keeps the previous result's link. SRs of a
new result are always new documents (their UIDs cover their creation time: issue 18.10); the SRs
planned for a result are recorded in it (``StudyResult.documents``, node.outputs.prepare), so the
next result links to exactly those, with the next instance number (document_numbers).

The links are stored in the result (``StudyResult.replaces``, journaled with it); encoders read
them from there, so payloads rebuilt from the journal are the ones first sent.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pynetdicom.sop_class import Comprehensive3DSRStorage, MammographyCADSRStorage

from node.outputs.common import SERIES_NUMBER, TID1500_KINDS, TID1500_SOP_CLASSES, NotApplicable, report_family
from node.outputs.identity import control_id, filler_order_number, output_identity
from node.study_result import ORU_KIND, DocumentRef, MessageRef, OutputRef, StudyResult

if TYPE_CHECKING:
    from node.journal import Journal

# One SOP class per SR output kind; the TID 1500 SR has one kind per class a destination may ask for
# (node.outputs.common.TID1500_KINDS), each a document of its own.
SR_SOP_CLASSES = {**{TID1500_KINDS[name]: uid for name, uid in TID1500_SOP_CLASSES.items()},
                  "tid4000": str(MammographyCADSRStorage)}
assert SR_SOP_CLASSES["tid1500"] == str(Comprehensive3DSRStorage)
LEGACY_SOP_CLASSES = {"tid1500": "1.2.840.10008.5.1.4.1.1.88.33"}  # TID 1500 was Comprehensive SR before
KINDS = (*TID1500_KINDS.values(), "tid4000", "oru")
SERIES_NUMBER_STEP = 10  # a revision in a new series (other models) numbers it 10 after the one it replaces
_NEW_DOCUMENT = "(new)"  # the key of an SR not yet made: it never equals a delivered one


def document_numbers(result: StudyResult, kind: str, series_uid: str) -> tuple[int, int]:
    """(Series Number, Instance Number) of the SR of ``kind``: 9501/9502 and 1 for a first result;
    a revision is the next instance number, in the same series number when it is in the same series
    and 10 further on when other models made a new series, so a PACS lists the revisions apart."""
    link = result.replaced_document(kind)
    first = SERIES_NUMBER[report_family(kind)]
    if link is None:
        return first, 1
    series_number = int(link.series_number or first)
    if link.series_uid != series_uid:
        series_number += SERIES_NUMBER_STEP
    return series_number, int(link.instance_number or 1) + 1


def _identity(kind: str, study_uid: str, result: StudyResult) -> OutputRef | None:
    """What a receiver knows an output of ``kind`` by: the SR's UIDs, or the ORU's control ID."""
    if kind == ORU_KIND:
        return MessageRef(control_id(study_uid, result), filler_order_number(study_uid, result))
    if report_family(kind) == "tid1500" and not result.has_model_output:
        return None  # no TID 1500 SR is made for such a result
    planned = (result.documents or {}).get(kind)
    if planned is not None:  # what node.outputs.prepare planned for it (source images, time, device: all known then)
        return planned
    if kind not in ("tid1500", "tid4000"):
        return None  # a kind this result did not plan (no destination asked for that SOP class)
    # A result journaled before its documents were recorded: named by the result alone, as then.
    ident = output_identity(study_uid, result, kind)
    series_number, instance_number = document_numbers(result, kind, ident.series_instance_uid)
    return DocumentRef(study_uid=study_uid, series_uid=ident.series_instance_uid,
                       sop_instance_uid=ident.sop_instance_uid,
                       sop_class_uid=LEGACY_SOP_CLASSES.get(kind, SR_SOP_CLASSES[kind]),
                       series_number=series_number, instance_number=instance_number)


def delivered_identities(journal: "Journal", study_uid: str) -> set[tuple[str, str]]:
    """(kind, identity) of every output of the study that reached at least one destination."""
    rows = journal.query("SELECT kind, identity FROM outbox WHERE study_uid = ? AND state = 'DELIVERED'",
                         (study_uid,))
    return {(str(kind), str(identity)) for kind, identity in rows}


def replaced_outputs(previous: StudyResult | None, result: StudyResult, study_uid: str,
                     delivered: set[tuple[str, str]]) -> dict[str, OutputRef]:
    """``result.replaces`` for a new result of a study whose last result was ``previous``."""
    if previous is None:
        return {}
    inherited = previous.replaces or {}
    out: dict[str, OutputRef] = {}
    for kind in KINDS:
        try:
            before = _identity(kind, study_uid, previous)
            now = _identity(kind, study_uid, result)
        except NotApplicable:
            before = now = None
        # A new result's SRs are new documents: their UIDs cover their creation time (and the
        # source images), which this result does not know yet. They replace what was delivered.
        new_document = kind in SR_SOP_CLASSES and now is not None
        now_key = _NEW_DOCUMENT if new_document else None if now is None else now.key
        link = inherited.get(kind)
        if before is not None and (new_document or before != now) and (kind, before.key) in delivered:
            link = before
        if link is not None and (now is None or link.key != now_key):
            out[kind] = link
    return out


def predecessor_documents(result: StudyResult, kind: str) -> list[Dataset]:
    """Items of the SR's Predecessor Documents Sequence (Hierarchical SOP Instance Reference
    Macro): the earlier SR of ``kind`` this result replaces, or none."""
    link = result.replaced_document(kind)
    if link is None:
        return []
    sop = Dataset()
    sop.ReferencedSOPClassUID = link.sop_class_uid
    sop.ReferencedSOPInstanceUID = link.sop_instance_uid
    series = Dataset()
    series.SeriesInstanceUID = link.series_uid
    series.ReferencedSOPSequence = [sop]
    study = Dataset()
    study.StudyInstanceUID = link.study_uid
    study.ReferencedSeriesSequence = [series]
    return [study]


__all__ = ["SR_SOP_CLASSES", "document_numbers", "delivered_identities", "predecessor_documents", "replaced_outputs"]
