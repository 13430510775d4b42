"""Hostile and broken input over a real association (issue 17).

Every malformed C-STORE is sent by pynetdicom to a real node on loopback, byte for byte as
built here, and each case asserts the DIMSE status, the quarantine entry with its reason (journal
and sidecar), that nothing was stored, and that the same association (or a new one) still gets a
good image through. One node serves the whole module; cases look only at their own quarantine
rows. The decisions themselves are unit-tested without sockets at the end.
"""
from __future__ import annotations

import json
import os
import random
import socket
import struct
import time
import zlib
from io import BytesIO
from pathlib import Path
from typing import Iterator

import psutil
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    UID,
)
from pynetdicom import dsutils
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE

from node.app import NodeApp
from node.config import Settings
from node.dicom import checks, decode
from node.dicom.checks import command_problem, pixel_module_problem
from node.dicom.decode import first_frame_problem
from tests.node.conftest import free_port, node_settings, wait_for
from tests.node.scu_helpers import MG_PRESENTATION, associate, load
from phantoms.study import PhantomOptions, write_phantom_studies

CT = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
VERIFICATION = "1.2.840.10008.1.1"
PIXEL_TAG = b"\xe0\x7f\x10\x00"
DECODE_ALL = ["jpeg", "jpeg-ls", "jpeg2000", "rle"]


# ----- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile-phantom")
    write_phantom_studies(out, 1, seed=17, options=PhantomOptions(size="small"))
    return next(out.glob("*/R-MLO.dcm"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeApp]:
    """One node for the module; a deflated data set may inflate to 8 MiB, and the first frame of
    every compressed family is decoded before acknowledging (off by default: it is expensive).

    (One node: each listener points pynetdicom's module-wide temp-file factory at its own spool,
    so a second node started in this process would take the partial-transfer test's files.)"""
    data = tmp_path_factory.mktemp("hostile-node")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("MAMMO_NODE_"):
                mp.delenv(key)
        app = NodeApp(Settings(**node_settings(data / "var", free_port(),
                                               dicom={"max_inflated_mb": 8, "decode_first_frame": DECODE_ALL})))
        app.start()
        yield app
        app.stop()


# ----- building and sending ----------------------------------------------------------------------

def body(ds: Dataset, implicit: bool = False) -> bytes:
    return dsutils.encode(ds, is_implicit_vr=implicit, is_little_endian=True)


def split_at_pixels(payload: bytes) -> tuple[bytes, bytes]:
    """(everything before the Pixel Data element, the element's value) of an explicit VR body."""
    at = payload.rindex(PIXEL_TAG)
    (length,) = struct.unpack("<I", payload[at + 8:at + 12])
    return payload[:at + 12], payload[at + 12:at + 12 + length]


def send(port: int, sop_class: str, sop_instance: str, payload: bytes, *, context: str = MG_PRESENTATION,
         syntax: str = ExplicitVRLittleEndian) -> tuple[int | None, str, bool]:
    """C-STORE ``payload`` with exactly these command values (no validation on our side) over a
    new association; returns (status, error comment, whether the association was still up)."""
    assoc = associate(port, [(context, syntax)])
    assert assoc.is_established
    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == context)
    request = C_STORE()
    request.MessageID = 7
    request.Priority = 2
    request._affected_sop_class_uid = UID(sop_class)
    request._affected_sop_instance_uid = UID(sop_instance)
    request.DataSet = BytesIO(payload)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, cx.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    alive = assoc.is_established
    if alive:
        echo = assoc.send_c_echo()
        assert echo.Status == 0x0000, "the association no longer answers after the refusal"
        assoc.release()
    if response is None:
        return None, "", alive
    return int(response.Status), str(getattr(response, "ErrorComment", "") or ""), alive


def new_quarantine(app: NodeApp, before: int) -> list[dict]:
    return [q for q in app.journal.list_quarantine() if q["id"] > before]


def last_id(app: NodeApp) -> int:
    rows = app.journal.list_quarantine(limit=1)
    return rows[0]["id"] if rows else 0


def assert_refused(app: NodeApp, image: Path, before: int, result: tuple[int | None, str, bool], status: int,
                   reason: str, sop_instance: str | None = None) -> None:
    got, comment, alive = result
    assert got == status, f"status {got and hex(got)} ({comment!r}), expected {status:#06x}"
    assert alive, "the node aborted the association instead of answering"
    rows = new_quarantine(app, before)
    assert len(rows) == 1, rows
    assert reason in rows[0]["reason"] and rows[0]["status"] == status
    assert rows[0]["reason"][:64] == comment
    if rows[0]["path"]:
        stored = app.settings.data_dir / rows[0]["path"]
        assert stored.exists()
        assert reason in json.loads(stored.with_suffix(".json").read_text())["reason"]
    if sop_instance:
        assert app.journal.find_instances_by_sop(sop_instance) == []
    assert list(app.store.incoming.iterdir()) == []
    # A good image still goes through on a new association.
    good = load(image)
    good.SOPInstanceUID = f"2.25.{random.getrandbits(100)}"
    assoc = associate(app.listener.port)
    assert assoc.send_c_store(good).Status == 0x0000
    assoc.release()


def refuse(app: NodeApp, image: Path, payload: bytes, status: int, reason: str, *,
           sop_class: str = MG_PRESENTATION, sop_instance: str | None = None, **kwargs) -> None:
    """Send ``payload`` (the image's SOP Instance UID in the command) and assert the refusal."""
    sop_instance = sop_instance or str(load(image).SOPInstanceUID)
    before = last_id(app)
    result = send(app.listener.port, sop_class, sop_instance, payload, **kwargs)
    assert_refused(app, image, before, result, status, reason, sop_instance)


# ----- 1. declared lengths against the bytes received -------------------------------------------

@pytest.mark.parametrize("keep", [0, 1, 3072, -1])
def test_truncated_pixel_data_is_refused(node: NodeApp, image: Path, keep: int) -> None:
    head, pixels = split_at_pixels(body(load(image)))
    cut = pixels[:keep] if keep >= 0 else pixels[:-1]
    refuse(node, image, head + cut, 0xC000, "declares")


def test_huge_declared_pixel_length_is_refused(node: NodeApp, image: Path) -> None:
    ds = load(image)
    ds.Rows, ds.Columns = 65535, 32767
    head, _ = split_at_pixels(body(ds))
    refuse(node, image, head[:-4] + struct.pack("<I", 0xFFFFFFFE) + bytes(16), 0xC000, "declares")


def test_bytes_after_the_pixel_data_are_refused(node: NodeApp, image: Path) -> None:
    rng = random.Random(17)
    refuse(node, image, body(load(image)) + bytes(rng.getrandbits(8) for _ in range(37)), 0xC000,
           "cannot parse dataset")


def test_item_longer_than_its_sequence_is_refused(node: NodeApp, image: Path) -> None:
    ds = load(image)
    low, high = Dataset(), Dataset()
    for element in ds:
        (low if element.tag < 0x00081110 else high).add(element)
    # (0008,1110) SQ of 24 bytes whose only item says it holds 5000.
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 5000) + body(_code_item("1.2.3"))[:16]
    sequence = struct.pack("<HH2sHI", 0x0008, 0x1110, b"SQ", 0, len(item)) + item
    assert len(item) == 24
    refuse(node, image, body(low) + sequence + body(high), 0xC000, "more than the sequence holds")


def _code_item(value: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = value
    item.ReferencedSOPInstanceUID = value
    return item


# ----- 5. VR encoding that does not match the transfer syntax ------------------------------------

def test_implicit_bytes_on_an_explicit_context_are_refused(node: NodeApp, image: Path) -> None:
    refuse(node, image, body(load(image), implicit=True), 0xC000, "encoded in Implicit VR")


def test_explicit_bytes_on_an_implicit_context_are_refused(node: NodeApp, image: Path) -> None:
    refuse(node, image, body(load(image)), 0xC000, "encoded in Explicit VR", syntax=ImplicitVRLittleEndian)


# ----- 2, 3, 8. the command's SOP class and UIDs -------------------------------------------------

@pytest.mark.parametrize("sop_class", [CT, BASIC_TEXT_SR])
def test_non_mammography_class_on_an_mg_context_is_refused(node: NodeApp, image: Path, sop_class: str) -> None:
    ds = load(image)
    ds.SOPClassUID = sop_class
    refuse(node, image, body(ds), 0x0122, "not a mammography storage class", sop_class=sop_class)


def test_verification_as_the_cstore_sop_class_is_refused(node: NodeApp, image: Path) -> None:
    ds = load(image)
    before = last_id(node)
    result = send(node.listener.port, VERIFICATION, str(ds.SOPInstanceUID), body(ds), context=VERIFICATION,
                  syntax=ImplicitVRLittleEndian)
    assert_refused(node, image, before, result, 0x0122, "not a mammography storage class", str(ds.SOPInstanceUID))


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "status", "reason"),
    [
        ("", None, 0x0122, "Affected SOP Class UID is empty"),
        (MG_PRESENTATION, "", 0x0117, "Affected SOP Instance UID is empty"),
        (MG_PRESENTATION, "1." + "2" * 70, 0x0117, "characters long"),
        ("1.2.840.10008.5.1.4.1.1.1.2." + "9" * 40, None, 0x0122, "characters long"),
        ("1.2.3.4", None, 0x0122, "not a mammography storage class"),
    ],
)
def test_bad_command_uids_get_a_status_not_an_abort(node: NodeApp, image: Path, sop_class: str,
                                                    sop_instance: str | None, status: int, reason: str) -> None:
    ds = load(image)
    before = last_id(node)
    instance = str(ds.SOPInstanceUID) if sop_instance is None else sop_instance
    result = send(node.listener.port, sop_class, instance, body(ds))
    assert_refused(node, image, before, result, status, reason)


# ----- 4. the MG pixel module --------------------------------------------------------------------

@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        ("NumberOfFrames", 0, "NumberOfFrames"),
        ("BitsAllocated", 1, "BitsAllocated"),
        ("BitsAllocated", 32, "BitsAllocated"),
        ("BitsStored", 0, "BitsStored"),
        ("BitsStored", 20, "BitsStored"),
        ("HighBit", 15, "HighBit"),
        ("PixelRepresentation", 2, "PixelRepresentation"),
        ("PhotometricInterpretation", "RGB", "PhotometricInterpretation"),
        ("PhotometricInterpretation", "PALETTE COLOR", "PhotometricInterpretation"),
        ("PhotometricInterpretation", "YBR_FULL", "PhotometricInterpretation"),
        ("PhotometricInterpretation", "MONOCHROME3", "PhotometricInterpretation"),
        ("PhotometricInterpretation", None, "PhotometricInterpretation missing"),
        ("SamplesPerPixel", 3, "SamplesPerPixel"),
        ("SamplesPerPixel", None, "SamplesPerPixel missing"),
    ],
)
def test_pixel_module_nonsense_is_refused(node: NodeApp, image: Path, attribute: str, value, reason: str) -> None:
    ds = load(image)
    if value is None:
        delattr(ds, attribute)
    else:
        setattr(ds, attribute, value)
    refuse(node, image, body(ds), 0xA900, reason)


def test_random_bytes_in_jpeg_ls_fragments_are_refused(node: NodeApp, image: Path) -> None:
    ds = load(image)
    del ds.PixelData
    rng = random.Random(4)
    fragment = bytes(rng.getrandbits(8) for _ in range(2000))
    pixels = (struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
              + struct.pack("<HHI", 0xFFFE, 0xE000, 0)
              + struct.pack("<HHI", 0xFFFE, 0xE000, len(fragment)) + fragment
              + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    refuse(node, image, body(ds) + pixels, 0xA900, "compressed pixel data", syntax=JPEGLSLossless)


# ----- 4. the first frame decoded before acknowledging (dicom.decode_first_frame) -----------------

@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small phantom view in each compressed transfer syntax the generator writes."""
    out = tmp_path_factory.mktemp("hostile-compressed")
    images = {}
    for syntax in ("jpeg-ls", "jpeg2000", "rle"):
        write_phantom_studies(out / syntax, 1, seed=17, options=PhantomOptions(size="small", transfer_syntax=syntax))
        images[syntax] = next((out / syntax).glob("*/R-MLO.dcm"))
    return images


def _as_sent(path: Path, frame: bytes | None = None) -> tuple[Dataset, bytes]:
    """(the data set, its explicit VR body) of a compressed phantom, with a new SOP Instance UID and,
    when given, ``frame`` as its only fragment."""
    ds = load(path)
    ds.SOPInstanceUID = f"2.25.{random.getrandbits(100)}"
    if frame is not None:
        ds.PixelData = encapsulate([frame])
    assert ds["PixelData"].is_undefined_length
    return ds, body(ds)


def _damaged_jpeg_ls(path: Path) -> bytes:
    """The phantom's JPEG-LS frame with 64 random bytes in the middle of its scan: the header,
    the length and the end marker are intact, so only a decoder can tell."""
    frame = bytearray(next(generate_frames(load(path).PixelData, number_of_frames=1)))
    middle = len(frame) // 2
    frame[middle:middle + 64] = random.Random(17).randbytes(64)
    return bytes(frame)


def test_damaged_but_well_framed_jpeg_ls_passes_the_header_checks(compressed: dict[str, Path]) -> None:
    """Why the decode exists: the cheap codestream checks see nothing wrong with it."""
    ds = load(compressed["jpeg-ls"])
    frame = _damaged_jpeg_ls(compressed["jpeg-ls"])
    assert checks.codestream_problem(JPEGLSLossless, frame[:4096], frame[-4:], rows=int(ds.Rows),
                                     columns=int(ds.Columns), samples=1, bits_allocated=int(ds.BitsAllocated),
                                     bits_stored=int(ds.BitsStored)) is None


def test_damaged_jpeg_ls_stream_is_refused_when_decoding(node: NodeApp, image: Path,
                                                        compressed: dict[str, Path]) -> None:
    ds, payload = _as_sent(compressed["jpeg-ls"], _damaged_jpeg_ls(compressed["jpeg-ls"]))
    refuse(node, image, payload, 0xA900, "compressed pixel data: frame 1 does not decode",
           sop_instance=str(ds.SOPInstanceUID), syntax=JPEGLSLossless)


@pytest.mark.parametrize("syntax", ["jpeg-ls", "jpeg2000", "rle"])
def test_valid_compressed_images_are_accepted_when_decoding(node: NodeApp, compressed: dict[str, Path],
                                                            syntax: str) -> None:
    ds, payload = _as_sent(compressed[syntax])
    transfer_syntax = dcmread(compressed[syntax], stop_before_pixels=True).file_meta.TransferSyntaxUID
    before = last_id(node)
    status, comment, _ = send(node.listener.port, MG_PRESENTATION, str(ds.SOPInstanceUID), payload,
                              syntax=transfer_syntax)
    assert status == 0x0000, comment
    assert len(node.journal.find_instances_by_sop(str(ds.SOPInstanceUID))) == 1
    assert new_quarantine(node, before) == []


def test_first_frame_decisions(tmp_path: Path, compressed: dict[str, Path]) -> None:
    path = compressed["jpeg-ls"]
    ds = dcmread(path)
    rows, columns = int(ds.Rows), int(ds.Columns)
    assert first_frame_problem(path, JPEGLSLossless, ["jpeg-ls"], rows, columns) is None
    ds.PixelData = encapsulate([_damaged_jpeg_ls(path)])
    damaged = tmp_path / "damaged.dcm"
    ds.save_as(damaged, enforce_file_format=True)
    status, reason = first_frame_problem(damaged, JPEGLSLossless, ["jpeg-ls"], rows, columns)
    assert status == 0xA900 and reason.startswith("compressed pixel data: frame 1 does not decode (")
    # Only the families named are decoded; native syntaxes never are.
    assert first_frame_problem(damaged, JPEGLSLossless, ["jpeg2000", "rle"], rows, columns) is None
    assert first_frame_problem(damaged, ExplicitVRLittleEndian, DECODE_ALL, rows, columns) is None
    assert first_frame_problem(path, JPEGLSLossless, ["jpeg-ls"], rows + 1, columns)[0] == 0xA900
    assert decode.family(JPEGLSLossless) == "jpeg-ls" and decode.family(ExplicitVRLittleEndian) is None
    # CharLS, the decoder preprocessing prefers, is used alone: libjpeg decodes damaged JPEG-LS.
    assert decode.decoding_plugin(JPEGLSLossless) == "pyjpegls"


# ----- 7. deflate bomb -------------------------------------------------------------------------

def test_deflate_bomb_is_refused_without_inflating_it(node: NodeApp, image: Path) -> None:
    ds = load(image)
    block = ds.private_block(0x0009, "MAMMO HOSTILE", create=True)
    block.add_new(0x01, "OB", bytes(64 << 20))  # 64 MiB of zeros: deflates to about 64 KiB
    raw = body(ds)
    del ds  # the test's own copy must not count
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = packer.compress(raw) + packer.flush()
    del raw
    assert len(payload) < 1_000_000  # the image itself, plus about 64 KiB for the bomb
    rss = psutil.Process().memory_info().rss
    refuse(node, image, payload, 0xC000, "inflates beyond 8 MiB", syntax=DeflatedExplicitVRLittleEndian)
    assert psutil.Process().memory_info().rss - rss < 32 << 20


def test_a_proper_deflated_image_is_still_accepted(node: NodeApp, image: Path) -> None:
    ds = load(image)
    ds.SOPInstanceUID = f"2.25.{random.getrandbits(100)}"
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    payload = packer.compress(body(ds)) + packer.flush()
    status, comment, _ = send(node.listener.port, MG_PRESENTATION, str(ds.SOPInstanceUID), payload,
                              syntax=DeflatedExplicitVRLittleEndian)
    assert status == 0x0000, comment
    assert len(node.journal.find_instances_by_sop(str(ds.SOPInstanceUID))) == 1


# ----- 10. wrong VR for a sequence, and honest reasons -------------------------------------------

def test_view_code_sequence_encoded_as_lo_is_a_data_error(node: NodeApp, image: Path) -> None:
    ds = load(image)
    del ds.ViewCodeSequence
    low, high = Dataset(), Dataset()
    for element in ds:
        (low if element.tag < 0x00540220 else high).add(element)
    text = b"399368009 "
    element = struct.pack("<HH2sH", 0x0054, 0x0220, b"LO", len(text)) + text
    refuse(node, image, body(low) + element + body(high), 0xA900, "ViewCodeSequence")


def test_a_non_empty_refused_data_set_is_not_called_empty(node: NodeApp, image: Path) -> None:
    # File meta elements sent as the data set: pydicom reads no data set element from them.
    junk = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", 20) + b"1.2.840.10008.1.2.1\x00"
    refuse(node, image, junk, 0xC000, "file meta elements")
    assert "empty" not in node.journal.list_quarantine(limit=1)[0]["reason"]


# ----- 9. partial transfers of an aborted association --------------------------------------------

def test_partial_transfer_is_removed_when_the_association_aborts(node: NodeApp, image: Path) -> None:
    ds = load(image)
    ds.SOPInstanceUID = f"2.25.{random.getrandbits(100)}"
    assoc = associate(node.listener.port)
    cx = assoc.accepted_contexts[0]
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = MG_PRESENTATION, ds.SOPInstanceUID
    request.DataSet = BytesIO(body(ds))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(cx.context_id, 16384))
    assert len(fragments) > 4
    for primitive in fragments[:4]:  # the command and part of the data set, then the sender dies
        assoc.dul.send_pdu(primitive)
    wait_for(lambda: list(node.store.incoming.iterdir()), timeout=5)
    assoc.abort()
    wait_for(lambda: not list(node.store.incoming.iterdir()), timeout=5)
    assert node.journal.find_instances_by_sop(str(ds.SOPInstanceUID)) == []
    echo = associate(node.listener.port)
    assert echo.send_c_echo().Status == 0
    echo.release()


# ----- 6. stalled peers --------------------------------------------------------------------------

def test_stalled_peers_do_not_hold_association_slots(start_node) -> None:
    app = start_node(dicom={"max_associations": 2, "acse_timeout": 1.0, "network_timeout": 1.0}).app
    port = app.listener.port
    stalled = []
    for _ in range(2):  # each sends the start of an A-ASSOCIATE-RQ and goes silent
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(struct.pack(">BBL", 0x01, 0, 200) + bytes(10))
        stalled.append(sock)
    time.sleep(0.2)
    try:
        def echo_ok() -> bool:
            assoc = associate(port)
            if not assoc.is_established:
                return False
            ok = assoc.send_c_echo().Status == 0
            assoc.release()
            return ok

        assert wait_for(echo_ok, timeout=8, interval=0.3)
    finally:
        for sock in stalled:
            sock.close()


# ----- the decisions without sockets --------------------------------------------------------------

def _module(**overrides):
    values = dict(photometric="MONOCHROME2", samples=1, bits_allocated=16, bits_stored=12, high_bit=11,
                  pixel_representation=0, frames=None, rows=10, columns=10)
    values.update(overrides)
    return pixel_module_problem(**values)


def test_pixel_module_decisions() -> None:
    assert _module() is None
    assert _module(photometric="MONOCHROME1", bits_allocated=8, bits_stored=8, high_bit=7, frames=1) is None
    for bad in ({"frames": 0}, {"frames": "x"}, {"bits_allocated": 12}, {"bits_stored": 17},
                {"high_bit": 12}, {"pixel_representation": None}, {"photometric": "RGB"}, {"samples": None},
                {"rows": 0}):
        problem = _module(**bad)
        assert problem is not None and problem[0] == checks.STATUS_DATASET_MISMATCH, bad


def test_command_decisions() -> None:
    uid = "1.2.3.4.5"
    assert command_problem(MG_PRESENTATION, MG_PRESENTATION, uid) is None
    assert command_problem(MG_PRESENTATION, MG_PRESENTATION + "\x00", uid) is None
    assert command_problem(MG_PRESENTATION, CT, uid)[0] == 0x0122
    assert command_problem(VERIFICATION, VERIFICATION, uid)[0] == 0x0122
    assert command_problem(MG_PRESENTATION, "1.2.840.10008.5.1.4.1.1.1.2.1", uid)[0] == 0x0122  # other context
    assert command_problem(MG_PRESENTATION, MG_PRESENTATION, "")[0] == 0x0117
    assert command_problem(MG_PRESENTATION, MG_PRESENTATION, "1.2.x")[0] == 0x0117


def test_codestream_decisions() -> None:
    jpeg_ls = (b"\xff\xd8" + b"\xff\xf7" + struct.pack(">HBHHB", 11, 12, 10, 20, 1) + b"\x01\x11\x00"
               + b"\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00")
    kwargs = dict(rows=10, columns=20, samples=1, bits_allocated=16, bits_stored=12)
    assert checks.codestream_problem(JPEGLSLossless, jpeg_ls, b"\x00\xff\xd9", **kwargs) is None
    assert checks.codestream_problem(JPEGLSLossless, jpeg_ls, b"\x00\x00\x00", **kwargs) is not None
    assert "x" in checks.codestream_problem(JPEGLSLossless, jpeg_ls, b"\xff\xd9", **(kwargs | {"rows": 11}))[1]
    assert checks.codestream_problem(JPEGLSLossless, b"\x00" * 64, b"\xff\xd9", **kwargs) is not None


def test_structure_walk_of_nested_sequences(tmp_path: Path) -> None:
    from pydicom import dcmwrite
    from pydicom.dataset import FileMetaDataset

    from node.dicom.structure import StructureProblem, walk_file

    ds = Dataset()
    ds.PatientID = "x"
    inner = Dataset()
    inner.CodeValue = "399368009"
    inner.ViewModifierCodeSequence = Sequence([_code_item("1.2")])
    ds.ViewCodeSequence = Sequence([inner])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MG_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    path = tmp_path / "x.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    layout = walk_file(path, implicit=False, deflated=False, max_inflated=1 << 20)
    assert layout.elements == 6
    path.write_bytes(path.read_bytes()[:-9])  # cut inside the nested item: the delimiters are gone
    with pytest.raises(StructureProblem):
        walk_file(path, implicit=False, deflated=False, max_inflated=1 << 20)


# ----- 11. laterality conflicts: flagged, or refused by policy ------------------------------------

def _conflicted(image: Path) -> Dataset:
    ds = load(image)  # R-MLO
    ds.SOPInstanceUID = f"2.25.{random.getrandbits(100)}"
    ds.ViewPosition = "LMLO"
    return ds


def test_conflicting_laterality_is_kept_as_an_extra_by_default(node: NodeApp, image: Path) -> None:
    ds = _conflicted(image)
    assoc = associate(node.listener.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    (row,) = node.journal.find_instances_by_sop(str(ds.SOPInstanceUID))
    assert row.position is None
    assert any("'LMLO' disagrees with ImageLaterality R" in c for c in row.view["conflicts"])


def test_conflicting_laterality_is_refused_under_the_refuse_policy(start_node, image: Path) -> None:
    app = start_node(assembly={"view_conflicts": "refuse"}).app
    ds = _conflicted(image)
    assoc = associate(app.listener.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xA900 and status.ErrorComment.startswith("conflicting view attributes")
    (row,) = app.journal.list_quarantine()
    assert row["status"] == 0xA900 and "'LMLO' disagrees with ImageLaterality R" in row["reason"]
    assert app.journal.find_instances_by_sop(str(ds.SOPInstanceUID)) == []


# ----- 13. library warnings do not copy data set values into the log ------------------------------

def test_library_warnings_do_not_copy_uids_into_the_log(node: NodeApp, image: Path, caplog, recwarn) -> None:
    ds = load(image)
    corrupted = "1.2.826.0.1.3680043.8.498.4711x"  # an invalid Study Instance UID
    ds.StudyInstanceUID = corrupted
    with caplog.at_level("DEBUG"):
        refuse(node, image, body(ds), 0xA900, "StudyInstanceUID is not a valid UID")
    library = [r for r in caplog.records if r.name.startswith(("pydicom", "py.warnings", "pynetdicom"))]
    assert library, "pydicom said nothing about the invalid UID: the test no longer exercises the filter"
    assert corrupted not in caplog.text
    assert "4711" not in caplog.text


# ----- 8. undecodable AE titles: A-ASSOCIATE-RJ, not an abort -------------------------------------

def _association_request() -> bytes:
    """The A-ASSOCIATE-RQ pynetdicom sends, captured by a listener that answers nothing."""
    captured: dict[str, bytes] = {}
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        import threading

        def grab() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(5)
                captured["rq"] = conn.recv(65536)

        thread = threading.Thread(target=grab)
        thread.start()
        assoc = associate(port)
        thread.join()
        assoc.abort()
    return captured["rq"]


@pytest.mark.parametrize("calling", [b" " * 16, b"AB\x00\x00" + b" " * 12, "MÖDALITY".encode("latin-1").ljust(16)])
def test_undecodable_calling_ae_titles_are_rejected(node: NodeApp, calling: bytes) -> None:
    request = bytearray(_association_request())
    request[26:42] = calling  # PS3.8 9.3.2: the Calling AE Title field
    with socket.create_connection(("127.0.0.1", node.listener.port), timeout=5) as sock:
        sock.sendall(request)
        answer = sock.recv(10)
    assert answer[0] == 0x03, f"PDU type {answer[0]:#04x}, expected A-ASSOCIATE-RJ"
    assert tuple(answer[7:10]) == (1, 1, 3)  # rejected-permanent, service user, calling AE not recognised
    assoc = associate(node.listener.port)
    assert assoc.send_c_echo().Status == 0
    assoc.release()
