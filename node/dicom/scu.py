"""Outgoing DICOM for the admin CLI: C-ECHO and C-STORE of files or folders.

Files are sent as they are stored (their own transfer syntax, streamed from disk with
pynetdicom's chunked send), one association for the whole batch, each file's status kept.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification


@dataclass(frozen=True)
class SendResult:
    """The outcome for one file."""

    path: str
    status: int | None  # None: not sent (unreadable file, association lost)
    comment: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and (self.status == 0 or (self.status & 0xF000) == 0xB000)


def client_tls_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None, *,
                       verify: bool = True, check_hostname: bool = False) -> ssl.SSLContext:
    """TLS 1.2+ client context: the server verified against ``ca`` (None: the system trust store)
    unless ``verify`` is off; our certificate from ``cert``/``key`` when given.

    Raises ``OSError``/``ssl.SSLError`` for unreadable or invalid files.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = bool(verify and check_hostname)
    if not verify:
        context.verify_mode = ssl.CERT_NONE
    if cert and key:
        context.load_cert_chain(str(cert), str(key))
    return context


@dataclass(frozen=True)
class TLSClientOptions:
    """Certificates for a TLS association from the CLI (all paths optional; without ``ca`` the
    server is not verified, as `echoscu +tls` without ``+cf`` does)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def context(self) -> ssl.SSLContext:
        # DICOM peers are addressed by IP; the CA check still applies
        return client_tls_context(self.ca, self.cert, self.key, verify=self.ca is not None)


def _tls_args(tls: TLSClientOptions | None) -> tuple[ssl.SSLContext, None] | None:
    return (tls.context(), None) if tls else None


def echo(host: str, port: int, calling_aet: str = "MAMMO_NODE_SCU", called_aet: str = "ANY-SCP",
         timeout: float = 10.0, tls: TLSClientOptions | None = None) -> tuple[bool, str]:
    """C-ECHO ``host:port``; returns (success, message)."""
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=_tls_args(tls))
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no association"
        return False, f"association {reason}"
    try:
        status = assoc.send_c_echo()
        if status and status.Status == 0:
            return True, "C-ECHO success"
        return False, f"C-ECHO status {getattr(status, 'Status', None)!r}"
    finally:
        assoc.release()


def is_part10(path: Path) -> bool:
    """True for a DICOM Part 10 file (preamble + "DICM")."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders into their DICOM files (recursively, sorted for a repeatable order).

    Files named explicitly are kept as given, so a non-DICOM one is reported, not ignored.
    """
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_part10(p)))
        else:
            files.append(path)
    return files


def send(host: str, port: int, files: list[Path], calling_aet: str = "MAMMO_NODE_SCU",
         called_aet: str = "ANY-SCP", timeout: float = 30.0, tls: TLSClientOptions | None = None,
         progress: Callable[[SendResult], None] | None = None) -> list[SendResult]:
    """C-STORE each DICOM file in ``files`` over one association; returns a result per file."""
    headers = {}
    results: list[SendResult] = []
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            headers[path] = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            result = SendResult(str(path), None, f"not a DICOM file: {exc}")
            results.append(result)
            if progress:
                progress(result)
    if not headers:
        return results
    contexts = sorted(set(headers.values()))
    if len(contexts) > 128:
        raise ValueError("more than 128 distinct SOP class / transfer syntax pairs in one batch")
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in contexts]
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate(host, port, ae_title=called_aet, tls_args=_tls_args(tls))
        if not assoc.is_established:
            reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "could not be opened"
            for path in headers:
                result = SendResult(str(path), None, f"association {reason}")
                results.append(result)
                if progress:
                    progress(result)
            return results
        try:
            for path in headers:
                if not assoc.is_established:
                    result = SendResult(str(path), None, "association lost")
                else:
                    status = assoc.send_c_store(path)
                    code = int(status.Status) if status and "Status" in status else None
                    comment = str(status.get("ErrorComment", "")) if status else "no response"
                    result = SendResult(str(path), code, comment)
                results.append(result)
                if progress:
                    progress(result)
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return results
