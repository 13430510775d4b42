"""VersaMammo through ONNX Runtime: preprocessed views in, probabilities and features out.

The package's graph takes ``image`` (N, 3, S, S) float32, normalised exactly as its manifest's
``preprocessing`` says (models.preprocess builds that array), and returns ``feature`` (N, D),
``birads``/``density`` (softmax probabilities), ``findings`` (sigmoid probabilities, multi-label)
and ``feature_grid`` (N, D, G, G). Packages exported from a student with a lesion map also have
``lesion_map`` (N, G, G): the sigmoid probability of a lesion per feature-grid cell, which
node.marks turns into CAD marks; packages without it (official weights, demo packages before 3.0.0) run unchanged and
the result says localisation was not attempted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.package.manifest import Manifest
from models.package.outputs import LESION_MAP, OUTPUTS
from node.inference.session import SessionSettings, device_of, open_session



@dataclass(frozen=True)
class VersaMammoResult:
    """Per-image outputs, rows in the order the images were given."""

    feature: np.ndarray
    birads: np.ndarray
    density: np.ndarray
    findings: np.ndarray
    feature_grid: np.ndarray
    lesion_map: np.ndarray | None = None  # (N, G, G) probabilities, None when the package has none


def choose_graph(manifest: Manifest, precision: str, device: str) -> str:
    """The graph role to run: ``fp32``/``fp16`` explicitly, or ``auto`` (fp16 on GPU when packaged)."""
    graphs = manifest.graphs
    if precision == "auto":
        precision = "fp16" if device == "cuda" and "model_fp16" in graphs else "fp32"
    role = "model" if precision == "fp32" else "model_fp16"
    if role not in graphs:
        raise ValueError(f"{manifest.ref} has no {precision} graph (has {sorted(graphs)})")
    return role


class VersaMammoRunner:
    """One loaded VersaMammo package. Thread-compatible: ORT sessions may be run concurrently."""

    def __init__(self, root: Path, manifest: Manifest, settings: SessionSettings, precision: str = "auto",
                 warm_up: bool = True) -> None:
        if manifest.kind != "versamammo":
            raise ValueError(f"{manifest.ref} is a {manifest.kind} package, not versamammo")
        self.root, self.manifest = Path(root), manifest
        probe = open_session(self.root / manifest.graphs["model"]["file"], settings)
        self.role = choose_graph(manifest, precision, device_of(probe))
        self.session = probe if self.role == "model" else open_session(
            self.root / manifest.graphs[self.role]["file"], settings)
        self.has_lesion_map = LESION_MAP in {o.name for o in self.session.get_outputs()}
        self.outputs = OUTPUTS + ((LESION_MAP,) if self.has_lesion_map else ())
        self.preprocessing: dict[str, Any] = manifest.data["preprocessing"]
        self.input_size = tuple(self.preprocessing["size"])
        if warm_up:
            self.run(np.zeros((1, 3, *self.input_size), dtype=np.float32))

    @property
    def labels(self) -> dict[str, list[str]]:
        return self.manifest.data["labels"]

    @property
    def localization(self) -> dict[str, Any] | None:
        """The manifest's ``localization`` (grid, ``mark_threshold``) when the graph has a lesion map."""
        if not self.has_lesion_map:
            return None
        return dict(self.manifest.data.get("localization") or {})

    def run(self, images: np.ndarray) -> VersaMammoResult:
        """(N, 3, S, S) float32 -> per-image outputs."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        expected = (3, *self.input_size)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"images must be (N, {', '.join(map(str, expected))}), got {images.shape}")
        outputs = self.session.run(list(self.outputs), {"image": images})
        return VersaMammoResult(**{name: np.asarray(v, dtype=np.float32) for name, v in zip(self.outputs, outputs)})
