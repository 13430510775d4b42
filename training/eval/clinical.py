"""Clinical-efficacy metrics on parsed (prediction, reference) report pairs.

Re-implementations of MammoRGTool's ``test_all`` metrics (see
/work/shared/research/mammorg.md section 5 and docs/report-metrics.md), computed from
:class:`models.report.result.ReportResult` pairs:

* ``density_f1`` / ``birads_f1`` (every official version): breasts of all reports pooled
  (R and L); those with a reference value are eligible; of those, the ones with a predicted
  value are kept; sklearn-style macro-F1 over the labels occurring in the kept references or
  predictions, multiplied by completeness = kept / eligible.
* ``finding_f1_pooled`` (official Jan-May 2026, release 0745945, when paper v1 appeared):
  binary F1 of "present" over every (report, breast, finding) whose reference status is POS
  or NEG; a POS prediction is positive, NEG/UNC/BLANK predictions are negative.
* ``finding_f1_per_report`` (official HEAD af7a3f5, Aug 2026): per report, Dice between the
  sets of (side, finding) pairs with status POS in prediction and reference (both empty = 1),
  averaged over reports.
* ``relation_f1_pooled`` (official from Jan 2026 until HEAD replaced it, i.e. also the Jan-May
  release the paper likely used): micro F1 from TP/FP/FN of the per-report
  triple sets summed over reports.
* ``relation_f1_per_report`` (official HEAD): per-report Dice of the triple sets (both
  empty = 1), averaged over reports.

Undefined values are NaN: density/BI-RADS F1 with no eligible breast, pooled F1s with no
positive in either predictions or references (sklearn would return 0 with a warning), any
per-report mean over zero reports.

:class:`ClinicalArrays` precomputes everything per report, so each metric can be evaluated
on any multiset of report indices (what the bootstrap needs) with a few numpy operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from models.report.result import BIRADS_CATEGORIES, DENSITIES, MAMMORG_FINDINGS, BreastResult, ReportResult

SIDES: tuple[str, ...] = ("R", "L")


def _breast(report: ReportResult, side: str) -> BreastResult:
    breast = report.breasts.get(side)
    return breast if breast is not None else BreastResult()


def _status(breast: BreastResult, kind: str) -> str:
    finding = breast.findings.get(kind)
    return finding.status if finding is not None else "BLANK"


def _positive_findings(report: ReportResult) -> set[tuple[str, str]]:
    return {(side, kind) for side in SIDES for kind, f in _breast(report, side).findings.items()
            if f.status == "POS"}


def _triples(report: ReportResult) -> set[tuple[str, ...]]:
    return {tuple(str(x) for x in t) for t in report.relations}


def _dice(pred: set, ref: set) -> float:
    if not pred and not ref:
        return 1.0
    return 2 * len(pred & ref) / (len(pred) + len(ref))


def _binary_f1(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else float("nan")


def _vocabulary(canonical: Sequence[str], values: list[str | None]) -> list[str]:
    extra = sorted({v for v in values if v is not None and v not in canonical})
    return list(canonical) + extra


def macro_f1_times_completeness(ref_codes: np.ndarray, pred_codes: np.ndarray, n_labels: int) -> float:
    """The density/BI-RADS recipe on integer codes (negative = no value), any shape.

    Eligible: reference >= 0. Kept: eligible with prediction >= 0. Macro-F1 over the labels in
    the kept references or predictions (sklearn ``average='macro'``) x kept / eligible.
    """
    ref, pred = np.asarray(ref_codes).ravel(), np.asarray(pred_codes).ravel()
    eligible = ref >= 0
    n_eligible = int(eligible.sum())
    if n_eligible == 0:
        return float("nan")
    keep = eligible & (pred >= 0)
    n_keep = int(keep.sum())
    if n_keep == 0:
        return 0.0
    t, p = ref[keep], pred[keep]
    n_true = np.bincount(t, minlength=n_labels)
    n_pred = np.bincount(p, minlength=n_labels)
    tp = np.bincount(t[t == p], minlength=n_labels)
    present = (n_true + n_pred) > 0
    f1 = 2 * tp[present] / (n_true[present] + n_pred[present])
    return float(f1.mean()) * n_keep / n_eligible


@dataclass
class ClinicalArrays:
    """Per-report quantities from which every clinical metric is computed.

    Shapes: ``*_codes`` (N, 2) label indices for breasts R, L (-1 = None); ``finding_counts``
    (N, 3) pooled finding TP/FP/FN; ``relation_counts`` (N, 3) triple TP/FP/FN; ``*_dice`` (N,).
    """

    density_labels: list[str]
    density_ref: np.ndarray
    density_pred: np.ndarray
    birads_labels: list[str]
    birads_ref: np.ndarray
    birads_pred: np.ndarray
    finding_counts: np.ndarray
    finding_eligible: np.ndarray
    finding_dice: np.ndarray
    relation_counts: np.ndarray
    relation_dice: np.ndarray
    n_ref_triples: np.ndarray
    n_pred_triples: np.ndarray

    @property
    def n(self) -> int:
        return len(self.finding_dice)

    @classmethod
    def from_reports(cls, preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> "ClinicalArrays":
        if len(preds) != len(refs):
            raise ValueError(f"{len(preds)} predictions but {len(refs)} references")
        n = len(refs)

        def codes(attr: str, canonical: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
            ref_vals = [getattr(_breast(r, s), attr) for r in refs for s in SIDES]
            pred_vals = [getattr(_breast(p, s), attr) for p in preds for s in SIDES]
            ref_vals = [None if v is None else str(v) for v in ref_vals]
            pred_vals = [None if v is None else str(v) for v in pred_vals]
            labels = _vocabulary(canonical, ref_vals + pred_vals)
            index = {label: i for i, label in enumerate(labels)}
            encode = lambda vals: np.array([-1 if v is None else index[v] for v in vals],  # noqa: E731
                                           dtype=np.int64).reshape(n, len(SIDES))
            return labels, encode(ref_vals), encode(pred_vals)

        density_labels, density_ref, density_pred = codes("density", DENSITIES)
        birads_labels, birads_ref, birads_pred = codes("birads", BIRADS_CATEGORIES)

        finding_counts = np.zeros((n, 3), dtype=np.int64)
        finding_eligible = np.zeros(n, dtype=np.int64)
        finding_dice = np.zeros(n, dtype=np.float64)
        relation_counts = np.zeros((n, 3), dtype=np.int64)
        relation_dice = np.zeros(n, dtype=np.float64)
        n_ref_triples = np.zeros(n, dtype=np.int64)
        n_pred_triples = np.zeros(n, dtype=np.int64)
        for i, (pred, ref) in enumerate(zip(preds, refs)):
            for side in SIDES:
                p_breast, r_breast = _breast(pred, side), _breast(ref, side)
                kinds = list(MAMMORG_FINDINGS) + sorted(
                    (set(p_breast.findings) | set(r_breast.findings)) - set(MAMMORG_FINDINGS))
                for kind in kinds:
                    r_status = _status(r_breast, kind)
                    if r_status not in ("POS", "NEG"):
                        continue
                    finding_eligible[i] += 1
                    p_pos = _status(p_breast, kind) == "POS"
                    if r_status == "POS":
                        finding_counts[i, 0 if p_pos else 2] += 1
                    elif p_pos:
                        finding_counts[i, 1] += 1
            finding_dice[i] = _dice(_positive_findings(pred), _positive_findings(ref))
            p_trip, r_trip = _triples(pred), _triples(ref)
            relation_counts[i] = (len(p_trip & r_trip), len(p_trip - r_trip), len(r_trip - p_trip))
            relation_dice[i] = _dice(p_trip, r_trip)
            n_ref_triples[i], n_pred_triples[i] = len(r_trip), len(p_trip)
        return cls(density_labels, density_ref, density_pred, birads_labels, birads_ref, birads_pred,
                   finding_counts, finding_eligible, finding_dice, relation_counts, relation_dice,
                   n_ref_triples, n_pred_triples)

    # ----------------------------------------------------------------- metrics on report indices

    def density_f1(self, idx: np.ndarray) -> float:
        return macro_f1_times_completeness(self.density_ref[idx], self.density_pred[idx], len(self.density_labels))

    def birads_f1(self, idx: np.ndarray) -> float:
        return macro_f1_times_completeness(self.birads_ref[idx], self.birads_pred[idx], len(self.birads_labels))

    @staticmethod
    def _completeness(ref: np.ndarray, pred: np.ndarray) -> float:
        eligible = ref >= 0
        n_eligible = int(eligible.sum())
        return float((eligible & (pred >= 0)).sum() / n_eligible) if n_eligible else float("nan")

    def density_completeness(self, idx: np.ndarray) -> float:
        return self._completeness(self.density_ref[idx], self.density_pred[idx])

    def birads_completeness(self, idx: np.ndarray) -> float:
        return self._completeness(self.birads_ref[idx], self.birads_pred[idx])

    def finding_f1_pooled(self, idx: np.ndarray) -> float:
        return _binary_f1(*self.finding_counts[idx].sum(axis=0))

    def finding_f1_per_report(self, idx: np.ndarray) -> float:
        return float(self.finding_dice[idx].mean()) if len(idx) else float("nan")

    def relation_f1_pooled(self, idx: np.ndarray) -> float:
        return _binary_f1(*self.relation_counts[idx].sum(axis=0))

    def relation_f1_per_report(self, idx: np.ndarray) -> float:
        return float(self.relation_dice[idx].mean()) if len(idx) else float("nan")

    # --------------------------------------------------------------------- majority baselines

    @staticmethod
    def majority_code(ref: np.ndarray, n_labels: int) -> int:
        """The most frequent reference label (ties: the first in canonical order); -1 if none."""
        values = ref[ref >= 0]
        return int(np.bincount(values, minlength=n_labels).argmax()) if len(values) else -1

    @staticmethod
    def _constant_f1(ref: np.ndarray, code: int, n_labels: int) -> float:
        return macro_f1_times_completeness(ref, np.where(ref >= 0, code, -1), n_labels)

    def density_majority(self) -> tuple[str | None, Callable[[np.ndarray], float]]:
        """(class, metric on indices) for predicting the most frequent reference density everywhere."""
        code = self.majority_code(self.density_ref, len(self.density_labels))
        label = self.density_labels[code] if code >= 0 else None
        return label, lambda idx: self._constant_f1(self.density_ref[idx], code, len(self.density_labels))

    def birads_majority(self) -> tuple[str | None, Callable[[np.ndarray], float]]:
        """(class, metric on indices) for predicting the most frequent reference BI-RADS everywhere."""
        code = self.majority_code(self.birads_ref, len(self.birads_labels))
        label = self.birads_labels[code] if code >= 0 else None
        return label, lambda idx: self._constant_f1(self.birads_ref[idx], code, len(self.birads_labels))

    def counts(self) -> dict[str, int]:
        tp, fp, fn = (int(x) for x in self.finding_counts.sum(axis=0))
        rtp, rfp, rfn = (int(x) for x in self.relation_counts.sum(axis=0))
        return {
            "breasts_with_reference_density": int((self.density_ref >= 0).sum()),
            "breasts_with_both_density": int(((self.density_ref >= 0) & (self.density_pred >= 0)).sum()),
            "breasts_with_reference_birads": int((self.birads_ref >= 0).sum()),
            "breasts_with_both_birads": int(((self.birads_ref >= 0) & (self.birads_pred >= 0)).sum()),
            "findings_with_reference_pos_or_neg": int(self.finding_eligible.sum()),
            "findings_reference_pos": tp + fn,
            "findings_true_positive": tp,
            "findings_false_positive": fp,
            "relations_reference": int(self.n_ref_triples.sum()),
            "relations_predicted": int(self.n_pred_triples.sum()),
            "relations_matched": rtp,
        }


def _all(preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> tuple[ClinicalArrays, np.ndarray]:
    arrays = ClinicalArrays.from_reports(preds, refs)
    return arrays, np.arange(arrays.n)


def density_f1(preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> float:
    """Macro-F1 over densities x completeness, breasts pooled (all official versions)."""
    arrays, idx = _all(preds, refs)
    return arrays.density_f1(idx)


def birads_f1(preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> float:
    """Macro-F1 over BI-RADS categories x completeness, breasts pooled (all official versions)."""
    arrays, idx = _all(preds, refs)
    return arrays.birads_f1(idx)


def finding_f1_pooled(preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> float:
    """Pooled binary POS-F1 over (report, breast, finding) with reference POS/NEG (Jan-May 2026)."""
    arrays, idx = _all(preds, refs)
    return arrays.finding_f1_pooled(idx)


def finding_f1_per_report(preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> float:
    """Mean per-report Dice of POS (side, finding) sets, both empty = 1 (HEAD af7a3f5)."""
    arrays, idx = _all(preds, refs)
    return arrays.finding_f1_per_report(idx)


def relation_f1_pooled(preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> float:
    """Micro F1 over triple counts summed over reports (official Jan 2026 to before HEAD)."""
    arrays, idx = _all(preds, refs)
    return arrays.relation_f1_pooled(idx)


def relation_f1_per_report(preds: Sequence[ReportResult], refs: Sequence[ReportResult]) -> float:
    """Mean per-report Dice of triple sets, both empty = 1 (HEAD af7a3f5)."""
    arrays, idx = _all(preds, refs)
    return arrays.relation_f1_per_report(idx)
