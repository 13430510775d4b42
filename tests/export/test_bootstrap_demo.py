"""`mammo-node models bootstrap-demo`: a fresh data directory ends with working, verified, active
demonstration models that say they are not for clinical use; a second run reuses them."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _cli(config: Path, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "models", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def node_config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bootstrap")
    config = root / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{root / "data"}"\n[inference]\nproviders = ["cpu"]\n')
    start = time.perf_counter()
    out = _cli(config, "bootstrap-demo", "--threads", "2", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    assert result["built"] is True and len(result["installed"]) == 2
    print(f"bootstrap-demo took {time.perf_counter() - start:.0f} s")
    return config


def test_demo_models_are_active_verified_and_labelled_not_for_clinical_use(node_config):
    listed = json.loads(_cli(node_config, "list", "--json").stdout)
    assert listed["active"] == {"versamammo": "versamammo-demo@1.0.0", "mammorg": "mammorg-demo@1.0.0"}
    for package in listed["packages"]:
        assert package["demonstration"] is True and "Not for clinical use" in package["intended_use"]
    for ref in listed["active"].values():
        out = _cli(node_config, "verify", ref, "--json")
        assert out.returncode == 0, out.stdout


def test_second_run_is_a_quick_no_op(node_config):
    start = time.perf_counter()
    out = _cli(node_config, "bootstrap-demo", "--json", timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["built"] is False
    assert time.perf_counter() - start < 30


def test_demo_models_read_a_new_phantom_study(node_config, tmp_path):
    """Runtime only (no torch in this process): a phantom study -> probabilities and a report that
    the report parser reads as one density and one BI-RADS per breast."""
    from export.golden import phantom_views
    from models.preprocess import PreprocessConfig
    from models.reportparse import parse_report
    from node.config import load_settings
    from node.inference.engine import InferenceEngine
    from node.packages.registry import ModelRegistry

    settings = load_settings(node_config)
    engine = InferenceEngine(ModelRegistry(settings.models_dir), settings.session_settings())
    models = engine.snapshot()
    pre = PreprocessConfig.from_dict(models.versamammo.preprocessing)
    views, present = phantom_views(pre, 1, seed=31337)
    probs = models.versamammo.run(views[0])
    assert probs.density.shape == (4, 4) and np.allclose(probs.density.sum(1), 1, atol=1e-5)
    report = models.mammorg.generate(views, present)[0]
    parsed = parse_report(report.text)
    assert "IMPRESSION" in report.text.upper()
    for side in ("R", "L"):
        assert parsed.breasts[side].density in {"A", "B", "C", "D"}
        assert parsed.breasts[side].birads is not None
