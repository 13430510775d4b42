"""Check a received instance without decoding its pixels.

The receive path must answer quickly and never hold a whole image in memory, yet a
corrupt or mislabelled instance has to be refused *before* it is acknowledged, because a
sender that got "success" will not send it again. So we first walk the whole data set
structure as encoded (:mod:`node.dicom.structure`: every declared length against the bytes
received, sequences, items and fragments, the VR encoding, the inflated size of a deflated
data set), then read the header with pixel data deferred (a RawDataElement with its length and
file offset, about 0.2 ms for a 17 MB mammogram) and check the content: identifiers, SOP
class, the MG IOD's pixel module constraints, whether the pixel data can hold Rows x Columns x
frames at BitsAllocated (native) or starts with a codestream header that describes the same
image (encapsulated). The decisions themselves are in :mod:`node.dicom.checks`. Where the
configuration asks for it (``dicom.decode_first_frame``), the first frame of compressed pixel data
is then decoded (:mod:`node.dicom.decode`), which is the only check that reads every byte of it.
"""
from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence
from pydicom.uid import UID

from node.dicom.checks import (  # noqa: F401  (re-exported: the statuses are part of this module's API)
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_MISMATCH,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    Problem,
    codestream_problem,
    native_length_problem,
    pixel_module_problem,
)
from node.dicom.decode import first_frame_problem
from node.dicom.structure import Layout, StructureProblem, check_structure

# Attributes every image has at least one of; a "dataset" with none of them is noise.
_LANDMARKS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows")
DEFAULT_MAX_INFLATED = 256 << 20
# Sequences the node reads (node.views); encoded with another VR they are a data error.
_SEQUENCES_READ = ("ViewCodeSequence", "ViewModifierCodeSequence", "SharedFunctionalGroupsSequence",
                   "PerFrameFunctionalGroupsSequence")
# Values longer than this stay deferred (never read into memory); the structure walk has
# already checked their lengths.
_CONVERT_LIMIT = 1 << 16


class InstanceProblem(Exception):
    """The instance is not acceptable. ``status`` is the C-STORE status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _raise(problem: Problem | None) -> None:
    if problem is not None:
        raise InstanceProblem(*problem)


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


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _check_pixels(ds: Dataset, layout: Layout, transfer_syntax: UID) -> None:
    if layout.pixel_length is None and not layout.encapsulated:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "no pixel data")
    _raise(pixel_module_problem(
        photometric=ds.get("PhotometricInterpretation"),
        samples=ds.get("SamplesPerPixel"),
        bits_allocated=ds.get("BitsAllocated"),
        bits_stored=ds.get("BitsStored"),
        high_bit=ds.get("HighBit"),
        pixel_representation=ds.get("PixelRepresentation"),
        frames=ds.get("NumberOfFrames"),
        rows=ds.get("Rows"),
        columns=ds.get("Columns"),
    ))
    rows, columns = int(ds.Rows), int(ds.Columns)
    bits_allocated, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
    samples = int(ds.SamplesPerPixel)
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if transfer_syntax.is_encapsulated:
        if not layout.encapsulated:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, "compressed transfer syntax but pixel data is not encapsulated")
        if layout.fragments == 0:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, "encapsulated pixel data has no fragment")
        if layout.first_fragment_length == 0:
            raise InstanceProblem(STATUS_DATASET_MISMATCH, "encapsulated pixel data has an empty fragment")
        if layout.fragments < frames:
            raise InstanceProblem(STATUS_DATASET_MISMATCH,
                                  f"encapsulated pixel data has {layout.fragments} fragments for {frames} frames")
        _raise(codestream_problem(str(transfer_syntax), layout.first_fragment_head, layout.last_fragment_tail,
                                  rows=rows, columns=columns, samples=samples, bits_allocated=bits_allocated,
                                  bits_stored=bits_stored))
        return
    if layout.encapsulated:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "native transfer syntax but pixel data is encapsulated")
    if layout.pixel_length is None:
        raise InstanceProblem(STATUS_DATASET_MISMATCH, "no pixel data")
    _raise(native_length_problem(layout.pixel_length, rows, columns, samples, frames, bits_allocated))


def inspect_instance(path: Path, expected_sop_class: str, expected_sop_instance: str,
                     max_inflated: int = DEFAULT_MAX_INFLATED,
                     decode_families: Collection[str] = ()) -> InspectedInstance:
    """Read and check the header of the Part 10 file at ``path``.

    ``expected_*`` come from the C-STORE request's command set; the dataset must agree.
    ``decode_families`` names the compressed transfer syntax families ("jpeg", "jpeg-ls",
    "jpeg2000", "rle") whose first frame is decoded as the last check.
    Raises :class:`InstanceProblem` with the status to answer and a reason for quarantine.
    """
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        transfer_syntax = UID(str(meta.TransferSyntaxUID))
    except Exception as exc:  # the receiver writes the meta itself; this means the file is gone or garbled
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot read the file meta: {type(exc).__name__}")
    try:
        layout = check_structure(path, transfer_syntax.is_implicit_VR, transfer_syntax.is_deflated, max_inflated)
    except StructureProblem as problem:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {problem.reason}")
    except OSError as exc:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot read the data set: {exc}")
    if layout.body_bytes == 0:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, "empty dataset")
    try:
        if layout.header is not None:
            # Deflated: read the header from the bytes the walk inflated, not the whole data set again.
            ds = pydicom.filereader.read_dataset(BytesIO(layout.header), is_implicit_VR=False,
                                                 is_little_endian=True)
            ds.file_meta = meta
        else:
            ds = pydicom.dcmread(path, defer_size=1024)
        # Convert every top-level value but the pixels (and large deferred values), so a garbled
        # header fails here, not later.
        for tag in list(ds.keys()):
            if tag == 0x7FE00010:
                continue
            raw = ds.get_item(tag, keep_deferred=True)
            if getattr(raw, "value", b"") is None and (getattr(raw, "length", 0) or 0) > _CONVERT_LIMIT:
                continue
            ds[tag]
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}: {exc}")
    except Exception as exc:  # pydicom raises many kinds on garbage; none may stop the listener
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"cannot parse dataset: {type(exc).__name__}: {exc}")
    if len(ds) == 0:
        raise InstanceProblem(STATUS_CANNOT_UNDERSTAND, f"no element could be read from {layout.body_bytes} bytes")
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
    for keyword in _SEQUENCES_READ:
        element = ds.get(keyword)
        if element is not None and not isinstance(element, Sequence):
            vr = ds[keyword].VR
            raise InstanceProblem(STATUS_DATASET_MISMATCH, f"{keyword} is encoded as {vr}, not as a sequence")
    _check_pixels(ds, layout, transfer_syntax)
    if decode_families and transfer_syntax.is_encapsulated:
        _raise(first_frame_problem(path, str(transfer_syntax), decode_families, int(ds.Rows), int(ds.Columns)))
    return InspectedInstance(
        dataset=ds,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        study_uid=study,
        series_uid=series,
        transfer_syntax=str(transfer_syntax),
    )
