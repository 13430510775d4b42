"""Tiny MammoRG learns on phantoms (issue 4, section 6): conservative floors. The frozen student
is the one the VersaMammo proof trains (shared session fixture); ``python -m bench.mammorg_proof``
runs the same code at proof size and prints the ablation (numbers in docs/mammorg.md)."""
from __future__ import annotations

from pathlib import Path

import pytest

from training.mammorg.proof import run_mammorg_proof

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def proof(versamammo_proof, tmp_path_factory) -> dict:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("mammorg-proof")
    try:
        return run_mammorg_proof(root, Path(versamammo_proof["cache"]),
                                 Path(versamammo_proof["student"]["checkpoint"]),
                                 studies=versamammo_proof["config"]["studies"])
    finally:
        torch.set_num_threads(before)


def test_generated_reports_get_density_right_well_above_majority(proof):
    with_k = proof["with_knowledge"]
    assert with_k["density_f1"] > with_k["density_f1_majority"] + 0.15, with_k
    # Every report states a density and a BI-RADS category the parser reads, for both breasts.
    assert with_k["density_completeness"] == 1.0 and with_k["birads_completeness"] == 1.0, with_k
    assert with_k["bleu_4"] > 20 and with_k["rouge_l"] > 0.4, with_k
    # BI-RADS is not asserted above majority: the reports say BI-RADS 1 while the tiny student
    # barely finds lesions (docs/mammorg.md, "Does it learn?").


def test_ablation_without_knowledge_modules_learns_on_the_same_budget(proof):
    with_k, without = proof["with_knowledge"], proof["without_knowledge"]
    assert without["reports"] == with_k["reports"]
    assert without["density_f1"] > without["density_f1_majority"] + 0.15, without
    # Which of the two is better is not asserted: at the tiny budgets it has gone both ways
    # (docs/mammorg.md, "Does it learn?"), so a test of it would only test luck.
