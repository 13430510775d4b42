"""The TID 1500 SR in the SOP class each destination stores (``[[outputs.dicom]] tid1500_sop_class``,
issue 18): every class valid (dciodvfy) and read back by highdicom; a PACS that accepts only
Comprehensive SR gets it over a real association while a destination left at IHE AIR's
Comprehensive 3D SR is refused by the same peer; payloads rebuilt from the journal (a restart)
keep their identities; a re-processed study's SR names the predecessor that destination holds."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage

from node.config import Settings
from node.journal import Journal
from node.outbox import Outbox
from node.outputs.amend import delivered_identities, replaced_outputs
from node.outputs.common import TID1500_SOP_CLASSES
from node.outputs.prepare import OutputPreparer, journaled_result
from node.outputs.sr_tid1500 import build_tid1500_sr, read_tid1500_sr
from node.study_result import StudyResult
from tests.node.conftest import free_port, node_settings, wait_for
from tests.node.outputs_helpers import phantom_case, phantom_source
from tests.tools import require_tool

CREATED = 1_764_000_000.0
LEGACY, AIR = TID1500_SOP_CLASSES["comprehensive"], TID1500_SOP_CLASSES["comprehensive3d"]


def _dciodvfy(path: Path) -> str:
    proc = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def _dsrdump(path: Path) -> tuple[int, str]:
    """DCMTK's SR reader checks each IOD's relationship content constraints (PS3.3 A.35)."""
    proc = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stderr


def _study(phantom_dir: Path) -> Path:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]


@pytest.mark.parametrize("sop_class", ["comprehensive3d", "comprehensive", "enhanced"])
def test_each_sop_class_is_valid_and_reads_back(phantom_dir: Path, tmp_path: Path, sop_class: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    source, result = phantom_case(_study(phantom_dir))
    sr = build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED, sop_class=sop_class)
    assert sr.SOPClassUID == TID1500_SOP_CLASSES[sop_class]
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    report = _dciodvfy(path)
    assert "Error" not in report, report
    assert _dsrdump(path) == (0, "")
    with caplog.at_level(logging.WARNING):
        back = read_tid1500_sr(pydicom.dcmread(path))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    birads = {side: breast["birads"] for side, breast in result["breasts"].items()}
    assert {side: breast["birads"] for side, breast in back["breasts"].items()} == birads
    assert sum(len(b["findings"]) for b in back["breasts"].values()) == \
        sum(len(b["findings"]) for b in result["breasts"].values())
    # each class is a document of its own: never one SOP Instance UID under two classes
    other = build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED)
    assert (sop_class == "comprehensive3d") == (other.SOPInstanceUID == sr.SOPInstanceUID)


def test_dciodvfy_checks_the_value_types_each_class_allows(phantom_dir: Path, tmp_path: Path) -> None:
    """The validations above can fail: a 3D coordinate is valid only in Comprehensive 3D SR, and
    both dciodvfy and DCMTK's relationship constraint check say so for the Enhanced SR."""
    source, result = phantom_case(_study(phantom_dir))
    for sop_class, allowed in (("comprehensive3d", True), ("enhanced", False)):
        sr = build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED, sop_class=sop_class)
        item = sr.ContentSequence[-1].ContentSequence[-1]  # the disclaimer TEXT item
        del item.TextValue
        item.ValueType = "SCOORD3D"
        item.GraphicType = "POINT"
        item.GraphicData = [1.0, 2.0, 3.0]
        item.ReferencedFrameOfReferenceUID = "1.2.3"
        path = tmp_path / f"{sop_class}.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert ("SCOORD3D" not in _dciodvfy(path)) == allowed
        code, errors = _dsrdump(path)
        assert (code == 0) == allowed and ("SCOORD3D" not in errors) == allowed


class LegacyPacs:
    """A Storage SCP that accepts only Comprehensive SR (and keeps what it receives)."""

    def __init__(self) -> None:
        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title="LEGACY")
        ae.add_supported_context(ComprehensiveSRStorage)
        self.port = free_port()

        def on_store(event: evt.Event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def legacy_pacs():
    pacs = LegacyPacs()
    yield pacs
    pacs.stop()


def _journal_study(data_dir: Path, study_dir: Path) -> tuple[Journal, str]:
    """A journal with the study's four images stored and selected, PROCESSING (as the pipeline has it)."""
    journal = Journal(data_dir / "journal.sqlite3")
    source = phantom_source(study_dir)
    positions = {}
    with journal.transaction() as db:
        db.execute("INSERT INTO studies(study_uid, state, first_received_at, last_received_at, updated_at) "
                   "VALUES (?, 'PROCESSING', 0, 0, 0)", (source.study_uid,))
        for image in source.images:
            rel = Path("spool") / f"{image.position}.dcm"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(study_dir / f"{image.position}.dcm", data_dir / rel)
            positions[image.position] = {"instance_id": journal.insert_instance(
                db, sop_instance_uid=image.sop_instance_uid, sop_class_uid=image.sop_class_uid,
                study_uid=source.study_uid, series_uid=image.series_instance_uid,
                transfer_syntax="1.2.840.10008.1.2.1", path=str(rel), size=1, received_at=0,
                position=image.position, view=image.view)}
        db.execute("UPDATE studies SET selection = ? WHERE study_uid = ?",
                   (json.dumps({"positions": positions}), source.study_uid))
    return journal, source.study_uid


def _deliver(journal: Journal, settings: Settings, study_uid: str) -> dict[str, tuple[str, str | None, str]]:
    """Run a fresh outbox (a restarted node: payloads rebuilt from the journal) until nothing is
    pending; {destination: (state, last error, identity)} of the study's SR rows."""
    outbox = Outbox(journal, settings, preparer=OutputPreparer(settings), poll_seconds=0.2)
    outbox.start()
    try:
        wait_for(lambda: all(r.state in ("DELIVERED", "DEAD") for r in outbox.queue.list(study_uid=study_uid)),
                 timeout=30)
    finally:
        outbox.stop()
    rows = outbox.queue.list(study_uid=study_uid)
    return {r.destination: (r.state, r.last_error, r.identity) for r in rows
            if r.created_at == journal.result_created_at(study_uid)}


def test_a_pacs_without_3d_sr_gets_the_class_it_stores_and_its_predecessor(
        legacy_pacs: LegacyPacs, phantom_dir: Path, tmp_path: Path) -> None:
    study_dir = _study(phantom_dir)
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    journal, uid = _journal_study(data_dir, study_dir)
    dest = {"ae_title": "LEGACY", "host": "127.0.0.1", "port": legacy_pacs.port, "timeout": 5,
            "keep_open_seconds": 0}
    settings = Settings(**node_settings(data_dir, free_port(), outbox={"backoff_seconds": 0.2}, outputs={"dicom": [
        {"name": "legacy", "tid1500_sop_class": "comprehensive", **dest},
        {"name": "air", **dest}]}))  # default: Comprehensive 3D SR, which this peer does not store
    _, result = phantom_case(study_dir)

    def process(result: dict, created_at: float) -> dict:
        """What the pipeline does: link what is delivered, plan, journal with the rows."""
        typed = StudyResult.from_json(result)
        replaces = replaced_outputs(journaled_result(journal, uid), typed, uid, delivered_identities(journal, uid))
        if replaces:
            typed = replace(typed, replaces=replaces)
        typed, rows = OutputPreparer(settings).plan(phantom_source(study_dir), typed, created_at)
        result = typed.to_json()
        assert journal.finish_study(uid, result, "processed", rows, now=created_at)
        for row in rows:  # nothing rendered yet: the outbox builds every payload from the journal
            assert not (data_dir / row["payload"]).exists()
        return result

    first = process(dict(result), CREATED)
    assert set(first["documents"]) == {"tid1500", "tid1500-comprehensive"}
    states = _deliver(journal, settings, uid)
    assert states["legacy"][:2] == ("DELIVERED", None)
    assert states["air"][0] == "DEAD" and f"does not accept SOP class {AIR}" in states["air"][1]
    [stored] = legacy_pacs.received
    assert stored.SOPClassUID == LEGACY
    planned = first["documents"]["tid1500-comprehensive"]
    assert stored.SOPInstanceUID == states["legacy"][2] == planned["sop_instance_uid"]
    path = tmp_path / "stored.dcm"
    stored.save_as(path, enforce_file_format=True)
    assert "Error" not in _dciodvfy(path)
    assert read_tid1500_sr(pydicom.dcmread(path))["breasts"]["R"]["birads"] == result["breasts"]["R"]["birads"]

    # Processed again with other models: the legacy PACS's new SR names the SR that PACS holds;
    # nothing names the 3D SR, which no destination ever stored.
    journal.transition(uid, "DONE", "PROCESSING", "retry")
    second = process(dict(result, models={**result["models"], "versamammo": "versamammo-demo@1.1.0"}),
                     CREATED + 60)
    assert set(second["replaces"]) == {"tid1500-comprehensive"}
    states = _deliver(journal, settings, uid)
    assert states["legacy"][0] == "DELIVERED"
    new = legacy_pacs.received[-1]
    assert new.SOPClassUID == LEGACY and new.SOPInstanceUID == states["legacy"][2] != stored.SOPInstanceUID
    [study] = new.PredecessorDocumentsSequence
    [sop] = study.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (LEGACY, stored.SOPInstanceUID)
    assert (new.SeriesNumber, new.InstanceNumber) == (stored.SeriesNumber + 10, 2)


def test_orthanc_stores_each_class_it_is_sent_in(phantom_dir: Path, tmp_path: Path) -> None:
    """Every class over a real association to a real PACS (Orthanc), read back from its storage."""
    import io

    from node.config import DicomDestination
    from node.outputs.dicom_send import send_files
    from tests.node.peers import Orthanc

    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        source, result = phantom_case(_study(phantom_dir))
        files = []
        for sop_class in TID1500_SOP_CLASSES:
            files.append(tmp_path / f"{sop_class}.dcm")
            build_tid1500_sr(source, StudyResult.from_json(result), created_at=CREATED, sop_class=sop_class).save_as(
                files[-1], enforce_file_format=True)
        dest = DicomDestination(name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=pacs.dicom_port, timeout=5)
        assert [d.outcome for d in send_files(dest, "MAMMO_NODE", files)] == ["delivered"] * 3
        stored = {s["tags"]["SOPClassUID"]: s["id"] for s in pacs.instances_of_modality("SR")}
        assert set(stored) == set(TID1500_SOP_CLASSES.values())
        for uid, instance in stored.items():
            back = read_tid1500_sr(pydicom.dcmread(io.BytesIO(pacs.file(instance))))
            assert back["breasts"]["L"]["birads"] == result["breasts"]["L"]["birads"], uid
    finally:
        pacs.stop()
