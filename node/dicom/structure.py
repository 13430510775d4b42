"""Walk the structure of a received data set before it is acknowledged.

pydicom reads leniently: it seeks past the end of a file when a length says so, guesses the VR
encoding when it does not match the transfer syntax, and inflates a deflated data set whole into
memory. A node that acknowledges what pydicom managed to read acknowledges broken files. So the
receive path first walks every element header of the data set as it is encoded on disk, without
decoding values (pixel data and large values are skipped, not read):

- every declared length fits inside the file and inside the sequence or item that holds it;
- sequences and items are properly delimited, pixel data fragments are proper items;
- element tags ascend, VRs are valid VRs (explicit VR), no file meta elements in the data set;
- nothing follows the last element;
- a deflated data set inflates to at most ``max_inflated`` bytes (inflated in chunks and thrown
  away: the bound holds before anything else reads it).

The walk costs about a millisecond for a mammogram's header; the pixel data is skipped by a seek.
:func:`walk_file` raises :class:`StructureProblem` with a reason for the sender and the quarantine.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import dictionary_VR

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010

# PS3.5 6.2: every VR, and those with a 4-byte length in explicit VR (PS3.5 7.1.2).
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
    b"US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())

MAX_DEPTH = 32  # nested sequences; real images use a handful
MAX_ELEMENTS = 200_000  # a mammogram's header has a few hundred
HEAD_BYTES = 4096  # how much of the first pixel data fragment is kept for the codec header check


class StructureProblem(Exception):
    """The bytes are not a well-formed data set; ``reason`` says where."""

    def __init__(self, reason: str, too_large: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.too_large = too_large


@dataclass
class Layout:
    """What the walk found out about the data set (used by the pixel checks)."""

    body_offset: int = 0  # where the data set starts in the file (after the file meta)
    body_bytes: int = 0  # its length as encoded (inflated for a deflated data set)
    elements: int = 0
    pixel_length: int | None = None  # defined length of native Pixel Data, None if absent/encapsulated
    encapsulated: bool = False
    fragments: int = 0  # pixel data items after the basic offset table
    first_fragment_head: bytes = b""
    first_fragment_length: int = 0
    last_fragment_tail: bytes = b""
    # Deflated data sets: the inflated bytes before Pixel Data (None when there is none), so the
    # header can be read without inflating the whole data set a second time.
    header: bytes | None = None
    notes: list[str] = field(default_factory=list)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _FileSource:
    """Sequential reads and seeks over a file of known size."""

    def __init__(self, fh: BinaryIO, start: int, size: int) -> None:
        self.fh = fh
        self.pos = start
        self.size = size
        fh.seek(start)

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        n = min(n, self.size - self.pos)
        self.fh.seek(n, 1)
        self.pos += n
        return n

    def at_end(self) -> bool:
        return self.pos >= self.size


class _InflateSource:
    """A raw deflate stream (PS3.5 A.5), inflated in bounded chunks. Only the bytes before the
    pixel data are kept (``header``, for the header read); the rest is counted and dropped."""

    CHUNK = 1 << 20

    def __init__(self, fh: BinaryIO, start: int, limit: int) -> None:
        self.fh = fh
        fh.seek(start)
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buffer = b""
        self.offset = 0  # consumed part of buffer
        self.pos = 0
        self.limit = limit
        self.produced = 0
        self.finished = False
        self.header = bytearray()
        self.recording = True

    def _inflate(self) -> bytes:
        """The next chunk of inflated bytes (b"" once the stream is done)."""
        while not self.finished:
            if self.inflater.unconsumed_tail:
                data = self.inflater.decompress(self.inflater.unconsumed_tail, self.CHUNK)
            else:
                compressed = self.fh.read(self.CHUNK)
                if not compressed:
                    data = self.inflater.flush()
                    self.finished = True
                else:
                    try:
                        data = self.inflater.decompress(compressed, self.CHUNK)
                    except zlib.error as exc:
                        raise StructureProblem(f"deflated data set is corrupt: {exc}")
            if self.inflater.eof:
                self.finished = True
            self.produced += len(data)
            if self.produced > self.limit:
                raise StructureProblem(
                    f"deflated data set inflates beyond {self.limit // (1 << 20)} MiB (dicom.max_inflated_mb)",
                    too_large=True,
                )
            if data:
                return data
        return b""

    def _consume(self, data: bytes) -> None:
        self.pos += len(data)
        if self.recording:
            self.header += data

    def read(self, n: int) -> bytes:
        while len(self.buffer) - self.offset < n:
            data = self._inflate()
            if not data:
                break
            self.buffer = self.buffer[self.offset:] + data
            self.offset = 0
        data = self.buffer[self.offset:self.offset + n]
        self.offset += len(data)
        self._consume(data)
        return data

    def skip(self, n: int) -> int:
        done = min(n, len(self.buffer) - self.offset)
        self._consume(self.buffer[self.offset:self.offset + done])
        self.offset += done
        while done < n:
            data = self._inflate()
            if not data:
                break
            need = n - done
            if len(data) > need:
                self.buffer, self.offset = data, need
                data = data[:need]
            self._consume(data)
            done += len(data)
        return done

    def stop_recording(self) -> None:
        self.recording = False

    def at_end(self) -> bool:
        if len(self.buffer) - self.offset > 0:
            return False
        data = self._inflate()
        if data:
            self.buffer, self.offset = data, 0
            return False
        return True


class _Walker:
    def __init__(self, source: _FileSource | _InflateSource, implicit: bool, layout: Layout) -> None:
        self.src = source
        self.implicit = implicit
        self.layout = layout

    # -- primitives ----------------------------------------------------------------------------

    def src_header(self, read: int) -> bytes | None:
        """The data set bytes before the element just started (deflated data sets only)."""
        if isinstance(self.src, _InflateSource):
            self.src.stop_recording()
            return bytes(self.src.header[:-read])
        return None

    def read_exact(self, n: int, limit: int | None, what: str) -> bytes:
        if limit is not None and self.src.pos + n > limit:
            raise StructureProblem(f"{what} runs past the end of the sequence, item or data set holding it")
        data = self.src.read(n)
        if len(data) < n:
            raise StructureProblem(f"data set ends inside {what} ({len(data)} of {n} bytes)")
        return data

    def skip_exact(self, n: int, limit: int | None, what: str) -> None:
        if limit is not None and self.src.pos + n > limit:
            raise StructureProblem(f"{what} declares {n} bytes, more than its container holds")
        got = self.src.skip(n)
        if got < n:
            raise StructureProblem(f"{what} declares {n} bytes but only {got} were received")

    # -- structure -----------------------------------------------------------------------------

    def dataset(self, limit: int | None, implicit: bool, depth: int, until_item_delimiter: bool) -> None:
        """Elements up to ``limit`` (defined-length item or file end) or an item delimiter."""
        last_tag = -1
        while True:
            if limit is not None and self.src.pos == limit and not until_item_delimiter:
                return
            if limit is None and not until_item_delimiter and self.src.at_end():
                return
            header = self.read_exact(8, limit, "an element header")
            group, elem = struct.unpack("<HH", header[:4])
            tag = group << 16 | elem
            if tag == _ITEM_DELIMITER:
                if not until_item_delimiter:
                    raise StructureProblem("item delimiter outside an undefined-length item")
                return
            if group == 0xFFFE:
                raise StructureProblem(f"item tag {_tag_text(tag)} where a data element was expected")
            if tag <= last_tag:
                raise StructureProblem(f"element {_tag_text(tag)} out of order after {_tag_text(last_tag)}")
            if depth == 0 and group == 0x0002:
                raise StructureProblem("file meta elements (group 0002) inside the data set")
            if group == 0x0000:
                raise StructureProblem("command elements (group 0000) inside the data set")
            last_tag = tag
            if depth == 0 and tag == _PIXEL_DATA:
                self.layout.header = self.src_header(len(header))
            self.layout.elements += 1
            if self.layout.elements > MAX_ELEMENTS:
                raise StructureProblem(f"more than {MAX_ELEMENTS} elements")
            if implicit:
                vr = None
                (length,) = struct.unpack("<I", header[4:])
            else:
                vr = header[4:6]
                if vr not in _VRS:
                    raise StructureProblem(f"element {_tag_text(tag)} has no valid VR (bytes {vr!r})")
                if vr in _LONG_VRS:
                    (length,) = struct.unpack("<I", self.read_exact(4, limit, "an element header"))
                else:
                    (length,) = struct.unpack("<H", header[6:])
            self.value(tag, vr, length, limit, implicit, depth)

    def value(self, tag: int, vr: bytes | None, length: int, limit: int | None, implicit: bool, depth: int) -> None:
        what = f"element {_tag_text(tag)}"
        if vr is None:
            try:
                is_sequence = dictionary_VR(tag) == "SQ"
            except KeyError:
                is_sequence = False
        else:
            is_sequence = vr == b"SQ"
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA and vr in (b"OB", b"OW", None) and depth == 0:
                if implicit:
                    raise StructureProblem("encapsulated pixel data in an implicit VR data set")
                self.fragments(limit)
                return
            if is_sequence or vr == b"UN" or vr is None:
                # An undefined-length UN (or implicit VR) value is a sequence in implicit VR.
                self.items(None, limit, implicit or vr == b"UN", depth + 1, what)
                return
            raise StructureProblem(f"{what} has an undefined length but is not a sequence")
        if limit is not None and self.src.pos + length > limit:
            raise StructureProblem(f"{what} declares {length} bytes, more than its container holds")
        if is_sequence:
            self.items(self.src.pos + length, limit, implicit, depth + 1, what)
            return
        if tag == _PIXEL_DATA and depth == 0:
            self.layout.pixel_length = length
        self.skip_exact(length, limit, what)

    def items(self, end: int | None, limit: int | None, implicit: bool, depth: int, what: str) -> None:
        """Items of a sequence ending at ``end`` (defined length) or at a sequence delimiter."""
        if depth > MAX_DEPTH:
            raise StructureProblem(f"sequences nested deeper than {MAX_DEPTH}")
        bound = end if end is not None else limit
        while True:
            if end is not None and self.src.pos == end:
                return
            header = self.read_exact(8, bound, f"an item of {what}")
            tag = struct.unpack("<HH", header[:4])
            tag_value = tag[0] << 16 | tag[1]
            (length,) = struct.unpack("<I", header[4:])
            if tag_value == _SEQUENCE_DELIMITER:
                if end is not None:
                    raise StructureProblem(f"sequence delimiter inside the defined-length {what}")
                return
            if tag_value != _ITEM:
                raise StructureProblem(f"{what} holds {_tag_text(tag_value)} where an item was expected")
            if length == _UNDEFINED:
                self.dataset(bound, implicit, depth, until_item_delimiter=True)
            else:
                if bound is not None and self.src.pos + length > bound:
                    raise StructureProblem(f"an item of {what} declares {length} bytes, more than the sequence holds")
                self.dataset(self.src.pos + length, implicit, depth, until_item_delimiter=False)

    def fragments(self, limit: int | None) -> None:
        layout = self.layout
        layout.encapsulated = True
        index = 0
        while True:
            header = self.read_exact(8, limit, "the pixel data fragments")
            group, elem = struct.unpack("<HH", header[:4])
            (length,) = struct.unpack("<I", header[4:])
            tag = group << 16 | elem
            if tag == _SEQUENCE_DELIMITER:
                if index == 0:
                    raise StructureProblem("encapsulated pixel data lacks its offset table item")
                return
            if tag != _ITEM:
                raise StructureProblem(f"encapsulated pixel data holds {_tag_text(tag)} where an item was expected")
            if length == _UNDEFINED:
                raise StructureProblem("a pixel data fragment has an undefined length")
            if index == 1:
                layout.first_fragment_length = length
                head = min(length, HEAD_BYTES)
                layout.first_fragment_head = self.read_exact(head, limit, "the first pixel data fragment")
                length -= head
            if index >= 1:
                layout.fragments += 1
                if length > 4:
                    self.skip_exact(length - 4, limit, "a pixel data fragment")
                    length = 4
                tail = self.read_exact(length, limit, "a pixel data fragment") if length else b""
                layout.last_fragment_tail = (layout.first_fragment_head + tail)[-4:] if index == 1 else tail
            else:
                self.skip_exact(length, limit, "the basic offset table")
            index += 1


def _file_meta_end(fh: BinaryIO, size: int) -> int:
    """Offset of the data set in a Part 10 file: after the preamble, DICM and the group 0002
    elements (explicit VR LE) that (0002,0000) File Meta Information Group Length counts; the
    receiver writes that element, so group 0002 bytes a sender put in its data set stay in it."""
    head = fh.read(144)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise StructureProblem("no Part 10 header")
    if len(head) == 144 and head[132:138] == b"\x02\x00\x00\x00UL" and head[138:140] == b"\x04\x00":
        return min(144 + struct.unpack("<I", head[140:144])[0], size)
    pos = 132
    while pos + 8 <= size:
        fh.seek(pos)
        header = fh.read(12)
        if len(header) < 8:
            break
        group = struct.unpack("<H", header[:2])[0]
        if group != 0x0002:
            break
        vr = header[4:6]
        if vr in _LONG_VRS:
            if len(header) < 12:
                break
            pos += 12 + struct.unpack("<I", header[8:12])[0]
        else:
            pos += 8 + struct.unpack("<H", header[6:8])[0]
    return min(pos, size)


def walk_file(path: Path, implicit: bool, deflated: bool, max_inflated: int) -> Layout:
    """Walk the data set of the Part 10 file at ``path`` (file meta written by the receiver)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        start = _file_meta_end(fh, size)
        layout = Layout(body_offset=start)
        if start >= size:
            layout.body_bytes = 0
            return layout
        source: _FileSource | _InflateSource
        source = _InflateSource(fh, start, max_inflated) if deflated else _FileSource(fh, start, size)
        walker = _Walker(source, implicit, layout)
        walker.dataset(None if deflated else size, implicit, 0, until_item_delimiter=False)
        if deflated:
            if not source.at_end():
                raise StructureProblem("bytes follow the last element of the data set")
            layout.body_bytes = source.pos
        else:
            layout.body_bytes = size - start
    return layout


def check_structure(path: Path, transfer_syntax_implicit: bool, deflated: bool, max_inflated: int) -> Layout:
    """:func:`walk_file` with the negotiated encoding; when that fails and the other VR encoding
    walks cleanly, say so (the sender labelled the bytes with the wrong transfer syntax)."""
    try:
        return walk_file(path, transfer_syntax_implicit, deflated, max_inflated)
    except StructureProblem as problem:
        if problem.too_large or deflated:
            raise
        try:
            walk_file(path, not transfer_syntax_implicit, deflated, max_inflated)
        except StructureProblem:
            raise problem
        actual, declared = ("Implicit", "Explicit") if not transfer_syntax_implicit else ("Explicit", "Implicit")
        raise StructureProblem(f"data set is encoded in {actual} VR but the transfer syntax is {declared} VR")
