"""The stage-2 VersaMammo student: a timm EfficientNet backbone plus BI-RADS, density and findings heads.

The official student is efficientnet_pytorch's B5 (BN eps 1e-3, SiLU, SE sized from the block
input channels); timm's ``tf_efficientnet_b5`` is the same network with other parameter names.
With ``cfg.student_pad_size`` set, the backbone's stride-2 convs use static TF-same pads computed
for that size (versamammo_padding), which is what makes official weights reproduce exactly.
"""
from __future__ import annotations

import timm
import torch
from torch import nn

from models.versamammo.config import VersaMammoConfig
from models.versamammo.padding import apply_static_same_padding


class VersaMammoStudent(nn.Module):
    """EfficientNet backbone, global pooling, dropout, three linear heads (and an optional lesion map).

    ``features`` is the pooled vector the official downstream code uses (2048-d for B5);
    ``feature_grid`` is the map before pooling (MammoRG takes the 16x16x2048 grid at 512 as 256
    tokens per view). Dropout acts only on what the heads see, as in the official
    ``include_top`` model; the returned ``feature`` is never dropped out. With
    ``cfg.student_head_pool = "avg_max"`` the heads see the grid's average and maximum;
    with ``cfg.student_lesion_map`` a 1x1 conv gives one lesion logit per grid cell, and
    ``"avg_lesion"`` lets the heads look where the map points (attention pooling by the map).
    """

    def __init__(self, cfg: VersaMammoConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = timm.create_model(
            cfg.student_backbone,
            pretrained=False,
            num_classes=0,
            global_pool="",
            drop_path_rate=cfg.student_drop_path_rate,
        )
        for module in self.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.student_bn_momentum
        self.static_pads: dict[str, tuple[int, ...]] = {}
        if cfg.student_pad_size is not None:
            self.static_pads = apply_static_same_padding(self.backbone, cfg.student_pad_size)
        dim = int(self.backbone.num_features)
        if dim != cfg.student_dim:
            raise ValueError(f"{cfg.student_backbone} has {dim} features, config says {cfg.student_dim}")
        self.head_dim = {"avg": dim, "avg_max": 2 * dim, "avg_lesion": 2 * dim + 1}[cfg.student_head_pool]
        self.dropout = nn.Dropout(cfg.student_dropout)
        self.birads_head = nn.Linear(self.head_dim, cfg.n_birads)
        self.density_head = nn.Linear(self.head_dim, cfg.n_density)
        self.findings_head = nn.Linear(self.head_dim, cfg.n_findings)
        self.lesion_head = nn.Conv2d(dim, 1, kernel_size=1) if cfg.student_lesion_map else None
        self.load_notes: list[str] = []  # filled by the official loader

    def feature_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim, grid, grid): the activated conv-head output before pooling."""
        return self.backbone.forward_features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim) global-average-pooled feature, without dropout."""
        return self.feature_grid(x).mean(dim=(2, 3))

    def head_input(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, head_dim): what the classification heads see (before dropout), per ``student_head_pool``."""
        pooled = grid.mean(dim=(2, 3))
        if self.cfg.student_head_pool == "avg_max":
            pooled = torch.cat([pooled, grid.amax(dim=(2, 3))], dim=1)
        elif self.cfg.student_head_pool == "avg_lesion":
            # the lesion map (trained with boxes) says which cells hold a lesion; a softmax over the
            # cells weights them, so a one-cell lesion is not diluted by the other 63 (tiny grid)
            logits = self.lesion_map(grid).flatten(1)
            attention = logits.softmax(dim=1)
            attended = (grid.flatten(2) * attention[:, None, :]).sum(dim=2)
            pooled = torch.cat([pooled, attended, logits.amax(dim=1, keepdim=True)], dim=1)
        return pooled

    def lesion_map(self, grid: torch.Tensor) -> torch.Tensor:
        """(N, grid, grid) lesion logits per feature-grid cell (``student_lesion_map`` only)."""
        if self.lesion_head is None:
            raise ValueError("this student has no lesion map (VersaMammoConfig.student_lesion_map is False)")
        return self.lesion_head(grid)[:, 0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled feature and the logits of the heads (dropout before the linear heads when training);
        ``lesion_map`` (N, grid, grid) logits when the student has one."""
        grid = self.feature_grid(x)
        feature = grid.mean(dim=(2, 3))
        dropped = self.dropout(self.head_input(grid))
        out = {
            "feature": feature,
            "birads": self.birads_head(dropped),
            "density": self.density_head(dropped),
            "findings": self.findings_head(dropped),
        }
        if self.lesion_head is not None:
            out["lesion_map"] = self.lesion_map(grid)
        return out


def build_student(cfg: VersaMammoConfig) -> VersaMammoStudent:
    """A randomly initialised student for ``cfg`` (never downloads weights)."""
    return VersaMammoStudent(cfg)
