"""deploy/: the systemd unit verifies, the images run the shared install script as a non-root user
with a /healthz healthcheck, the compose lab and the example configurations are valid, and the lab's
RIS listener acknowledges a real ORU over MLLP."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from node.config import load_settings
from tests.node.conftest import free_port, wait_for
from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze")
    unit = (DEPLOY / "systemd" / "mammo-node.service").read_text()
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/mammo-node",
                   "Restart=on-failure", "User=mammo-node"):
        assert option in unit
    # verify checks that ExecStart exists: point the install prefix at this checkout
    local = tmp_path / "mammo-node.service"
    local.write_text(unit.replace("/opt/mammo-node", str(ROOT)))
    assert (ROOT / ".venv" / "bin" / "mammo-node").exists()
    proc = subprocess.run([tool, "verify", str(local)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "mammo-node.service" not in proc.stderr, proc.stderr
    security = subprocess.run([tool, "security", "--offline=yes", str(local)], capture_output=True, text=True,
                              timeout=60)
    exposure = float(re.search(r"Overall exposure level for mammo-node.service: ([0-9.]+)", security.stdout).group(1))
    assert exposure <= 4.0, security.stdout[-2000:]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_images_use_the_shared_install_script_non_root_with_healthcheck(name: str) -> None:
    text = (DEPLOY / "docker" / name).read_text()
    run_lines = [line for line in text.splitlines() if line.startswith("RUN ") or line.startswith("    &&")]
    assert any("scripts/install.sh" in line for line in run_lines)
    assert "pip install -q -e" not in text  # no second install procedure beside the script
    assert re.search(r"^USER mammo-node$", text, re.M)
    assert re.search(r"HEALTHCHECK .*\n.*/healthz", text)
    assert 'VOLUME ["/var/lib/mammo-node"]' in text
    for source in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / source).exists(), source
    config = re.search(r"^COPY (deploy/\S+\.toml) /etc/mammo-node/config.toml", text, re.M).group(1)
    load_settings(ROOT / config)


def test_compose_lab_is_consistent() -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"node", "pacs", "ris"}
    node_cfg = load_settings(DEPLOY / "docker" / "compose-node.toml")
    assert node_cfg.outputs.dicom[0].host == "pacs" and node_cfg.outputs.hl7.host == "ris"
    orthanc = json.loads((DEPLOY / "docker" / "orthanc.json").read_text())
    assert orthanc["DicomModalities"]["node"] == [node_cfg.dicom.ae_title, "node", node_cfg.dicom.port]
    assert orthanc["DicomPort"] == node_cfg.outputs.dicom[0].port and orthanc["DicomAet"] == "ORTHANC"
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / "docker" / source).exists(), source


@pytest.mark.parametrize("path", sorted((DEPLOY / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_example_configurations_are_valid(path: Path) -> None:
    settings = load_settings(path)
    assert settings.dicom.ae_title


def test_lab_ris_listener_acknowledges_an_oru(tmp_path: Path) -> None:
    from node.config import HL7Output
    from node.outputs.hl7 import build_oru
    from node.outputs.identity import control_id
    from node.outputs.mllp import MLLPClient
    from node.study_result import StudyResult
    from tests.node.outputs_helpers import phantom_case

    port = free_port()
    out = tmp_path / "messages.hl7"
    proc = subprocess.Popen([sys.executable, str(DEPLOY / "ris" / "ris_listener.py"), "--port", str(port),
                             "--out", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert "RIS listener on" in proc.stdout.readline()
        from phantoms.study import PhantomOptions, write_phantom_studies

        write_phantom_studies(tmp_path / "ph", 1, seed=3, options=PhantomOptions(size="small"))
        source, result = phantom_case(next(p for p in (tmp_path / "ph").iterdir() if p.is_dir()))
        message = build_oru(source, StudyResult.from_json(result), HL7Output(host="127.0.0.1", port=port),
                            created_at=time.time())
        ack = wait_for(lambda: _send(MLLPClient("127.0.0.1", port, 2, 5), message), timeout=10, interval=0.2)
        assert ack.outcome(control_id(source.study_uid, StudyResult.from_json(result))) == "accepted"
        assert out.read_text().startswith("MSH|")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _send(client, message):
    from node.outputs.mllp import MLLPError

    try:
        return client.send(message)
    except MLLPError:
        return None


# ----- ONNX Runtime under the deployed environment and sandbox (issue 17, item 14) -----------------

_ORT_PROBE = """
import numpy as np
import onnxruntime as ort  # first, without the node's own default: the deployed environment must suffice
from onnx import TensorProto, helper

graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
session.run(None, {"x": np.zeros(1, np.float32)})
"""


def _unit_environment(unit: str) -> dict[str, str]:
    pairs = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("Environment=")]
    return dict(pair.split("=", 1) for pair in pairs)


def _image_environment(dockerfile: str) -> dict[str, str]:
    block = re.search(r"^ENV ((?:.*\\\n)*.*)$", dockerfile, re.M).group(1)
    return dict(item.split("=", 1) for item in block.replace("\\\n", " ").split())


def _deployed_environment(source: str) -> tuple[dict[str, str], str]:
    """(the environment the node runs with, the home directory of the user it runs as)."""
    if source == "systemd":
        unit = (DEPLOY / "systemd" / "mammo-node.service").read_text()
        home = re.search(r"useradd .*--home (\S+)", unit).group(1)
        return _unit_environment(unit), home
    text = (DEPLOY / "docker" / source).read_text()
    home = re.search(r"useradd .*--home-dir (\S+)", text).group(1)
    return _image_environment(text), home


@pytest.mark.parametrize("source", ["systemd", "Dockerfile.cpu", "Dockerfile.cuda"])
def test_deployed_environment_keeps_onnxruntime_out_of_home(source: str, tmp_path: Path) -> None:
    """The service user's home is the (writable) data directory, so ONNX Runtime's telemetry store
    would land there: the unit and the images switch it off themselves, whatever imports
    onnxruntime first."""
    env, home = _deployed_environment(source)
    assert env.get("ORT_DISABLE_TELEMETRY") == "1"
    assert home == env["MAMMO_NODE_NODE__DATA_DIR"] == "/var/lib/mammo-node"
    run_env = {k: v for k, v in env.items() if k != "PATH" and not k.startswith("MAMMO_NODE_")}
    run_env |= {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"}
    (tmp_path / "home").mkdir()
    result = subprocess.run([sys.executable, "-c", _ORT_PROBE], env=run_env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / "home").rglob("*")) == []


def test_systemd_sandbox_allows_what_onnxruntime_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything the node's ONNX Runtime writes is under the data directory (installed model
    packages, TensorRT's engine cache), which is the unit's only writable path; GPUs need
    /dev/nvidia* and executable memory for CUDA's JIT, so neither is taken away."""
    unit = (DEPLOY / "systemd" / "mammo-node.service").read_text()
    options = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    writable = [Path(p) for p in options["ReadWritePaths"].split()]
    for key in [k for k in os.environ if k.startswith("MAMMO_NODE_")]:
        monkeypatch.delenv(key)
    for key, value in _unit_environment(unit).items():
        monkeypatch.setenv(key, value)
    settings = load_settings(DEPLOY / "examples" / "gpu-tensorrt.toml")
    for path in (settings.data_dir, settings.models_dir, settings.trt_cache_dir):
        assert any(path.is_relative_to(w) for w in writable), path
    assert options["ProtectSystem"] == "strict" and options["ProtectHome"] == "yes"
    assert options.get("PrivateDevices", "no") == "no"
    assert options.get("MemoryDenyWriteExecute", "no") == "no"
