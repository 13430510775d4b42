"""Closed studies become results: real DICOM in over a socket, both models through ONNX Runtime,
the report parsed, the result journaled with the model versions; failures are recorded, not fatal."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from models.report.result import ReportResult
from node.packages.registry import ModelRegistry
from node.results import build_result
from tests.node.conftest import run_storescu, study_files, study_uid_of, wait_for

LABELS = {"birads": ["0", "1", "2", "3", "4", "5"], "density": ["A", "B", "C", "D"],
          "findings": ["Mass", "Global Asymmetry", "Architectural Distortion", "Nipple Retraction",
                       "Suspicious Calcification", "Focal Asymmetry", "Asymmetry", "Suspicious Lymph Node",
                       "Skin Thickening", "Skin Retraction"]}


def _install(data_dir, packages, *refs):
    registry = ModelRegistry(data_dir / "models")
    for key in refs:
        registry.install(packages[key], activate=True)
    return registry


def _final(node, uid, timeout=120):
    return wait_for(lambda: (s := node.study(uid)) and s.state in ("DONE", "FAILED") and s, timeout=timeout)


def test_complete_study_is_processed_with_the_active_versions(start_node, tmp_path, phantom_dir, model_packages):
    data = tmp_path / "var"
    registry = _install(data, model_packages, "vm1", "rg1")
    node = start_node(data_dir=data)
    first, second = sorted(phantom_dir.glob("study-*"))[:2]
    assert run_storescu(node.port, study_files(first)).returncode == 0
    study = _final(node, study_uid_of(first))
    assert study.state == "DONE", study.events
    result = node.journal.get_result(study.study_uid)
    assert result["models"] == {"versamammo": "versamammo-test@1.0.0", "mammorg": "mammorg-test@1.0.0"}
    for side in ("R", "L"):
        c = result["breasts"][side]["classifier"]
        assert abs(sum(c["density_probabilities"].values()) - 1) < 1e-3
        assert result["breasts"][side]["density"] in "ABCD"
    assert result["status"] == "complete" and result["preliminary"] is True and result["report"]["text"]
    # Activation while the node runs: the next study uses the new version, no restart.
    registry.install(model_packages["vm2"], activate=True)
    assert run_storescu(node.port, study_files(second)).returncode == 0
    later = _final(node, study_uid_of(second))
    assert node.journal.get_result(later.study_uid)["models"]["versamammo"] == "versamammo-test@2.0.0"
    assert node.journal.get_result(study.study_uid)["models"]["versamammo"] == "versamammo-test@1.0.0"
    shown = subprocess.run([sys.executable, "-m", "node.cli.app", "studies", "show", study.study_uid, "--json"],
                           capture_output=True, text=True, timeout=60,
                           env={"MAMMO_NODE_NODE__DATA_DIR": str(data), "PATH": "/usr/bin:/bin"})
    assert json.loads(shown.stdout)["result"]["models"] == result["models"]


def test_studies_wait_for_models_and_a_broken_model_fails_only_its_study(start_node, tmp_path, phantom_dir,
                                                                         model_packages):
    data = tmp_path / "var"
    node = start_node(data_dir=data)
    node.app.pipeline.rescan_seconds = 0.5
    first, second = sorted(phantom_dir.glob("study-*"))[:2]
    assert run_storescu(node.port, study_files(first)).returncode == 0
    uid = study_uid_of(first)
    wait_for(lambda: node.study(uid).state == "COMPLETE", timeout=30)
    node.app.pipeline.idle.wait(10)
    assert node.study(uid).state == "COMPLETE"            # waits: no models yet, nothing lost
    registry = _install(data, model_packages, "vm1", "rg1")
    assert _final(node, uid).state == "DONE"               # picked up once models are active
    # A package damaged after installation: its study fails with the reason, the node goes on.
    decoder = registry.get("mammorg-test@1.0.0").root / "mammorg_decoder.onnx"
    decoder.write_bytes(b"broken")
    node.app.engine._cache.clear()
    assert run_storescu(node.port, study_files(second)).returncode == 0
    study = _final(node, study_uid_of(second))
    assert study.state == "FAILED" and "failed to load" in study.events[-1]["reason"]
    # The admin repairs the package and retries the study from the command line.
    shutil.copyfile(model_packages["rg1"] / "mammorg_decoder.onnx", decoder)
    retried = subprocess.run([sys.executable, "-m", "node.cli.app", "studies", "retry", study.study_uid, "--json"],
                             capture_output=True, text=True, timeout=60,
                             env={"MAMMO_NODE_NODE__DATA_DIR": str(data), "PATH": "/usr/bin:/bin"})
    assert json.loads(retried.stdout) == {"ok": True, "study_uid": study.study_uid, "from": "FAILED", "to": "COMPLETE"}
    study = _final(node, study.study_uid)
    assert study.state == "DONE" and study.events[-3]["reason"] == "retry requested by an administrator"


@pytest.mark.parametrize("policy", ["report", "partial", "skip"])
def test_incomplete_policy(start_node, tmp_path, phantom_dir, model_packages, policy):
    data = tmp_path / "var"
    _install(data, model_packages, "vm1", "rg1")
    node = start_node(data_dir=data, assembly={"quiet_seconds": 1.0, "deadline_seconds": 60,
                                               "incomplete_policy": policy})
    study_dir = sorted(phantom_dir.glob("study-*"))[2]
    assert run_storescu(node.port, study_files(study_dir, ("R-CC", "R-MLO", "L-CC"))).returncode == 0
    uid = study_uid_of(study_dir)
    if policy == "skip":
        wait_for(lambda: node.study(uid).state == "INCOMPLETE", timeout=30)
        node.app.pipeline.idle.wait(10)
        assert node.study(uid).state == "INCOMPLETE" and node.journal.get_result(uid) is None
        return
    study = _final(node, uid)
    result = node.journal.get_result(uid)
    assert study.state == "DONE" and result["missing_views"] == ["L-MLO"]
    if policy == "report":
        assert result["status"] == "incomplete" and result["models"] == {}
    else:
        assert result["status"] == "partial" and result["breasts"]["L"]["classifier"] is not None


def test_a_study_interrupted_mid_processing_is_processed_at_restart(start_node, tmp_path, phantom_dir, model_packages):
    data = tmp_path / "var"
    node = start_node(data_dir=data)
    node.app.pipeline.stop()                # simulate a crash before processing finished
    study_dir = sorted(phantom_dir.glob("study-*"))[0]
    assert run_storescu(node.port, study_files(study_dir)).returncode == 0
    uid = study_uid_of(study_dir)
    wait_for(lambda: node.study(uid).state == "COMPLETE", timeout=30)
    assert node.journal.transition(uid, "COMPLETE", "PROCESSING", "processing started")
    node.app.stop()
    _install(data, model_packages, "vm1", "rg1")
    restarted = start_node(data_dir=data)
    study = _final(restarted, uid)
    assert study.state == "DONE" and "resumed after a restart" in [e["reason"] for e in study.events]


def _parsed(density=None, birads=None) -> ReportResult:
    parsed = ReportResult()
    parsed.breasts["R"].density, parsed.breasts["R"].birads = density, birads
    return parsed


def _probs(birads_class: int, density_class: int) -> dict:
    b, d = np.full(6, 0.02), np.full(4, 0.02)
    b[birads_class], d[density_class] = 0.9, 0.94
    return {"birads": b, "density": d, "findings": np.array([0.7] + [0.1] * 9)}


def test_report_values_are_preferred_and_disagreements_flagged():
    result = build_result("text", _parsed("C", "4B"), {"R": _probs(4, 1), "L": _probs(1, 2)}, LABELS,
                          {"x": "y@1"}).to_json()
    right = result["breasts"]["R"]
    assert (right["density"], right["density_source"], right["birads"]) == ("C", "report", "4B")
    assert result["disagreements"] == [{"breast": "R", "field": "density", "report": "C", "classifier": "B"}]
    assert result["breasts"]["L"]["density"] == "C" and result["breasts"]["L"]["density_source"] == "classifier"
    assert right["classifier"]["findings"] == [{"kind": "Mass", "score": 0.7}]
    flagged = build_result("t", _parsed("B", "1"), {"R": _probs(5, 1), "L": _probs(1, 2)}, LABELS, {}).to_json()
    assert [d["field"] for d in flagged["disagreements"]] == ["birads"]


def test_the_chosen_source_is_reported_per_field_and_disagreements_stay_flagged():
    from node.results import reporting_sources

    probs = {"R": _probs(4, 1), "L": _probs(1, 2)}
    result = build_result("text", _parsed("C", "4B"), probs, LABELS, {}, sources={"density": "classifier",
                                                                                "birads": "report"}).to_json()
    right = result["breasts"]["R"]
    assert (right["density"], right["density_source"]) == ("B", "classifier")
    assert (right["birads"], right["birads_source"]) == ("4B", "report")
    assert right["report"] == {"density": "C", "birads": "4B"}           # the report's own values are kept
    assert result["disagreements"] == [{"breast": "R", "field": "density", "report": "C", "classifier": "B"}]
    both = build_result("t", _parsed("C", "4B"), probs, LABELS, {}, sources={"density": "classifier",
                                                                           "birads": "classifier"}).to_json()
    assert (both["breasts"]["R"]["birads"], both["breasts"]["R"]["birads_source"]) == ("4", "classifier")
    # no classifier output for a breast: the report's value, whatever the choice
    alone = build_result("t", _parsed("C", "2"), {}, LABELS, {}, sources={"density": "classifier"}).to_json()
    assert (alone["breasts"]["R"]["density"], alone["breasts"]["R"]["density_source"]) == ("C", "report")
    # configured value, else the package's measured choice, else the report
    assert reporting_sources({"density": "package", "birads": "package"}, None) == {"density": "report",
                                                                                   "birads": "report"}
    assert reporting_sources({"density": "package", "birads": "report"},
                             {"density": "classifier", "birads": "classifier"}) == {"density": "classifier",
                                                                                     "birads": "report"}
    assert reporting_sources({"density": "package"}, {"density": "bogus"})["density"] == "report"

