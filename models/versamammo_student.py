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

from models.versamammo_config import VersaMammoConfig
from models.versamammo_padding import apply_static_same_padding


class VersaMammoStudent(nn.Module):
    """EfficientNet backbone, global average pool, dropout, three linear heads.

    ``features`` is the pooled vector the official downstream code uses (2048-d for B5);
    ``feature_grid`` is the map before pooling (MammoRG takes the 16x16x2048 grid at 512 as 256
    tokens per view). Dropout acts only on what the heads see, as in the official
    ``include_top`` model; the returned ``feature`` is never dropped out.
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
        self.dropout = nn.Dropout(cfg.student_dropout)
        self.birads_head = nn.Linear(dim, cfg.n_birads)
        self.density_head = nn.Linear(dim, cfg.n_density)
        self.findings_head = nn.Linear(dim, cfg.n_findings)
        self.load_notes: list[str] = []  # filled by the official loader

    def feature_grid(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim, grid, grid): the activated conv-head output before pooling."""
        return self.backbone.forward_features(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, dim) global-average-pooled feature, without dropout."""
        return self.feature_grid(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled feature and the logits of the three heads (dropout 0.4 before the heads when training)."""
        feature = self.features(x)
        dropped = self.dropout(feature)
        return {
            "feature": feature,
            "birads": self.birads_head(dropped),
            "density": self.density_head(dropped),
            "findings": self.findings_head(dropped),
        }


def build_student(cfg: VersaMammoConfig) -> VersaMammoStudent:
    """A randomly initialised student for ``cfg`` (never downloads weights)."""
    return VersaMammoStudent(cfg)
