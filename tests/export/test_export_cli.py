"""`mammo-export`: checkpoint -> package that `mammo-node models install` accepts; TensorRT says why not."""
from __future__ import annotations

import json
import subprocess
import sys

from models.versamammo.checkpoint import save_checkpoint
from tests.packages import tiny_student


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export.cli", *args], capture_output=True, text=True, timeout=600)


def test_versamammo_checkpoint_to_installed_package(tmp_path):
    ckpt = tmp_path / "student.pt"
    # what stage 2 writes into student_best.pt: the validation scores it was selected on
    val = {"score": 0.61, "density_accuracy": 0.8, "birads_macro_f1": 0.42}
    save_checkpoint(tiny_student(3), ckpt, extra={"stage": "distill", "selected_on": "val", "val": val, "epoch": 7})
    evaluation = tmp_path / "eval.json"  # `mammo-train versamammo-eval --json > eval.json`
    evaluation.write_text(json.dumps({"split": "test", "density": {"accuracy": {"value": 0.79}}}))
    out = _run("versamammo", str(ckpt), "--out", str(tmp_path / "pkg"), "--version", "0.3.0", "--tar", "--json",
               "--metrics", str(evaluation))
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["ref"] == "versamammo@0.3.0" and info["package"].endswith("pkg.tar")
    again = _run("versamammo", str(ckpt), "--out", str(tmp_path / "pkg"), "--version", "0.3.0")
    assert again.returncode == 2 and "--force" in again.stderr
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n[inference]\nproviders = ["cpu"]\n')
    installed = subprocess.run([sys.executable, "-m", "node.cli.app", "models", "install", info["package"], "--json",
                                "--config", str(config)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    manifest = json.loads((tmp_path / "data" / "models" / "packages" / "versamammo@0.3.0" / "manifest.json").read_text())
    assert manifest["training"]["epoch"] == 7
    assert manifest["metrics"] == {"validation": val, "selected_on": "val",
                                   "evaluation": {"split": "test", "density": {"accuracy": {"value": 0.79}}}}
    assert manifest["demonstration"] is False and "radiologist" in manifest["intended_use"]


def test_tensorrt_without_tensorrt_explains_and_fails(tmp_path):
    from node.inference.session import gpu_driver_present

    out = _run("tensorrt", str(tmp_path))
    if gpu_driver_present():  # a GPU machine: the command may work; only the CPU case is asserted
        return
    assert out.returncode == 1 and "TensorRT is not available here" in out.stderr


def test_mammorg_model_dir_to_package(tmp_path):
    """`mammo-export mammorg MODEL_DIR --out DIR --version V --tar`, as docs/model-packages.md shows."""
    from models.mammorg.model import save_mammorg
    from tests.packages import tiny_mammorg

    model, tokenizer = tiny_mammorg(2)
    best = {"score": -0.27, "val_loss": 0.27, "epoch": 3, "iteration": 36}  # what the SFT stage records
    save_mammorg(model, tmp_path / "model", tokenizer, extra={"stage": "sft", "best": best, "selected_on": "val loss"})
    bad = tmp_path / "metrics.json"
    bad.write_text("[1, 2]")
    refused = _run("mammorg", str(tmp_path / "model"), "--out", str(tmp_path / "pkg"), "--version", "1.1.0",
                   "--metrics", str(bad))
    assert refused.returncode == 2 and "expected a JSON object" in refused.stderr
    assert not (tmp_path / "pkg").exists()
    out = _run("mammorg", str(tmp_path / "model"), "--out", str(tmp_path / "pkg"), "--version", "1.1.0", "--tar",
               "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["ref"] == "mammorg@1.1.0" and info["package"].endswith("pkg.tar")
    import tarfile

    with tarfile.open(info["package"]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("manifest.json"))
        manifest = json.loads(tar.extractfile(member).read())
    assert manifest["metrics"] == {"validation": best, "selected_on": "val loss"}


def test_package_metrics_keep_what_training_measured():
    from export.cli import package_metrics

    assert package_metrics({}, None) == {}
    assert package_metrics({"best": {"score": -1.0}}, None) == {}  # never validated: nothing to claim
    assert package_metrics({"metrics": {"density_accuracy": 0.5}}, None) == {"density_accuracy": 0.5}
    assert package_metrics({"val": {"score": 0.7}}, {"n": 1}) == {"validation": {"score": 0.7}, "evaluation": {"n": 1}}


def test_tensorrt_engines_go_where_the_node_reads_them(tmp_path):
    """Default engine cache = the node's DATA_DIR/trt-cache (was a cwd-relative var/trt-cache)."""
    import pytest
    import typer

    from export.cli import engine_cache_dir

    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    assert engine_cache_dir(None, config) == tmp_path / "data" / "trt-cache"
    assert engine_cache_dir(tmp_path / "elsewhere", config) == tmp_path / "elsewhere"
    config.write_text("[node]\ndata_dir = 3\n")
    with pytest.raises(typer.Exit) as exc:
        engine_cache_dir(None, config)
    assert exc.value.exit_code == 2
