"""Student/teacher meta-architecture of stage 1 (DINOv2 ``SSLMetaArch`` without its FSDP plumbing).

* Student and teacher are the same ``VersaMammoTeacher`` architecture (backbone, DINO head,
  separate iBOT head). The student has stochastic depth (``cfg.ssl.drop_path_rate``), the
  teacher none, as in DINOv2. The teacher starts as a copy of the student, never receives
  gradients and follows the student by EMA (:meth:`SSLMetaArch.update_teacher`).
* The teacher sees the two global crops, unmasked. Its CLS logits are swapped between the
  crops so that student crop A is matched to teacher crop B and vice versa.
* The student sees the global crops with their iBOT masks (mask token in place of the patch
  embedding) and the local crops unmasked.
* Losses (weights from ``cfg.ssl``)::

      dino   = mean over pairs of CE(teacher, student) for the 2 cross-matched global pairs and
               the 2 x n_local (local crop, teacher global crop) pairs
      ibot   = sum over global crops of the mean CE over that crop's masked tokens / n_global_crops
      koleo  = koleo_weight * (KoLeo(student CLS of crop 1) + KoLeo(student CLS of crop 2))
      total  = dino_weight * dino + ibot_weight * ibot + koleo

  ``dino_global`` and ``dino_local`` are the two parts of ``dino`` (each already divided by the
  total number of pairs, so they add up to it), as DINOv2 logs them.

The student-side computation is a separate ``nn.Module`` (:class:`StudentForward`) so the
trainer can wrap exactly that in DistributedDataParallel (one forward per iteration, every
student parameter reached).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from training.versamammo.ssl.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss
from training.config import SSLSection
from models.versamammo.config import VersaMammoConfig


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def last_layer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable prototype-layer parameters of the DINO and iBOT heads (frozen during the
    first ``freeze_last_layer_epochs``; ``weight_g`` is fixed at 1 and not among them)."""
    return [p for n, p in model.named_parameters() if ".last_layer." in f".{n}" and p.requires_grad]


class StudentForward(nn.Module):
    """Student forward for one batch: returns the head outputs the losses need."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor, masks: torch.Tensor,
                mask_indices: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.student
        g = s.backbone(global_crops, masks=masks)
        out = {"global_cls": g["cls"], "global_dino": s.dino_head(g["cls"])}
        patch = g["patch"].flatten(0, 1).index_select(0, mask_indices)
        # the iBOT head runs even on zero masked tokens so that every parameter joins the graph
        out["masked_ibot"] = s.ibot_head(patch)
        if local_crops.shape[0]:
            out["local_dino"] = s.dino_head(s.backbone(local_crops)["cls"])
        return out


class SSLMetaArch(nn.Module):
    def __init__(self, model_cfg: VersaMammoConfig, ssl_cfg: SSLSection, build: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        if build is None:
            from models.versamammo.checkpoint import build_teacher as build
        self.model_cfg = model_cfg
        self.ssl_cfg = ssl_cfg
        self.student = build(model_cfg, drop_path_rate=float(ssl_cfg.drop_path_rate))
        self.teacher = build(model_cfg, drop_path_rate=0.0)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(model_cfg.dino_prototypes, ssl_cfg.student_temp, ssl_cfg.center_momentum)
        self.ibot_loss = IBOTPatchLoss(model_cfg.ibot_prototypes, ssl_cfg.student_temp, ssl_cfg.center_momentum)
        self.koleo_loss = KoLeoLoss()
        # not registered as a submodule (it shares the student's parameters); the trainer may
        # replace it by a DDP-wrapped StudentForward
        self.__dict__["student_forward"] = StudentForward(self.student)

    def set_student_forward(self, fn: nn.Module) -> None:
        self.__dict__["student_forward"] = fn

    def train(self, mode: bool = True) -> "SSLMetaArch":
        super().train(mode)
        self.teacher.eval()  # no dropout / drop-path in the teacher either way
        return self

    # ------------------------------------------------------------------------------ teacher
    @torch.no_grad()
    def teacher_targets(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, torch.Tensor]:
        cfg = self.ssl_cfg
        globals_ = batch["global_crops"]
        n_global = 2
        out = self.teacher.backbone(globals_)
        cls = out["cls"]
        a, b = cls.chunk(n_global)
        cls_swapped = torch.cat((b, a))  # teacher crop B is the target of student crop A
        dino_logits = self.teacher.dino_head(cls_swapped)
        patch = out["patch"].flatten(0, 1).index_select(0, batch["mask_indices"])
        ibot_logits = self.teacher.ibot_head(patch)
        dino_t = self.dino_loss.targets(dino_logits, teacher_temp, cfg.centering)
        n_masked_total = None
        if cfg.centering == "sinkhorn_knopp":
            from training import distributed as du

            n_masked_total = du.all_reduce_sum(torch.tensor([float(ibot_logits.shape[0])],
                                                            device=ibot_logits.device)).item()
        ibot_t = self.ibot_loss.targets(ibot_logits, teacher_temp, cfg.centering, n_samples_total=n_masked_total)
        return {"dino": dino_t, "ibot": ibot_t}

    # ----------------------------------------------------------------------------- forward
    def forward(self, batch: dict[str, Any], teacher_temp: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss (for backward) and a dict of detached components."""
        cfg = self.ssl_cfg
        n_global = 2
        globals_ = batch["global_crops"]
        locals_ = batch["local_crops"]
        n_global_crops = globals_.shape[0]
        n_local = locals_.shape[0] // max(n_global_crops // n_global, 1) if locals_.shape[0] else 0

        targets = self.teacher_targets(batch, teacher_temp)
        s = self.student_forward(globals_, locals_, batch["masks"], batch["mask_indices"])

        n_pairs = n_global * (n_global - 1) + n_global * n_local
        teacher_chunks = targets["dino"].chunk(n_global)
        # global: one call over both crops against the swapped targets = 2 pairs' means summed
        dino_global = self.dino_loss.pair_losses([s["global_dino"]], [targets["dino"]]) * n_global / n_pairs
        if n_local:
            dino_local = self.dino_loss.pair_losses(list(s["local_dino"].chunk(n_local)), list(teacher_chunks)) / n_pairs
        else:
            dino_local = torch.zeros((), device=dino_global.device)
        dino = dino_global + dino_local

        ibot = self.ibot_loss.forward_masked(s["masked_ibot"], targets["ibot"], batch["mask_weights"], n_global_crops)
        koleo = sum(self.koleo_loss(c) for c in s["global_cls"].chunk(n_global)) * cfg.koleo_loss_weight

        total = cfg.dino_loss_weight * dino + cfg.ibot_loss_weight * ibot + koleo
        parts = {"loss": total, "dino_loss": dino, "dino_global_loss": dino_global, "dino_local_loss": dino_local,
                 "ibot_loss": ibot, "koleo_loss": koleo}
        return total, {k: v.detach() for k, v in parts.items()}

    # --------------------------------------------------------------------------------- EMA
    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher <- m * teacher + (1 - m) * student`` for every parameter (matched by name)."""
        s_params = dict(self.student.named_parameters())
        t_list, s_list = [], []
        for name, t in self.teacher.named_parameters():
            t_list.append(t)
            s_list.append(s_params[name].detach())
        if not t_list:
            return
        if all(t.device == t_list[0].device and not _is_dtensor(t) for t in t_list):
            torch._foreach_mul_(t_list, momentum)
            torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)
        else:  # DTensors (FSDP2) or mixed devices
            for t, s in zip(t_list, s_list):
                t.mul_(momentum).add_(s, alpha=1.0 - momentum)
