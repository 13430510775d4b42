"""`mammo-node models bootstrap-demo` with demo packages shipped in the repository (deploy/demo-models/):
installed and activated without torch and without training; a damaged copy is refused before anything
is activated; --retrain and a missing shipped copy need torch and say so."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.package.demo import DEMO_VERSION, NAMES
from node.packages import demo

ROOT = Path(__file__).resolve().parents[2]
REFS = {kind: f"{name}@{DEMO_VERSION}" for kind, name in NAMES.items()}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """Tiny random-weight packages under the demo names and version, laid out like deploy/demo-models/."""
    from tests.packages import build_mammorg_package, build_versamammo_package

    root = tmp_path_factory.mktemp("shipped") / "demo-models"
    build_versamammo_package(root / REFS["versamammo"], DEMO_VERSION, name=NAMES["versamammo"])
    build_mammorg_package(root / REFS["mammorg"], DEMO_VERSION, name=NAMES["mammorg"])
    return root


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> Path:
    """A PYTHONPATH entry whose ``torch`` cannot be imported (nor can the training child's)."""
    path = tmp_path_factory.mktemp("no-torch")
    (path / "torch").mkdir()
    (path / "torch" / "__init__.py").write_text('raise ImportError("torch is not installed (test stub)")\n')
    return path


def _cli(tmp_path: Path, *args: str, no_torch: Path | None = None, shipped: Path | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    config = tmp_path / "node.toml"
    if not config.exists():
        config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n[inference]\nproviders = ["cpu"]\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}
    env["COLUMNS"] = "400"  # one line per message, whatever the terminal
    if no_torch is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(no_torch), str(ROOT)])
    if shipped is not None:
        env[demo.ENV] = str(shipped)
    return subprocess.run([sys.executable, "-m", "node.cli.app", "models", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _active(tmp_path: Path) -> dict[str, str]:
    return json.loads(_cli(tmp_path, "list", "--json").stdout)["active"]


def test_the_stub_really_hides_torch(no_torch):
    env = dict(os.environ, PYTHONPATH=str(no_torch))
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "test stub" in proc.stderr


def test_lookup_needs_every_kind_at_the_current_version(shipped, tmp_path, monkeypatch):
    monkeypatch.delenv(demo.ENV, raising=False)
    assert demo.SHIPPED_DIR == ROOT / "deploy" / "demo-models"
    assert demo.shipped_root() == demo.SHIPPED_DIR
    assert demo.shipped_packages(shipped) == {kind: shipped / ref for kind, ref in REFS.items()}
    monkeypatch.setenv(demo.ENV, str(shipped))
    assert demo.shipped_root() == shipped and demo.shipped_packages() == demo.shipped_packages(shipped)
    partial = tmp_path / "partial"
    shutil.copytree(shipped / REFS["versamammo"], partial / REFS["versamammo"])
    (partial / f"{NAMES['mammorg']}@0.0.1").mkdir()
    (partial / f"{NAMES['mammorg']}@0.0.1" / "manifest.json").write_text("{}")
    assert demo.shipped_packages(partial) is None  # one kind only, the other at another version
    assert demo.shipped_listing(partial) == sorted([REFS["versamammo"], f"{NAMES['mammorg']}@0.0.1"])
    assert demo.shipped_packages(tmp_path / "nowhere") is None and demo.shipped_listing(tmp_path / "nowhere") == []


def test_shipped_packages_are_installed_without_torch_then_a_second_run_is_a_no_op(shipped, no_torch, tmp_path):
    start = time.perf_counter()
    out = _cli(tmp_path, "bootstrap-demo", "--json", no_torch=no_torch, shipped=shipped)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result == {"ok": True, "active": REFS, "built": False, "installed": list(REFS.values()),
                      "source": "shipped"}
    assert time.perf_counter() - start < 120
    assert not (tmp_path / "data" / "cache").exists()  # nothing was trained
    listed = json.loads(_cli(tmp_path, "list", "--json").stdout)
    assert listed["active"] == REFS and all(p["active"] for p in listed["packages"])

    out = _cli(tmp_path, "bootstrap-demo", "--json", no_torch=no_torch, shipped=shipped)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"ok": True, "active": REFS, "built": False, "installed": [],
                                      "source": "cached"}
    out = _cli(tmp_path, "bootstrap-demo", no_torch=no_torch, shipped=shipped)
    assert out.returncode == 0 and "demo models already active" in out.stdout


def test_from_a_directory_and_reactivating_installed_packages(shipped, no_torch, tmp_path):
    out = _cli(tmp_path, "bootstrap-demo", "--from", str(shipped), no_torch=no_torch)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"installing the demonstration packages shipped in {shipped}" in out.stdout
    assert "(shipped)" in out.stdout and "not for clinical use" in out.stdout
    assert _active(tmp_path) == REFS
    # Another version active meanwhile (the same files under another version: the manifest does not
    # list itself): the installed demo packages are activated again, nothing is installed.
    other = shutil.copytree(shipped / REFS["versamammo"], tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(dict(manifest, version="9.0.0")))
    assert _cli(tmp_path, "install", str(other), "--activate").returncode == 0
    assert _active(tmp_path)["versamammo"] == f"{NAMES['versamammo']}@9.0.0"
    out = _cli(tmp_path, "bootstrap-demo", "--json", no_torch=no_torch, shipped=tmp_path / "empty")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"ok": True, "active": REFS, "built": False, "installed": [],
                                      "source": "cached"}


def test_a_damaged_shipped_package_is_refused_and_nothing_is_activated(shipped, no_torch, tmp_path):
    broken = tmp_path / "demo-models"
    shutil.copytree(shipped, broken)
    onnx = broken / REFS["mammorg"] / "mammorg_prefix.onnx"
    with open(onnx, "r+b") as fh:
        fh.seek(-100, 2)
        fh.write(b"\0" * 10)
    out = _cli(tmp_path, "bootstrap-demo", "--json", no_torch=no_torch, shipped=broken)
    assert out.returncode == 1, out.stdout + out.stderr
    error = json.loads(out.stdout)["error"]
    assert f"shipped demo package {broken / REFS['mammorg']} refused, nothing activated" in error
    assert "mammorg_prefix.onnx: sha256 does not match the manifest" in error and "--retrain" in error
    assert _active(tmp_path) == {}
    out = _cli(tmp_path, "bootstrap-demo", no_torch=no_torch, shipped=broken)
    assert out.returncode == 1 and "sha256 does not match" in out.stderr and not out.stdout.count("active:")
    assert _active(tmp_path) == {}


def test_retrain_needs_torch_even_with_shipped_packages(shipped, no_torch, tmp_path):
    out = _cli(tmp_path, "bootstrap-demo", "--retrain", "--json", no_torch=no_torch, shipped=shipped)
    assert out.returncode == 1, out.stdout + out.stderr
    assert json.loads(out.stdout) == {"ok": False, "error": "bootstrap-demo --retrain trains the demo models and "
                                      "needs the training extras: scripts/install.sh --train"}
    out = _cli(tmp_path, "bootstrap-demo", "--retrain", no_torch=no_torch, shipped=shipped)
    assert out.returncode == 1 and "scripts/install.sh --train" in out.stderr
    assert _active(tmp_path) == {} and not (tmp_path / "data" / "cache").exists()


def test_without_shipped_packages_or_torch_the_error_names_where_they_were_looked_for(no_torch, tmp_path):
    elsewhere = tmp_path / "demo-models"
    (elsewhere / f"{NAMES['versamammo']}@0.0.1").mkdir(parents=True)
    (elsewhere / f"{NAMES['versamammo']}@0.0.1" / "manifest.json").write_text("{}")
    out = _cli(tmp_path, "bootstrap-demo", "--json", no_torch=no_torch, shipped=elsewhere)
    assert out.returncode == 1
    error = json.loads(out.stdout)["error"]
    assert f"no demonstration packages for version {DEMO_VERSION} are shipped in {elsewhere}" in error
    assert f"(found: {NAMES['versamammo']}@0.0.1)" in error and "scripts/install.sh --train" in error
    if demo.shipped_packages(demo.SHIPPED_DIR) is None:  # by default, the repository's own directory
        out = _cli(tmp_path, "bootstrap-demo", "--json", no_torch=no_torch)
        assert out.returncode == 1 and str(ROOT / "deploy" / "demo-models") in json.loads(out.stdout)["error"]


def test_usage_errors(shipped, tmp_path):
    out = _cli(tmp_path, "bootstrap-demo", "--retrain", "--from", str(shipped))
    assert out.returncode == 2 and "give one of them" in out.stderr
    out = _cli(tmp_path, "bootstrap-demo", "--from", str(tmp_path / "nowhere"), "--json")
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"].startswith(f"{tmp_path / 'nowhere'} holds no demo packages for version "
                                                      f"{DEMO_VERSION}: expected ")
    assert _active(tmp_path) == {}
