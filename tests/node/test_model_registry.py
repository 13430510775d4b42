"""`mammo-node models`: install checks everything, activation is atomic, rollback and remove are safe,
and a running node's studies keep the versions they started with."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from node.inference.engine import InferenceEngine, ModelUnavailable
from node.inference.session import SessionSettings
from models.package.manifest import PackageError, read_manifest, write_manifest
from node.packages.registry import ModelRegistry

CPU = SessionSettings(providers=("cpu",))


@pytest.fixture(scope="module")
def built(model_packages):
    return model_packages


@pytest.fixture()
def registry(tmp_path):
    return ModelRegistry(tmp_path / "models", CPU)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_install_directory_and_tar_then_list(registry, built):
    a = registry.install(built["vm1"])
    b = registry.install(built["vm2"])
    assert (a.ref, b.ref) == ("versamammo-test@1.0.0", "versamammo-test@2.0.0")
    assert [p.ref for p in registry.installed()] == [a.ref, b.ref]
    assert registry.active() == {}
    with pytest.raises(PackageError, match="already installed \\(identical\\)"):
        registry.install(built["vm1"])


def test_tampered_file_is_refused_with_its_name(registry, built, tmp_path):
    bad = _copy(built["vm1"], tmp_path / "bad")
    with open(bad / "versamammo.onnx", "r+b") as fh:
        fh.seek(-100, 2)
        fh.write(b"\0" * 10)
    with pytest.raises(PackageError, match="versamammo.onnx: sha256 does not match"):
        registry.install(bad)
    assert registry.installed() == [] and not list((registry.packages_dir).glob(".staging-*"))


def test_missing_and_extra_files_are_refused(registry, built, tmp_path):
    gone = _copy(built["vm1"], tmp_path / "gone")
    (gone / "versamammo_fp16.onnx").unlink()
    with pytest.raises(PackageError, match="versamammo_fp16.onnx: missing"):
        registry.install(gone)
    extra = _copy(built["vm1"], tmp_path / "extra")
    (extra / "notes.txt").write_text("hello")
    with pytest.raises(PackageError, match="notes.txt: not listed"):
        registry.install(extra)


def test_golden_vectors_that_this_machine_does_not_reproduce_are_refused(registry, built, tmp_path):
    """A consistent package (sha256s rewritten) whose golden outputs are wrong: install runs the graph."""
    bad = _copy(built["vm1"], tmp_path / "golden")
    golden = dict(np.load(bad / "golden" / "versamammo.npz"))
    golden["expected.density"] = golden["expected.density"][:, ::-1].copy()
    np.savez_compressed(bad / "golden" / "versamammo.npz", **golden)
    data = json.loads((bad / "manifest.json").read_text())
    write_manifest(bad, data)
    with pytest.raises(PackageError, match="golden|density"):
        registry.install(bad)


def test_bad_manifest_and_unsafe_archives_are_refused(registry, built, tmp_path):
    broken = _copy(built["vm1"], tmp_path / "broken")
    data = json.loads((broken / "manifest.json").read_text())
    data["kind"] = "toaster"
    (broken / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(PackageError, match="kind 'toaster'"):
        registry.install(broken)
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("pkg/link")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(PackageError, match="not a plain file"):
        registry.install(evil)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a package")
    with pytest.raises(PackageError, match="neither a package directory nor a .tar"):
        registry.install(junk)


def test_activate_rollback_remove(registry, built):
    registry.install(built["vm1"])
    registry.install(built["vm2"])
    registry.install(built["rg1"], activate=True)
    assert registry.activate("versamammo-test@1.0.0")[0] is None
    assert registry.activate("versamammo-test@2.0.0")[0] == "versamammo-test@1.0.0"
    with pytest.raises(PackageError, match="active versamammo package"):
        registry.remove("versamammo-test@2.0.0")
    assert registry.rollback() == ("versamammo-test@2.0.0", "versamammo-test@1.0.0")
    assert registry.active() == {"versamammo": "versamammo-test@1.0.0", "mammorg": "mammorg-test@1.0.0"}
    with pytest.raises(PackageError, match="no previous versamammo"):
        registry.rollback("versamammo")
    with pytest.raises(PackageError, match="no previous mammorg"):
        registry.rollback("mammorg")
    registry.remove("versamammo-test@2.0.0")
    assert [p.ref for p in registry.installed()] == ["mammorg-test@1.0.0", "versamammo-test@1.0.0"]
    with pytest.raises(PackageError, match="not installed"):
        registry.activate("versamammo-test@2.0.0")


def test_a_study_keeps_the_versions_it_started_with(registry, built):
    """Snapshot semantics: activation mid-study changes the next study, not the running one."""
    registry.install(built["vm1"], activate=True)
    registry.install(built["vm2"])
    engine = InferenceEngine(registry, CPU)
    running = engine.snapshot()
    image = np.asarray(np.load(built["vm1"] / "golden" / "versamammo.npz")["image"][:1])
    before = running.versamammo.run(image).density
    registry.activate("versamammo-test@2.0.0")
    assert np.array_equal(running.versamammo.run(image).density, before)       # the old study: old model
    following = engine.snapshot()
    assert following.versions["versamammo"] == "versamammo-test@2.0.0"
    assert not np.allclose(following.versamammo.run(image).density, before)    # the next: the new one
    assert running.versions["versamammo"] == "versamammo-test@1.0.0"
    with pytest.raises(ModelUnavailable, match="no active mammorg"):
        following.mammorg


def test_state_file_is_replaced_atomically_and_survives_a_new_registry(registry, built):
    registry.install(built["vm1"], activate=True)
    state = json.loads(registry.state_path.read_text())
    assert state["active"] == {"versamammo": "versamammo-test@1.0.0"}
    assert [e["action"] for e in state["log"]] == ["install", "activate"]
    assert not list(registry.dir.glob(".state-*"))
    assert ModelRegistry(registry.dir).active() == {"versamammo": "versamammo-test@1.0.0"}


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    config = tmp_path / "node.toml"
    if not config.exists():
        config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n[inference]\nproviders = ["cpu"]\n')
    return subprocess.run([sys.executable, "-m", "node.cli.app", "models", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=300)


def test_cli_workflow_with_json(tmp_path, built):
    out = _cli(tmp_path, "install", str(built["vm1"]), "--activate", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["active"] is True
    assert _cli(tmp_path, "install", str(built["vm2"]), "--json").returncode == 0
    out = _cli(tmp_path, "activate", "versamammo-test@2.0.0", "--json")
    assert json.loads(out.stdout) == {"ok": True, "kind": "versamammo", "active": "versamammo-test@2.0.0",
                                      "previous": "versamammo-test@1.0.0"}
    listed = json.loads(_cli(tmp_path, "list", "--json").stdout)
    assert listed["active"] == {"versamammo": "versamammo-test@2.0.0"}
    assert [(p["ref"], p["active"]) for p in listed["packages"]] == [("versamammo-test@1.0.0", False),
                                                                    ("versamammo-test@2.0.0", True)]
    out = _cli(tmp_path, "verify", "versamammo-test@2.0.0", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["ok"] is True
    out = _cli(tmp_path, "remove", "versamammo-test@2.0.0", "--json")
    assert out.returncode == 1 and "active" in json.loads(out.stdout)["error"]
    out = _cli(tmp_path, "rollback", "--json")
    assert json.loads(out.stdout)["active"] == "versamammo-test@1.0.0"
    assert _cli(tmp_path, "remove", "versamammo-test@2.0.0").returncode == 0
    out = _cli(tmp_path, "install", str(tmp_path / "nowhere"))
    assert out.returncode == 1 and "nowhere: no such file or directory" in " ".join(out.stderr.split())


def test_verify_names_a_file_damaged_after_installation(tmp_path, built):
    assert _cli(tmp_path, "install", str(built["vm1"])).returncode == 0
    installed = tmp_path / "data" / "models" / "packages" / "versamammo-test@1.0.0"
    (installed / "golden" / "versamammo.npz").write_bytes(b"oops")
    out = _cli(tmp_path, "verify", "versamammo-test@1.0.0", "--json")
    assert out.returncode == 1
    assert any("golden/versamammo.npz" in p for p in json.loads(out.stdout)["problems"])


def test_configured_generation_settings_override_the_package(registry, built):
    registry.install(built["rg1"], activate=True)
    engine = InferenceEngine(registry, CPU, generation={"max_new_tokens": 3, "num_beams": None})
    runner = engine.snapshot().mammorg
    assert runner.defaults.max_new_tokens == 3 and runner.defaults.num_beams == 1
    golden = np.load(built["rg1"] / "golden" / "mammorg.npz")
    assert all(len(row) <= 3 for row in runner.generate_ids(golden["views"], golden["present"]))
