"""Stage-1 losses: DINO (image level), iBOT (masked patches), KoLeo, and the teacher post-processing.

Teacher outputs become targets through one of two post-processings, chosen by
``cfg.ssl.centering``:

* ``"centering"``: ``softmax((t - c) / T)`` with an EMA centre ``c`` updated from the mean of
  the batch's teacher logits (over every rank) with momentum ``center_momentum`` (0.9). The
  centre used for a batch excludes that batch (DINOv2 updates it lazily, after use).
  This is what the official run executed (its YAML sets ``centering: sinkhorn_knopp`` at the
  top level, where the code never reads it).
* ``"sinkhorn_knopp"``: 3 Sinkhorn-Knopp iterations over the batch of every rank, so that
  prototypes are used equally and each sample's target sums to one.

All losses are computed in float32 whatever the autocast dtype.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training import distributed as du


def soft_cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row ``-sum(t * log_softmax(s / T_s))``."""
    lsm = F.log_softmax(student_logits.float() / student_temp, dim=-1)
    return -(teacher_probs.float() * lsm).sum(dim=-1)


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3,
                   n_samples_total: int | torch.Tensor | None = None) -> torch.Tensor:
    """Sinkhorn-Knopp targets ``(B, K)`` over the batches of every rank.

    Same algorithm as DINOv2 (``Q = exp(t / T)``, normalise to total mass 1, then alternate
    prototype (row) and sample (column) normalisation, rows and sums all-reduced across ranks),
    with one numerical change: the global maximum logit is subtracted before ``exp``, which
    the normalisation cancels exactly but which keeps ``exp`` finite for large logits.
    Each returned row sums to 1. ``n_samples_total`` defaults to ``B * world_size``.
    """
    logits = teacher_logits.float() / teacher_temp
    K = logits.shape[-1]
    if n_samples_total is None:
        n_total = float(logits.shape[0] * du.get_world_size())
    else:
        n_total = float(n_samples_total)
    peak = logits.max() if logits.numel() else torch.tensor(-torch.inf, device=logits.device)
    peak = du.all_reduce_max(peak.detach().clone().reshape(1))
    Q = torch.exp(logits - peak).t()  # K x B
    total = du.all_reduce_sum(Q.sum().reshape(1))
    Q = Q / total
    for _ in range(n_iterations):
        rows = du.all_reduce_sum(Q.sum(dim=1, keepdim=True))
        Q = Q / rows.clamp_min(torch.finfo(Q.dtype).tiny) / K
        Q = Q / Q.sum(dim=0, keepdim=True).clamp_min(torch.finfo(Q.dtype).tiny) / n_total
    Q = Q * n_total
    return Q.t()


class _CenteredTarget(nn.Module):
    """Softmax-centering / Sinkhorn-Knopp teacher targets with an EMA centre buffer ``(1, K)``."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = float(student_temp)
        self.center_momentum = float(center_momentum)
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """``c <- m c + (1 - m) mean(teacher logits over all ranks)``; no-op if no rank had any."""
        t = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
        stats = torch.cat([t.sum(dim=0), torch.tensor([float(t.shape[0])], device=t.device)])
        du.all_reduce_sum(stats)
        count = float(stats[-1])
        if count <= 0:
            return
        batch_center = (stats[:-1] / count).unsqueeze(0)
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)

    @torch.no_grad()
    def targets(self, teacher_logits: torch.Tensor, teacher_temp: float, centering: str,
                n_samples_total: int | torch.Tensor | None = None) -> torch.Tensor:
        """Teacher targets by the selected method (and the centre update for ``centering``)."""
        if centering == "centering":
            probs = self.softmax_center_teacher(teacher_logits, teacher_temp)
            self.update_center(teacher_logits)
            return probs
        if centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp, n_samples_total=n_samples_total)
        raise ValueError(f"unknown centering {centering!r}")


class DINOLoss(_CenteredTarget):
    """Image-level self-distillation: CE between teacher targets and student log-softmax."""

    def pair_losses(self, student_logits: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over every (student chunk, teacher chunk) pair of the batch-mean cross-entropy."""
        total = torch.zeros((), device=teacher_probs[0].device)
        for s in student_logits:
            lsm = F.log_softmax(s.float() / self.student_temp, dim=-1)
            for t in teacher_probs:
                total = total - (t.float() * lsm).sum(dim=-1).mean()
        return total


class IBOTPatchLoss(_CenteredTarget):
    """Masked-patch self-distillation over the masked tokens, weighted per crop."""

    def forward_masked(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, weights: torch.Tensor,
                       n_crops: int) -> torch.Tensor:
        """``sum_crops mean_(masked tokens of crop) CE / n_crops``: ``weights`` are 1/(masked tokens
        of the token's crop); ``n_crops`` counts every global crop, masked or not (DINOv2)."""
        ce = soft_cross_entropy(teacher_probs, student_logits, self.student_temp)
        return (ce * weights.float()).sum() / max(int(n_crops), 1)


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser: ``-mean(log(d_nn + eps))`` on L2-normalised vectors,
    ``d_nn`` the distance to the nearest other vector of the batch (this rank's batch)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
        n = x.shape[0]
        if n < 2:
            return x.sum() * 0.0
        with torch.no_grad():
            dots = x @ x.t()
            dots.fill_diagonal_(-2.0)
            nearest = dots.argmax(dim=1)
        dist = F.pairwise_distance(x, x[nearest], p=2, eps=self.eps)
        return -torch.log(dist + self.eps).mean()
