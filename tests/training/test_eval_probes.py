"""Issue 20: the papers' evaluation beyond classification heads, at tiny size: frozen-backbone
linear probes, top-K feature retrieval (both with bootstrap intervals) and VinDr-Mammo
label-based scoring of generated reports with the strict and the official BI-RADS mappings."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from training.eval.probes import linear_probe, retrieval_topk, run_probe_eval
from training.eval.vindr_reports import birads_code, evaluate_vindr_reports, vindr_breast_labels


def _clusters(n: int, classes: int, seed: int, spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.eye(classes, 16) * 5
    y = rng.integers(0, classes, n)
    return centres[y] + spread * rng.standard_normal((n, 16)), y


def test_retrieval_top_k_finds_the_label_among_the_nearest_and_bounds_it():
    db, queries = _clusters(60, 3, 0), _clusters(30, 3, 1)
    out = retrieval_topk(db, queries, resamples=50)
    assert out["top1"]["value"] == 1.0 and out["queries"] == 30 and out["database"] == 60
    # unrelated features: about chance at top-1, more hits with larger K
    rng = np.random.default_rng(2)
    noise = retrieval_topk((rng.standard_normal((200, 16)), db[1].repeat(4)[:200] % 3),
                           (rng.standard_normal((120, 16)), rng.integers(0, 3, 120)), resamples=100)
    assert abs(noise["top1"]["value"] - noise["chance_top1"]) < 0.15
    assert noise["top1"]["value"] <= noise["top2"]["value"] <= noise["top3"]["value"]
    low, high = noise["top1"]["ci95"]
    assert low <= noise["top1"]["value"] <= high and high - low > 0.02
    # unlabelled items are left out on both sides
    x, y = db
    assert retrieval_topk((x, np.where(np.arange(60) < 10, -1, y)), queries, resamples=0)["database"] == 50


def test_linear_probe_fits_train_chooses_on_val_scores_test():
    out = linear_probe(_clusters(80, 4, 0), _clusters(40, 4, 1), _clusters(40, 4, 2), 4, resamples=50)
    assert out["accuracy"]["value"] == 1.0 and out["macro_f1"]["value"] == 1.0 and out["n"] == 40
    assert out["l2"] in (1e-4, 1e-3, 1e-2, 1e-1) and out["train_n"] == 80
    x, y = _clusters(40, 4, 3, spread=8.0)
    noisy = linear_probe((x, y), None, _clusters(40, 4, 4, spread=8.0), 4, resamples=50)
    assert noisy["accuracy"]["value"] < 0.9 and noisy["accuracy"]["ci95"][0] < noisy["accuracy"]["value"]


def test_probes_and_retrieval_of_a_frozen_student_on_phantoms(tmp_path):
    import torch

    from models.versamammo.checkpoint import build_student, config_for, save_checkpoint
    from training.config import load_train_config

    torch.manual_seed(0)
    save_checkpoint(build_student(config_for("tiny")), tmp_path / "student.pt")
    cfg = load_train_config(Path("training/configs/versamammo_tiny.toml"), {
        "run.out_dir": str(tmp_path / "run"), "data.cache_dir": str(tmp_path / "cache"), "data.phantom_studies": 12,
        "data.val_fraction": 0.25, "data.test_fraction": 0.25, "eval.bootstrap": 20})
    report = run_probe_eval(cfg, tmp_path / "student.pt")
    for label in ("birads", "density"):
        probe, retrieval = report["probe"][label], report["retrieval"][label]
        assert probe["n"] > 0 and 0 <= probe["accuracy"]["value"] <= 1 and len(probe["macro_f1"]["ci95"]) == 2
        assert retrieval["queries"] == probe["n"] and retrieval["database"] > retrieval["queries"]
        assert 0 <= retrieval["top1"]["value"] <= retrieval["top3"]["value"] <= 1


@pytest.mark.parametrize("mapping,reference,predicted,side,expected", [
    ("strict", "4", "4B", "R", 3), ("strict", "3", "2", "R", 1), ("strict", "1", "0", "R", 5),
    ("strict", "2", None, "R", -1),
    ("official", "3", "2", "R", 2), ("official", "4", "3", "R", 3), ("official", "4", "4A", "R", 3),
    ("official", "5", "4C", "R", 4), ("official", "4", "4B", "R", 5), ("official", "2", "3", "L", 2),
    ("official_as_coded", "3", "1", "R", 0),   # the right breast is never matched leniently
    ("official_as_coded", "3", "1", "L", 2), ("official_as_coded", "2", "0", "L", 4),  # outside 1-5 -> "5"
])
def test_birads_mappings(mapping, reference, predicted, side, expected):
    assert birads_code(reference, predicted, mapping, side) == expected


def _vindr_from_phantoms(root: Path, out: Path) -> tuple[dict[str, str], Path]:
    """Phantom studies as VinDr's breast-level CSV (BI-RADS 4A-4C -> 4, 0 and 6 unlabelled), and
    their reference reports as the "generated" ones."""
    rows, reports = [], {}
    for study in sorted(root.glob("study-*")):
        labels = json.loads((study / "labels.json").read_text())
        reports[study.name] = (study / "report.txt").read_text()
        for side, breast in labels["breasts"].items():
            birads = breast["birads"][:1] if breast["birads"][:1] in "12345" else ""
            rows.append({"study_id": study.name, "image_id": f"{study.name}-{side}", "laterality": side,
                         "view_position": "CC", "breast_birads": f"BI-RADS {birads}" if birads else "",
                         "breast_density": f"DENSITY {breast['density']}", "split": "test"})
    out.mkdir(parents=True, exist_ok=True)
    with (out / "breast-level_annotations.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return reports, out


def test_vindr_label_evaluation_of_reports_on_phantoms(tmp_path):
    from phantoms.study import PhantomOptions, write_phantom_studies

    write_phantom_studies(tmp_path / "ph", 10, 7, options=PhantomOptions(size="small"))
    reports, root = _vindr_from_phantoms(tmp_path / "ph", tmp_path / "vindr")
    labels = vindr_breast_labels(root)
    assert len(labels) == 20 and {v["split"] for v in labels.values()} == {"test"}
    right = evaluate_vindr_reports(reports, labels, "strict", resamples=50)
    assert right["studies"] == 10 and right["density"]["breasts"] == 20
    for field in ("density", "birads"):
        assert right[field]["f1"]["value"] == 1.0 and right[field]["accuracy"]["value"] == 1.0
        assert right[field]["completeness"]["value"] == 1.0
    # every report shifted to the next study: wrong more often, and never better under strict
    # than under the lenient official matching
    ids = sorted(reports)
    shifted = {s: reports[ids[(i + 1) % len(ids)]] for i, s in enumerate(ids)}
    strict = evaluate_vindr_reports(shifted, labels, "strict", resamples=50)
    lenient = evaluate_vindr_reports(shifted, labels, "official", resamples=50)
    assert strict["density"]["accuracy"]["value"] < 1.0
    assert strict["birads"]["accuracy"]["value"] <= lenient["birads"]["accuracy"]["value"]
    # a report that states nothing counts against completeness
    silent = evaluate_vindr_reports({**reports, ids[0]: "FINDINGS:\nNothing.\n\nIMPRESSION:\nSee above."}, labels,
                                    resamples=0)
    assert silent["density"]["completeness"]["value"] == pytest.approx(18 / 20)


def test_mammo_eval_vindr_reports_command(tmp_path):
    from typer.testing import CliRunner

    from phantoms.study import PhantomOptions, write_phantom_studies
    from training.eval.cli import app

    write_phantom_studies(tmp_path / "ph", 3, 8, options=PhantomOptions(size="small"))
    reports, root = _vindr_from_phantoms(tmp_path / "ph", tmp_path / "vindr")
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in reports.items()))
    run = CliRunner().invoke(app, ["vindr-reports", "--pred", str(pred), "--vindr", str(root), "--json",
                                   "--bootstrap", "0", "--birads-mapping", "official"])
    assert run.exit_code == 0, run.output
    result = json.loads(run.output)
    assert result["birads_mapping"] == "official" and result["density"]["f1"]["value"] == 1.0
    bad = CliRunner().invoke(app, ["vindr-reports", "--pred", str(pred), "--vindr", str(root), "--birads-mapping", "x"])
    assert bad.exit_code == 2 and "strict" in bad.output
