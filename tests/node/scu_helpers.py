"""pynetdicom requestor helpers for tests, including sending deliberately broken datasets."""
from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, dsutils
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import build_context

MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def associate(port: int, contexts: list[tuple[str, str]] | None = None, aet: str = "TESTSCU",
              tls_args=None):
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for sop, ts in contexts or [(MG_PRESENTATION, ExplicitVRLittleEndian)]:
        ae.add_requested_context(sop, ts)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title="MAMMO_NODE", tls_args=tls_args)


def encode(ds: Dataset) -> bytes:
    """Explicit VR little endian encoding of a dataset body (no file meta)."""
    return dsutils.encode(ds, is_implicit_vr=False, is_little_endian=True)


def load(path: Path) -> Dataset:
    """A phantom file as a plain dataset (no file meta), to modify and send."""
    ds = dcmread(path)
    plain = Dataset()
    plain.update(ds)
    plain.file_meta = FileMetaDataset()
    plain.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return plain


def send_raw(assoc, sop_class: str, sop_instance: str, payload: bytes, message_id: int = 1) -> int:
    """C-STORE ``payload`` bytes as the dataset, exactly as given; returns the response status."""
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)
    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    request.DataSet = BytesIO(payload)
    # Pause the association's reactor, as pynetdicom's own send_c_*() do, so it cannot take
    # the response off the queue before we read it.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    assert response is not None, "no C-STORE response within the DIMSE timeout"
    return int(response.Status)


def store_dataset(port: int, ds: Dataset) -> Dataset:
    """C-STORE one dataset in explicit VR little endian over a fresh association; returns the status dataset."""
    assoc = associate(port, [(str(ds.SOPClassUID), ExplicitVRLittleEndian)])
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def build_context_list(pairs: list[tuple[str, str]]):
    return [build_context(sop, [ts]) for sop, ts in pairs]
