"""VersaMammo student -> ONNX graphs (fp32 and fp16) with parity checks and golden vectors.

The exported graph takes the preprocessed image and returns everything the node uses at once:
the pooled feature, softmax BI-RADS and density probabilities, sigmoid findings probabilities
and the final feature grid; a student with a lesion map (``student_lesion_map``) adds the optional
``lesion_map`` output (sigmoid probability per feature-grid cell, N x G x G), from which the node
makes CAD marks. The fp16 variant runs the network in half precision inside the graph
and keeps float32 inputs and outputs, so the node feeds both the same arrays.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.onnx_io import export_graph, io_spec
from models.package.labels import BIRADS_CLASSES, DENSITY_CLASSES, FINDING_CLASSES
from models.versamammo.checkpoint import VersaMammoStudent
from models.versamammo.config import student_preprocess_config
from models.package.outputs import LESION_MAP, OUTPUTS
from models.package.tolerance import tolerance_violation

# Parity tolerances (ONNX Runtime vs torch fp32), recorded in the manifest and used by `models verify`.
FP32_TOLERANCE = {"rtol": 1e-3, "atol": 1e-3}
# Half precision: about 3 significant digits per operation, compounded over ~100 layers, so the
# absolute term scales with each output's largest magnitude (the 8x8x1280 feature grid of a
# trained tiny student reaches 9 and is off by up to 0.13 in ONNX Runtime 1.31's CPU fp16 kernels,
# 0.085 in torch fp16).
FP16_TOLERANCE = {"rtol": 5e-2, "atol": 3e-2, "atol_scale": "absmax"}
# Lesion-map probability at or above which a cell peak becomes a CAD mark, recorded in the manifest
# (``localization.mark_threshold``); bench.froc measures what a threshold gives (docs/results.md).
DEFAULT_MARK_THRESHOLD = 0.5


class ParityError(Exception):
    """An exported graph does not reproduce the torch model within its tolerance."""


def output_names(student: VersaMammoStudent) -> tuple[str, ...]:
    """The graph's outputs: the five every package has, and ``lesion_map`` when the student has one."""
    return OUTPUTS + ((LESION_MAP,) if student.lesion_head is not None else ())


class VersaMammoGraph(nn.Module):
    """The student as one graph: image -> (feature, birads, density, findings, feature_grid[, lesion_map])."""

    def __init__(self, student: VersaMammoStudent, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.student = student.to(dtype).eval()
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grid = self.student.feature_grid(image.to(self.dtype))
        feature = grid.mean(dim=(2, 3)).float()
        pooled = self.student.head_input(grid)
        birads = self.student.birads_head(pooled).float().softmax(-1)
        density = self.student.density_head(pooled).float().softmax(-1)
        findings = self.student.findings_head(pooled).float().sigmoid()
        if self.student.lesion_head is None:
            return feature, birads, density, findings, grid.float()
        lesion_map = self.student.lesion_map(grid).float().sigmoid()
        return feature, birads, density, findings, grid.float(), lesion_map


def reference_outputs(student: VersaMammoStudent, images: np.ndarray) -> dict[str, np.ndarray]:
    """Torch fp32 outputs for ``images`` (what every graph is compared against)."""
    with torch.no_grad():
        out = VersaMammoGraph(copy.deepcopy(student).float())(torch.from_numpy(images))
    return {name: t.numpy() for name, t in zip(output_names(student), out)}


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], rtol: float, atol: float,
            atol_scale: str | None = None) -> list[str]:
    """Names and worst errors of the outputs beyond the tolerance: the rule `models verify` applies
    (``node.packages.golden.tolerance_violation``), so export and the node never disagree."""
    tolerance = {"rtol": rtol, "atol": atol, **({"atol_scale": atol_scale} if atol_scale else {})}
    problems = []
    for name, ref in expected.items():
        issue = tolerance_violation(name, np.asarray(ref), np.asarray(actual[name]), tolerance)
        if issue:
            problems.append(issue)
    return problems


def export_versamammo(student: VersaMammoStudent, out: Path, golden_images: np.ndarray,
                      precisions: tuple[str, ...] = ("fp32", "fp16"),
                      mark_threshold: float = DEFAULT_MARK_THRESHOLD) -> dict[str, Any]:
    """Write the graphs and ``golden/versamammo.npz`` under ``out``; return the manifest fields.

    ``golden_images`` (N, 3, S, S) float32, preferably real preprocessed views: they are the
    golden inputs, and the parity check at export runs on them (raises ParityError). A student
    with a lesion map also gets ``localization`` in the manifest (its grid and ``mark_threshold``).
    """
    import onnxruntime as ort

    student = copy.deepcopy(student).float().eval()
    cfg = student.cfg
    size = cfg.student_input
    golden_images = np.ascontiguousarray(golden_images, dtype=np.float32)
    if golden_images.shape[1:] != (3, size, size):
        raise ValueError(f"golden images must be (N, 3, {size}, {size}), got {golden_images.shape}")
    expected = reference_outputs(student, golden_images)
    names = output_names(student)
    dyn = {name: {0: "batch"} for name in ("image", *names)}
    graphs: dict[str, Any] = {}
    example = torch.from_numpy(golden_images[:2])
    for precision in precisions:
        role, dtype, tol = {"fp32": ("model", torch.float32, FP32_TOLERANCE),
                            "fp16": ("model_fp16", torch.float16, FP16_TOLERANCE)}[precision]
        name = "versamammo.onnx" if precision == "fp32" else "versamammo_fp16.onnx"
        path = export_graph(VersaMammoGraph(copy.deepcopy(student), dtype), (example,), out / name,
                            ["image"], list(names), dyn)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        actual = dict(zip(names, session.run(list(names), {"image": golden_images})))
        problems = compare(expected, actual, **tol)
        if problems:
            raise ParityError(f"{name} differs from torch: " + "; ".join(problems))
        graphs[role] = {"file": name, "precision": precision, "tolerance": tol, **io_spec(path)}
    golden = out / "golden" / "versamammo.npz"
    golden.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(golden, image=golden_images, **{f"expected.{k}": v for k, v in expected.items()})
    fields: dict[str, Any] = {
        "kind": "versamammo",
        "graphs": graphs,
        "golden": {"file": "golden/versamammo.npz"},
        "preprocessing": student_preprocess_config(cfg).to_dict(),
        "labels": {"birads": list(BIRADS_CLASSES), "density": list(DENSITY_CLASSES),
                   "findings": list(FINDING_CLASSES)},
        "model": {"architecture": cfg.student_backbone, "size": cfg.size, "input": size,
                  "feature_dim": cfg.student_dim, "grid": cfg.student_grid},
    }
    if LESION_MAP in names:
        fields["localization"] = {"output": LESION_MAP, "grid": cfg.student_grid, "activation": "sigmoid",
                                  "mark_threshold": float(mark_threshold)}
    return fields
