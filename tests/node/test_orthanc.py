"""A real PACS as the sender: Orthanc forwards a study to the node by C-STORE."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from node.assembly import COMPLETE
from tests.node.conftest import free_port, study_uid_of, wait_for
from tests.tools import require_tool


def _http(method: str, url: str, body: bytes | None = None, timeout: float = 60) -> bytes:
    request = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


@pytest.fixture
def orthanc(tmp_path: Path, start_node):
    binary = require_tool("Orthanc")
    node = start_node()
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "test-pacs", "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"), "DicomAet": "ORTHANC", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False, "Plugins": [],
        "DicomModalities": {"node": ["MAMMO_NODE", "127.0.0.1", node.port]},
    }
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([binary, str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, TCP_NODELAY="1"))
    base = f"http://127.0.0.1:{http_port}"

    def up() -> bool:
        assert proc.poll() is None, "Orthanc exited"
        try:
            return bool(_http("GET", base + "/system", timeout=2))
        except OSError:
            return False

    wait_for(up, timeout=30, interval=0.1)
    yield base, node
    proc.terminate()
    proc.wait(timeout=20)


def test_orthanc_forwards_a_study_that_completes(orthanc, phantom_dir: Path) -> None:
    base, node = orthanc
    study_dir = sorted(p for p in phantom_dir.iterdir() if p.is_dir())[0]
    for path in sorted(study_dir.glob("*.dcm")):
        _http("POST", base + "/instances", path.read_bytes())
    studies = json.loads(_http("GET", base + "/studies"))
    assert len(studies) == 1
    job = json.loads(_http("POST", base + "/modalities/node/store",
                           json.dumps({"Resources": studies, "Synchronous": True}).encode()))
    assert job.get("FailedInstancesCount", 0) == 0
    uid = study_uid_of(study_dir)
    study = wait_for(lambda: (s := node.study(uid)) and s.state == COMPLETE and s)
    assert study.instance_count == 4
    assert {i.calling_aet for i in node.journal.study_instances(uid)} == {"ORTHANC"}
