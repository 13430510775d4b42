"""The DICOM listener: C-ECHO and C-STORE for mammography, on pynetdicom.

Association policy (allowlists of calling AE titles and hosts, optional called-AE check) is
enforced when the association is requested, with a proper A-ASSOCIATE-RJ so the peer's log
says why. Only mammography storage SOP classes are offered; anything else is refused during
negotiation. Incoming datasets are streamed to a file by pynetdicom's chunked receive (never
held in memory, never decoded or transcoded) and handed to :class:`node.store.InstanceStore`.
"""
from __future__ import annotations

import functools
import ipaddress
import logging
import ssl
import tempfile
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt
from pynetdicom import dimse_messages
from pynetdicom.sop_class import Verification

from node.config import DicomSection
from node.store import InstanceStore

log = logging.getLogger("mammo_node.dicom")

MAMMOGRAPHY_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}

ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): result, source, diagnostic.
_REJECT_CALLING_AET = (0x01, 0x01, 0x03)
_REJECT_CALLED_AET = (0x01, 0x01, 0x07)
_REJECT_NO_REASON = (0x01, 0x01, 0x01)


def build_server_ssl_context(tls: Any) -> ssl.SSLContext:
    """TLS 1.2+ server context; verifies client certificates against ``tls.ca`` when required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(tls.cert), keyfile=str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(cafile=str(tls.ca))
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (
        ssl.CERT_OPTIONAL if tls.ca is not None else ssl.CERT_NONE
    )
    return context


class AssociationPolicy:
    """Who may associate: calling AE titles, hosts, and (optionally) the called AE title."""

    def __init__(self, config: DicomSection, check_called_aet: bool = False) -> None:
        self.calling_aets = {a.strip() for a in config.allowed_calling_aets}
        self.networks = [ipaddress.ip_network(h, strict=False) for h in config.allowed_hosts]
        self.own_aet = config.ae_title
        self.check_called_aet = check_called_aet

    def check(self, calling_aet: str, called_aet: str, host: str) -> tuple[tuple[int, int, int], str] | None:
        """None when allowed, else the rejection parameters and a reason for the log."""
        if self.networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return _REJECT_NO_REASON, f"host {host!r} is not an IP address"
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped  # an IPv4 peer on a dual-stack ("::") listener
            if not any(address in net for net in self.networks):
                return _REJECT_NO_REASON, f"host {host} is not in dicom.allowed_hosts"
        if self.calling_aets and calling_aet not in self.calling_aets:
            return _REJECT_CALLING_AET, f"calling AE {calling_aet!r} is not in dicom.allowed_calling_aets"
        if self.check_called_aet and called_aet != self.own_aet:
            return _REJECT_CALLED_AET, f"called AE {called_aet!r} is not ours ({self.own_aet!r})"
        return None


def _ae_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value).strip()


class DicomListener:
    """Runs the SCP in background threads; ``start()`` returns once it is listening."""

    def __init__(self, config: DicomSection, store: InstanceStore, observer: Any = None) -> None:
        self.config = config
        self.store = store
        # Optional hooks (node.app wires metrics and the audit log): association(calling_ae, host),
        # stored(calling_ae, host, size, result).
        self.observer = observer
        self.policy = AssociationPolicy(config)
        self._server: Any = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        # Stream every C-STORE dataset straight to a file in our own incoming directory, so
        # the final rename into the spool stays on one filesystem (atomic) and nothing is
        # buffered in memory. pynetdicom creates the file with NamedTemporaryFile and no
        # directory; we give it ours.
        _config.STORE_RECV_CHUNKED_DATASET = True
        dimse_messages.NamedTemporaryFile = functools.partial(  # type: ignore[attr-defined]
            tempfile.NamedTemporaryFile, dir=str(self.store.incoming)
        )
        _config.LOG_HANDLER_LEVEL = "none"
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu_size
        ae.acse_timeout = self.config.acse_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.network_timeout = self.config.network_timeout
        ae.add_supported_context(Verification)
        for sop_class in MAMMOGRAPHY_STORAGE:
            ae.add_supported_context(sop_class, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    # ----- event handlers --------------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        primitive = requestor.primitive
        calling = _ae_text(primitive.calling_ae_title)
        called = _ae_text(primitive.called_ae_title)
        host = requestor.address
        verdict = self.policy.check(calling, called, host)
        if verdict is not None:
            (result, source, diagnostic), reason = verdict
            log.warning("association from %s@%s rejected: %s", calling, host, reason)
            event.assoc.acse.send_reject(result, source, diagnostic)
            # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ has gone
            # out before the connection is closed, or the peer only sees an abort.
            event.assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log.info("association accepted from %s@%s", requestor.ae_title, requestor.address)
        if self.observer is not None:
            self.observer.association(_ae_text(requestor.ae_title), requestor.address)

    def _on_aborted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log.warning("association from %s@%s aborted; instances already acknowledged are kept",
                    requestor.ae_title, requestor.address)

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> Dataset:
        request = event.request
        requestor = event.assoc.requestor
        path = Path(event.dataset_path)
        size = path.stat().st_size if path.exists() else 0
        result = self.store.accept(
            path,
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            calling_aet=_ae_text(requestor.ae_title),
            peer_host=requestor.address,
        )
        if self.observer is not None:
            self.observer.stored(_ae_text(requestor.ae_title), requestor.address, size, result)
        status = Dataset()
        status.Status = result.status
        if result.comment:
            status.ErrorComment = result.comment[:64]
        return status

    # ----- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        ssl_context = build_server_ssl_context(self.config.tls) if self.config.tls.enabled else None
        self._server = self.ae.start_server(
            (self.config.bind, self.config.port), block=False, evt_handlers=handlers, ssl_context=ssl_context,
        )
        log.info("listening as %s on %s:%d%s", self.config.ae_title, self.config.bind, self.port,
                 " (TLS)" if ssl_context else "")

    @property
    def port(self) -> int:
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.ae.shutdown()
