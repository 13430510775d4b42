"""Generated-report evaluation: clinical efficacy, BLEU-1/4, ROUGE-L, with bootstrap intervals.

:func:`evaluate_reports` matches predicted and reference report texts by id, parses each with
``models.report.parse.parse_report`` and returns every metric of :func:`report_metrics`.
Definitions: training/eval/clinical.py, training/eval/nlg.py and docs/report-metrics.md.

Intervals: percentile 95% bootstrap over resampled *reports* (every metric, corpus-level
ones such as BLEU and the pooled F1s recomputed on each resample), via
:func:`training.eval.classification.bootstrap`; default 1000 resamples with seed 42, like the
official HEAD code. All metrics use the same seed, hence the same resampled report sets.

Scales: BLEU 0-100; ROUGE-L and all clinical metrics 0-1.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from models.report.result import ReportResult
from training.eval.classification import bootstrap
from training.eval.clinical import (  # noqa: F401  (re-exported)
    ClinicalArrays, birads_f1, density_f1, finding_f1_per_report, finding_f1_pooled, relation_f1_per_report,
    relation_f1_pooled,
)
from training.eval.nlg import (  # noqa: F401  (re-exported)
    MAX_ORDER, bleu, bleu_from_statistics, bleu_statistics, lcs_length, rouge_l, rouge_l_pair, rouge_l_scores,
    tokenize,
)

# Metric names in output order, with a one-line definition (used by the CLI table and docs).
METRICS: dict[str, str] = {
    "density_f1": "macro-F1 over densities x completeness, breasts pooled",
    "birads_f1": "macro-F1 over BI-RADS x completeness, breasts pooled",
    "density_completeness": "breasts with predicted density / with reference density",
    "birads_completeness": "breasts with predicted BI-RADS / with reference BI-RADS",
    "finding_f1_pooled": "pooled POS-F1, reference POS/NEG findings (official Jan-May 2026)",
    "finding_f1_per_report": "mean per-report Dice of POS findings (official HEAD)",
    "relation_f1_pooled": "micro F1 over pooled triples (official Jan 2026 until HEAD)",
    "relation_f1_per_report": "mean per-report Dice of triples (official HEAD)",
    "bleu_1": "corpus BLEU-1, 0-100",
    "bleu_4": "corpus BLEU-4, 0-100",
    "rouge_l": "mean ROUGE-L F (beta=1), 0-1",
}
BASELINES: dict[str, str] = {
    "density_f1_majority": "density_f1 when every breast gets the most frequent reference density",
    "birads_f1_majority": "birads_f1 when every breast gets the most frequent reference BI-RADS",
}


class ReportIdMismatch(ValueError):
    """Prediction and reference sets do not have the same ids."""

    def __init__(self, only_pred: list, only_ref: list):
        self.only_pred, self.only_ref = only_pred, only_ref
        parts = []
        if only_ref:
            parts.append(f"{len(only_ref)} id(s) have a reference but no prediction: {_preview(only_ref)}")
        if only_pred:
            parts.append(f"{len(only_pred)} id(s) have a prediction but no reference: {_preview(only_pred)}")
        super().__init__("; ".join(parts))


class ReportParseError(RuntimeError):
    """The parser failed on one report."""


def _preview(ids: Sequence, limit: int = 20) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def report_metrics(preds: Sequence[ReportResult], refs: Sequence[ReportResult],
                   pred_texts: Sequence[str], ref_texts: Sequence[str],
                   resamples: int = 1000, seed: int = 42) -> dict[str, Any]:
    """Every metric with its bootstrap interval, for aligned lists of parsed reports and texts.

    Returns ``{"n_reports", "metrics": {name: {"value", "ci95"}}, "baselines": {name: {"value",
    "ci95", "class"}}, "counts": {...}, "bootstrap": {"resamples", "seed", "unit"}, "scales"}``.
    NaN marks an undefined value (see the module docs of clinical.py).
    """
    n = len(refs)
    if not (len(preds) == len(pred_texts) == len(ref_texts) == n):
        raise ValueError("predictions, references and texts must have the same length")
    clinical = ClinicalArrays.from_reports(preds, refs)
    bleu_stats = bleu_statistics(pred_texts, ref_texts, MAX_ORDER)
    rouge = rouge_l_scores(pred_texts, ref_texts)

    functions: dict[str, Callable[[np.ndarray], float]] = {
        "density_f1": clinical.density_f1,
        "birads_f1": clinical.birads_f1,
        "density_completeness": clinical.density_completeness,
        "birads_completeness": clinical.birads_completeness,
        "finding_f1_pooled": clinical.finding_f1_pooled,
        "finding_f1_per_report": clinical.finding_f1_per_report,
        "relation_f1_pooled": clinical.relation_f1_pooled,
        "relation_f1_per_report": clinical.relation_f1_per_report,
        "bleu_1": lambda idx: bleu_from_statistics(bleu_stats[idx].sum(axis=0), 1),
        "bleu_4": lambda idx: bleu_from_statistics(bleu_stats[idx].sum(axis=0), 4),
        "rouge_l": lambda idx: float(rouge[idx].mean()) if len(idx) else float("nan"),
    }
    assert list(functions) == list(METRICS)
    metrics = {name: bootstrap(fn, n, resamples, seed).to_dict() for name, fn in functions.items()}

    baselines: dict[str, dict[str, Any]] = {}
    for name, (label, fn) in (("density_f1_majority", clinical.density_majority()),
                              ("birads_f1_majority", clinical.birads_majority())):
        baselines[name] = {**bootstrap(fn, n, resamples, seed).to_dict(), "class": label}

    counts: dict[str, int] = {"reports": n, **clinical.counts(),
                              "prediction_tokens": int(bleu_stats[:, 2 * MAX_ORDER].sum()),
                              "reference_tokens": int(bleu_stats[:, 2 * MAX_ORDER + 1].sum())}
    return {
        "n_reports": n,
        "metrics": metrics,
        "baselines": baselines,
        "counts": counts,
        "bootstrap": {"resamples": int(resamples), "seed": int(seed), "unit": "report", "interval": "percentile 95%"},
        "scales": {"bleu_1": "0-100", "bleu_4": "0-100", "other": "0-1"},
    }


def _default_parser() -> Callable[[str], ReportResult]:
    from models.report.parse import parse_report  # lazy: the parser is optional for the metrics

    return parse_report


def evaluate_reports(pred_texts: Mapping[Hashable, str], ref_texts: Mapping[Hashable, str],
                     resamples: int = 1000, seed: int = 42,
                     parse: Callable[[str], ReportResult] | None = None) -> dict[str, Any]:
    """Parse and score predicted reports against references matched by id.

    Raises :class:`ReportIdMismatch` (listing the ids) when an id is on one side only, and
    :class:`ReportParseError` naming the report when the parser fails. Reports are taken in
    the order of ``ref_texts``. ``parse`` defaults to ``models.report.parse.parse_report``.
    """
    only_ref = [i for i in ref_texts if i not in pred_texts]
    only_pred = [i for i in pred_texts if i not in ref_texts]
    if only_ref or only_pred:
        raise ReportIdMismatch(only_pred, only_ref)
    if not ref_texts:
        raise ValueError("no reports to evaluate")
    parse = parse or _default_parser()
    ids = list(ref_texts)
    preds_text = [pred_texts[i] for i in ids]
    refs_text = [ref_texts[i] for i in ids]

    def parse_all(texts: list[str], side: str) -> list[ReportResult]:
        results = []
        for report_id, text in zip(ids, texts):
            try:
                results.append(parse(text))
            except Exception as exc:  # noqa: BLE001 - re-raised with the report named
                raise ReportParseError(f"parsing {side} report {report_id!r} failed: "
                                       f"{type(exc).__name__}: {exc}") from exc
        return results

    return report_metrics(parse_all(preds_text, "predicted"), parse_all(refs_text, "reference"),
                          preds_text, refs_text, resamples=resamples, seed=seed)
