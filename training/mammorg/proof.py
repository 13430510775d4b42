"""Does tiny MammoRG learn, and do its knowledge modules help? Measured side by side on phantoms.

``run_mammorg_proof`` trains the three stages twice on the same studies with the same frozen
student and the same stage budgets, once with the knowledge modules (graph and report tokens)
and once without them (the ablation; its knowledge stage only builds the model), then generates
reports for the held-out test studies, parses them and scores BI-RADS and density F1 beside
their majority-class baselines (plus finding/relation F1 and NLG).

``bench/mammorg_proof.py`` runs it at proof size; ``tests/training/test_mammorg_proof.py`` at a
small size with conservative floors.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from training.config import load_train_config
from training.config import TrainConfig

TINY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "mammorg_tiny.toml"
KEYS = ("density_f1", "birads_f1", "density_completeness", "birads_completeness", "finding_f1_pooled",
        "relation_f1_pooled", "bleu_4", "rouge_l")


def proof_config(out_dir: Path, cache_dir: Path, student: Path, studies: int, knowledge: bool, **extra: Any) -> Any:
    overrides = {"run.out_dir": str(out_dir), "data.cache_dir": str(cache_dir), "data.phantom_studies": studies,
                 "model.student_checkpoint": str(student), "mammorg.knowledge": knowledge, "eval.bootstrap": 200}
    overrides.update(extra)
    return load_train_config(TINY_CONFIG, overrides)


def train_and_score(cfg: TrainConfig) -> dict[str, Any]:
    from training.mammorg.evaluate import run_mammorg_eval
    from training.mammorg.knowledge import run_knowledge
    from training.mammorg.lm_stages import run_lm_stage

    start = time.perf_counter()
    run_knowledge(cfg)
    run_lm_stage(cfg, "align")
    run_lm_stage(cfg, "sft")
    report = run_mammorg_eval(cfg)
    out = {k: report["metrics"][k]["value"] for k in KEYS}
    out.update({k: v["value"] for k, v in report["baselines"].items()})
    out.update({"ci95": {k: report["metrics"][k]["ci95"] for k in KEYS}, "reports": report["n_reports"],
                "seconds": round(time.perf_counter() - start, 1)})
    return out


# Variant name -> overrides. The first two are the proof; the graph variants are the knowledge
# ablation of issue 20: the same knowledge modules over the complete schema graph, or no edges.
VARIANTS: dict[str, dict[str, Any]] = {
    "with_knowledge": {"mammorg.knowledge": True},
    "without_knowledge": {"mammorg.knowledge": False},
    "complete_graph": {"mammorg.knowledge": True, "mammorg.graph_edges": "complete"},
    "no_edges": {"mammorg.knowledge": True, "mammorg.graph_edges": "none"},
}


def run_mammorg_proof(root: Path, cache_dir: Path, student: Path, *, studies: int,
                      variants: tuple[str, ...] = ("with_knowledge", "without_knowledge"),
                      **extra: Any) -> dict[str, Any]:
    """``{"with_knowledge": {...}, "without_knowledge": {...}}`` (see the module docstring), plus
    any other ``VARIANTS`` named in ``variants``."""
    result: dict[str, Any] = {"config": {"studies": studies, "student": str(student), **extra}}
    for name in variants:
        overrides = {**VARIANTS[name], **extra}
        knowledge = bool(overrides.pop("mammorg.knowledge"))
        cfg = proof_config(root / name, cache_dir, student, studies, knowledge, **overrides)
        result[name] = train_and_score(cfg)
    return result
