"""The outbox queue and the DICOM sender: backoff, claims, crash recovery, re-queueing, purging, and
how C-STORE statuses of a real SCP (pynetdicom over loopback) decide retry or dead letter."""
from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, ComprehensiveSRStorage

from node.config import DicomDestination
from node.journal import Journal
from node.outbox import OutboxQueue, backoff_delay
from node.outputs.dicom_send import send_files
from node.outputs.sr_tid1500 import build_tid1500_sr
from node.study_result import StudyResult
from tests.node.conftest import free_port
from tests.node.outputs_helpers import phantom_case


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(0)
    for attempts, base in ((1, 5), (2, 10), (3, 20), (4, 40)):
        samples = [backoff_delay(attempts, 5, 3600, rng) for _ in range(200)]
        assert base * 0.75 <= min(samples) and max(samples) <= base * 1.25
        assert max(samples) - min(samples) > base * 0.2  # there is jitter
    assert backoff_delay(30, 5, 60, rng) <= 75  # capped


def _journal_with_study(tmp_path: Path, outputs: list[dict]) -> Journal:
    journal = Journal(tmp_path / "journal.sqlite3")
    now = time.time()
    with journal.transaction() as db:
        db.execute("INSERT INTO studies(study_uid, state, first_received_at, last_received_at, updated_at) "
                   "VALUES ('1.2.3', 'PROCESSING', ?, ?, ?)", (now, now, now))
    assert journal.finish_study("1.2.3", {"models": {}}, "done", outputs)
    return journal


def _rows(n: int, dest: str = "pacs") -> list[dict]:
    return [{"destination": dest, "kind": "tid1500", "identity": f"2.25.{i}", "payload": f"outbox/{i}.dcm"}
            for i in range(n)]


def test_outputs_are_queued_with_their_result_once(tmp_path: Path) -> None:
    journal = _journal_with_study(tmp_path, _rows(2) + _rows(1, "hl7"))
    queue = OutboxQueue(journal)
    assert queue.depth() == {"pacs": {"PENDING": 2}, "hl7": {"PENDING": 1}}
    # the same result processed again (a retry): identical identities are not queued twice
    journal.transition("1.2.3", "DONE", "PROCESSING", "retry")
    assert journal.finish_study("1.2.3", {"models": {}}, "done again", _rows(2))
    assert queue.depth()["pacs"] == {"PENDING": 2}


def test_claim_recover_requeue_and_purge(tmp_path: Path) -> None:
    journal = _journal_with_study(tmp_path, _rows(3))
    queue = OutboxQueue(journal)
    (tmp_path / "outbox").mkdir()
    for i in range(3):
        (tmp_path / "outbox" / f"{i}.dcm").write_bytes(b"x")
    due = queue.due("pacs", time.time())
    assert [r.identity for r in due] == ["2.25.0", "2.25.1", "2.25.2"]
    assert queue.claim(due[0]) and not queue.claim(due[0])  # taken once
    assert queue.claim(due[1]) and queue.claim(due[2])
    queue.finish(due[0].id, "DELIVERED")
    queue.finish(due[1].id, "DEAD", "refused: C-STORE status 0xC000")
    # a crash leaves row 3 SENDING: it goes back to PENDING at the next start
    assert queue.recover() == 1
    assert queue.get(due[2].id).state == "PENDING"
    assert queue.get(due[0].id).delivered_at is not None
    # dead letters are re-queued with a fresh attempt count, delivered rows are not touched
    assert queue.requeue() == 1
    again = queue.get(due[1].id)
    assert again.state == "PENDING" and again.attempts == 0
    assert queue.get(due[0].id).state == "DELIVERED"
    # purge removes old delivered rows and their payload, nothing else
    assert queue.purge(("DELIVERED",), time.time() + 1, tmp_path) == 1
    assert not (tmp_path / "outbox" / "0.dcm").exists() and (tmp_path / "outbox" / "1.dcm").exists()
    assert [r.identity for r in queue.list()] == ["2.25.1", "2.25.2"]


@pytest.fixture
def scripted_scp():
    """A real Storage SCP answering C-STORE with the statuses in ``statuses`` (then success)."""
    statuses: list[int] = []
    received: list[str] = []

    def on_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        return statuses.pop(0) if statuses else 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(ComprehensiveSRStorage)
    ae.add_supported_context(Comprehensive3DSRStorage)  # the TID 1500 SR (IHE AIR)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield port, statuses, received
    server.shutdown()


def test_store_statuses_decide_retry_or_dead_letter(scripted_scp, phantom_dir: Path, tmp_path: Path) -> None:
    port, statuses, received = scripted_scp
    study = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    source, result = phantom_case(study)
    path = tmp_path / "sr.dcm"
    build_tid1500_sr(source, StudyResult.from_json(result), created_at=1.0).save_as(path, enforce_file_format=True)
    dest = DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port, timeout=5)
    statuses.extend([0xA700, 0xC000])
    assert [d.outcome for d in send_files(dest, "MAMMO_NODE", [path])] == ["retry"]      # out of resources
    assert [d.outcome for d in send_files(dest, "MAMMO_NODE", [path])] == ["reject"]     # cannot understand
    assert [d.outcome for d in send_files(dest, "MAMMO_NODE", [path, path])] == ["delivered", "delivered"]
    assert len(received) == 4
    down = DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port(), timeout=2)
    assert [d.outcome for d in send_files(down, "MAMMO_NODE", [path])] == ["retry"]       # nobody listening


def test_a_peer_without_the_cad_sr_class_rejects_it(scripted_scp, tmp_path: Path) -> None:
    port, _, received = scripted_scp
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.50"
    ds.SOPInstanceUID = "2.25.1"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "cad.dcm", enforce_file_format=True)
    dest = DicomDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port, timeout=5)
    [delivery] = send_files(dest, "MAMMO_NODE", [tmp_path / "cad.dcm"])
    assert delivery.outcome == "reject" and "does not accept" in delivery.detail
    assert received == []
