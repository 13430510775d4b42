"""A student whose heads pool by its lesion map (avg_lesion) exports with the same parity."""
from __future__ import annotations

from dataclasses import replace

import torch

from export.golden import phantom_images
from export.versamammo import compare, export_versamammo, reference_outputs
from export.package import finish_package
from models.versamammo.checkpoint import build_student, config_for
from models.versamammo.config import student_preprocess_config
from node.inference.session import SessionSettings
from node.inference.versamammo import VersaMammoRunner
from models.package.manifest import read_manifest


def test_avg_lesion_student_exports_with_fp32_parity(tmp_path) -> None:
    torch.manual_seed(3)
    student = build_student(replace(config_for("tiny"), student_lesion_map=True, student_head_pool="avg_lesion")).eval()
    pre = student_preprocess_config(student.cfg)
    fields = export_versamammo(student, tmp_path / "pkg", phantom_images(pre, 2))
    path, _ = finish_package(tmp_path / "pkg", "versamammo-lesion", "1.0.0", fields, training={"note": "random"})
    images = phantom_images(pre, 3, seed=5)
    runner = VersaMammoRunner(path, read_manifest(path), SessionSettings(providers=("cpu",)), precision="fp32")
    result = runner.run(images)
    expected = reference_outputs(student, images)
    assert compare(expected, {k: getattr(result, k) for k in expected}, rtol=1e-3, atol=1e-3) == []
