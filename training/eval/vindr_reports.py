"""Generated reports scored against VinDr-Mammo's breast-level labels (no reference text).

VinDr-Mammo has no reports, so the official MammoRG evaluation on it (the Jan-2026
``MammoRGTool/tool_clslabel.py``, deleted on 2026-04-13) parses each generated report and compares
BI-RADS and density per breast with ``breast-level_annotations.csv``: macro-F1 x completeness
over the breasts of all studies pooled, as for the other clinical metrics
(``training.eval.clinical``), plus accuracy over the breasts whose report states a value. The
intervals are percentile bootstraps over studies (both breasts of a study stay together).

VinDr's BI-RADS labels are 1-5 (4A/4B/4C are not split). Three mappings of a parsed category:

- ``"strict"`` (ours, the default of every preset): 4A/4B/4C count as 4; 0 and 6 are wrong
  answers (their own label "other"); everything else must match.
- ``"official"``: the lenient matching of ``tool_clslabel.py``: a reference 1, 2 or 3 counts as
  matched by a predicted 1 or 2; a reference 4 by a predicted 3 or 4A; a reference 5 by 4B, 4C
  or 5; otherwise as ``strict`` (4B or 4C against a reference 4 is wrong), on both breasts.
- ``"official_as_coded"``: the same with the official code's two slips kept: the lenient match
  is applied to the left breast only (the right-breast block re-tests the left variables), and a
  prediction outside 1-5 (0, 4A/4B/4C, 6) falls back to the last class, "5".

Density: VinDr's "DENSITY A".."DENSITY D" against the parsed ACR A-D, exact.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from training.eval.classification import bootstrap
from training.eval.clinical import macro_f1_times_completeness

BIRADS_MAPPINGS: tuple[str, ...] = ("strict", "official", "official_as_coded")
VINDR_BIRADS: tuple[str, ...] = ("1", "2", "3", "4", "5")
OTHER = len(VINDR_BIRADS)            # label of a stated category outside 1-5 (strict, official)
DENSITIES: tuple[str, ...] = ("A", "B", "C", "D")
SIDES: tuple[str, ...] = ("R", "L")
# reference -> the predictions the official lenient matching accepts for it
LENIENT: dict[str, tuple[str, ...]] = {"1": ("1", "2"), "2": ("1", "2"), "3": ("1", "2"), "4": ("3", "4A"),
                                       "5": ("4B", "4C", "5")}

Breast = tuple[str, str]             # (study_id, side)


def vindr_breast_labels(root: Path) -> dict[Breast, dict[str, str | None]]:
    """``{(study_id, "R"|"L"): {"birads": "1".."5" | None, "density": "A".."D" | None, "split": ...}}``
    from ``root/breast-level_annotations.csv`` (one row per image; a breast's rows agree)."""
    out: dict[Breast, dict[str, str | None]] = {}
    with (Path(root) / "breast-level_annotations.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            key = (row["study_id"].strip(), row["laterality"].strip().upper())
            if key in out:
                continue
            birads = (row.get("breast_birads") or "").upper().replace("BI-RADS", "").strip()
            density = (row.get("breast_density") or "").upper().replace("DENSITY", "").strip()
            out[key] = {"birads": birads if birads in VINDR_BIRADS else None,
                        "density": density if density in DENSITIES else None,
                        "split": (row.get("split") or "").strip().lower() or None}
    return out


def birads_code(reference: str | None, predicted: str | None, mapping: str = "strict", side: str = "L") -> int:
    """The class index (in ``VINDR_BIRADS``, ``OTHER`` for a wrong category) the prediction
    counts as against ``reference``; -1 when the report states no category for the breast."""
    if mapping not in BIRADS_MAPPINGS:
        raise ValueError(f"BI-RADS mapping must be one of {BIRADS_MAPPINGS}, not {mapping!r}")
    if predicted is None:
        return -1
    predicted = str(predicted).upper()
    lenient = mapping == "official" or (mapping == "official_as_coded" and side == "L")
    if lenient and reference in LENIENT and predicted in LENIENT[reference]:
        return VINDR_BIRADS.index(reference)
    if mapping == "official_as_coded":
        return VINDR_BIRADS.index(predicted) if predicted in VINDR_BIRADS else len(VINDR_BIRADS) - 1
    if mapping == "strict" and predicted[:1] == "4":
        return VINDR_BIRADS.index("4")
    return VINDR_BIRADS.index(predicted) if predicted in VINDR_BIRADS else OTHER


def evaluate_vindr_reports(reports: Mapping[str, str], labels: Mapping[Breast, Mapping[str, str | None]],
                           mapping: str = "strict", resamples: int = 1000, seed: int = 0,
                           parse: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Score ``reports`` (study_id -> generated text) against ``labels`` (``vindr_breast_labels``).

    Only studies with a report are scored. Returns BI-RADS and density macro-F1 x completeness,
    completeness and accuracy (over the breasts with a stated value), each ``{"value", "ci95"}``,
    plus counts and the mapping used.
    """
    if parse is None:
        from models.report.parse import parse_report as parse
    studies = sorted(reports)
    ref_b = np.full((len(studies), 2), -1)
    pred_b = np.full((len(studies), 2), -1)
    ref_d = np.full((len(studies), 2), -1)
    pred_d = np.full((len(studies), 2), -1)
    for i, study in enumerate(studies):
        result = parse(reports[study])
        for j, side in enumerate(SIDES):
            label = labels.get((study, side), {})
            breast = result.breasts[side]
            if label.get("birads") is not None:
                ref_b[i, j] = VINDR_BIRADS.index(label["birads"])
                pred_b[i, j] = birads_code(label["birads"], breast.birads, mapping, side)
            if label.get("density") is not None:
                ref_d[i, j] = DENSITIES.index(label["density"])
                pred_d[i, j] = DENSITIES.index(breast.density) if breast.density in DENSITIES else -1

    def metrics(ref: np.ndarray, pred: np.ndarray, n_labels: int) -> dict[str, Any]:
        def f1(idx: np.ndarray) -> float:
            return macro_f1_times_completeness(ref[idx], pred[idx], n_labels)

        def completeness(idx: np.ndarray) -> float:
            r, p = ref[idx], pred[idx]
            return float(((r >= 0) & (p >= 0)).sum() / max((r >= 0).sum(), 1)) if (r >= 0).any() else float("nan")

        def accuracy(idx: np.ndarray) -> float:
            r, p = ref[idx], pred[idx]
            kept = (r >= 0) & (p >= 0)
            return float((r[kept] == p[kept]).mean()) if kept.any() else float("nan")

        n = len(studies)
        return {"f1": bootstrap(f1, n, resamples, seed).to_dict(),
                "completeness": bootstrap(completeness, n, resamples, seed).to_dict(),
                "accuracy": bootstrap(accuracy, n, resamples, seed).to_dict(),
                "breasts": int((ref >= 0).sum())}

    return {"studies": len(studies), "birads_mapping": mapping,
            "birads": metrics(ref_b, pred_b, len(VINDR_BIRADS) + 1),
            "density": metrics(ref_d, pred_d, len(DENSITIES))}
