"""The README's two commands: `make run` starts the node with the demo models; `make test` is what CI runs."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.node.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_make_test_is_what_ci_runs() -> None:
    """CI (.ci/run) calls `make test`, which installs through scripts/install.sh (with --train and the
    Debian peers) and runs pytest; the same script installs `make run` and the images."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: install-dev\n\t\$\(PY\) -m pytest", makefile, re.M)
    assert "scripts/install.sh --dev --train --system" in makefile
    assert "scripts/install.sh --train" in makefile  # install-train, which `make run` uses


def test_make_run_serves_the_demo_models(tmp_path: Path) -> None:
    """`make run` with a configuration whose data directory already holds the demo packages: the
    install step is a no-op here, bootstrap-demo sees them active, and `serve` answers C-ECHO."""
    from node.dicom.scu import echo
    from node.packages.registry import ModelRegistry
    from tests.packages import build_mammorg_package, build_versamammo_package

    data = tmp_path / "var"
    registry = ModelRegistry(data / "models")
    registry.install(build_versamammo_package(tmp_path / "vm", "1.0.0", name="versamammo-demo"), activate=True)
    registry.install(build_mammorg_package(tmp_path / "rg", "1.0.0", name="mammorg-demo"), activate=True)
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{data}"\nmin_free_mb = 1\n[dicom]\nport = {port}\nbind = "127.0.0.1"\n'
                      '[http]\nport = 0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMO_NODE_")}
    proc = subprocess.Popen(["make", "run", f"CONFIG={config}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and echo("127.0.0.1", port, timeout=1)[0], timeout=300, interval=1)
    finally:
        os.killpg(proc.pid, 15)
        out = proc.communicate(timeout=60)[0]
    assert "demo models already active" in out, out[-3000:]
