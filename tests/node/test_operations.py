"""Operations: /healthz, /readyz, Prometheus /metrics and the audit log of a running node."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from node.audit import read_audit
from node.packages.registry import ModelRegistry
from tests.node.conftest import run_storescu, study_files, study_uid_of, wait_for


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{labels} not in metrics")


def test_health_readiness_metrics_and_audit(start_node, tmp_path: Path, phantom_dir: Path, model_packages) -> None:
    data = tmp_path / "var"
    node = start_node(data_dir=data)
    port = node.app.http.port
    assert _get(port, "/healthz")[0] == 200
    code, body = _get(port, "/readyz")
    assert code == 503 and "no active versamammo or mammorg model package" in json.loads(body)["problems"]
    registry = ModelRegistry(data / "models")
    for key in ("vm1", "rg1"):
        registry.install(model_packages[key], activate=True)
    assert _get(port, "/readyz") == (200, b'{"ready": true, "problems": []}')
    study = sorted(phantom_dir.glob("study-*"))[0]
    uid = study_uid_of(study)
    assert run_storescu(node.port, study_files(study), aet="MODALITY_A").returncode == 0
    wait_for(lambda: node.study(uid).state == "DONE", timeout=120)
    text = _get(port, "/metrics")[1].decode()
    assert _metric(text, "mammo_node_instances_received_total", calling_ae="MODALITY_A") == 4
    assert _metric(text, "mammo_node_associations_total", calling_ae="MODALITY_A") == 1
    size = sum(i.size for i in node.journal.study_instances(uid))  # as stored (Part 10 file meta added)
    assert _metric(text, "mammo_node_received_bytes_total", calling_ae="MODALITY_A") == size
    assert _metric(text, "mammo_node_studies", state="DONE") == 1
    assert _metric(text, "mammo_node_inference_seconds_count", model="mammorg") == 1
    assert _metric(text, "mammo_node_oldest_open_study_age_seconds") == 0
    assert _get(port, "/nothing")[0] == 404
    node.app.stop()
    events = read_audit(data / "audit.jsonl")
    assert [e["event"] for e in events].count("received") == 4
    assert any(e["event"] == "result" and e["study_uid"] == uid for e in events)
    raw = (data / "audit.jsonl").read_text()
    header = __import__("pydicom").dcmread(study_files(study)[0], stop_before_pixels=True)
    assert str(header.PatientName) not in raw and str(header.PatientID) not in raw
    assert (data / "audit.jsonl").stat().st_mode & 0o077 == 0
