"""MLLP client: delivers one HL7 message to the RIS and reads its acknowledgement.

hl7apy has an MLLP server but no client. One connection per message (connect, send, read one
ACK, close): the outbox sends rarely and a fresh connection never inherits a half-read reply.
Transport failures raise :class:`MLLPError` (the outbox retries them); what the RIS said is an
:class:`Ack` whose :meth:`Ack.outcome` tells the outbox to stop, retry or dead-letter.
Exception texts name the peer (host:port) and never any message content.
"""
from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass, field
from typing import Literal

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 1024 * 1024  # an ACK is a few hundred bytes; more means a confused peer
Outcome = Literal["accepted", "retry", "reject"]
# MSH-18 (HL7 table 0211) -> Python codec. Empty MSH-18 means the HL7 default, ASCII.
CHARSETS = {"": "ascii", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "8859/1": "latin-1"}


class MLLPError(OSError):
    """The message could not be delivered or no complete acknowledgement came back; retry later."""


@dataclass(frozen=True)
class Ack:
    """What the RIS answered: MSA-1 (code), MSA-2 (the control ID it acknowledges) and its text
    (MSA-3 or ERR-8/ERR-3). ``code`` is empty when the reply was not a readable ACK."""

    code: str
    control_id: str
    text: str = field(default="", repr=False)  # the RIS's own words: may name a patient, never logged

    def describe(self) -> str:
        """A log- and journal-safe summary (code and control ID only, not the RIS's text)."""
        return f"ACK {self.code or '(unreadable)'} for {self.control_id or '(no control ID)'}"

    def outcome(self, expected_control_id: str) -> Outcome:
        """What the outbox does next: ``accepted`` for AA/CA acknowledging our control ID;
        ``reject`` for AR/CR acknowledging it (the RIS will never take this message: dead-letter
        it); ``retry`` otherwise (AE/CE, an ACK for another control ID, an unreadable ACK)."""
        if self.control_id != expected_control_id:
            return "retry"
        if self.code in ("AA", "CA"):
            return "accepted"
        if self.code in ("AR", "CR"):
            return "reject"
        return "retry"

    @classmethod
    def parse(cls, text: str) -> "Ack":
        """Read an ER7 ACK; never raises (an unreadable reply is an Ack with an empty code)."""
        segments = [s for s in text.replace("\n", "\r").split("\r") if s]
        if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 9:
            return cls("", "", "not an HL7 message")
        msh = segments[0]
        sep, component = msh[3], msh[4]
        delimiters = {"F": sep, "S": component, "R": msh[5], "E": msh[6], "T": msh[7]}
        escaped = re.compile(re.escape(msh[6]) + "([FSRET])" + re.escape(msh[6]))

        def first(field: str) -> str:
            return escaped.sub(lambda m: delimiters[m.group(1)], field.split(component)[0]).strip()

        msa = err = None
        for segment in segments[1:]:
            fields = segment.split(sep)
            if fields[0] == "MSA" and msa is None:
                msa = fields
            elif fields[0] == "ERR" and err is None:
                err = fields
        if msa is None or len(msa) < 2:
            return cls("", "", "no MSA segment")
        code = first(msa[1]).upper()
        control_id = first(msa[2]) if len(msa) > 2 else ""
        text = first(msa[3]) if len(msa) > 3 else ""
        if not text and err is not None:
            text = (first(err[8]) if len(err) > 8 else "") or _component(err, 3, 1, component)
        return cls(code, control_id, text[:200])


def _component(fields: list[str], field: int, index: int, component: str) -> str:
    if len(fields) <= field:
        return ""
    parts = fields[field].split(component)
    return parts[index].strip() if len(parts) > index else ""


def message_charset(message: str) -> str:
    """The codec MSH-18 names (ASCII when empty); ValueError for one we do not speak."""
    first = message.split("\r", 1)[0]
    fields = first.split(first[3]) if first.startswith("MSH") and len(first) > 3 else []
    name = fields[17].split(first[4])[0].strip().upper() if len(fields) > 17 else ""
    if name not in CHARSETS:
        raise ValueError(f"MSH-18 character set {name!r} is not supported (use {sorted(CHARSETS)})")
    return CHARSETS[name]


class MLLPClient:
    """Sends HL7 messages to one MLLP listener (the RIS)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 10.0, read_timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    def send(self, message: str) -> Ack:
        """Frame and send ``message`` (encoded as its MSH-18 says) and return the parsed ACK.

        ``read_timeout`` bounds the whole wait for the ACK after sending, not each read, so a peer
        that trickles bytes cannot hold the outbox. Raises MLLPError on any transport failure and
        ValueError for a message that cannot be encoded (never retried: it would fail again)."""
        # Segments end with CR only; a file read back in text mode may have turned them into LF
        # (our messages never carry a raw CR or LF inside a field, so this cannot alter content).
        message = message.replace("\r\n", "\r").replace("\n", "\r")
        charset = message_charset(message)
        try:
            payload = message.encode(charset)
        except UnicodeEncodeError:
            raise ValueError(f"the message has characters its MSH-18 character set ({charset}) "
                             "cannot encode") from None
        if b"\x0b" in payload or b"\x1c" in payload:
            raise ValueError("the message contains an MLLP framing byte (0x0B or 0x1C)")
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except ConnectionRefusedError:
            raise MLLPError(f"MLLP {self.peer}: connection refused") from None
        except (socket.timeout, TimeoutError):
            raise MLLPError(f"MLLP {self.peer}: no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise MLLPError(f"MLLP {self.peer}: cannot connect ({exc.strerror or type(exc).__name__})") from None
        with sock:
            try:
                sock.settimeout(self.read_timeout)
                sock.sendall(START_BLOCK + payload + END_BLOCK)
                reply = self._read_block(sock)
            except (socket.timeout, TimeoutError):
                raise MLLPError(f"MLLP {self.peer}: no complete acknowledgement within "
                                f"{self.read_timeout:g} s") from None
            except MLLPError:
                raise
            except OSError as exc:
                raise MLLPError(f"MLLP {self.peer}: connection failed "
                                f"({exc.strerror or type(exc).__name__})") from None
        return Ack.parse(reply.decode(charset if charset != "ascii" else "utf-8", errors="replace"))

    def _read_block(self, sock: socket.socket) -> bytes:
        """Bytes between the start block and FS CR, however the peer splits them across reads."""
        deadline = time.monotonic() + self.read_timeout
        buffer = b""
        while True:
            start = buffer.find(START_BLOCK)
            if start >= 0:
                end = buffer.find(END_BLOCK, start + 1)
                if end >= 0:
                    return buffer[start + 1:end]
            if len(buffer) > MAX_ACK_BYTES:
                raise MLLPError(f"MLLP {self.peer}: acknowledgement larger than {MAX_ACK_BYTES} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout()
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                raise MLLPError(f"MLLP {self.peer}: connection closed before the end of the acknowledgement")
            buffer += chunk


__all__ = ["Ack", "CHARSETS", "MAX_ACK_BYTES", "MLLPClient", "MLLPError", "Outcome", "message_charset"]
