"""The structured result of one study: classifier outputs and the parsed report, per breast.

Both sources are kept: the BI-RADS and density a breast is reported with come, per field, from
the source chosen for it (``sources``: "report" or "classifier"; the generated report by default,
what a radiologist reads), falling back to the other where the chosen one states nothing, and
every breast where the two disagree is flagged with both values. Which source is chosen is
measured, not assumed: the MammoRG package records the better one on its validation split
(``reporting`` in its manifest, training/mammorg/reporting.py) and ``[results]`` in the node's
configuration may override it. Pure Python + numpy, so it is tested without models; the result
is a node.study_result.StudyResult (its JSON is what the journal keeps).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from models.report.result import ReportResult
from node.study_result import (Breast, BreastReport, ClassifierFinding, ClassifierOutput, Disagreement, ReportFinding,
                               ReportSections, StudyResult)

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


def reporting_sources(configured: dict[str, str], package: dict[str, Any] | None) -> dict[str, str]:
    """Per field, "report" or "classifier": the configured value, where it is "package" the
    package's recorded choice, else "report"."""
    out = {}
    for field in ("density", "birads"):
        choice = configured.get(field, "package")
        if choice == "package":
            choice = (package or {}).get(field, "report")
        out[field] = choice if choice in ("report", "classifier") else "report"
    return out


def _pick(field: str, reported: str | None, classifier: ClassifierOutput | None,
          source: str) -> tuple[str | None, str | None]:
    """(value, where it came from) for one field of one breast."""
    from_classifier = None if classifier is None else getattr(classifier, field)
    if source == "classifier" and from_classifier is not None:
        return from_classifier, "classifier"
    if reported:
        return reported, "report"
    return (from_classifier, "classifier") if from_classifier is not None else (None, None)


def build_result(report_text: str, parsed: ReportResult, breasts: dict[str, dict[str, np.ndarray]],
                 labels: dict[str, Sequence[str]], versions: dict[str, str],
                 missing_views: Sequence[str] = (), sources: dict[str, str] | None = None) -> StudyResult:
    """The structured result (node.study_result; docs/results.md describes every field)."""
    sources = sources or {}
    out_breasts: dict[str, Breast] = {}
    disagreements = []
    for side in SIDES:
        reported = parsed.breasts[side]
        probs = breasts.get(side)
        classifier = None
        if probs is not None:
            classifier = ClassifierOutput(
                birads=labels["birads"][int(np.argmax(probs["birads"]))],
                birads_probabilities={k: round(float(p), 4) for k, p in zip(labels["birads"], probs["birads"])},
                density=labels["density"][int(np.argmax(probs["density"]))],
                density_probabilities={k: round(float(p), 4) for k, p in zip(labels["density"], probs["density"])},
                findings=tuple(ClassifierFinding(k, round(float(p), 4))
                               for k, p in zip(labels["findings"], probs["findings"]) if p >= FINDING_THRESHOLD),
            )
        findings = tuple(ReportFinding.from_json(f.to_dict()) for f in reported.findings.values()
                         if f.status in ("POS", "UNC"))
        density, density_source = _pick("density", reported.density, classifier, sources.get("density", "report"))
        birads, birads_source = _pick("birads", reported.birads, classifier, sources.get("birads", "report"))
        out_breasts[side] = Breast(density=density, density_source=density_source, birads=birads,
                                   birads_source=birads_source, findings=findings,
                                   report=BreastReport(density=reported.density, birads=reported.birads),
                                   classifier=classifier)
        if classifier is not None:
            if reported.density and reported.density != classifier.density:
                disagreements.append(Disagreement(side, "density", reported.density, classifier.density))
            merged = _merged_birads(reported.birads)
            if merged is not None and merged != classifier.birads:
                disagreements.append(Disagreement(side, "birads", reported.birads, classifier.birads))
    return StudyResult(
        status="partial" if missing_views else "complete",
        missing_views=tuple(missing_views),
        breasts=out_breasts,
        disagreements=tuple(disagreements),
        report=ReportSections(text=report_text, findings=parsed.findings_text, impression=parsed.impression_text),
        relations=tuple(tuple(t) for t in parsed.relations),
        models=dict(versions),
        preliminary=True,
    )
