"""The structured result of one study: classifier outputs and the parsed report, per breast.

Both sources are kept: the BI-RADS and density a breast is reported with come from the generated
report (what a radiologist reads) when it states them, else from the classifier, and every
breast where the two disagree is flagged with both values. Pure Python + numpy, so it is tested
without models.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from models.report_types import ReportResult

SIDES = ("R", "L")
FINDING_THRESHOLD = 0.5  # classifier findings at or above this probability are listed as present


def breast_probabilities(per_view: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """Mean of each head's probabilities over the views of a breast (``{"R-CC": {...}, ...}`` in)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for side in SIDES:
        views = [v for k, v in per_view.items() if k.startswith(side + "-")]
        if views:
            out[side] = {head: np.mean([v[head] for v in views], axis=0) for head in views[0]}
    return out


def _merged_birads(value: str | None) -> str | None:
    """Report categories 4A/4B/4C compare with the classifier's merged 4; 6 has no classifier class."""
    if value is None or value == "6":
        return None
    return value[0]


def build_result(report_text: str, parsed: ReportResult, breasts: dict[str, dict[str, np.ndarray]],
                 labels: dict[str, Sequence[str]], versions: dict[str, str],
                 missing_views: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON-able structured result (docs/results.md describes every field)."""
    out_breasts: dict[str, Any] = {}
    disagreements = []
    for side in SIDES:
        reported = parsed.breasts[side]
        probs = breasts.get(side)
        classifier = None
        if probs is not None:
            classifier = {
                "birads": labels["birads"][int(np.argmax(probs["birads"]))],
                "birads_probabilities": {k: round(float(p), 4) for k, p in zip(labels["birads"], probs["birads"])},
                "density": labels["density"][int(np.argmax(probs["density"]))],
                "density_probabilities": {k: round(float(p), 4) for k, p in zip(labels["density"], probs["density"])},
                "findings": [{"kind": k, "score": round(float(p), 4)} for k, p in zip(labels["findings"], probs["findings"])
                             if p >= FINDING_THRESHOLD],
            }
        findings = [f.to_dict() for f in reported.findings.values() if f.status in ("POS", "UNC")]
        breast: dict[str, Any] = {
            "density": reported.density or (classifier or {}).get("density"),
            "density_source": "report" if reported.density else ("classifier" if classifier else None),
            "birads": reported.birads or (classifier or {}).get("birads"),
            "birads_source": "report" if reported.birads else ("classifier" if classifier else None),
            "findings": findings,
            "report": {"density": reported.density, "birads": reported.birads},
            "classifier": classifier,
        }
        if classifier is not None:
            if reported.density and reported.density != classifier["density"]:
                disagreements.append({"breast": side, "field": "density", "report": reported.density,
                                      "classifier": classifier["density"]})
            merged = _merged_birads(reported.birads)
            if merged is not None and merged != classifier["birads"]:
                disagreements.append({"breast": side, "field": "birads", "report": reported.birads,
                                      "classifier": classifier["birads"]})
        out_breasts[side] = breast
    return {
        "status": "partial" if missing_views else "complete",
        "missing_views": list(missing_views),
        "breasts": out_breasts,
        "disagreements": disagreements,
        "report": {"text": report_text, "findings": parsed.findings_text, "impression": parsed.impression_text},
        "relations": [list(t) for t in parsed.relations],
        "models": dict(versions),
        "preliminary": True,
    }
