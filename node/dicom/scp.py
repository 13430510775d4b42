"""The DICOM listener: C-ECHO and C-STORE for mammography, on pynetdicom.

Association policy (allowlists of calling AE titles and hosts, optional called-AE check) is
enforced when the association is requested, with a proper A-ASSOCIATE-RJ so the peer's log
says why. Only mammography storage SOP classes are offered; anything else is refused during
negotiation. Incoming datasets are streamed to a file by pynetdicom's chunked receive (never
held in memory, never decoded or transcoded) and handed to :class:`node.store.InstanceStore`.

Hostile peers: pynetdicom picks the service for a request by the command's SOP class, not by the
presentation context, and aborts (or dies) on command UIDs it cannot parse. So every C-STORE
request is checked against its context first (:func:`node.dicom.checks.command_problem`) and
answered with a failure status and quarantined when it does not fit; command UIDs pynetdicom
would choke on reach that check instead of killing the association's thread. Accepted sockets
get ``dicom.network_timeout`` as a read deadline, so a peer that stops mid-PDU frees its slot,
and the partial file of a transfer cut off by an abort is removed when the connection closes.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
import uuid
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
from pydicom.uid import UID
from pynetdicom import AE, _config, evt
from pynetdicom import dimse_messages, pdu as _pdu
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification

from node.config import DicomSection
from node.dicom.checks import MAMMOGRAPHY_STORAGE, Problem, command_problem, uid_problem
from node.store import InstanceStore, StoreResult

log = logging.getLogger("mammo_node.dicom")

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


class _IncomingFiles:
    """The transfer files pynetdicom opens, by the thread that writes them (one per association).

    A file is handed over when its C-STORE reaches the handler; whatever its association's
    thread still holds when the connection closes is a transfer cut off by an abort, closed and
    deleted at once (not at the next start).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.lock = threading.Lock()
        self.open: dict[threading.Thread, list[Any]] = {}

    def create(self, *args: Any, **kwargs: Any) -> Any:
        fh = tempfile.NamedTemporaryFile(*args, dir=str(self.directory), **kwargs)
        with self.lock:
            self.open.setdefault(threading.current_thread(), []).append(fh)
        return fh

    def handed_over(self, fh: Any) -> None:
        with self.lock:
            for files in self.open.values():
                if fh in files:
                    files.remove(fh)

    def discard_current_thread(self) -> int:
        with self.lock:
            files = self.open.pop(threading.current_thread(), [])
        removed = 0
        for fh in files:
            try:
                fh.close()
            except Exception:
                pass
            path = Path(fh.name)
            if path.exists():
                path.unlink(missing_ok=True)
                removed += 1
        return removed


class _LenientStoreRequest(dimse_messages.C_STORE_RQ):
    """C-STORE-RQ decoding that keeps a command UID pynetdicom would refuse (empty, over 64
    characters) instead of aborting the association, so the node can answer it with a status."""

    def message_to_primitive(self):  # type: ignore[no-untyped-def]
        kept = {}
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            value = self.command_set.get(keyword)
            if value is not None and uid_problem(value) is not None:
                kept[keyword] = str(value)
                delattr(self.command_set, keyword)
        primitive = super().message_to_primitive()
        if kept:
            primitive._affected_sop_class_uid = UID(kept.get("AffectedSOPClassUID", primitive.AffectedSOPClassUID or ""))
            primitive._affected_sop_instance_uid = UID(
                kept.get("AffectedSOPInstanceUID", primitive.AffectedSOPInstanceUID or ""))
        return primitive


_LenientStoreRequest.__name__ = _LenientStoreRequest.__qualname__ = "C_STORE_RQ"  # pynetdicom maps by name


def _tolerant_file_meta(**kwargs: Any) -> Any:
    """pynetdicom writes the request's UIDs into the transfer file's meta and dies on empty ones."""
    for key in ("sop_class_uid", "sop_instance_uid"):
        if uid_problem(kwargs.get(key)) is not None:
            kwargs[key] = UID("0.0")  # placeholder; the command is refused before anything reads it
    return _create_file_meta(**kwargs)


_create_file_meta = dimse_messages.create_file_meta


class BadAETitle(str):
    """An AE title from an A-ASSOCIATE-RQ that pynetdicom refuses to decode (empty, control
    characters such as NUL padding, not ASCII). It stands in as "?" so the request reaches the
    association policy, which rejects it (A-ASSOCIATE-RJ) instead of pynetdicom aborting."""

    why: str = ""


def _aet_problem(value: Any) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
    if not raw.strip(b" \x00"):
        return "empty"
    if any(b < 0x20 or b == 0x5C for b in raw.rstrip(b" ")):
        return "has control characters or a backslash"
    if any(b > 0x7E for b in raw):
        return "is not ASCII"
    return "is invalid"


def _lenient_aet_property(original: property, attribute: str) -> property:
    def setter(self: Any, value: Any) -> None:
        try:
            original.fset(self, value)  # type: ignore[misc]
        except (ValueError, UnicodeError) as exc:
            bad = BadAETitle("?")
            bad.why = _aet_problem(value)
            log.debug("undecodable AE title in an A-ASSOCIATE-RQ: %s", exc)
            setattr(self, attribute, bad)

    setter.__lenient__ = True  # type: ignore[attr-defined]
    return property(original.fget, setter)


def _install_receive_patches() -> None:
    for name, attribute in (("calling_ae_title", "_calling_aet"), ("called_ae_title", "_called_aet")):
        current = getattr(_pdu.A_ASSOCIATE_RQ, name)
        if not getattr(current.fset, "__lenient__", False):
            setattr(_pdu.A_ASSOCIATE_RQ, name, _lenient_aet_property(current, attribute))
    dimse_messages.create_file_meta = _tolerant_file_meta  # type: ignore[attr-defined]
    request_type = dimse_messages._MESSAGE_TYPES[0x0001]
    if request_type[1] is not _LenientStoreRequest:
        dimse_messages._MESSAGE_TYPES[0x0001] = (request_type[0], _LenientStoreRequest)


def _shown(value: Any) -> str | None:
    """A command value as it may appear in a record: printable, at most 80 characters."""
    if value is None:
        return None
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text[:80]


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
        self.incoming = _IncomingFiles(self.store.incoming)
        dimse_messages.NamedTemporaryFile = self.incoming.create  # type: ignore[attr-defined]
        _install_receive_patches()
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
        for value, rejection, what in ((primitive.calling_ae_title, _REJECT_CALLING_AET, "calling"),
                                       (primitive.called_ae_title, _REJECT_CALLED_AET, "called")):
            if verdict is None and isinstance(value, BadAETitle):
                verdict = rejection, f"{what} AE title {value.why}"
        if verdict is not None:
            (result, source, diagnostic), reason = verdict
            log.warning("association from %s@%s rejected: %s", calling, host, reason)
            event.assoc.acse.send_reject(result, source, diagnostic)
            # As pynetdicom does for its own rejections: wait until the A-ASSOCIATE-RJ has gone
            # out before the connection is closed, or the peer only sees an abort.
            event.assoc.kill()
            return
        assoc = event.assoc
        serve = assoc._serve_request
        assoc._serve_request = lambda msg, context_id: self._serve(assoc, serve, msg, context_id)

    def _serve(self, assoc: Any, serve: Any, msg: Any, context_id: int) -> None:
        """Check a C-STORE's command against its presentation context before pynetdicom
        dispatches it (by the command's SOP class: Verification would answer a C-ECHO)."""
        if isinstance(msg, C_STORE):
            context = assoc._accepted_cx.get(context_id)
            if context is not None:
                problem = command_problem(str(context.abstract_syntax), msg.AffectedSOPClassUID,
                                          msg.AffectedSOPInstanceUID)
                if problem is not None:
                    self._refuse_store(assoc, msg, context_id, problem)
                    return
        serve(msg, context_id)

    def _refuse_store(self, assoc: Any, msg: Any, context_id: int, problem: Problem) -> None:
        status, reason = problem
        requestor = assoc.requestor
        calling, host = _ae_text(requestor.ae_title), requestor.address
        fh = getattr(msg, "_dataset_file", None)
        if fh is not None:
            self.incoming.handed_over(fh)
            fh.close()
        path = getattr(msg, "_dataset_path", None)
        if isinstance(path, tuple):
            path = path[0]
        self.store.quarantine(Path(path) if path else self.store.incoming / ".none", status, reason, calling, host,
                              sop_class_uid=_shown(msg.AffectedSOPClassUID),
                              sop_instance_uid=_shown(msg.AffectedSOPInstanceUID))
        if self.observer is not None:
            self.observer.stored(calling, host, 0, StoreResult(status, reason))
        response = C_STORE()
        response.MessageIDBeingRespondedTo = msg.MessageID
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            value = getattr(msg, keyword)
            if uid_problem(value) is None:
                setattr(response, keyword, value)
        response.Status = status
        response.ErrorComment = reason[:64]
        assoc.dimse.send_msg(response, context_id)

    def _on_conn_close(self, event: evt.Event) -> None:
        removed = self.incoming.discard_current_thread()
        if removed:
            log.info("removed %d partial transfer(s) of a closed connection from %s", removed,
                     event.assoc.requestor.address)

    def _on_accepted(self, event: evt.Event) -> None:
        # An id for this association, unique across restarts (the journal keeps it per study), and
        # the studies it delivered images of: at A-RELEASE the assembler may close them early.
        event.assoc._mammo_id = uuid.uuid4().hex
        event.assoc._mammo_studies = set()
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            sock.settimeout(self.config.network_timeout)
        requestor = event.assoc.requestor
        log.info("association accepted from %s@%s", requestor.ae_title, requestor.address)
        if self.observer is not None:
            self.observer.association(_ae_text(requestor.ae_title), requestor.address)

    def _on_released(self, event: evt.Event) -> None:
        """A-RELEASE: the sender says it is done. Studies this association alone delivered close
        after assembly.release_grace_seconds (an abort, below, says nothing of the kind)."""
        assoc = event.assoc
        studies = getattr(assoc, "_mammo_studies", None)
        if studies:
            try:
                self.store.assembler.released(assoc._mammo_id, set(studies))
            except Exception:  # the settle rule still closes them
                log.exception("recording the release of an association failed")

    def _on_aborted(self, event: evt.Event) -> None:
        requestor = event.assoc.requestor
        log.warning("association from %s@%s aborted; instances already acknowledged are kept",
                    requestor.ae_title, requestor.address)

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> Dataset:
        request = event.request
        requestor = event.assoc.requestor
        self.incoming.handed_over(getattr(request, "_dataset_file", None))
        path = Path(event.dataset_path)
        size = path.stat().st_size if path.exists() else 0
        result = self.store.accept(
            path,
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            calling_aet=_ae_text(requestor.ae_title),
            peer_host=requestor.address,
            association=getattr(event.assoc, "_mammo_id", None),
        )
        if result.instance_id is not None and result.study_uid is not None:
            studies = getattr(event.assoc, "_mammo_studies", None)
            if studies is not None:
                studies.add(result.study_uid)
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
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        ssl_context = build_server_ssl_context(self.config.tls) if self.config.tls.enabled else None
        self._server = self.ae.start_server(
            (self.config.bind, self.config.port), block=False, evt_handlers=handlers, ssl_context=ssl_context,
        )
        self._server.get_request = self._get_request
        log.info("listening as %s on %s:%d%s", self.config.ae_title, self.config.bind, self.port,
                 " (TLS)" if ssl_context else "")

    def _get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection with a read deadline: pynetdicom leaves accepted sockets blocking,
        so a peer that stops mid-PDU would hold its association slot until the socket closes (its
        threads wait for the blocked read). With the deadline the read fails, the connection is
        closed and the slot freed after ``acse_timeout`` (before the association is accepted) or
        ``network_timeout`` (after)."""
        server = self._server
        client, address = server.socket.accept()
        # Until the association is accepted the ACSE timeout applies, then the network timeout.
        client.settimeout(min(self.config.acse_timeout, self.config.network_timeout))
        if server.ssl_context:
            client = server.ssl_context.wrap_socket(client, server_side=True)
        return client, address

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
