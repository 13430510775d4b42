"""Deliver SR files to one DICOM destination by C-STORE, classifying each outcome for the outbox.

Outcomes: ``delivered`` (success or warning status), ``retry`` (the peer is unreachable, refused
the association, is out of resources, or the association broke), ``reject`` (the peer answered
with an error status that a resend of the same object cannot change: it is dead-lettered at once).
"""
from __future__ import annotations

import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage,
                                  GrayscaleSoftcopyPresentationStateStorage, MammographyCADSRStorage,
                                  SecondaryCaptureImageStorage)
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.config import DicomDestination
from node.dicom.scu import client_tls_context

log = logging.getLogger("mammo_node.outbox")

# TID 1500 goes as Comprehensive 3D SR (IHE AIR), or as Comprehensive / Enhanced SR to a destination
# whose tid1500_sop_class says so (also payloads rendered before the switch to 3D, still in the
# outbox, are Comprehensive SR). Every class is proposed: the peer accepts those it stores, and an
# SR in a class it refused is a dead letter that names the class.
SR_CLASSES = (Comprehensive3DSRStorage, MammographyCADSRStorage, ComprehensiveSRStorage, EnhancedSRStorage,
              GrayscaleSoftcopyPresentationStateStorage,  # and the CAD marks' presentation states (gsps)
              SecondaryCaptureImageStorage)  # and the heatmap secondary captures (heatmap_sc)


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


def _open(destination: DicomDestination, calling_aet: str) -> tuple[object | None, str]:
    """(an established association, "") or (None, why it failed: a retry reason)."""
    ae = AE(ae_title=destination.calling_ae_title or calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = destination.timeout
    ae.connection_timeout = destination.timeout
    ae.requested_contexts = [build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
                             for sop in SR_CLASSES]
    try:
        tls_args = _tls_args(destination)
    except (OSError, ssl.SSLError) as exc:
        return None, f"TLS configuration: {exc}"
    try:
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
    except (OSError, ssl.SSLError) as exc:
        return None, f"cannot connect: {exc}"
    if not assoc.is_established:
        if assoc.is_rejected:
            reason = "rejected the association"
        elif tls_args is not None:
            reason = "no association over TLS (peer down, or the TLS handshake failed: check the certificates)"
        else:
            reason = "no association (peer down or unreachable)"
        return None, reason
    return assoc, ""


def _send_one(assoc: object, path: Path) -> Delivery | None:
    """C-STORE one file; None when the association broke before an answer (nothing decided)."""
    if not assoc.is_established:  # type: ignore[attr-defined]
        return None
    ds = dcmread(path)
    accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID]  # type: ignore[attr-defined]
    if not accepted:
        return Delivery("reject", f"the peer does not accept SOP class {ds.SOPClassUID}")
    status = assoc.send_c_store(ds)  # type: ignore[attr-defined]
    if not status or "Status" not in status:
        return None
    code = int(status.Status)
    comment = str(status.get("ErrorComment", "") or "")
    return Delivery(_classify(code), f"C-STORE status 0x{code:04X}" + (f" ({comment})" if comment else ""))


def send_files(destination: DicomDestination, calling_aet: str, files: list[Path]) -> list[Delivery]:
    """C-STORE ``files`` (our SRs) to ``destination`` over one association, in order.

    With ``destination.tls.enabled`` the association runs over TLS; a failed handshake (an
    untrusted or misnamed server certificate, a PACS that does not speak TLS) sends nothing and
    is retried, so fixing the certificates lets the outbox deliver.
    """
    assoc, why = _open(destination, calling_aet)
    if assoc is None:
        return [Delivery("retry", why)] * len(files)
    out: list[Delivery] = []
    try:
        for path in files:
            delivery = _send_one(assoc, path)
            if delivery is None:
                delivery = Delivery("retry", "association lost" if not assoc.is_established  # type: ignore[attr-defined]
                                    else "no C-STORE response (timeout or association aborted)")
            out.append(delivery)
    finally:
        if assoc.is_established:  # type: ignore[attr-defined]
            assoc.release()  # type: ignore[attr-defined]
    return out


class DicomSender:
    """Sends to one destination over an association kept open ``destination.keep_open_seconds`` after
    the last send, so the next study's SRs skip the association set-up (and the PACS its tear-down).

    Used from one delivery job at a time (the outbox runs one drain per destination); a timer
    releases the association once idle. An association that broke while idle (the PACS closed it)
    is replaced by a fresh one and the file sent again: a resend carries the same SOP Instance UID.
    """

    def __init__(self, destination: DicomDestination, calling_aet: str) -> None:
        self.destination = destination
        self.calling_aet = calling_aet
        self._lock = threading.Lock()
        self._assoc: object | None = None
        self._last_used = 0.0
        self._timer: threading.Timer | None = None
        self.opened = 0  # associations opened (tests, metrics)

    def send(self, files: list[Path]) -> list[Delivery]:
        if self.destination.keep_open_seconds <= 0:
            return send_files(self.destination, self.calling_aet, files)
        with self._lock:
            out: list[Delivery] = []
            for path in files:
                reused = self._assoc is not None
                assoc, why = self._association()
                if assoc is None:
                    out.append(Delivery("retry", why))
                    continue
                delivery = _send_one(assoc, path)
                if delivery is None and reused:  # broke while idle: once more on a new association
                    self._drop()
                    assoc, why = self._association()
                    delivery = _send_one(assoc, path) if assoc is not None else Delivery("retry", why)
                if delivery is None:
                    self._drop()
                    delivery = Delivery("retry", "no C-STORE response (timeout or association aborted)")
                out.append(delivery)
            self._last_used = time.monotonic()
            self._arm()
            return out

    def _association(self) -> tuple[object | None, str]:
        if self._assoc is not None and self._assoc.is_established:  # type: ignore[attr-defined]
            return self._assoc, ""
        self._drop()
        assoc, why = _open(self.destination, self.calling_aet)
        if assoc is not None:
            self._assoc = assoc
            self.opened += 1
        return assoc, why

    def _drop(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        try:
            if assoc.is_established:  # type: ignore[attr-defined]
                assoc.release()  # type: ignore[attr-defined]
        except Exception:  # a broken peer: nothing to release
            log.debug("releasing an idle association failed", exc_info=True)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self.destination.keep_open_seconds, self._idle_check)
        self._timer.daemon = True
        self._timer.start()

    def _idle_check(self) -> None:
        with self._lock:
            if time.monotonic() - self._last_used >= self.destination.keep_open_seconds - 0.01:
                self._drop()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._drop()
