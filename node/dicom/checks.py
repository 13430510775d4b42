"""The receive decisions, on plain values: which C-STORE requests and images the node refuses.

Each function returns ``None`` when the input is acceptable, else ``(status, reason)``: the
C-STORE status to answer and the reason that goes, identically, into the Error Comment (first 64
characters), the quarantine record and the node log. They take no datasets, files or sockets, so
the tests can feed them every hostile value directly; :mod:`node.dicom.inspect` and
:mod:`node.dicom.scp` call them with what they read from the wire.
"""
from __future__ import annotations

import struct

from pydicom.uid import UID

# C-STORE statuses (PS3.4 B.2.3, PS3.7 C).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900  # Data Set does not match SOP Class
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_INVALID_SOP_INSTANCE = 0x0117

MAMMOGRAPHY_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "Breast Projection X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "Breast Projection X-Ray Image Storage - For Processing",
}

Problem = tuple[int, str]


def uid_problem(value: object) -> str | None:
    """Why ``value`` is not a usable UID (empty, too long, bad characters), or None."""
    text = "" if value is None else str(value).rstrip("\x00").strip()
    if not text:
        return "empty"
    if len(text) > 64:
        return f"{len(text)} characters long (at most 64)"
    if not UID(text).is_valid:
        return "not a valid UID"
    return None


def command_problem(context_sop_class: str, command_sop_class: object, command_sop_instance: object) -> Problem | None:
    """Check a C-STORE request's command set against the presentation context it came on.

    The SOP class must be one of the mammography storage classes and the context's abstract
    syntax (PS3.7 9.1.1: the Affected SOP Class UID is that of the context); the SOP Instance UID
    must be a UID.
    """
    why = uid_problem(command_sop_class)
    if why is not None:
        return STATUS_SOP_CLASS_NOT_SUPPORTED, f"Affected SOP Class UID is {why}"
    sop_class = str(command_sop_class).rstrip("\x00").strip()
    if sop_class not in MAMMOGRAPHY_STORAGE:
        return STATUS_SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} is not a mammography storage class"
    if sop_class != context_sop_class:
        return (STATUS_SOP_CLASS_NOT_SUPPORTED,
                f"SOP class {sop_class} differs from the presentation context's {context_sop_class}")
    why = uid_problem(command_sop_instance)
    if why is not None:
        return STATUS_INVALID_SOP_INSTANCE, f"Affected SOP Instance UID is {why}"
    return None


def pixel_module_problem(
    *,
    photometric: object,
    samples: object,
    bits_allocated: object,
    bits_stored: object,
    high_bit: object,
    pixel_representation: object,
    frames: object,
    rows: object,
    columns: object,
) -> Problem | None:
    """The MG IOD's constraints on the Image Pixel module (PS3.3 C.8.11.7, C.8.11.6).

    One sample, MONOCHROME1 or MONOCHROME2, 8 or 16 bits allocated, 1 to BitsAllocated bits stored,
    HighBit one less than BitsStored, unsigned or signed integers, at least one frame. ``None``
    stands for an absent attribute (only NumberOfFrames may be absent).
    """
    def integer(value: object) -> int | None:
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return None

    text = str(photometric or "").strip().upper()
    if text not in ("MONOCHROME1", "MONOCHROME2"):
        shown = text or "missing"
        return STATUS_DATASET_MISMATCH, f"PhotometricInterpretation {shown} (mammography needs MONOCHROME1/2)"
    if integer(samples) != 1:
        return STATUS_DATASET_MISMATCH, f"SamplesPerPixel {samples if samples is not None else 'missing'} (must be 1)"
    allocated = integer(bits_allocated)
    if allocated not in (8, 16):
        return STATUS_DATASET_MISMATCH, f"BitsAllocated {bits_allocated} (must be 8 or 16)"
    stored = integer(bits_stored)
    if stored is None or not 1 <= stored <= allocated:
        return STATUS_DATASET_MISMATCH, f"BitsStored {bits_stored} (must be 1 to BitsAllocated {allocated})"
    high = integer(high_bit)
    if high != stored - 1:
        return STATUS_DATASET_MISMATCH, f"HighBit {high_bit} (must be BitsStored - 1 = {stored - 1})"
    if integer(pixel_representation) not in (0, 1):
        return STATUS_DATASET_MISMATCH, f"PixelRepresentation {pixel_representation} (must be 0 or 1)"
    for name, value in (("Rows", rows), ("Columns", columns)):
        number = integer(value)
        if number is None or number <= 0:
            return STATUS_DATASET_MISMATCH, f"{name} {value} (must be positive)"
    if frames is not None:
        count = integer(frames)
        if count is None or count < 1:
            return STATUS_DATASET_MISMATCH, f"NumberOfFrames {frames} (must be at least 1)"
    return None


def native_length_problem(length: int, rows: int, columns: int, samples: int, frames: int,
                          bits_allocated: int) -> Problem | None:
    """Native pixel data must hold exactly Rows x Columns x samples x frames x BitsAllocated bits."""
    needed = (rows * columns * samples * frames * bits_allocated + 7) // 8
    expected = needed + needed % 2  # values are padded to even length
    if length not in (needed, expected):
        return (STATUS_DATASET_MISMATCH,
                f"pixel data holds {length} bytes but Rows x Columns x frames x BitsAllocated needs {expected}")
    return None


# Transfer syntaxes by codestream family.
_JPEG = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
_JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
_RLE = {"1.2.840.10008.1.2.5"}


def _jpeg_frame_header(head: bytes, sof_markers: set[int]) -> tuple[int, int, int, int] | str:
    """(precision, rows, columns, components) from a JPEG or JPEG-LS SOF segment, or why not."""
    if head[:2] != b"\xff\xd8":
        return "does not start with a JPEG SOI marker"
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return f"no JPEG marker at byte {pos}"
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        (segment,) = struct.unpack(">H", head[pos + 2:pos + 4])
        if marker in sof_markers:
            if pos + 10 > len(head):
                break
            precision = head[pos + 4]
            rows, columns = struct.unpack(">HH", head[pos + 5:pos + 9])
            return precision, rows, columns, head[pos + 9]
        if marker in (0xDA, 0xD9):
            return "no frame header before the scan"
        pos += 2 + segment
    return "no frame header in the first 4 KiB"


def codestream_problem(transfer_syntax: str, head: bytes, tail: bytes, *, rows: int, columns: int,
                       samples: int, bits_allocated: int, bits_stored: int) -> Problem | None:
    """Cheap check of the first fragment of compressed pixel data: the codestream's own header
    must be the right kind and describe the image the data set describes, and the last fragment
    must end with the end-of-image marker. No pixel is decoded."""
    def mismatch(what: str) -> Problem:
        return STATUS_DATASET_MISMATCH, f"compressed pixel data: {what}"

    if transfer_syntax in _JPEG or transfer_syntax in _JPEG_LS:
        sof = {0xF7} if transfer_syntax in _JPEG_LS else {0xC3, 0xC7, 0xCB, 0xCF}
        found = _jpeg_frame_header(head, sof)
        if isinstance(found, str):
            return mismatch(found)
        precision, height, width, components = found
        if (height, width) != (rows, columns):
            return mismatch(f"codestream is {width}x{height}, data set says {columns}x{rows}")
        if components != samples:
            return mismatch(f"codestream has {components} components, data set says {samples}")
        if not 2 <= precision <= bits_allocated:
            return mismatch(f"codestream precision {precision} bits, data set allocates {bits_allocated}")
        if b"\xff\xd9" not in tail:
            return mismatch("last fragment lacks the JPEG end-of-image marker")
        return None
    if transfer_syntax in _J2K:
        start = head.find(b"\xff\x4f\xff\x51")
        if start < 0 or (start > 0 and head[4:8] != b"jP  "):  # raw codestream, or a JP2 wrapper
            return mismatch("does not start with a JPEG 2000 SOC/SIZ header")
        siz = head[start + 4:start + 4 + 38]
        if len(siz) < 38:
            return mismatch("JPEG 2000 SIZ segment cut short")
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", siz[4:20])
        (components,) = struct.unpack(">H", siz[36:38])
        if (ysiz - yosiz, xsiz - xosiz) != (rows, columns):
            return mismatch(f"codestream is {xsiz - xosiz}x{ysiz - yosiz}, data set says {columns}x{rows}")
        if components != samples:
            return mismatch(f"codestream has {components} components, data set says {samples}")
        ssiz = head[start + 4 + 38:start + 4 + 39]
        if ssiz and (ssiz[0] & 0x7F) + 1 > bits_allocated:
            return mismatch(f"codestream precision {(ssiz[0] & 0x7F) + 1} bits, data set allocates {bits_allocated}")
        if b"\xff\xd9" not in tail:
            return mismatch("last fragment lacks the JPEG 2000 end-of-codestream marker")
        return None
    if transfer_syntax in _RLE:
        if len(head) < 64:
            return mismatch("RLE header cut short")
        offsets = struct.unpack("<16I", head[:64])
        segments = offsets[0]
        if segments != samples * (bits_allocated // 8):
            return mismatch(f"RLE frame has {segments} segments, data set needs {samples * (bits_allocated // 8)}")
        used = offsets[1:1 + segments]
        if not used or used[0] != 64 or list(used) != sorted(used):
            return mismatch("RLE segment offsets are invalid")
        return None
    return None
