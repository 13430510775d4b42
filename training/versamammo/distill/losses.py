"""Stage-2 losses: relational distillation and the two-view contrastive term.

Relational KD (what the official code computes): L2-normalise the teacher features (B x Dt)
and the student features (B x Ds), build each side's B x B cosine-similarity matrix, divide by
a temperature (official: none, i.e. 1), and compare the row softmaxes with a KL divergence.
Only the *structure* of the batch is matched, so the dimensions may differ (768 vs 2048).

The official call ``F.kl_div(log_softmax(S_teacher), softmax(S_student))`` computes
KL(P_student || P_teacher), with gradients through the student's softmax. That is our default
(``direction="student_teacher"``); ``"teacher_student"`` gives the usual distillation
direction KL(P_teacher || P_student). Teacher features never receive gradients.

Contrastive term: the official code aligns the batch-similarity structure of a 512 view with
that of a low-resolution augmented view, but passes the same tensor twice (a bug we fix: the
dataset here yields a genuinely different view). It uses raw, unnormalised features at
temperature 0.07, which overflows easily with 2048-d activations; we L2-normalise first
(``normalize=True``, documented deviation; ``False`` reproduces the official form).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _similarity(features: torch.Tensor, temperature: float, normalize: bool = True) -> torch.Tensor:
    if normalize:
        features = F.normalize(features.float(), dim=1)
    return features @ features.t() / temperature


def relational_kd_loss(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0,
                       direction: str = "student_teacher") -> torch.Tensor:
    """KL between the row softmaxes of the teacher's and student's batch cosine similarities."""
    s_teacher = _similarity(teacher.detach(), temperature)
    s_student = _similarity(student, temperature)
    if direction == "student_teacher":  # official: KL(P_student || P_teacher)
        return F.kl_div(F.log_softmax(s_teacher, dim=1), F.softmax(s_student, dim=1), reduction="batchmean")
    if direction == "teacher_student":  # KL(P_teacher || P_student)
        return F.kl_div(F.log_softmax(s_student, dim=1), F.softmax(s_teacher, dim=1), reduction="batchmean")
    raise ValueError(f"unknown KD direction {direction!r}")


def contrastive_structure_loss(high_res: torch.Tensor, low_res: torch.Tensor, temperature: float = 0.07,
                               normalize: bool = True) -> torch.Tensor:
    """Soft-target cross-entropy: the low-res view's batch structure predicts the high-res view's."""
    target = F.softmax(_similarity(high_res, temperature, normalize), dim=1)
    log_pred = F.log_softmax(_similarity(low_res, temperature, normalize), dim=1)
    return -(target * log_pred).sum(dim=1).mean()


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE over the cases whose findings are labelled (``mask`` 1); 0 if none are."""
    mask = mask.float()
    if mask.sum() == 0:
        return logits.sum() * 0.0
    per_case = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").mean(dim=1)
    return (per_case * mask).sum() / mask.sum()


def masked_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy ignoring unlabelled cases (target -1); 0 if none are labelled.

    ``weight``: optional per-class weights (``class_weights``), normalised as torch does
    (a weighted mean over the labelled cases).
    """
    if (target >= 0).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=None if weight is None else weight.to(logits),
                           ignore_index=-1)


def class_weights(labels: list[int | None], n_classes: int, mode: str, cap: float = 10.0) -> torch.Tensor | None:
    """Per-class CE weights from training-label counts: None for ``"none"`` (the official loss);
    ``"balanced"``: n / (k * count_c), capped at ``cap`` (absent classes get the cap), so
    rare categories (BI-RADS 0, 5 in screening) weigh as much as the common ones in total."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class weighting must be 'none' or 'balanced', not {mode!r}")
    counts = torch.zeros(n_classes)
    for y in labels:
        if y is not None and 0 <= y < n_classes:
            counts[y] += 1
    total = counts.sum()
    if total == 0:
        return None
    w = total / (n_classes * counts.clamp_min(1e-9))
    return w.clamp(max=cap)


def lesion_map_loss(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE of the lesion map (N, g, g) over the images whose boxes are known.

    Lesion cells are rare (about 1 in 200 on a screening mix): the positive and the negative
    parts are each averaged over their own (soft) cell counts and weigh half each, so the map
    cannot win by saying "nothing" everywhere. 0 when no image of the batch is known.
    """
    keep = known > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    z, t = logits[keep].float(), target[keep].float()
    pos_part = (t * F.softplus(-z)).sum()      # -log sigmoid(z) on lesion cells
    neg_part = ((1 - t) * F.softplus(z)).sum()  # -log(1 - sigmoid(z)) elsewhere
    n_pos, n_neg = t.sum(), (1 - t).sum()
    if float(n_pos) <= 0:
        return neg_part / n_neg.clamp_min(1e-6)
    return 0.5 * pos_part / n_pos + 0.5 * neg_part / n_neg.clamp_min(1e-6)
