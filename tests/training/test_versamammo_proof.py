"""The tiny VersaMammo pipeline learns on phantoms (issue 3, section 7): conservative floors in a
few minutes on 2 cores. ``python -m bench.versamammo_proof`` runs the same code at full proof size
(numbers in docs/training.md)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def proof(versamammo_proof) -> dict:
    return versamammo_proof


def test_ssl_loss_falls(proof):
    assert proof["ssl"]["loss_last"] < proof["ssl"]["loss_first"] - 0.5, proof["ssl"]


def test_ssl_teacher_beats_a_random_teacher_with_few_labels(proof):
    probe = proof["probe"]
    ssl, random = probe["ssl"], probe["random"]
    assert ssl["all_labels"] > probe["majority"] + 0.2, probe
    assert ssl["few_shot"] > random["few_shot"] + 0.02, probe


def test_student_learns_density_clearly_above_majority(proof):
    student = proof["student"]
    assert student["density_accuracy"] > student["density_majority_accuracy"] + 0.1, student
    # BI-RADS is not asserted: at this budget the student does not find the lesions yet (measured
    # at proof size with bench/versamammo_proof.py, docs/training.md), and a floor it cannot
    # reach would only be a test that fails.
