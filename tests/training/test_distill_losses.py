"""Stage-2 losses against hand computations."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.versamammo.distill.losses import (
    contrastive_structure_loss, masked_bce, masked_ce, relational_kd_loss,
)


def test_relational_kd_matches_the_official_formula_and_is_zero_when_structures_agree() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(6, 8), torch.randn(6, 20, requires_grad=True)
    t, s = F.normalize(teacher, dim=1), F.normalize(student, dim=1)
    p_t, p_s = F.softmax(t @ t.t(), 1), F.softmax(s @ s.t(), 1)
    expected = (p_s * (p_s.log() - p_t.log())).sum(1).mean()  # KL(P_s || P_t), batchmean
    loss = relational_kd_loss(teacher, student)
    assert torch.allclose(loss, expected, atol=1e-6)
    reverse = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert torch.allclose(relational_kd_loss(teacher, student, direction="teacher_student"), reverse, atol=1e-6)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # Same batch structure (student = teacher up to scale): no loss.
    assert relational_kd_loss(teacher, teacher * 3.0).abs() < 1e-6


def test_teacher_gets_no_gradient() -> None:
    teacher = torch.randn(4, 5, requires_grad=True)
    relational_kd_loss(teacher, torch.randn(4, 7, requires_grad=True)).backward()
    assert teacher.grad is None


def test_contrastive_is_lowest_for_matching_views() -> None:
    torch.manual_seed(1)
    base = torch.randn(8, 16)
    same = contrastive_structure_loss(base, base.clone())
    other = contrastive_structure_loss(base, torch.randn(8, 16))
    assert same < other


def test_masked_losses_ignore_unlabelled() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    assert masked_ce(logits, torch.tensor([0, -1])) == F.cross_entropy(logits[:1], torch.tensor([0]))
    assert masked_ce(logits, torch.tensor([-1, -1])) == 0
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    only_first = F.binary_cross_entropy_with_logits(logits[:1], targets[:1])
    assert torch.allclose(masked_bce(logits, targets, torch.tensor([1, 0])), only_first)


def test_balanced_class_weights_equalise_total_class_mass() -> None:
    from training.versamammo.distill.losses import class_weights, masked_ce

    labels = [0] * 6 + [1] * 2 + [2] * 2 + [None]
    w = class_weights(labels, 4, "balanced")
    counts = torch.tensor([6.0, 2.0, 2.0])
    assert torch.allclose(w[:3] * counts, torch.full((3,), 10 / 4))   # every present class weighs the same
    assert w[3] == 10.0                                                  # an absent class gets the cap
    assert class_weights(labels, 4, "none") is None
    with pytest.raises(ValueError):
        class_weights(labels, 4, "sqrt")
    # Weighted CE ignores unlabelled cases and up-weights the rare class.
    logits = torch.zeros(3, 4)
    logits[:, 0] = 2.0
    target = torch.tensor([0, 1, -1])
    assert masked_ce(logits, target, w) > masked_ce(logits, target)


def test_lesion_map_loss_balances_rare_lesion_cells_and_skips_unknown_maps() -> None:
    from training.versamammo.distill.losses import lesion_map_loss

    target = torch.zeros(2, 4, 4)
    target[0, 1, 2] = 1.0
    known = torch.tensor([1.0, 0.0])
    # "nothing anywhere" is not a cheap answer: the one lesion cell weighs as much as the 15 others
    silent = lesion_map_loss(torch.full((2, 4, 4), -6.0), target, known)
    right = torch.full((2, 4, 4), -6.0)
    right[0, 1, 2] = 6.0
    assert silent > 2.9 and lesion_map_loss(right, target, known) < 0.01
    # the unknown image (index 1) never counts, whatever the model says there
    noisy = right.clone()
    noisy[1] = 6.0
    assert torch.isclose(lesion_map_loss(noisy, target, known), lesion_map_loss(right, target, known))
    assert lesion_map_loss(right, target, torch.zeros(2)) == 0
    # a batch of negatives only: plain BCE towards 0
    assert torch.isclose(lesion_map_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), torch.ones(1)),
                         F.softplus(torch.tensor(0.0)))
