"""Closing a study when the association that sent it is released (assembly.close_on_release)."""
from __future__ import annotations

import time
from pathlib import Path

from node.assembly import COMPLETE, RECEIVING, SEVERAL
from tests.node.conftest import run_storescu, study_files, study_uid_of, wait_for
from tests.node.scu_helpers import associate

VIEWS = ("R-CC", "R-MLO", "L-CC", "L-MLO")
# settle long enough that an early close cannot be mistaken for a settled one
ASSEMBLY = {"settle_seconds": 3.0, "release_grace_seconds": 0.2, "quiet_seconds": 30, "deadline_seconds": 120}


def _study(phantom_dir: Path, n: int = 0) -> Path:
    return sorted(p for p in phantom_dir.iterdir() if p.is_dir())[n]


def _closed(node, uid: str, timeout: float = 10):
    return wait_for(lambda: (s := node.study(uid)) and s.state != RECEIVING and s, timeout=timeout)


def test_release_closes_after_the_grace(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly=ASSEMBLY)
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    assert run_storescu(node.port, study_files(study_dir)).returncode == 0
    study = _closed(node, uid)
    assert study.state == COMPLETE
    assert study.released_at is not None and study.sender_association not in (None, SEVERAL)
    assert 0.2 <= study.closed_at - study.released_at <= 0.5
    assert study.closed_at - study.last_received_at < 1.0
    assert "association that sent the study was released" in study.close_reason
    assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE"]


def test_abort_does_not_close_early(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly=ASSEMBLY | {"settle_seconds": 1.0})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    assoc = associate(node.port)
    for path in study_files(study_dir):
        assert assoc.send_c_store(path).Status == 0
    assoc.abort()
    study = _closed(node, uid)
    assert study.state == COMPLETE and study.released_at is None
    assert study.closed_at - study.last_received_at >= 1.0
    assert "no new image for 1 s" in study.close_reason


def test_an_open_association_settles(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly=ASSEMBLY | {"settle_seconds": 1.0})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    assoc = associate(node.port)
    try:
        for path in study_files(study_dir):
            assert assoc.send_c_store(path).Status == 0
        study = _closed(node, uid)
        assert study.state == COMPLETE and study.released_at is None
        assert study.closed_at - study.last_received_at >= 1.0
    finally:
        assoc.release()


def test_a_study_over_two_associations_settles(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly=ASSEMBLY | {"settle_seconds": 1.0})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    files = study_files(study_dir)
    assert run_storescu(node.port, files[:2]).returncode == 0
    assert run_storescu(node.port, files[2:]).returncode == 0
    study = _closed(node, uid)
    assert study.state == COMPLETE
    assert study.sender_association == SEVERAL and study.released_at is None
    assert study.closed_at - study.last_received_at >= 1.0


def test_another_open_association_with_images_of_the_study_keeps_it_settling(start_node, phantom_dir: Path) -> None:
    """A second association delivered images of the study and is still open: the first one's release
    does not close it."""
    node = start_node(assembly=ASSEMBLY | {"settle_seconds": 1.0})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    files = study_files(study_dir)
    first, second = associate(node.port), associate(node.port)
    try:
        assert second.send_c_store(files[0]).Status == 0
        for path in files[1:]:
            assert first.send_c_store(path).Status == 0
        first.release()
        time.sleep(0.5)
        assert node.study(uid).state == RECEIVING
        study = _closed(node, uid)
        assert study.closed_at - study.last_received_at >= 1.0
    finally:
        second.release()


def test_a_straggler_after_the_early_close_is_a_late_image(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly=ASSEMBLY)
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    assert run_storescu(node.port, study_files(study_dir)).returncode == 0
    study = _closed(node, uid)
    from tests.node.test_assembly import _spot_copy

    assoc = associate(node.port)
    assert assoc.send_c_store(_spot_copy(study_dir / "L-CC.dcm")).Status == 0
    assoc.release()
    time.sleep(0.5)
    after = node.study(uid)
    assert after.state == COMPLETE and after.closed_at == study.closed_at
    assert len([i for i in node.journal.study_instances(uid) if i.after_close]) == 1
    assert "after the study closed" in after.events[-1]["reason"]
    assert [e["to_state"] for e in after.events].count(COMPLETE) == 2  # the close, then the note


def test_a_straggler_in_the_grace_falls_back_to_settle(start_node, phantom_dir: Path) -> None:
    """Another association delivers an image of the study during the grace: it settles."""
    node = start_node(assembly=ASSEMBLY | {"settle_seconds": 1.0, "release_grace_seconds": 0.8})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    assert run_storescu(node.port, study_files(study_dir)).returncode == 0
    from tests.node.test_assembly import _spot_copy

    assoc = associate(node.port)
    assert assoc.send_c_store(_spot_copy(study_dir / "R-CC.dcm")).Status == 0
    assoc.release()
    study = _closed(node, uid)
    assert study.sender_association == SEVERAL
    assert study.closed_at - study.last_received_at >= 1.0
    assert not [i for i in node.journal.study_instances(uid) if i.after_close]


def test_disabled_release_rule_settles(start_node, phantom_dir: Path) -> None:
    node = start_node(assembly=ASSEMBLY | {"settle_seconds": 1.0, "close_on_release": False})
    study_dir = _study(phantom_dir)
    uid = study_uid_of(study_dir)
    assert run_storescu(node.port, study_files(study_dir)).returncode == 0
    study = _closed(node, uid)
    assert study.released_at is not None  # recorded, not used
    assert study.closed_at - study.last_received_at >= 1.0
