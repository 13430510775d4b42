"""bench.demo_quality: the scoring maths on hand-made results, and one run through a real node."""
from __future__ import annotations

import json
import math
from typing import Any

import pytest

from bench import demo_quality as dq


def _label(**breasts: dict[str, Any]) -> dict[str, Any]:
    """labels.json as the phantom writes it, reduced to what is scored: R=(birads, density, kinds)."""
    out = {}
    for side, (birads, density, kinds) in breasts.items():
        out[side] = {"birads": birads, "density": density,
                     "findings": [{"id": f"{side}{i}", "kind": k} for i, k in enumerate(kinds, 1)]}
    return {"study_uid": "2.25.1", "breasts": out}


def _breast(birads: str | None = "1", density: str | None = "B", findings: tuple = (), c_birads: str = "1",
            c_density: str = "B", p1: float = 0.7, p4: float = 0.0, p5: float = 0.0) -> dict[str, Any]:
    """A breast of the node's structured result (node/results.py); findings as (kind, status)."""
    probs = {"0": 0.0, "1": p1, "2": round(1 - p1 - p4 - p5, 4), "3": 0.0, "4": p4, "5": p5}
    return {"birads": birads, "density": density, "birads_source": "report", "density_source": "report",
            "findings": [{"kind": k, "status": s, "locations": [], "descriptors": []} for k, s in findings],
            "report": {"birads": birads, "density": density},
            "classifier": {"birads": c_birads, "birads_probabilities": probs, "density": c_density,
                           "density_probabilities": {}, "findings": []}}


def _result(text: str = "FINDINGS: x\nIMPRESSION: y", **breasts: dict[str, Any]) -> dict[str, Any]:
    return {"status": "complete", "missing_views": [], "breasts": breasts, "disagreements": [],
            "report": {"text": text}, "models": {}, "preliminary": True}


def test_lesion_and_suspicious_auc_use_the_classifier_probabilities_per_breast() -> None:
    labels = [_label(R=("1", "B", []), L=("4A", "B", ["mass"])), _label(R=("2", "B", ["calcification"]), L=("1", "B", []))]
    results = [_result(R=_breast(p1=0.6, p4=0.05, p5=0.05), L=_breast(p1=0.1, p4=0.1, p5=0.2)),
               _result(R=_breast(p1=0.55, p4=0.25), L=_breast(p1=0.5, p4=0.05))]
    scores = dq.score(results, labels, resamples=0)
    # lesion: positives score 0.9 and 0.45, negatives 0.4 and 0.5 -> 3 of 4 pairs ordered
    assert scores["lesion_auc"]["value"] == pytest.approx(0.75)
    assert (scores["lesion_auc"]["positives"], scores["lesion_auc"]["negatives"]) == (2, 2)
    # suspicious: only L of study 0 (P4+P5 = 0.3 beats 0.1, 0.25, 0.05); P(4) alone would give 2/3
    assert scores["suspicious_auc"]["value"] == pytest.approx(1.0)
    assert scores["lesion_auc"]["baseline"] == 0.5 and scores["suspicious_auc"]["baseline"] == 0.5


def test_auc_ties_count_half() -> None:
    labels = [_label(R=("1", "B", []), L=("3", "B", ["mass"]))]
    results = [_result(R=_breast(p1=0.5), L=_breast(p1=0.5))]
    assert dq.score(results, labels, resamples=0)["lesion_auc"]["value"] == pytest.approx(0.5)


def _four_breasts() -> tuple[list[dict], list[dict]]:
    labels = [_label(R=("1", "B", []), L=("4A", "B", ["mass"])), _label(R=("2", "C", []), L=("1", "C", []))]
    results = [_result(R=_breast("1", "B", c_birads="1", c_density="A"), L=_breast("4C", "C", c_birads="4", c_density="B")),
               _result(R=_breast("1", "C", c_birads="2", c_density="C"), L=_breast("1", "C", c_birads="0", c_density="D"))]
    return results, labels


def test_birads_accuracy_and_macro_f1_merge_4a_4b_4c() -> None:
    results, labels = _four_breasts()
    birads = dq.score(results, labels, resamples=0)["birads"]
    # reported [1, 4C, 1, 1] vs truth [1, 4A, 2, 1]: class 1 F1 4/5, class 4 F1 1 (4C == 4A once merged), class 2 F1 0
    assert birads["reported"]["accuracy"]["value"] == pytest.approx(0.75)
    assert birads["reported"]["macro_f1"]["value"] == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    # classifier [1, 4, 2, 0]: class 1 F1 2/3, class 4 1, class 2 1, class 0 (false positive only) 0
    assert birads["classifier"]["accuracy"]["value"] == pytest.approx(0.75)
    assert birads["classifier"]["macro_f1"]["value"] == pytest.approx((2 / 3 + 1 + 1 + 0) / 4)
    # majority class 1 (2 of 4): accuracy 0.5; F1 class 1 = 4/6, classes 4 and 2 = 0
    assert birads["baseline"] == {"majority_class": "1", "accuracy": 0.5, "macro_f1": pytest.approx((4 / 6) / 3)}
    assert birads["truth_counts"] == {"0": 0, "1": 2, "2": 1, "3": 0, "4": 1, "5": 0}
    assert birads["reported"]["counts"]["1"] == 3 and birads["reported"]["counts"]["4"] == 1


def test_density_reported_and_classifier_are_scored_separately() -> None:
    results, labels = _four_breasts()
    density = dq.score(results, labels, resamples=0)["density"]
    assert density["reported"]["accuracy"]["value"] == pytest.approx(0.75)          # B C C C vs B B C C
    assert density["reported"]["macro_f1"]["value"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert density["classifier"]["accuracy"]["value"] == pytest.approx(0.5)         # A B C D
    assert density["baseline"]["majority_class"] == "B" and density["baseline"]["accuracy"] == 0.5


def test_missing_or_category_6_birads_counts_as_wrong_not_as_a_class() -> None:
    labels = [_label(R=("1", "B", []), L=("2", "B", []))]
    results = [_result(R=_breast(None, None), L=_breast("6", "B"))]
    scores = dq.score(results, labels, resamples=0)
    assert scores["birads"]["reported"]["accuracy"]["value"] == 0.0
    assert scores["birads"]["reported"]["counts"] == {"0": 0, "1": 0, "2": 0, "3": 0, "4": 0, "5": 0, "none": 2}
    assert scores["density"]["reported"]["accuracy"]["value"] == 0.5


def test_report_findings_recall_and_precision_are_per_breast() -> None:
    labels = [_label(R=("4B", "B", ["mass", "calcification"]), L=("1", "B", [])),
              _label(R=("1", "B", []), L=("3", "B", ["mass"]))]
    results = [_result(R=_breast(findings=[("calcification", "UNC")]), L=_breast(findings=[("mass", "POS")])),
               _result(R=_breast(findings=[("calcification", "POS")]),
                       L=_breast(findings=[("mass", "POS"), ("calcification", "NEG")]))]
    found = dq.score(results, labels, resamples=0)["report_findings"]
    mass = found["mass"]  # truth R0, L1; named L0 (wrong breast), L1 -> 1 hit of 2 true, 1 of 2 named
    assert mass["recall"]["value"] == pytest.approx(0.5) and mass["precision"]["value"] == pytest.approx(0.5)
    assert (mass["truth_positive"], mass["reported_positive"], mass["true_positive"]) == (2, 2, 1)
    assert mass["baseline_always"] == {"recall": 1.0, "precision": 0.5}
    assert mass["baseline_never"]["recall"] == 0.0 and math.isnan(mass["baseline_never"]["precision"])
    calc = found["calcification"]  # truth R0; named R0 (UNC counts), R1 (a false call); L1 is NEG: not named
    assert calc["recall"]["value"] == 1.0 and calc["precision"]["value"] == pytest.approx(0.5)
    assert (calc["truth_positive"], calc["reported_positive"], calc["true_positive"]) == (1, 2, 1)
    assert calc["baseline_always"]["precision"] == pytest.approx(0.25)


def test_precision_without_any_named_finding_is_undefined() -> None:
    labels = [_label(R=("3", "B", ["mass"]), L=("1", "B", []))]
    found = dq.score([_result(R=_breast(), L=_breast())], labels, resamples=0)["report_findings"]["mass"]
    assert found["recall"]["value"] == 0.0 and math.isnan(found["precision"]["value"])


def test_failed_studies_are_counted_not_scored_and_report_variety() -> None:
    labels = [_label(R=("1", "B", []), L=("1", "B", []))] * 4
    same = _result("same text", R=_breast(), L=_breast())
    results = [same, _result("other", R=_breast(), L=_breast()), None, same]
    scores = dq.score(results, labels, resamples=0)
    assert (scores["n_studies"], scores["n_scored_studies"], scores["unscored_studies"], scores["n_breasts"]) == (4, 3, 1, 6)
    assert scores["report_varies"] == {"studies": 3, "distinct_texts": 2, "most_repeated_count": 2,
                                       "baseline": {"distinct_texts": 1, "most_repeated_count": 3}}


def test_bootstrap_resamples_studies_and_the_document_is_strict_json() -> None:
    results, labels = _four_breasts()
    scores = dq.score(results * 5, labels * 5, resamples=200, seed=3)
    assert scores["bootstrap"] == {"resamples": 200, "seed": 3, "unit": "study", "interval": "percentile 95%"}
    acc = scores["birads"]["reported"]["accuracy"]
    assert acc["ci95"][0] <= acc["value"] <= acc["ci95"][1] and acc["ci95"][0] < acc["ci95"][1]
    # a study's two breasts move together: study 0 is all right, study 1 half -> means over studies only
    assert acc["ci95"][0] >= 0.5 and acc["ci95"][1] <= 1.0
    assert math.isnan(scores["report_findings"]["mass"]["precision"]["value"])  # nothing named: undefined
    strict = dq._nan_to_none(scores)
    json.dumps(strict, allow_nan=False)
    assert strict["report_findings"]["mass"]["precision"] == {"value": None, "ci95": [None, None]}
    rows = dq.table_rows(scores)
    assert any(r[0].startswith("lesion AUC") for r in rows) and all(len(r) == 5 for r in rows)


def test_breast_truths_come_from_the_labels_of_the_same_study() -> None:
    with pytest.raises(ValueError):
        dq.score([None], [], resamples=0)


def test_default_packages_are_the_bootstrap_demo_cache(monkeypatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("MAMMO_NODE_"):
            monkeypatch.delenv(key)
    assert dq._bootstrap_cache(dq.DEFAULT_CONFIG) == dq.ROOT / "var" / "cache" / "bootstrap-demo"
    assert dq.BENCH_SEED == 20261207


@pytest.mark.slow
def test_packages_are_told_apart_by_their_manifests(model_packages) -> None:
    import argparse

    args = argparse.Namespace(packages=[str(model_packages["rg1"]), str(model_packages["vm1"])], versamammo=None,
                              mammorg=None, config=dq.DEFAULT_CONFIG, threads=None)
    packages, sources = dq.choose_packages(args)
    assert packages == {"mammorg": model_packages["rg1"].resolve(), "versamammo": model_packages["vm1"].resolve()}
    assert sources == {"mammorg": "given", "versamammo": "given"}
    args.packages = [str(model_packages["vm1"]), str(model_packages["vm1"])]
    with pytest.raises(SystemExit, match="two versamammo packages"):
        dq.choose_packages(args)


# Every key of the JSON document, so a consumer (the quality floors to come) can rely on them.
DOC_KEYS = {"bench", "date", "studies", "seed", "phantom", "packages", "machine", "states", "failed",
            "processing_seconds", "wall_seconds", "scores"}
SCORE_KEYS = {"n_studies", "n_scored_studies", "n_breasts", "unscored_studies", "density", "birads", "lesion_auc",
              "suspicious_auc", "report_findings", "report_varies", "bootstrap"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_four_studies_through_a_real_node(model_packages, tmp_path, capsys) -> None:
    """`python -m bench.demo_quality --studies 4 --json` (docs/training.md): `mammo-node serve` +
    install/activate + send + `studies show --json`, with the suite's session packages (real graphs,
    random weights, so no 5-minute demo build here): every study is DONE and scored, every key is
    present. No quality floors yet."""
    out = tmp_path / "quality.json"
    code = dq.main(["--versamammo", str(model_packages["vm1"]), "--mammorg", str(model_packages["rg1"]),
                    "--studies", "4", "--seed", "20261207", "--bootstrap", "20", "--json", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    doc = json.loads(out.read_text())
    assert printed == doc
    assert set(doc) == DOC_KEYS and set(doc["scores"]) == SCORE_KEYS
    assert doc["states"] == {"DONE": 4} and doc["failed"] == []
    scores = doc["scores"]
    assert (scores["n_studies"], scores["n_scored_studies"], scores["n_breasts"]) == (4, 4, 8)
    assert doc["packages"]["versamammo"]["ref"] == "versamammo-test@1.0.0"
    assert doc["packages"]["mammorg"]["ref"] == "mammorg-test@1.0.0"
    assert {p["source"] for p in doc["packages"].values()} == {"given"}
    assert doc["studies"] == 4 and doc["seed"] == 20261207 and doc["machine"]["cpu_count"] >= 1
    for block in (scores["density"], scores["birads"]):
        assert set(block) == {"n", "truth_counts", "reported", "classifier", "baseline"} and block["n"] == 8
        for source in ("reported", "classifier"):
            assert {"accuracy", "macro_f1", "counts"} <= set(block[source])
            assert sum(block[source]["counts"].values()) == 8
    for name in ("lesion_auc", "suspicious_auc"):
        assert {"value", "ci95", "positives", "negatives", "baseline"} <= set(scores[name])
    for kind in ("mass", "calcification"):
        assert {"recall", "precision", "baseline_always", "baseline_never"} <= set(scores["report_findings"][kind])
    assert scores["report_varies"]["studies"] == 4
    assert doc["wall_seconds"]["total"] > 0
