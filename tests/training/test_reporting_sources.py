"""Which source the node reports per field: both measured the same way, ties keep the report."""
from __future__ import annotations

from training.mammorg.reporting import choose


def test_reporting_choice_compares_both_sources_on_the_same_breasts():
    keys = [(f"s{i}", side) for i in range(6) for side in ("R", "L")]
    reference = {k: {"density": "ABCD"[i % 4], "birads": ("1", "4B", "2")[i % 3]} for i, k in enumerate(keys)}
    report = {k: {"density": "B", "birads": v["birads"]} for k, v in reference.items()}        # density constant
    classifier = {k: {"density": v["density"], "birads": "1"} for k, v in reference.items()}  # BI-RADS constant
    choice = choose(reference, report, classifier)
    assert choice["density"] == "classifier" and choice["birads"] == "report"               # 4B == merged 4
    assert choice["evidence"]["density"]["classifier_macro_f1"] == 1.0
    assert choice["evidence"]["birads"]["report_macro_f1"] == 1.0 and choice["breasts"] == 12
    tie = choose(reference, report, {k: {"density": "B", "birads": v["birads"][0]} for k, v in reference.items()})
    assert tie["density"] == "report" and tie["birads"] == "report"                          # ties keep the report
