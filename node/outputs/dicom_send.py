"""Deliver SR files to one DICOM destination by C-STORE, classifying each outcome for the outbox.

Outcomes: ``delivered`` (success or warning status), ``retry`` (the peer is unreachable, refused
the association, is out of resources, or the association broke), ``reject`` (the peer answered
with an error status that a resend of the same object cannot change: it is dead-lettered at once).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import ComprehensiveSRStorage, MammographyCADSRStorage
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.config import DicomDestination

SR_CLASSES = (ComprehensiveSRStorage, MammographyCADSRStorage)


@dataclass(frozen=True)
class Delivery:
    """What happened to one file."""

    outcome: str  # "delivered" | "retry" | "reject"
    detail: str


def _classify(status: int) -> str:
    if status == 0x0000 or (status & 0xF000) == 0xB000:
        return "delivered"
    if (status & 0xFF00) == 0xA700:  # out of resources: the peer may recover
        return "retry"
    return "reject"  # 0xA9xx, 0xCxxx, 0x0122 ...: the same object would be refused again


def send_files(destination: DicomDestination, calling_aet: str, files: list[Path]) -> list[Delivery]:
    """C-STORE ``files`` (our SRs) to ``destination`` over one association, in order."""
    ae = AE(ae_title=destination.calling_ae_title or calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout
    ae.connection_timeout = destination.timeout
    ae.requested_contexts = [build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                             for sop in SR_CLASSES]
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except OSError as exc:
        return [Delivery("retry", f"cannot connect: {exc}")] * len(files)
    if not assoc.is_established:
        reason = "rejected the association" if assoc.is_rejected else "no association (peer down or unreachable)"
        return [Delivery("retry", reason)] * len(files)
    out: list[Delivery] = []
    try:
        for path in files:
            if not assoc.is_established:
                out.append(Delivery("retry", "association lost"))
                continue
            ds = dcmread(path)
            accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID]
            if not accepted:
                out.append(Delivery("reject", f"the peer does not accept SOP class {ds.SOPClassUID}"))
                continue
            status = assoc.send_c_store(ds)
            if not status or "Status" not in status:
                out.append(Delivery("retry", "no C-STORE response (timeout or association aborted)"))
                continue
            code = int(status.Status)
            comment = str(status.get("ErrorComment", "") or "")
            out.append(Delivery(_classify(code), f"C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else "")))
    finally:
        if assoc.is_established:
            assoc.release()
    return out
