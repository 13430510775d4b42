"""Bootstrap intervals of the report metrics and evaluate_reports' matching by id."""
from __future__ import annotations

import numpy as np
import pytest

from models.report.result import BIRADS_CATEGORIES, DENSITIES, MAMMORG_FINDINGS, RELATIONS, ReportResult
from training.eval.nlg import bleu
from training.eval.report_metrics import (
    BASELINES, METRICS, ReportIdMismatch, ReportParseError, evaluate_reports, report_metrics,
)

WORDS = "breast mass calcification dense fatty no suspicious benign right left lymph node skin 乳 腺 肿 块".split()


def random_report(rng: np.random.Generator) -> ReportResult:
    result = ReportResult()
    for breast in result.breasts.values():
        breast.density = None if rng.random() < 0.1 else str(rng.choice(DENSITIES))
        breast.birads = None if rng.random() < 0.1 else str(rng.choice(BIRADS_CATEGORIES[:5]))
        for kind in MAMMORG_FINDINGS:
            breast.findings[kind].status = str(rng.choice(["POS", "NEG", "UNC", "BLANK"], p=[0.2, 0.3, 0.1, 0.4]))
    result.relations = [(str(rng.choice(MAMMORG_FINDINGS[:3])), str(rng.choice(RELATIONS)), str(rng.choice(["a", "b"])))
                        for _ in range(int(rng.integers(0, 3)))]
    return result


def noisy_copy(report: ReportResult, rng: np.random.Generator) -> ReportResult:
    copy = random_report(rng)
    for side, breast in report.breasts.items():  # agree with the reference most of the time
        if rng.random() < 0.7:
            copy.breasts[side].density = breast.density
        if rng.random() < 0.6:
            copy.breasts[side].birads = breast.birads
        for kind, finding in breast.findings.items():
            if rng.random() < 0.7:
                copy.breasts[side].findings[kind].status = finding.status
    if rng.random() < 0.5:
        copy.relations = list(report.relations)
    return copy


def random_text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(8, 20))))


@pytest.fixture(scope="module")
def dataset() -> tuple[list, list, list, list]:
    rng = np.random.default_rng(7)
    refs = [random_report(rng) for _ in range(60)]
    preds = [noisy_copy(r, rng) for r in refs]
    ref_texts = [random_text(rng) for _ in refs]
    pred_texts = [" ".join(t.split()[:-2] + ["mass", "breast"]) if rng.random() < 0.7 else random_text(rng)
                  for t in ref_texts]
    return preds, refs, pred_texts, ref_texts


def test_every_metric_has_an_interval_bracketing_it(dataset) -> None:
    result = report_metrics(*dataset, resamples=300, seed=42)
    assert set(result["metrics"]) == set(METRICS) and set(result["baselines"]) == set(BASELINES)
    for name, entry in {**result["metrics"], **result["baselines"]}.items():
        low, high = entry["ci95"]
        assert low <= entry["value"] <= high, name
        assert low < high, name  # sixty noisy reports: no metric is constant across resamples
    assert result["bootstrap"] == {"resamples": 300, "seed": 42, "unit": "report", "interval": "percentile 95%"}
    # the model does better than always predicting the majority class on this noisy copy
    assert result["metrics"]["density_f1"]["value"] > result["baselines"]["density_f1_majority"]["value"]


def test_corpus_bleu_is_recomputed_on_each_resample(dataset) -> None:
    _, _, pred_texts, ref_texts = dataset
    result = report_metrics(*dataset, resamples=50, seed=3)
    # the same draws as training.eval.classification.bootstrap, scored as corpus BLEU per resample
    rng = np.random.default_rng(3)
    n = len(ref_texts)
    draws = []
    for _ in range(50):
        idx = rng.integers(0, n, n)
        draws.append(bleu([pred_texts[i] for i in idx], [ref_texts[i] for i in idx], 4))
    assert result["metrics"]["bleu_4"]["value"] == pytest.approx(bleu(pred_texts, ref_texts, 4))
    assert result["metrics"]["bleu_4"]["ci95"] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])))


def test_bootstrap_seeded_and_perfect_predictions_have_no_spread(dataset) -> None:
    a = report_metrics(*dataset, resamples=100, seed=1)
    b = report_metrics(*dataset, resamples=100, seed=1)
    c = report_metrics(*dataset, resamples=100, seed=2)
    assert a == b and a["metrics"]["birads_f1"]["ci95"] != c["metrics"]["birads_f1"]["ci95"]
    _, refs, _, ref_texts = dataset
    perfect = report_metrics(refs, refs, ref_texts, ref_texts, resamples=100)
    for name in ("density_f1", "birads_f1", "finding_f1_pooled", "finding_f1_per_report", "relation_f1_pooled",
                 "relation_f1_per_report", "rouge_l"):
        assert perfect["metrics"][name] == {"value": 1.0, "ci95": [1.0, 1.0]}, name
    assert perfect["metrics"]["bleu_4"]["value"] == pytest.approx(100.0)
    assert perfect["metrics"]["bleu_4"]["ci95"] == pytest.approx([100.0, 100.0])


def test_evaluate_reports_matches_by_id_in_any_order(dataset) -> None:
    preds, refs, pred_texts, ref_texts = dataset
    parsed = {text: result for text, result in zip(pred_texts + ref_texts, preds + refs)}
    ids = [f"case-{i}" for i in range(len(refs))]
    pred_map = dict(reversed(list(zip(ids, pred_texts))))  # other order than the references
    ref_map = dict(zip(ids, ref_texts))
    result = evaluate_reports(pred_map, ref_map, resamples=100, seed=5, parse=parsed.__getitem__)
    assert result == report_metrics(preds, refs, pred_texts, ref_texts, resamples=100, seed=5)


def test_evaluate_reports_refuses_unmatched_ids() -> None:
    with pytest.raises(ReportIdMismatch) as info:
        evaluate_reports({"a": "x", "b": "y", "p1": "z"}, {"a": "x", "b": "y", "r1": "z", "r2": "w"},
                         parse=lambda text: ReportResult())
    assert info.value.only_pred == ["p1"] and info.value.only_ref == ["r1", "r2"]
    assert "'r1', 'r2'" in str(info.value) and "'p1'" in str(info.value)
    with pytest.raises(ValueError, match="no reports"):
        evaluate_reports({}, {}, parse=lambda text: ReportResult())


def test_evaluate_reports_names_the_report_the_parser_failed_on() -> None:
    def parse(text: str) -> ReportResult:
        if text == "bad":
            raise KeyError("BI-RADS 7")
        return ReportResult()

    with pytest.raises(ReportParseError, match="reference report 'b'"):
        evaluate_reports({"a": "ok", "b": "ok"}, {"a": "ok", "b": "bad"}, parse=parse)
