"""Speculative runs (inference.speculative_runs): models run while a study settles; the result is kept
only when the study closes with the same selected images, and nothing leaves the node before the close."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from node.packages.registry import ModelRegistry
from node.pipeline import Pipeline
from tests.node.conftest import run_storescu, study_files, study_uid_of, wait_for
from tests.node.scu_helpers import associate, load

COMPARED = ("status", "missing_views", "breasts", "disagreements", "report", "models")


def _install(data_dir: Path, packages: dict) -> None:
    registry = ModelRegistry(data_dir / "models")
    for key in ("vm1", "rg1"):
        registry.install(packages[key], activate=True)


def _final(node, uid, timeout=120):
    return wait_for(lambda: (s := node.study(uid)) and s.state in ("DONE", "FAILED") and s, timeout=timeout)


def _retake(path: Path):
    """A retake of the view: a new instance that wins the selection, with different pixels."""
    ds = load(path)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 99
    pixels = ds.pixel_array
    ds.PixelData = np.ascontiguousarray(pixels[::-1, :]).tobytes()
    return ds


def _send(port: int, files: list, release: bool = True):
    assoc = associate(port)
    for item in files:
        assert assoc.send_c_store(item).Status == 0
    if release:
        assoc.release()
    return assoc


def _reference(start_node, tmp_path: Path, model_packages, sends: list[list]) -> dict[str, dict]:
    """Results of the same images on a node without speculative runs."""
    data = tmp_path / "reference"
    _install(data, model_packages)
    node = start_node(data_dir=data, inference={"speculative_runs": 0},
                      assembly={"settle_seconds": 0.3, "close_on_release": False})
    out = {}
    for files in sends:
        _send(node.port, files)
    for uid in {str(load(f).StudyInstanceUID) if isinstance(f, Path) else str(f.StudyInstanceUID)
                for files in sends for f in files}:
        study = _final(node, uid)
        assert study.state == "DONE"
        assert not any("speculative" in e["reason"] for e in study.events)
        out[uid] = node.journal.get_result(uid)
    return out


def test_speculative_run_is_kept_when_the_selection_holds_and_redone_after_a_retake(
        start_node, tmp_path: Path, phantom_dir: Path, model_packages) -> None:
    studies = sorted(phantom_dir.glob("study-*"))
    plain, retaken = studies[0], studies[1]
    retake = _retake(retaken / "R-CC.dcm")
    reference = _reference(start_node, tmp_path, model_packages,
                           [study_files(plain), [*study_files(retaken), retake]])

    data = tmp_path / "var"
    _install(data, model_packages)
    node = start_node(data_dir=data, inference={"speculative_runs": 1},
                      assembly={"settle_seconds": 2.0, "release_grace_seconds": 0.2})
    pipeline = node.app.pipeline

    # 1. One association, released: the run started at the fourth view is kept at the close.
    uid = study_uid_of(plain)
    assert run_storescu(node.port, study_files(plain)).returncode == 0
    study = _final(node, uid)
    assert study.state == "DONE"
    assert any("speculative run kept" in e["reason"] for e in study.events), study.events
    result = node.journal.get_result(uid)
    assert {k: result.get(k) for k in COMPARED} == {k: reference[uid].get(k) for k in COMPARED}

    # 2. The association stays open; the run finishes while the study settles and nothing is
    # journaled or queued; then a retake changes the selection: the result is for the final set.
    uid = study_uid_of(retaken)
    assoc = _send(node.port, study_files(retaken), release=False)
    try:
        wait_for(lambda: (s := pipeline._spec.get(uid)) is not None and s.done.is_set() and s.result is not None,
                 timeout=60)
        assert node.study(uid).state == "RECEIVING"
        assert node.journal.get_result(uid) is None
        assert node.app.outbox.queue.list(study_uid=uid) == []
        assert assoc.send_c_store(retake).Status == 0
    finally:
        assoc.release()
    study = _final(node, uid)
    assert study.state == "DONE"
    chosen = study.selection["positions"]["R-CC"]["sop_instance_uid"]
    assert chosen == str(retake.SOPInstanceUID)
    result = node.journal.get_result(uid)
    assert {k: result.get(k) for k in COMPARED} == {k: reference[uid].get(k) for k in COMPARED}
    assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE", "PROCESSING", "DONE"]


def test_a_restart_after_a_speculative_run_processes_the_study_once(start_node, tmp_path: Path, phantom_dir: Path,
                                                                     model_packages) -> None:
    data = tmp_path / "var"
    _install(data, model_packages)
    node = start_node(data_dir=data, inference={"speculative_runs": 1}, assembly={"settle_seconds": 1.0})
    study_dir = sorted(phantom_dir.glob("study-*"))[2]
    uid = study_uid_of(study_dir)
    assoc = _send(node.port, study_files(study_dir), release=False)
    wait_for(lambda: (s := node.app.pipeline._spec.get(uid)) is not None and s.done.is_set(), timeout=60)
    node.app.stop()  # the node goes away with the association open and the run's result in memory
    assoc.abort()
    restarted = start_node(data_dir=data, inference={"speculative_runs": 1}, assembly={"settle_seconds": 1.0})
    study = _final(restarted, uid)
    assert study.state == "DONE"
    assert [e["to_state"] for e in study.events] == ["RECEIVING", "COMPLETE", "PROCESSING", "DONE"]
    assert "no new image" in study.close_reason
    assert not any("speculative run kept" in e["reason"] for e in study.events)


class _NoModels:
    class registry:  # noqa: N801 - a stand-in with the one method the pipeline asks
        @staticmethod
        def active() -> dict[str, str]:
            return {"versamammo": "v@1", "mammorg": "m@1"}


def test_speculative_runs_wait_while_a_closed_study_is_queued(tmp_path: Path) -> None:
    pipeline = Pipeline(journal=None, engine=_NoModels(), data_dir=tmp_path, speculative_runs=1)  # type: ignore[arg-type]
    selection = {"positions": {p: {"instance_id": i, "sop_instance_uid": f"1.{i}"}
                               for i, p in enumerate(("R-CC", "R-MLO", "L-CC", "L-MLO"))}, "missing": []}
    pipeline.speculate("1.2.3", selection)
    assert pipeline._next_speculation() is not None
    pipeline.submit("1.2.4", "COMPLETE")          # another study closed and waits
    assert pipeline._closed_work() and pipeline._closed_work("1.2.3")
    # The same selection again does not queue a second run; a changed one replaces the first.
    first = pipeline._spec["1.2.3"]
    pipeline.speculate("1.2.3", selection)
    assert pipeline._spec["1.2.3"] is first
    changed = {"positions": dict(selection["positions"], **{"R-CC": {"instance_id": 9, "sop_instance_uid": "1.9"}}),
               "missing": []}
    pipeline.speculate("1.2.3", changed)
    assert first.stale and pipeline._spec["1.2.3"] is not first
    # A study with a position missing is never run speculatively.
    pipeline.speculate("1.2.5", {"positions": {}, "missing": ["R-CC"]})
    assert "1.2.5" not in pipeline._spec
