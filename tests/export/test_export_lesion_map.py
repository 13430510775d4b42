"""The optional lesion map: exported with parity and golden vectors when the student has one, absent
(and the node still serving) when it has none."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from export.golden import phantom_images
from export.package import finish_package
from export.versamammo import compare, export_versamammo, reference_outputs
from models.versamammo.checkpoint import build_student, config_for
from models.versamammo.config import student_preprocess_config
from node.inference.session import SessionSettings
from node.inference.versamammo import VersaMammoRunner
from node.packages.golden import check_golden
from models.package.manifest import read_manifest

CPU = SessionSettings(providers=("cpu",))


def lesion_student(seed: int = 0):
    torch.manual_seed(seed)
    student = build_student(replace(config_for("tiny"), student_lesion_map=True, student_head_pool="avg_max")).eval()
    for module in student.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return student


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    student = lesion_student()
    out = tmp_path_factory.mktemp("vm-lesion") / "pkg"
    fields = export_versamammo(student, out, phantom_images(student_preprocess_config(student.cfg), 3),
                               precisions=("fp32",), mark_threshold=0.3)
    path, _ = finish_package(out, "versamammo-lesion", "1.0.0", fields, training={"note": "random weights"})
    return path


def test_lesion_map_is_exported_with_parity_golden_vectors_and_its_manifest_entry(package) -> None:
    manifest = read_manifest(package)
    outputs = [o["name"] for o in manifest.graphs["model"]["outputs"]]
    assert outputs[-1] == "lesion_map" and manifest.data["localization"] == {
        "output": "lesion_map", "grid": 8, "activation": "sigmoid", "mark_threshold": 0.3}
    golden = np.load(package / "golden" / "versamammo.npz")
    assert golden["expected.lesion_map"].shape == (3, 8, 8)
    assert check_golden(package, manifest, CPU) == []
    # new images, not the golden ones: the graph is the torch model's lesion map, as probabilities
    student = lesion_student()
    images = phantom_images(student_preprocess_config(student.cfg), 2, seed=77)
    expected = reference_outputs(student, images)
    runner = VersaMammoRunner(package, manifest, CPU, precision="fp32")
    got = runner.run(images)
    assert runner.localization == manifest.data["localization"]
    assert compare(expected, {k: getattr(got, k) for k in expected}, rtol=1e-3, atol=1e-3) == []
    with torch.no_grad():
        logits = student(torch.from_numpy(images))["lesion_map"].numpy()
    assert np.allclose(got.lesion_map, 1 / (1 + np.exp(-logits)), atol=1e-4)


def test_golden_check_refuses_a_lesion_map_that_computes_something_else(package, tmp_path) -> None:
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    data = dict(np.load(copy / "golden" / "versamammo.npz"))
    data["expected.lesion_map"] = data["expected.lesion_map"] + 0.05
    np.savez_compressed(copy / "golden" / "versamammo.npz", **data)
    problems = check_golden(copy, read_manifest(copy), CPU)
    assert problems and "lesion_map" in problems[0]


def test_a_package_without_lesion_map_runs_and_has_no_localization(model_packages) -> None:
    manifest = read_manifest(model_packages["vm1"])
    runner = VersaMammoRunner(model_packages["vm1"], manifest, CPU)
    assert not runner.has_lesion_map and runner.localization is None and "localization" not in manifest.data
    assert runner.run(np.zeros((1, 3, 256, 256), np.float32)).lesion_map is None
