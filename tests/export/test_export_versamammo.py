"""VersaMammo export: ONNX Runtime reproduces torch (fp32 1e-3, fp16 stated), any batch size."""
from __future__ import annotations

import json

import numpy as np
import pytest

from export.golden import phantom_images
from export.versamammo import FP16_TOLERANCE, compare, reference_outputs
from models.versamammo.config import student_preprocess_config
from node.inference.session import SessionSettings
from node.inference.versamammo import VersaMammoRunner
from models.package.manifest import check_files, read_manifest
from tests.packages import build_versamammo_package, tiny_student

CPU = SessionSettings(providers=("cpu",))


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return build_versamammo_package(tmp_path_factory.mktemp("vm") / "pkg")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_onnx_matches_torch_on_new_images_at_any_batch_size(package, precision):
    student = tiny_student(0)
    images = phantom_images(student_preprocess_config(student.cfg), 5, seed=77)  # not the golden ones
    expected = reference_outputs(student, images)
    runner = VersaMammoRunner(package, read_manifest(package), CPU, precision=precision)
    tol = {"rtol": 1e-3, "atol": 1e-3} if precision == "fp32" else FP16_TOLERANCE
    for batch in (images[:1], images):
        result = runner.run(batch)
        got = {k: getattr(result, k) for k in expected}
        assert compare({k: v[: len(batch)] for k, v in expected.items()}, got, **tol) == []
    assert np.allclose(result.birads.sum(1), 1, atol=1e-5) and np.allclose(result.density.sum(1), 1, atol=1e-5)
    assert result.feature_grid.shape == (5, student.cfg.student_dim, student.cfg.student_grid, student.cfg.student_grid)


def test_compare_reports_what_differs():
    ref = {"birads": np.full((2, 6), 1 / 6, dtype=np.float32)}
    bad = {"birads": ref["birads"] + np.array([[0.01] + [0] * 5, [0] * 6], dtype=np.float32)}
    assert compare(ref, bad, rtol=1e-3, atol=1e-3) and "birads" in compare(ref, bad, rtol=1e-3, atol=1e-3)[0]
    assert compare(ref, ref, rtol=1e-3, atol=1e-3) == []


def test_manifest_describes_graphs_preprocessing_labels_and_every_file(package):
    manifest = read_manifest(package)
    data = json.loads((package / "manifest.json").read_text())
    assert manifest.kind == "versamammo" and data["format_version"] == 1
    assert set(manifest.graphs) == {"model", "model_fp16"}
    spec = manifest.graphs["model"]
    assert [i["name"] for i in spec["inputs"]] == ["image"] and spec["inputs"][0]["shape"][0] == "batch"
    assert [o["name"] for o in spec["outputs"]] == ["feature", "birads", "density", "findings", "feature_grid"]
    assert data["producer"]["onnx_opset"] >= 18 and "torch" in data["producer"]["versions"]
    assert data["labels"]["density"] == ["A", "B", "C", "D"] and len(data["labels"]["findings"]) == 10
    assert data["preprocessing"]["size"] == [256, 256] and data["lexicon_version"]
    assert check_files(package, manifest) == []
    assert set(manifest.files) >= {"versamammo.onnx", "versamammo_fp16.onnx", "golden/versamammo.npz"}


def test_graph_opset_is_at_least_18(package):
    import onnx

    model = onnx.load(str(package / "versamammo.onnx"), load_external_data=False)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18


def test_fp16_tolerance_scales_with_the_size_of_the_activations() -> None:
    """Half precision keeps ~3 significant digits: an error of 0.13 on a feature map that reaches 9
    is within it, the same error on outputs bounded by 1 (probabilities) is not."""
    from node.packages.golden import tolerance_violation

    grid = np.zeros((1, 4, 2, 2), np.float32)
    grid[0, 0, 0, 0] = 9.0
    off = grid.copy()
    off[0, 1, 0, 0] = 0.13  # an element near zero, 0.13 away
    assert compare({"feature_grid": grid}, {"feature_grid": off}, **FP16_TOLERANCE) == []
    assert compare({"feature_grid": grid}, {"feature_grid": off}, rtol=5e-2, atol=5e-2)  # absolute rule: fails
    probs = np.array([[0.5, 0.5]], np.float32)
    assert compare({"birads": probs}, {"birads": probs + [[0.13, -0.13]]}, **FP16_TOLERANCE)
    assert "unknown atol_scale" in tolerance_violation("x", probs, probs, {"rtol": 0, "atol": 0, "atol_scale": "?"})
