"""Fixtures that run a real node on loopback and make real phantom studies."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from node.app import NodeApp
from node.config import Settings
from phantoms.study import PhantomOptions, write_phantom_studies


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def node_settings(data_dir: Path, port: int, **sections: dict[str, Any]) -> dict[str, Any]:
    """Settings for a test node: loopback, fsync on (as in production), short timers."""
    base = {
        "node": {"data_dir": str(data_dir), "min_free_mb": 1},
        "dicom": {"port": port, "bind": "127.0.0.1"},
        "http": {"port": 0},
        "assembly": {"settle_seconds": 0.5, "quiet_seconds": 30, "deadline_seconds": 120},
    }
    return _merge(base, sections)


@dataclass
class RunningNode:
    app: NodeApp
    settings: Settings

    @property
    def port(self) -> int:
        return self.app.listener.port

    @property
    def journal(self):
        return self.app.journal

    def study(self, study_uid: str):
        return self.app.journal.get_study(study_uid, with_events=True)


@pytest.fixture
def start_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunningNode]]:
    """Start an in-process node; ``start_node(dicom={...}, assembly={...})`` overrides settings."""
    for key in list(os.environ):
        if key.startswith("MAMMO_NODE_"):
            monkeypatch.delenv(key)
    started: list[NodeApp] = []

    def _start(data_dir: Path | None = None, **sections: dict[str, Any]) -> RunningNode:
        settings = Settings(**node_settings(data_dir or tmp_path / "var", free_port(), **sections))
        app = NodeApp(settings)
        app.start()
        started.append(app)
        return RunningNode(app, settings)

    yield _start
    for app in started:
        app.stop()


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small phantom studies (four views each), written once per session."""
    out = tmp_path_factory.mktemp("phantoms")
    write_phantom_studies(out, 3, seed=11, options=PhantomOptions(size="small"))
    return out


@pytest.fixture(scope="session")
def phantom_extras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small phantom study with extra views (spot compression, XCCL)."""
    out = tmp_path_factory.mktemp("phantoms-extra")
    write_phantom_studies(out, 1, seed=12, options=PhantomOptions(size="small", extra_views=True))
    return out


def study_files(study_dir: Path, views: tuple[str, ...] = ("R-CC", "R-MLO", "L-CC", "L-MLO")) -> list[Path]:
    return [study_dir / f"{v}.dcm" for v in views]


def study_uid_of(study_dir: Path) -> str:
    import json

    return json.loads((study_dir / "labels.json").read_text())["study_uid"]


def run_storescu(port: int, files: list[Path], *extra: str, aet: str = "STORESCU") -> subprocess.CompletedProcess:
    from tests.tools import require_tool

    storescu = require_tool("storescu")
    return subprocess.run([storescu, "-aet", aet, "-aec", "MAMMO_NODE", *extra, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def mammo_node_cmd() -> list[str]:
    """The installed CLI, run with the same interpreter as the tests."""
    return [sys.executable, "-m", "node.cli.app"]


def has_tool(name: str) -> bool:
    return shutil.which(name) is not None
