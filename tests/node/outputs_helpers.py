"""Realistic structured results for the output tests, built without models.

The report is the phantom study's own reference report (parsed by models.report.parse) and the
classifier probabilities are made up but shaped exactly as node.results expects, so the encoders
are tested on what the pipeline really produces.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from models.package.labels import BIRADS_CLASSES, DENSITY_CLASSES, FINDING_CLASSES
from models.report.parse import parse_report
from node.outputs.source import SourceStudy
from node.results import build_result

LABELS = {"birads": list(BIRADS_CLASSES), "density": list(DENSITY_CLASSES), "findings": list(FINDING_CLASSES)}
VERSIONS = {"versamammo": "versamammo-demo@1.0.0", "mammorg": "mammorg-demo@1.0.0"}


def _probs(n: int, hot: int, high: float = 0.7) -> np.ndarray:
    p = np.full(n, (1 - high) / (n - 1), dtype=np.float64)
    p[hot] = high
    return p


def sample_result(report_text: str, *, birads: tuple[int, int] = (2, 1), density: int = 1,
                  finding_hot: int | None = 4, missing: tuple[str, ...] = ()) -> dict[str, Any]:
    """A result as node.results.build_result makes it (``birads``: classifier class per breast R, L), in
    its JSON form (StudyResult.to_json), which the tests edit by hand before converting it back."""
    breasts = {}
    for side, b in zip(("R", "L"), birads):
        findings = np.full(len(FINDING_CLASSES), 0.1)
        if finding_hot is not None and side == "R":
            findings[finding_hot] = 0.8
        breasts[side] = {"birads": _probs(6, b), "density": _probs(4, density), "findings": findings}
    result = build_result(report_text, parse_report(report_text), breasts, LABELS, VERSIONS, missing).to_json()
    result["seconds"] = 1.234
    return result


def phantom_source(study_dir: Path, positions: tuple[str, ...] = ("R-CC", "R-MLO", "L-CC", "L-MLO")) -> SourceStudy:
    return SourceStudy.from_files({p: study_dir / f"{p}.dcm" for p in positions})


def phantom_case(study_dir: Path, **kwargs: Any) -> tuple[SourceStudy, dict[str, Any]]:
    """(source study, result) for one phantom study directory."""
    return phantom_source(study_dir), sample_result((study_dir / "report.txt").read_text(), **kwargs)
