"""Hand-written reports (tests/models/reports/*.jsonl) parsed field by field.

Each line: ``{"id", "language", "note", "text", "expected", "relations", "absent_relations"}``.
``expected`` has "both", "R" and/or "L" entries (a side entry overrides "both" field by field):
``density`` and ``birads`` (null = not stated), and ``findings``: finding id -> status, or
{"status", "locations", "descriptors"} where the lists must be contained in the result. Every
finding not listed must be BLANK. ``relations`` must all be present, ``absent_relations`` none.

``python -m tests.models.test_reportparse_cases`` prints the per-field accuracy table used in
docs/report-parser.md.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from models.report.result import MAMMORG_FINDINGS, ReportResult
from models.report.parse import parse_report

REPORTS = Path(__file__).parent / "reports"
FILES = ("dev_en.jsonl", "dev_zh.jsonl", "heldout.jsonl")


def load(name: str) -> list[dict]:
    path = REPORTS / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def expected_breast(case: dict, side: str) -> dict:
    both = case["expected"].get("both", {})
    own = case["expected"].get(side, {})
    out = {"density": own.get("density", both.get("density")), "birads": own.get("birads", both.get("birads"))}
    findings = dict(both.get("findings", {}))
    findings.update(own.get("findings", {}))
    out["findings"] = {k: (v if isinstance(v, dict) else {"status": v}) for k, v in findings.items()}
    return out


def compare(case: dict, result: ReportResult) -> dict[str, list]:
    """Per-field outcomes: field -> list of (ok, description)."""
    out: dict[str, list] = {"density": [], "birads": [], "status": [], "status_nonblank": [], "locations": [],
                            "descriptors": [], "relations": [], "absent_relations": []}
    for side in ("R", "L"):
        exp = expected_breast(case, side)
        got = result.breasts[side]
        for name in ("density", "birads"):
            want, have = exp[name], getattr(got, name)
            out[name].append((want == have, f"{side} {name}: want {want} got {have}"))
        for kind in MAMMORG_FINDINGS:
            want = exp["findings"].get(kind, {"status": "BLANK"})
            fr = got.findings[kind]
            ok = fr.status == want["status"]
            out["status"].append((ok, f"{side} {kind}: want {want['status']} got {fr.status}"))
            if want["status"] != "BLANK" or fr.status != "BLANK":
                out["status_nonblank"].append((ok, f"{side} {kind}: want {want['status']} got {fr.status}"))
            for field in ("locations", "descriptors"):
                for item in want.get(field, []):
                    out[field].append((item in getattr(fr, field),
                                       f"{side} {kind} {field}: want {item} in {getattr(fr, field)}"))
    triples = {tuple(t) for t in result.relations}
    for t in case.get("relations", []):
        out["relations"].append((tuple(t) in triples, f"relation {tuple(t)} missing"))
    for t in case.get("absent_relations", []):
        out["absent_relations"].append((tuple(t) not in triples, f"relation {tuple(t)} should be absent"))
    return out


def failures(case: dict) -> list[str]:
    result = parse_report(case["text"])
    return [msg for checks in compare(case, result).values() for ok, msg in checks if not ok]


ALL = [c for name in FILES for c in load(name)]


def test_corpus_size_and_languages() -> None:
    dev = load("dev_en.jsonl") + load("dev_zh.jsonl")
    assert len(dev) >= 60
    assert sum(c["language"] == "zh" for c in dev) >= 25
    assert len({c["id"] for c in ALL}) == len(ALL)
    for c in ALL:
        assert (c["language"] == "zh") == any("\u4e00" <= ch <= "\u9fff" for ch in c["text"]), c["id"]
        for side in c["expected"]:
            assert side in ("both", "R", "L"), c["id"]


@pytest.mark.parametrize("case", ALL, ids=[c["id"] for c in ALL])
def test_case(case: dict) -> None:
    problems = failures(case)
    assert not problems, f"{case['id']} ({case['note']}):\n  " + "\n  ".join(problems)


def test_compare_detects_errors() -> None:
    """The checker itself fails on a wrong result (guards against a vacuous comparison)."""
    case = ALL[1]
    result = parse_report(case["text"])
    result.breasts["R"].birads = "6" if result.breasts["R"].birads != "6" else "1"
    nodule = result.breasts["L"].findings["nodule"]
    nodule.status = "UNC" if nodule.status != "UNC" else "POS"
    result.relations = []
    outcome = compare(case, result)
    assert not all(ok for ok, _ in outcome["birads"])
    assert not all(ok for ok, _ in outcome["status"])
    assert not case["relations"] or not all(ok for ok, _ in outcome["relations"])


def accuracy(cases: list[dict]) -> dict[str, tuple[int, int]]:
    totals: dict[str, list[int]] = {}
    for case in cases:
        for name, checks in compare(case, parse_report(case["text"])).items():
            t = totals.setdefault(name, [0, 0])
            t[0] += sum(ok for ok, _ in checks)
            t[1] += len(checks)
    return {k: (v[0], v[1]) for k, v in totals.items()}


def main(argv: list[str]) -> int:
    names = argv or list(FILES)
    for name in names:
        for lang in ("en", "zh"):
            cases = [c for c in load(name) if c["language"] == lang]
            if not cases:
                continue
            acc = accuracy(cases)
            row = "  ".join(f"{k} {a}/{n} ({100 * a / n:.1f}%)" for k, (a, n) in acc.items() if n)
            perfect = sum(not failures(c) for c in cases)
            print(f"{name} {lang}: {len(cases)} reports, {perfect} fully correct\n  {row}")
            for c in cases:
                for msg in failures(c):
                    print(f"    {c['id']}: {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
