"""Study assembly timers on a real node: settle, quiet period, deadline, stragglers."""
from __future__ import annotations

import time
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from node.assembly import COMPLETE, INCOMPLETE, RECEIVING
from tests.node.conftest import study_uid_of, wait_for
from tests.node.scu_helpers import associate, load


def _study(phantom_dir: Path, n: int = 0) -> Path:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())[n]


def _send(port: int, *files: Path) -> None:
    assoc = associate(port)
    for f in files:
        assert assoc.send_c_store(f).Status == 0
    assoc.release()


def test_quiet_period_closes_incomplete_with_policy(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly={"settle_seconds": 0.2, "quiet_seconds": 1.0, "deadline_seconds": 30,
                                "incomplete_policy": "partial"})
    study_dir = _study(phantom_dir)
    _send(node.port, *(study_dir / f"{v}.dcm" for v in ("R-CC", "R-MLO", "L-CC")))
    uid = study_uid_of(study_dir)
    assert node.study(uid).state == RECEIVING
    study = wait_for(lambda: (s := node.study(uid)) and s.state != RECEIVING and s, timeout=5)
    assert study.state == INCOMPLETE
    assert study.incomplete_policy == "partial"
    assert "no new image for 1 s" in study.close_reason and "missing L-MLO" in study.close_reason
    assert 1.0 <= study.closed_at - study.last_received_at <= 1.2
    assert study.selection["missing"] == ["L-MLO"]


def test_deadline_closes_a_study_that_keeps_trickling(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly={"settle_seconds": 0.2, "quiet_seconds": 1.0, "deadline_seconds": 1.5})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    for view in ("R-CC", "R-MLO", "L-CC"):
        _send(node.port, study_dir / f"{view}.dcm")
        time.sleep(0.6)
    study = wait_for(lambda: (s := node.study(uid)) and s.state != RECEIVING and s, timeout=5)
    assert study.state == INCOMPLETE
    assert "deadline of 1.5 s" in study.close_reason
    assert 1.5 <= study.closed_at - study.first_received_at <= 1.7


def _spot_copy(path: Path) -> Dataset:
    """A spot-compression view of the same breast in the same study (a straggler)."""
    ds = load(path)
    ds.SOPInstanceUID = generate_uid()
    modifier = Dataset()
    modifier.CodeValue, modifier.CodingSchemeDesignator, modifier.CodeMeaning = "399055006", "SCT", "Spot Compression"
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence([modifier])
    return ds


def test_stragglers_extend_the_settle_and_late_images_do_not_reopen(start_node, phantom_dir: Path) -> None:
    # The settle rule alone (closing on release: test_release.py).
    node = start_node(assembly={"settle_seconds": 1.0, "quiet_seconds": 30, "close_on_release": False})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    _send(node.port, *(study_dir / f"{v}.dcm" for v in ("R-CC", "R-MLO", "L-CC", "L-MLO")))
    time.sleep(0.6)
    assoc = associate(node.port)
    assert assoc.send_c_store(_spot_copy(study_dir / "R-CC.dcm")).Status == 0
    assoc.release()
    study = wait_for(lambda: (s := node.study(uid)) and s.state == COMPLETE and s, timeout=5)
    assert study.closed_at - study.last_received_at >= 1.0
    assert study.closed_at - study.four_views_at >= 1.5
    assert any("spot_compression" in e["label"] for e in study.selection["extras"])

    # After closing: kept and flagged, the study is not reopened or closed again.
    assoc = associate(node.port)
    assert assoc.send_c_store(_spot_copy(study_dir / "L-CC.dcm")).Status == 0
    assoc.release()
    time.sleep(1.3)
    after = node.study(uid)
    assert after.state == COMPLETE and after.closed_at == study.closed_at
    late = [i for i in node.journal.study_instances(uid) if i.after_close]
    assert len(late) == 1
    assert [e["to_state"] for e in after.events].count(COMPLETE) == 2  # the close, then the "late image" note
    assert "after the study closed" in after.events[-1]["reason"]


def test_a_for_processing_view_does_not_complete_the_study_unless_accepted(start_node, phantom_dir: Path,
                                                                          tmp_path: Path) -> None:
    """Three For Presentation views and a For Processing L-MLO: the study waits for a presentation
    L-MLO and closes INCOMPLETE saying why; with assembly.accept_for_processing it is COMPLETE."""
    from pydicom.uid import ExplicitVRLittleEndian

    for_processing = "1.2.840.10008.5.1.4.1.1.1.2.1"
    study_dir = _study(phantom_dir, 1)
    uid = study_uid_of(study_dir)
    for accept, state in ((False, INCOMPLETE), (True, COMPLETE)):
        node = start_node(data_dir=tmp_path / f"var-{accept}",
                          assembly={"settle_seconds": 0.2, "quiet_seconds": 1.0, "deadline_seconds": 30,
                                    "accept_for_processing": accept})
        _send(node.port, *(study_dir / f"{v}.dcm" for v in ("R-CC", "R-MLO", "L-CC")))
        ds = load(study_dir / "L-MLO.dcm")
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = for_processing
        ds.PresentationIntentType = "FOR PROCESSING"
        assoc = associate(node.port, contexts=[(for_processing, ExplicitVRLittleEndian)])
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        study = wait_for(lambda: (s := node.study(uid)) and s.state != RECEIVING and s, timeout=5)
        assert study.state == state, study.close_reason
        if accept:
            assert study.selection["missing"] == []
        else:
            assert study.selection["missing"] == ["L-MLO"]
            assert "For Processing" in study.selection["missing_why"]["L-MLO"]
