"""Check a received instance without decoding its pixels.

The receive path must answer quickly and never hold a whole image in memory, yet a
corrupt or mislabelled instance has to be refused *before* it is acknowledged, because a
sender that got "success" will not send it again. So we read the header with pixel data
deferred (a RawDataElement with its length and file offset, about 0.2 ms for a 17 MB
mammogram) and check structure only: identifiers, SOP class, and whether the pixel data can
hold Rows x Columns x frames at BitsAllocated (native) or is a proper fragment sequence
(encapsulated).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) little endian
# Attributes every image has at least one of; a "dataset" with none of them is noise.
_LANDMARKS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows")


class InstanceProblem(Exception):
    """The instance is not acceptable. ``status`` is the C-STORE status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# C-STORE failure statuses (PS3.4 B.2.3).
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900  # Data Set does not match SOP Class
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class InspectedInstance:
    """The header of an acceptable instance (pixel data not loaded)."""

    dataset: Dataset
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str


def _require_uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        raise InstanceProblem(STATUS_DATASET_MISMATCH, f"missing {keyword}")
    uid = UID(str(value).strip())
    if not uid.is_valid:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, f"{keyword} is not a valid UID")
    return str(uid)


def _check_native_pixels(ds: Dataset, length: int) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits_allocated = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "Rows, Columns or BitsAllocated missing or invalid")
    if rows <= 0 or cols <= 0 or frames <= 0 or bits_allocated not in (1, 8, 16, 32):
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "Rows, Columns, frames or BitsAllocated out of range")
    needed = (rows * cols * samples * frames * bits_allocated + 7) // 8
    expected = needed + needed % 2  # values are padded to even length
    if length not in (needed, expected):
        raise InstanceProblem(
            STATUS_DATASET_MISMATCH,
            f"pixel data holds {length} bytes but Rows x Columns x frames x BitsAllocated needs {expected}",
        )


def _check_encapsulated_pixels(path: Path, offset: int) -> None:
    """The first item (basic offset table) and at least one fragment must be present."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        header = fh.read(8)
        if len(header) < 8 or header[:4] != _ITEM_TAG:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, "encapsulated pixel data lacks its offset table item")
        (bot_length,) = struct.unpack("<I", header[4:])
        fh.seek(bot_length, 1)
        fragment = fh.read(8)
        if len(fragment) < 8 or fragment[:4] != _ITEM_TAG:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, "encapsulated pixel data has no fragment")
        (fragment_length,) = struct.unpack("<I", fragment[4:])
        if fragment_length == 0:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, "encapsulated pixel data has an empty fragment")


def _check_pixels(ds: Dataset, path: Path, transfer_syntax: UID) -> None:
    try:
        element = ds.get_item(0x7FE00010, keep_deferred=True)
    except Exception as exc:  # a truncated file surfaces here
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"pixel data unreadable: {exc}")
    if element is None:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "no pixel data")
    length = getattr(element, "length", None)
    if length is None:  # already loaded (small value or deflated dataset)
        value = element.value if hasattr(element, "value") else None
        length = 0xFFFFFFFF if isinstance(value, (list, tuple)) else len(value or b"")
    if transfer_syntax.is_encapsulated:
        if length != 0xFFFFFFFF:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, "compressed transfer syntax but pixel data is not encapsulated")
        offset = getattr(element, "value_tell", None)
        if offset is not None and not transfer_syntax.is_deflated:
            _check_encapsulated_pixels(path, offset)
        return
    if length == 0xFFFFFFFF:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "native transfer syntax but pixel data is encapsulated")
    _check_native_pixels(ds, length)


def inspect_instance(path: Path, expected_sop_class: str, expected_sop_instance: str) -> InspectedInstance:
    """Read and check the header of the Part 10 file at ``path``.

    ``expected_*`` come from the C-STORE request's command set; the dataset must agree.
    Raises :class:`InstanceProblem` with the status to answer and a reason for quarantine.
    """
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
        # Convert every top-level value but the pixels, so a garbled header fails here, not later.
        for tag in list(ds.keys()):
            if tag != 0x7FE00010:
                ds[tag]
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}: {exc}")
    except Exception as exc:  # pydicom raises many kinds on garbage; none may stop the listener
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}: {exc}")
    if len(ds) == 0:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, "empty dataset")
    if not any(keyword in ds for keyword in _LANDMARKS):
        # pydicom reads almost any bytes as *some* elements; none of these means it was not DICOM.
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, "cannot parse dataset: no recognisable DICOM attributes")

    sop_class = _require_uid(ds, "SOPClassUID")
    sop_instance = _require_uid(ds, "SOPInstanceUID")
    study = _require_uid(ds, "StudyInstanceUID")
    series = _require_uid(ds, "SeriesInstanceUID")
    if sop_class != expected_sop_class:
        raise InstanceProblem(
            STATUS_DATASET_MISMATCH,
            f"dataset SOP Class UID {sop_class} differs from the negotiated/requested {expected_sop_class}",
        )
    if sop_instance != expected_sop_instance:
        raise InstanceProblem(
            STATUS_DATASET_MISMATCH, "dataset SOP Instance UID differs from the C-STORE request's"
        )
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    _check_pixels(ds, path, transfer_syntax)
    return InspectedInstance(
        dataset=ds,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_uid=study,
        series_uid=series,
        transfer_syntax=str(transfer_syntax),
    )
