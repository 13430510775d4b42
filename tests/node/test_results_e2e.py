"""Images in, results out, with real peers: Orthanc is the PACS (it forwards the study to the node and
receives our SRs in the same study), hl7apy's MLLPServer is the RIS. Failure cases: the RIS answers
AE then AA, refuses (AR), is down then up; the PACS is down then up. Every result arrives once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from node.outputs.hl7 import parse_oru
from node.outputs.sr_tid1500 import read_tid1500_sr
from node.packages.registry import ModelRegistry
from tests.node.conftest import free_port, study_files, study_uid_of, wait_for
from tests.node.peers import RIS, Orthanc

pytestmark = pytest.mark.slow

TID1500 = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR (IHE AIR)
TID4000 = "1.2.840.10008.5.1.4.1.1.88.50"


def _install(data_dir: Path, packages: dict) -> None:
    registry = ModelRegistry(data_dir / "models")
    for key in ("vm1", "rg1"):
        registry.install(packages[key], activate=True)


def _studies(phantom_dir: Path) -> list[Path]:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())


@pytest.fixture
def lab(tmp_path, start_node, model_packages):
    """A PACS, a RIS and a node wired to both; ``lab.start(pacs_up=..., ris_up=...)``."""

    class Lab:
        node_port = free_port()
        pacs = Orthanc(tmp_path / "orthanc", {"node": ["MAMMO_NODE", "127.0.0.1", node_port]})
        ris = RIS()
        node = None

        def start(self, pacs_up: bool = True, ris_up: bool = True, **outbox):
            if pacs_up:
                self.pacs.start()
            if ris_up:
                self.ris.start()
            data = tmp_path / "var"
            _install(data, model_packages)
            self.node = start_node(
                data_dir=data, dicom={"port": self.node_port},
                outputs={"dicom": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                    "port": self.pacs.dicom_port, "reports": ["tid1500", "tid4000"],
                                    "timeout": 5}],
                         "hl7": {"host": "127.0.0.1", "port": self.ris.port, "read_timeout": 5,
                                 "connect_timeout": 2}},
                outbox={"backoff_seconds": 0.3, "max_backoff_seconds": 1.0, "poll_seconds": 0.3, **outbox})
            return self

        def send_study(self, study_dir: Path) -> str:
            """The modality sends to the PACS (storescu), the PACS forwards to the node."""
            from tests.node.conftest import run_storescu

            assert run_storescu(self.pacs.dicom_port, study_files(study_dir), aet="MODALITY").returncode == 0
            uid = study_uid_of(study_dir)
            job = self.pacs.forward_study(uid, "node")
            assert job.get("FailedInstancesCount", 0) == 0
            return uid

        def rows(self, uid: str):
            return self.node.app.outbox.queue.list(study_uid=uid)

        def delivered(self, uid: str, n: int = 3, timeout: float = 90):
            return wait_for(lambda: (r := self.rows(uid)) and len(r) == n and all(x.state == "DELIVERED" for x in r)
                            and r, timeout=timeout)

    lab = Lab()
    yield lab
    lab.ris.stop()
    lab.pacs.stop()


def test_study_in_results_out_to_pacs_and_ris(lab, phantom_dir: Path) -> None:
    lab.start()
    uid = lab.send_study(_studies(phantom_dir)[0])
    rows = lab.delivered(uid)
    assert sorted(r.kind for r in rows) == ["oru", "tid1500", "tid4000"]
    result = lab.node.journal.get_result(uid)
    # The SRs are in the PACS, in the source study, one instance each.
    srs = lab.pacs.instances_of_modality("SR")
    assert sorted(s["tags"]["SOPClassUID"] for s in srs) == [TID1500, TID4000]
    assert {s["parent_study"] for s in srs} == {uid}
    comprehensive = next(s for s in srs if s["tags"]["SOPClassUID"] == TID1500)
    back = read_tid1500_sr(pydicom.dcmread(__import__("io").BytesIO(lab.pacs.file(comprehensive["id"]))))
    for side in ("R", "L"):
        assert back["breasts"][side]["birads"] == result["breasts"][side]["birads"]
        assert back["breasts"][side]["density"] == result["breasts"][side]["density"]
    # The RIS got one ORU with our control ID and the same per-breast values.
    assert len(lab.ris.received) == 1
    oru = parse_oru(lab.ris.received[0])
    assert oru["control_id"] == next(r.identity for r in rows if r.kind == "oru")
    assert oru["breasts"]["R"]["birads"] == result["breasts"]["R"]["birads"]
    # A distinct AI result (its own service and filler order number), not the exam's order.
    assert oru["service"] == "AIMAMMO" and oru["filler_order"].startswith("AI") and oru["study_uid"] == uid
    # Each payload (rendered from the headers parsed once at planning) is byte for byte what the
    # journal rebuilds without them.
    from node.outputs.prepare import OutputPreparer

    data_dir = lab.node.settings.data_dir
    for row in rows:
        sent = (data_dir / row.payload).read_bytes()
        (data_dir / row.payload).unlink()
        rebuilt = OutputPreparer(lab.node.settings).render(lab.node.journal, uid, row.kind, row.identity)
        assert rebuilt.read_bytes() == sent, row.kind
    # The association to the PACS stays open for the next study's SRs.
    second = lab.send_study(_studies(phantom_dir)[1])
    lab.delivered(second)
    assert lab.node.app.outbox.dicom_senders["pacs"].opened == 1
    assert len(lab.pacs.instances_of_modality("SR")) == 4


def test_ris_answers_ae_then_aa_and_refusal_is_dead_lettered_then_retried(lab, phantom_dir: Path) -> None:
    lab.ris.script = ["AE"]
    lab.start()
    first, second = _studies(phantom_dir)[:2]
    uid = lab.send_study(first)
    rows = lab.delivered(uid)
    oru = next(r for r in rows if r.kind == "oru")
    assert oru.attempts == 2 and len(lab.ris.received) == 2
    assert lab.ris.accepted() == {oru.identity}
    # AR: the RIS refuses for good -> dead letter at once, no more attempts.
    lab.ris.script = ["AR"]
    uid2 = lab.send_study(second)
    dead = wait_for(lambda: [r for r in lab.rows(uid2) if r.kind == "oru" and r.state == "DEAD"], timeout=90)[0]
    assert dead.attempts == 1 and "AR" in (dead.last_error or "")
    assert "test RIS says" not in (dead.last_error or "")   # the RIS's own text (may carry patient data) is never kept
    data = lab.node.settings.data_dir
    env = {"MAMMO_NODE_NODE__DATA_DIR": str(data), "PATH": "/usr/bin:/bin"}
    listed = subprocess.run([sys.executable, "-m", "node.cli.app", "outbox", "list", "--state", "DEAD", "--json"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert [r["id"] for r in json.loads(listed.stdout)["rows"]] == [dead.id]
    retried = subprocess.run([sys.executable, "-m", "node.cli.app", "outbox", "retry", "--json"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert json.loads(retried.stdout)["requeued"] == 1
    wait_for(lambda: lab.node.app.outbox.queue.get(dead.id).state == "DELIVERED", timeout=30)


def test_ris_and_pacs_down_then_up(lab, phantom_dir: Path) -> None:
    lab.start(pacs_up=True, ris_up=False)
    uid = lab.send_study(_studies(phantom_dir)[0])
    # the SRs go out; the ORU waits and retries while the RIS is down
    wait_for(lambda: any(r.kind == "oru" and r.attempts >= 2 and r.state == "PENDING" for r in lab.rows(uid)),
             timeout=90)
    lab.pacs.stop()  # the PACS goes down too; a second study's SRs must wait for it
    second = _studies(phantom_dir)[1]
    from tests.node.conftest import run_storescu

    assert run_storescu(lab.node_port, study_files(second)).returncode == 0
    uid2 = study_uid_of(second)
    wait_for(lambda: any(r.kind == "tid1500" and r.attempts >= 2 and r.state == "PENDING" for r in lab.rows(uid2)),
             timeout=90)
    lab.ris.start()
    lab.pacs.start()
    lab.delivered(uid)
    lab.delivered(uid2)
    assert sorted(lab.ris.control_ids()) == sorted(r.identity for u in (uid, uid2) for r in lab.rows(u)
                                                   if r.kind == "oru")
    srs = lab.pacs.instances_of_modality("SR")
    assert len(srs) == 4 and {s["parent_study"] for s in srs} == {uid, uid2}


def test_node_killed_while_sending_then_restarted_delivers_each_result_once(tmp_path, phantom_dir, model_packages):
    """SIGKILL while the RIS is still answering: after a restart the ORU is resent with the same
    control ID (the RIS keeps it once), the SRs replace themselves in the PACS (same SOP Instance
    UID), and a further restart sends nothing that was acknowledged."""
    import os
    import signal

    from node.journal import Journal
    from tests.node.conftest import mammo_node_cmd, run_storescu

    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc").start()
    ris = RIS(delay=4.0).start()
    data = tmp_path / "var"
    _install(data, model_packages)
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\ndata_dir = "{data}"\nmin_free_mb = 1\n[dicom]\nport = {node_port}\nbind = "127.0.0.1"\n'
        '[assembly]\nsettle_seconds = 0.5\n[http]\nport = 0\n'
        f'[[outputs.dicom]]\nname = "pacs"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n'
        'reports = ["tid1500", "tid4000"]\n'
        f'[outputs.hl7]\nhost = "127.0.0.1"\nport = {ris.port}\nread_timeout = 10\n'
        '[outbox]\nbackoff_seconds = 0.3\nmax_backoff_seconds = 1\npoll_seconds = 0.3\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}

    def serve() -> subprocess.Popen:
        return subprocess.Popen([*mammo_node_cmd(), "serve", "--config", str(config)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    journal = Journal(data / "journal.sqlite3")

    def rows(uid):
        return journal.query("SELECT kind, state, identity FROM outbox WHERE study_uid = ? ORDER BY kind", (uid,))

    proc = serve()
    try:
        from node.dicom.scu import echo

        wait_for(lambda: proc.poll() is None and echo("127.0.0.1", node_port, timeout=2)[0], timeout=60,
                 interval=0.3)
        study = _studies(phantom_dir)[0]
        uid = study_uid_of(study)
        assert run_storescu(node_port, study_files(study)).returncode == 0
        # the RIS has the ORU but has not answered yet: kill the node now
        wait_for(lambda: len(ris.received) == 1, timeout=120)
        assert any(r["kind"] == "oru" and r["state"] == "SENDING" for r in rows(uid))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        ris.delay = 0.0
        proc = serve()
        wait_for(lambda: (r := rows(uid)) and len(r) == 3 and all(x["state"] == "DELIVERED" for x in r),
                 timeout=120)
        assert len(ris.received) == 2 and len(ris.accepted()) == 1  # resent once, same control ID
        srs = pacs.instances_of_modality("SR")
        assert len(srs) == 2 and {s["parent_study"] for s in srs} == {uid}
        # an orderly restart sends nothing again
        proc.terminate()
        proc.wait(timeout=30)
        proc = serve()
        wait_for(lambda: echo("127.0.0.1", node_port, timeout=2)[0], timeout=60, interval=0.3)
        import time as _time

        _time.sleep(2)
        assert len(ris.received) == 2 and len(pacs.instances_of_modality("SR")) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        ris.stop()
        pacs.stop()


def test_a_study_processed_again_with_new_models_replaces_its_delivered_results(lab, phantom_dir: Path,
                                                                                 model_packages) -> None:
    """`studies retry` after a model upgrade: the new SRs name the delivered ones as predecessors
    (PACS viewers show the newer as replacing the older), the new ORU replaces the first: preliminary
    again (HL7 "C" is for final results), the same filler order number, an NTE naming the first."""
    lab.start()
    uid = lab.send_study(_studies(phantom_dir)[0])
    first = {r.kind: r.identity for r in lab.delivered(uid)}
    ModelRegistry(lab.node.settings.data_dir / "models").install(model_packages["vm2"], activate=True)
    retried = subprocess.run([sys.executable, "-m", "node.cli.app", "studies", "retry", uid, "--json"],
                             capture_output=True, text=True, timeout=60,
                             env={"MAMMO_NODE_NODE__DATA_DIR": str(lab.node.settings.data_dir), "PATH": "/usr/bin:/bin"})
    assert json.loads(retried.stdout)["ok"] is True, retried.stdout + retried.stderr
    rows = wait_for(lambda: (r := [x for x in lab.rows(uid) if x.identity not in first.values()])
                    and len(r) == 3 and all(x.state == "DELIVERED" for x in r) and r, timeout=120)
    second = {r.kind: r.identity for r in rows}
    srs = {s["tags"]["SOPInstanceUID"]: s for s in lab.pacs.instances_of_modality("SR")}
    assert set(srs) == {first["tid1500"], first["tid4000"], second["tid1500"], second["tid4000"]}
    for kind in ("tid1500", "tid4000"):
        new = pydicom.dcmread(__import__("io").BytesIO(lab.pacs.file(srs[second[kind]]["id"])))
        old = pydicom.dcmread(__import__("io").BytesIO(lab.pacs.file(srs[first[kind]]["id"])))
        [study] = new.PredecessorDocumentsSequence
        [series] = study.ReferencedSeriesSequence
        [sop] = series.ReferencedSOPSequence
        assert (study.StudyInstanceUID, series.SeriesInstanceUID, sop.ReferencedSOPInstanceUID,
                sop.ReferencedSOPClassUID) == (uid, old.SeriesInstanceUID, old.SOPInstanceUID, old.SOPClassUID)
        assert "PredecessorDocumentsSequence" not in old
    assert lab.ris.control_ids() == [first["oru"], second["oru"]]
    before, after = (parse_oru(m) for m in lab.ris.received)
    assert before["result_status"] == "P" and after["result_status"] == "P"
    assert after["filler_order"] == before["filler_order"] and after["filler_order"].startswith("AI")
    assert before["replaces"] is None and after["replaces"] == first["oru"]
    assert after["service"] == before["service"] == "AIMAMMO"
    assert after["accession"] == before["accession"] != ""
