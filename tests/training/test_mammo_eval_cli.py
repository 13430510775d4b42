"""``mammo-eval`` end to end in a subprocess, with temporary JSON Lines files."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.eval.report_metrics import BASELINES, METRICS

SCRIPT = Path(sys.executable).parent / "mammo-eval"

# A stand-in for models.report.parse (BI-RADS after "right/left breast:", density from two phrases),
# installed in sys.modules before the CLI runs, so these tests do not depend on the real parser.
STUB = r'''
import re, sys, types
from models.report.result import ReportResult

def parse_report(text, language=None):
    result = ReportResult()
    low = text.lower()
    for side, word in (("R", "right"), ("L", "left")):
        match = re.search(word + r" breast: bi-rads (\w+)", low)
        if match:
            result.breasts[side].birads = match.group(1).upper()
        if "heterogeneously dense" in low:
            result.breasts[side].density = "C"
        elif "scattered" in low:
            result.breasts[side].density = "B"
    if "right breast mass" in low:
        result.breasts["R"].findings["mass"].status = "POS"
        result.relations.append(("mass", "located_at", "uoq"))
    return result

module = types.ModuleType("models.report.parse")
module.parse_report = parse_report
sys.modules["models.report.parse"] = module
from training.eval.cli import main
sys.argv = ["mammo-eval"] + sys.argv[1:]
main()
'''

REF = {
    "r1": "FINDINGS: The breasts are heterogeneously dense. No suspicious masses or calcifications. "
          "IMPRESSION: Right breast: BI-RADS 1 - negative. Left breast: BI-RADS 2 - benign.",
    "r2": "FINDINGS: There are scattered areas of fibroglandular density. No suspicious masses. "
          "IMPRESSION: Right breast: BI-RADS 2 - benign. Left breast: BI-RADS 2 - benign.",
    "r3": "FINDINGS: The breasts are heterogeneously dense. There is an irregular right breast mass in the upper "
          "outer quadrant. IMPRESSION: Right breast: BI-RADS 4A - suspicious. Left breast: BI-RADS 1 - negative.",
    "r4": "FINDINGS: There are scattered areas of fibroglandular density. No suspicious calcifications. "
          "IMPRESSION: Right breast: BI-RADS 1 - negative. Left breast: BI-RADS 1 - negative.",
}
PRED = {
    "r1": REF["r1"],
    "r2": "FINDINGS: The breasts are heterogeneously dense. No suspicious masses. "
          "IMPRESSION: Right breast: BI-RADS 2 - benign. Left breast: BI-RADS 1 - negative.",
    "r3": "FINDINGS: The breasts are heterogeneously dense. There is a right breast mass in the upper outer "
          "quadrant. IMPRESSION: Right breast: BI-RADS 4A - suspicious. Left breast: BI-RADS 1 - negative.",
    "r4": "FINDINGS: There are scattered areas of fibroglandular density. "
          "IMPRESSION: Right breast: BI-RADS 1 - negative. Left breast: BI-RADS 1 - negative.",
}
# BI-RADS pairs (ref, pred): (1,1) (2,2) | (2,2) (2,1) | (4A,4A) (1,1) | (1,1) (1,1)
# F1: "1" 2*4/(4+5), "2" 2*2/(3+2), "4A" 1 -> macro; completeness 1
BIRADS_F1 = (8 / 9 + 4 / 5 + 1) / 3
# density pairs: C C | B->C B->C | C C | B B: F1 C 2*4/(4+6), B 2*2/(4+2)
DENSITY_F1 = (8 / 10 + 4 / 6) / 2


def write_jsonl(path: Path, texts: dict[str, str], order: list[str] | None = None) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": texts[i]}) + "\n" for i in order or list(texts)),
                    encoding="utf-8")
    return path


def run_stub(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STUB, *args], capture_output=True, text=True, timeout=120)


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.eval.cli", *args], capture_output=True, text=True,
                          timeout=120)


def check_metrics_json(data: dict) -> None:
    for name in METRICS:
        entry = data["metrics"][name]
        assert set(entry) == {"value", "ci95"} and len(entry["ci95"]) == 2, name
    for name in BASELINES:
        assert set(data["baselines"][name]) == {"value", "ci95", "class"}, name
    assert data["n_reports"] == 4 and data["counts"]["reports"] == 4


def test_reports_json_every_metric_with_interval(tmp_path: Path) -> None:
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED, ["r4", "r3", "r2", "r1"])  # matched by id, not by line
    ref = write_jsonl(tmp_path / "ref.jsonl", REF)
    done = run_stub("reports", "--pred", str(pred), "--ref", str(ref), "--json", "--bootstrap", "200", "--seed", "1")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    check_metrics_json(data)
    metrics = data["metrics"]
    assert metrics["birads_f1"]["value"] == pytest.approx(BIRADS_F1)
    assert metrics["density_f1"]["value"] == pytest.approx(DENSITY_F1)
    # the stub finds the r3 mass and its location in both texts, nothing else
    for name in ("finding_f1_pooled", "finding_f1_per_report", "relation_f1_pooled", "relation_f1_per_report"):
        assert metrics[name]["value"] == 1.0, name
    low, high = metrics["bleu_4"]["ci95"]
    assert 0 < low <= metrics["bleu_4"]["value"] <= high <= 100
    assert data["bootstrap"]["resamples"] == 200 and data["bootstrap"]["seed"] == 1
    assert data["baselines"]["birads_f1_majority"]["class"] == "1"


def test_reports_table(tmp_path: Path) -> None:
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED)
    ref = write_jsonl(tmp_path / "ref.jsonl", REF)
    done = run_stub("reports", "--pred", str(pred), "--ref", str(ref), "--bootstrap", "50")
    assert done.returncode == 0, done.stderr
    for name in [*METRICS, *BASELINES, "95% CI", f"{BIRADS_F1:.4f}"]:
        assert name in done.stdout, name


def test_parse_json_lines_and_table(tmp_path: Path) -> None:
    file = write_jsonl(tmp_path / "reports.jsonl", REF)
    done = run_stub("parse", str(file), "--json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["id"] for line in lines] == ["r1", "r2", "r3", "r4"]
    assert lines[2]["breasts"]["R"]["birads"] == "4A" and lines[2]["breasts"]["L"]["density"] == "C"
    assert lines[2]["breasts"]["R"]["findings"]["mass"]["status"] == "POS"
    assert lines[2]["relations"] == [["mass", "located_at", "uoq"]]
    table = run_stub("parse", str(file))
    assert table.returncode == 0, table.stderr
    assert "report r3" in table.stdout and "4A" in table.stdout and "mass: POS" in table.stdout
    assert "mass --located_at--> uoq" in table.stdout
    assert "calcification" not in table.stdout  # BLANK findings are not listed


@pytest.mark.parametrize("content, message", [
    ('{"id": "r1", "text": "a"}\n\n{"id": "r2", "text": "b"\n', "ref.jsonl:3: not valid JSON"),
    ('{"id": "r1", "text": "a"}\n["r2", "b"]\n', "ref.jsonl:2: expected an object"),
    ('{"id": "r1"}\n', "ref.jsonl:1: missing text"),
    ('{"id": "r1", "text": 5}\n', "ref.jsonl:1: text must be a string"),
    ('{"id": "r1", "text": "a"}\n{"id": "r2", "text": "b"}\n{"id": "r1", "text": "c"}\n',
     "ref.jsonl:3: duplicate id 'r1' (first on line 1)"),
    ("\n", "ref.jsonl: no reports"),
])
def test_reports_bad_input_exits_2(tmp_path: Path, content: str, message: str) -> None:
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED)
    ref = tmp_path / "ref.jsonl"
    ref.write_text(content, encoding="utf-8")
    done = run_module("reports", "--pred", str(pred), "--ref", str(ref), "--json")
    assert done.returncode == 2 and done.stdout == ""
    assert message in " ".join(done.stderr.split()), done.stderr


def test_reports_ids_on_one_side_only_exit_2(tmp_path: Path) -> None:
    pred = write_jsonl(tmp_path / "pred.jsonl", {**PRED, "extra": "text"})
    ref = write_jsonl(tmp_path / "ref.jsonl", {k: v for k, v in REF.items() if k not in ("r2", "r3")})
    done = run_module("reports", "--pred", str(pred), "--ref", str(ref))
    assert done.returncode == 2
    stderr = " ".join(done.stderr.split())
    assert "3 id(s) have a prediction but no reference: 'r2', 'r3', 'extra'" in stderr, stderr
    missing = run_module("reports", "--pred", str(tmp_path / "nope.jsonl"), "--ref", str(ref))
    assert missing.returncode == 2 and "nope.jsonl: cannot read" in " ".join(missing.stderr.split())


def test_parse_bad_line_exits_2(tmp_path: Path) -> None:
    file = tmp_path / "reports.jsonl"
    file.write_text('{"id": 1, "text": "a"}\nnot json\n', encoding="utf-8")
    done = run_module("parse", str(file))
    assert done.returncode == 2 and "reports.jsonl:2: not valid JSON" in " ".join(done.stderr.split())


def test_installed_script_help() -> None:
    for args in ([], ["reports"], ["parse"]):
        done = subprocess.run([str(SCRIPT), *args, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert "Usage: mammo-eval" in done.stdout
    top = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "reports" in top and "parse" in top


@pytest.mark.skipif(importlib.util.find_spec("models.report.parse") is None,
                    reason="models.report.parse (the report parser) is not there yet")
def test_reports_with_the_real_parser(tmp_path: Path) -> None:
    pred = write_jsonl(tmp_path / "pred.jsonl", PRED)
    ref = write_jsonl(tmp_path / "ref.jsonl", REF)
    done = subprocess.run([str(SCRIPT), "reports", "--pred", str(pred), "--ref", str(ref), "--json",
                           "--bootstrap", "100"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    check_metrics_json(data)
    assert data["metrics"]["birads_f1"]["value"] == pytest.approx(BIRADS_F1)
    parsed = subprocess.run([str(SCRIPT), "parse", str(ref), "--json"], capture_output=True, text=True, timeout=300)
    assert parsed.returncode == 0, parsed.stderr
    lines = [json.loads(line) for line in parsed.stdout.splitlines()]
    assert [line["id"] for line in lines] == list(REF)
    assert [(line["breasts"]["R"]["birads"], line["breasts"]["L"]["birads"]) for line in lines] == [
        ("1", "2"), ("2", "2"), ("4A", "1"), ("1", "1")]


def test_undefined_metrics_are_null_in_strict_json(tmp_path: Path) -> None:
    texts = {"a": "No mammographic evidence of malignancy.", "b": "Stable benign findings."}
    pred = write_jsonl(tmp_path / "pred.jsonl", texts)
    ref = write_jsonl(tmp_path / "ref.jsonl", texts)
    done = run_stub("reports", "--pred", str(pred), "--ref", str(ref), "--json", "--bootstrap", "0")
    assert done.returncode == 0, done.stderr
    assert "NaN" not in done.stdout  # strict JSON for outside tools
    data = json.loads(done.stdout)
    assert data["metrics"]["birads_f1"] == {"value": None, "ci95": [None, None]}  # no BI-RADS in the references
    assert data["baselines"]["birads_f1_majority"]["class"] is None
    assert data["metrics"]["rouge_l"] == {"value": 1.0, "ci95": [None, None]}  # no resamples, no interval
