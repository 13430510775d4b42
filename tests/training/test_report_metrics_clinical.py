"""Clinical-efficacy metrics on constructed ReportResult pairs, against hand-computed values."""
from __future__ import annotations

import math

import pytest

from models.report.result import BreastResult, ReportResult
from training.eval.clinical import (
    birads_f1, density_f1, finding_f1_per_report, finding_f1_pooled, relation_f1_per_report, relation_f1_pooled,
)
from training.eval.report_metrics import report_metrics


def report(r: dict | None = None, l: dict | None = None, relations: list | None = None) -> ReportResult:
    """ReportResult from {"density": .., "birads": .., finding_kind: status, ...} per side."""
    result = ReportResult(relations=list(relations or []))
    for side, spec in (("R", r or {}), ("L", l or {})):
        breast = BreastResult(density=spec.get("density"), birads=spec.get("birads"))
        for kind, status in spec.items():
            if kind not in ("density", "birads"):
                breast.findings[kind].status = status
        result.breasts[side] = breast
    return result


def test_density_f1_macro_over_present_labels_times_completeness() -> None:
    refs = [report({"density": "B"}, {"density": "B"}), report({"density": "C"}, {"density": "C"}),
            report({"density": "D"}, {})]
    preds = [report({"density": "B"}, {"density": "C"}), report({"density": "C"}, {}),
             report({"density": "D"}, {"density": "A"})]
    # eligible 5 (r3 L has no reference, its "A" is ignored); kept 4 (r2 L not predicted)
    # labels {B, C, D}: F1 B = 2/3, C = 2/3, D = 1 -> 7/9; x completeness 4/5
    assert density_f1(preds, refs) == pytest.approx(7 / 9 * 4 / 5)


def test_birads_f1_counts_labels_only_predicted_and_completeness() -> None:
    refs = [report({"birads": "1"}, {"birads": "2"}), report({"birads": "0"}, {"birads": "0"})]
    preds = [report({"birads": "1"}, {"birads": "4A"}), report({}, {})]
    # kept: (1,1), (2,4A); labels {1, 2, 4A}: F1 1, 0, 0 -> 1/3; completeness 2/4
    assert birads_f1(preds, refs) == pytest.approx(1 / 3 * 2 / 4)
    assert birads_f1(preds[:1], refs[:1]) == pytest.approx(1 / 3)
    assert math.isnan(birads_f1([report()], [report()]))  # no reference BI-RADS: undefined
    assert birads_f1(preds[1:], refs[1:]) == 0.0  # references but no prediction: completeness 0


FINDING_REFS = [
    report({"mass": "POS", "calcification": "NEG"}, {"asymmetry": "POS", "nodule": "UNC"}),
    report({"mass": "POS"}, {"calcification": "POS"}),
    report({"mass": "NEG"}, {}),
]
FINDING_PREDS = [
    report({"mass": "POS", "calcification": "POS"}, {"asymmetry": "UNC", "nodule": "POS"}),
    report({}, {"calcification": "POS"}),
    report({"mass": "NEG"}, {}),
]


def test_finding_f1_pooled_unc_prediction_is_negative() -> None:
    # eligible (reference POS/NEG): r1 R mass TP, R calcification FP, L asymmetry FN (UNC predicted),
    # r1 L nodule has reference UNC -> ignored; r2 R mass FN (BLANK), L calcification TP; r3 nothing.
    # TP 2, FP 1, FN 2 -> 4 / 7
    assert finding_f1_pooled(FINDING_PREDS, FINDING_REFS) == pytest.approx(4 / 7)


def test_finding_f1_per_report_dice_both_empty_is_one() -> None:
    # r1: pred {R mass, R calc, L nodule}, ref {R mass, L asym} -> 2*1/5; r2: 2*1/3; r3: both empty -> 1
    assert finding_f1_per_report(FINDING_PREDS, FINDING_REFS) == pytest.approx((0.4 + 2 / 3 + 1.0) / 3)
    assert finding_f1_per_report([report()], [report()]) == 1.0
    assert math.isnan(finding_f1_pooled([report()], [report()]))  # no positive anywhere: undefined


RELATION_REFS = [
    report(relations=[("mass", "located_at", "uoq"),
                      ("calcification", "modified_by", "fine_pleomorphic")]),
    report(relations=[("asymmetry", "located_at", "lower_inner_quadrant")]),
    report(),
]
RELATION_PREDS = [
    report(relations=[("mass", "located_at", "uoq"), ("mass", "suggestive_of", "benign"),
                      ["mass", "located_at", "uoq"]]),  # duplicate (as a list) counts once
    report(),
    report(),
]


def test_relation_f1_pooled_and_per_report() -> None:
    # r1: TP 1, FP 1, FN 1 (dice 1/2); r2: FN 1 (dice 0); r3 both empty (dice 1)
    assert relation_f1_pooled(RELATION_PREDS, RELATION_REFS) == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    assert relation_f1_per_report(RELATION_PREDS, RELATION_REFS) == pytest.approx((0.5 + 0.0 + 1.0) / 3)


def test_report_metrics_values_baselines_and_counts() -> None:
    refs = [report({"density": "B", "birads": "1"}, {"density": "B", "birads": "2"}),
            report({"density": "C", "birads": "2"}, {"density": "C", "birads": "2"}),
            report({"density": "D", "birads": "4A"}, {})]
    preds = [report({"density": "B", "birads": "1"}, {"density": "C", "birads": "2"}),
             report({"density": "C", "birads": "2"}, {}),
             report({"density": "D", "birads": "4B"}, {"density": "A"})]
    texts = ["a b c d", "e f g h", "i j k l"]
    result = report_metrics(preds, refs, texts, texts, resamples=0)
    metrics = result["metrics"]
    assert metrics["density_f1"]["value"] == pytest.approx(7 / 9 * 4 / 5)
    assert metrics["density_completeness"]["value"] == pytest.approx(4 / 5)
    # BI-RADS kept 4 of 5: labels {1, 2, 4A, 4B}: F1 1, 1, 0, 0 -> 1/2 x 4/5
    assert metrics["birads_f1"]["value"] == pytest.approx(0.5 * 4 / 5)
    assert metrics["bleu_4"]["value"] == pytest.approx(100.0) and metrics["rouge_l"]["value"] == 1.0
    assert math.isnan(metrics["bleu_4"]["ci95"][0])  # no resamples, no interval
    # majority density: B and C tie (2 each) -> B (canonical order); F1 B = 2*2/(2+5), C = D = 0
    density_base = result["baselines"]["density_f1_majority"]
    assert density_base["class"] == "B" and density_base["value"] == pytest.approx(4 / 7 / 3)
    # majority BI-RADS: 2 (3 of 5); F1 2 = 2*3/(3+5), 1 = 4A = 0
    birads_base = result["baselines"]["birads_f1_majority"]
    assert birads_base["class"] == "2" and birads_base["value"] == pytest.approx(6 / 8 / 3)
    counts = result["counts"]
    assert counts["reports"] == 3 and counts["breasts_with_reference_density"] == 5
    assert counts["breasts_with_both_density"] == 4 and counts["prediction_tokens"] == 12
