"""Deliver SR files to one DICOM destination by C-STORE, classifying each outcome for the outbox.

Outcomes: ``delivered`` (success or warning status), ``retry`` (the peer is unreachable, refused
the association, is out of resources, or the association broke), ``reject`` (the peer answered
with an error status that a resend of the same object cannot change: it is dead-lettered at once).
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Comprehensive3DSRStorage, ComprehensiveSRStorage, MammographyCADSRStorage
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.config import DicomDestination
from node.dicom.scu import client_tls_context

# TID 1500 goes as Comprehensive 3D SR (IHE AIR); Comprehensive SR stays proposed for payloads
# rendered before that change and still in the outbox.
SR_CLASSES = (Comprehensive3DSRStorage, MammographyCADSRStorage, ComprehensiveSRStorage)


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


def _tls_args(destination: DicomDestination) -> tuple[ssl.SSLContext, str | None] | None:
    """pynetdicom's ``tls_args`` for the destination, None for plain TCP."""
    tls = destination.tls
    if not tls.enabled:
        return None
    context = client_tls_context(tls.ca, tls.cert, tls.key, verify=tls.verify_server,
                                 check_hostname=tls.check_hostname)
    return context, destination.host if context.check_hostname else None


def send_files(destination: DicomDestination, calling_aet: str, files: list[Path]) -> list[Delivery]:
    """C-STORE ``files`` (our SRs) to ``destination`` over one association, in order.

    With ``destination.tls.enabled`` the association runs over TLS; a failed handshake (an
    untrusted or misnamed server certificate, a PACS that does not speak TLS) sends nothing and
    is retried, so fixing the certificates lets the outbox deliver.
    """
    ae = AE(ae_title=destination.calling_ae_title or calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout
    ae.connection_timeout = destination.timeout
    ae.requested_contexts = [build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                             for sop in SR_CLASSES]
    try:
        tls_args = _tls_args(destination)
    except (OSError, ssl.SSLError) as exc:
        return [Delivery("retry", f"TLS configuration: {exc}")] * len(files)
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:
        return [Delivery("retry", f"cannot connect: {exc}")] * len(files)
    if not assoc.is_established:
        if assoc.is_rejected:
            reason = "rejected the association"
        elif tls_args is not None:
            reason = "no association over TLS (peer down, or the TLS handshake failed: check the certificates)"
        else:
            reason = "no association (peer down or unreachable)"
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
