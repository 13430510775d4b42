"""The node as a site installs it: ``scripts/install.sh`` without the ``train`` extra (no torch), in a
fresh virtual environment, pinned by constraints.txt. In that environment the administrator's
commands work end to end: ``phantom`` writes a study, ``models bootstrap-demo`` installs and
activates the shipped demo packages (golden vectors checked on ONNX Runtime), ``models verify``
passes, and ``serve`` processes a study sent over DICOM into a result with a generated report.

tests/test_layering.py proves from the source that the runtime never imports torch; this proves
that it also runs without it (a missing runtime dependency in pyproject.toml would fail here).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.package.demo import DEMO_VERSION, NAMES

ROOT = Path(__file__).resolve().parents[2]
REFS = {kind: f"{name}@{DEMO_VERSION}" for kind, name in NAMES.items()}


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VENV=str(venv), PYTHON=sys.executable)
    done = subprocess.run(["scripts/install.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "400"
    return env


def _node(venv: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(venv / "bin" / "mammo-node"), *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=venv.parent)
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_runtime_installs_without_torch_and_processes_a_study(runtime_venv, tmp_path):
    py = str(runtime_venv / "bin" / "python")
    for absent in ("torch", "timm", "transformers"):
        probe = subprocess.run([py, "-c", f"import {absent}"], capture_output=True, text=True, env=_env())
        assert probe.returncode != 0, f"{absent} is installed in the runtime environment"
    pinned = subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True, env=_env()).stdout
    constraints = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                       if "==" in line and not line.startswith("#"))
    for line in pinned.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            assert constraints.get(name, version) == version, f"{name} {version} is not the pinned {constraints[name]}"

    written = _node(runtime_venv, "phantom", str(tmp_path / "studies"), "--studies", "1", "--seed", "4242", "--json")
    assert written.returncode == 0, written.stderr
    study_dir = Path(json.loads(written.stdout)["studies"][0])

    port = _free_port()
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\nmin_free_mb = 1\n'
                      f'[dicom]\nport = {port}\nbind = "127.0.0.1"\n[http]\nport = 0\n'
                      '[assembly]\nsettle_seconds = 0.5\nquiet_seconds = 30\ndeadline_seconds = 120\n'
                      '[inference]\nproviders = ["cpu"]\n')
    boot = _node(runtime_venv, "models", "bootstrap-demo", "--config", str(config), "--json")
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert json.loads(boot.stdout)["active"] == REFS
    for ref in REFS.values():
        verified = _node(runtime_venv, "models", "verify", ref, "--config", str(config), "--json")
        assert verified.returncode == 0, verified.stdout + verified.stderr

    server = subprocess.Popen([str(runtime_venv / "bin" / "mammo-node"), "serve", "--config", str(config)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
                              cwd=runtime_venv.parent)
    try:
        deadline = time.monotonic() + 60
        while True:
            echo = _node(runtime_venv, "echo", "127.0.0.1", str(port), "--aec", "MAMMO_NODE", "--json", timeout=30)
            if echo.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        sent = _node(runtime_venv, "send", "127.0.0.1", str(port), str(study_dir), "--aec", "MAMMO_NODE", "--json")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        deadline = time.monotonic() + 240
        studies: list = []
        while time.monotonic() < deadline:
            listed = _node(runtime_venv, "studies", "list", "--config", str(config), "--json")
            studies = json.loads(listed.stdout) if listed.returncode == 0 else []
            if studies and studies[0]["state"] in ("DONE", "FAILED"):
                break
            time.sleep(1)
        assert studies and studies[0]["state"] == "DONE", studies
        shown = json.loads(_node(runtime_venv, "studies", "show", studies[0]["study_uid"], "--config", str(config),
                                 "--json").stdout)
        result = shown["result"]
        assert set(result["breasts"]) == {"R", "L"}
        assert set(result["models"]) == set(REFS)
        assert all(DEMO_VERSION in str(version) for version in result["models"].values()), result["models"]
        assert "BI-RADS" in result["report"]["text"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
