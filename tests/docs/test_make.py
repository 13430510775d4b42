"""The README's two commands: `make run` starts the node with the demo models; `make test` is what CI runs."""
from __future__ import annotations

import os
import re
import shutil
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
    assert "scripts/install.sh --train" in makefile  # install-train, which `make run` uses without shipped demo models
    assert re.search(r"^install:\n\tVENV=\$\(VENV\) scripts/install.sh\n", makefile, re.M)  # runtime only


def test_make_run_installs_the_runtime_only_when_the_demo_packages_are_shipped(tmp_path: Path) -> None:
    """Both demo packages for models.package.demo's DEMO_VERSION in deploy/demo-models/: `make run` installs
    the runtime (no torch) and bootstrap-demo installs them; anything less: the training extras, to train."""
    from models.package.demo import DEMO_VERSION, NAMES

    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run: \$\(if \$\(word 2,\$\(DEMO_SHIPPED\)\),install,install-train\)\n"
                     r"\t\$\(VENV\)/bin/mammo-node models bootstrap-demo --config \$\(CONFIG\)\n"
                     r"\t\$\(VENV\)/bin/mammo-node serve --config \$\(CONFIG\)\n", makefile, re.M)
    (tmp_path / "Makefile").write_text(makefile)
    (tmp_path / "models" / "package").mkdir(parents=True)
    (tmp_path / "models" / "package" / "demo.py").write_text((ROOT / "models" / "package" / "demo.py").read_text())

    def installs(*packages: str) -> list[str]:
        shipped = tmp_path / "deploy" / "demo-models"
        shutil.rmtree(shipped, ignore_errors=True)
        for ref in packages:
            (shipped / ref).mkdir(parents=True)
            (shipped / ref / "manifest.json").write_text("{}")
        # Under `make test` (CI) the parent make's MAKEFLAGS/MAKELEVEL would turn on "Entering directory".
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        out = subprocess.run(["make", "--no-print-directory", "-n", "run", "CONFIG=node.toml"], cwd=tmp_path,
                             capture_output=True, text=True, check=True, env=env).stdout.splitlines()
        assert out[1:] == [".venv/bin/mammo-node models bootstrap-demo --config node.toml",
                           ".venv/bin/mammo-node serve --config node.toml"], out
        return out[:1]

    current = [f"{name}@{DEMO_VERSION}" for name in NAMES.values()]
    assert installs(*current) == ["VENV=.venv scripts/install.sh"]
    assert installs() == ["VENV=.venv scripts/install.sh --train"]
    assert installs(current[0]) == ["VENV=.venv scripts/install.sh --train"]
    assert installs(*(f"{name}@0.0.0-old" for name in NAMES.values())) == ["VENV=.venv scripts/install.sh --train"]


def test_make_run_serves_the_demo_models(tmp_path: Path) -> None:
    """`make run` with a configuration whose data directory already holds the demo packages: the
    install step is a no-op here (the runtime, or the training extras, whichever the rule above
    picks, are installed already), bootstrap-demo sees them active, and `serve` answers C-ECHO."""
    from node.dicom.scu import echo
    from node.packages.registry import ModelRegistry
    from tests.packages import build_mammorg_package, build_versamammo_package

    data = tmp_path / "var"
    registry = ModelRegistry(data / "models")
    from models.package.demo import DEMO_VERSION, NAMES

    registry.install(build_versamammo_package(tmp_path / "vm", DEMO_VERSION, name=NAMES["versamammo"]),
                     activate=True)
    registry.install(build_mammorg_package(tmp_path / "rg", DEMO_VERSION, name=NAMES["mammorg"]), activate=True)
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
