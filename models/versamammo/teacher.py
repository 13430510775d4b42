"""The stage-1 VersaMammo teacher: a DINOv2-style ViT (patch 14) with separate DINO and iBOT heads.

The backbone is timm's ``VisionTransformer`` (random init) with the DINOv2 ViT geometry: LayerScale
1e-5, LayerNorm eps 1e-6, qkv/proj/ffn biases, no register tokens, a CLS token and a positional
embedding learnt for the global-crop grid (224/14 = 16x16). ``forward`` follows DINOv2 rather than
timm in two places that change numbers: masked patch embeddings are replaced by ``mask_token``
before the positional embedding is added (iBOT), and the positional embedding is resized with
DINOv2's bicubic scale-factor interpolation (offset 0.1, no antialias) so that official teacher
weights give the official outputs at 98 (local crops) and 518 (downstream inference).
Parameter names match DINOv2's (without its block chunking), which keeps the official loader a
rename.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.versamammo.config import VersaMammoConfig

# (embed_dim, depth, heads) of the standard ViT sizes.
_VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
_ARCH = re.compile(r"^vit_(tiny|small|base|large)_patch(\d+)(?:_dinov2)?(?:_d(\d+))?$")


def teacher_geometry(arch: str) -> tuple[int, int, int, int]:
    """(embed_dim, depth, heads, patch) for a name like ``vit_base_patch14_dinov2`` or ``vit_tiny_patch14_d4``.

    ``_d<N>`` overrides the depth; that is how the tiny preset stays a plain ViT-Tiny at 4 blocks.
    """
    match = _ARCH.match(arch)
    if not match:
        raise ValueError(f"unknown teacher_arch {arch!r}; "
                         "expected vit_<tiny|small|base|large>_patch<P>[_dinov2][_d<N>]")
    embed, depth, heads = _VIT_SIZES[match.group(1)]
    if match.group(3):
        depth = int(match.group(3))
    return embed, depth, heads, int(match.group(2))


class TeacherBackbone(VisionTransformer):
    """DINOv2-style ViT: any input size (multiple of the patch), optional iBOT masks.

    ``forward(x, masks)`` returns {"cls": (B, D), "patch": (B, N, D)}, both after the final norm.
    ``masks`` is bool (B, N), True = that patch embedding is replaced by ``mask_token``.
    """

    def __init__(self, arch: str, img_size: int, drop_path_rate: float = 0.0, layerscale: float = 1e-5,
                 interpolate_offset: float = 0.1):
        embed_dim, depth, heads, patch = teacher_geometry(arch)
        super().__init__(
            img_size=img_size,
            patch_size=patch,
            num_classes=0,
            global_pool="token",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            init_values=layerscale,
            dynamic_img_size=True,  # any input size; patch_embed returns NHWC
            drop_path_rate=0.0,
        )
        # DINOv2 (drop_path_uniform=True) drops every block with the same rate; timm ramps it.
        for block in self.blocks:
            block.drop_path1 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
            block.drop_path2 = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.patch_size = patch
        self.interpolate_offset = interpolate_offset
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

    def interpolated_pos_embed(self, grid_h: int, grid_w: int, square_image: bool = True) -> torch.Tensor:
        """(1, 1 + grid_h*grid_w, D) positional embedding for a patch grid (DINOv2's interpolation).

        Unchanged when the patch count is the trained one and the image is square (DINOv2's exact
        condition); otherwise bicubic with scale factors ((grid + offset) / trained_grid), which
        is not the same as resizing to the target size.
        """
        pos = self.pos_embed
        n_trained = pos.shape[1] - 1
        side = int(math.isqrt(n_trained))
        if grid_h * grid_w == n_trained and square_image:
            return pos
        dtype = pos.dtype
        pos = pos.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            scale = ((grid_h + self.interpolate_offset) / side, (grid_w + self.interpolate_offset) / side)
            grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        else:
            grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", antialias=False)
        if grid.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"positional embedding interpolated to {tuple(grid.shape[-2:])}, "
                               f"wanted {(grid_h, grid_w)}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def forward_features(  # type: ignore[override]
            self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1 + N, D) tokens after the final norm, CLS first (replaces timm's version, see module doc)."""
        tokens = self.patch_embed(x)  # (B, gh, gw, D)
        batch, grid_h, grid_w, dim = tokens.shape
        tokens = tokens.reshape(batch, grid_h * grid_w, dim)
        if masks is not None:
            masked = masks.to(torch.bool).unsqueeze(-1)
            tokens = torch.where(masked, self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)
        pos = self.interpolated_pos_embed(grid_h, grid_w, square_image=x.shape[-2] == x.shape[-1])
        tokens = self.pos_drop(tokens + pos)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return self.norm(tokens)

    def forward(  # type: ignore[override]
            self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """{"cls": (B, D), "patch": (B, N, D)}, both after the final norm; see forward_features."""
        tokens = self.forward_features(x, masks)
        return {"cls": tokens[:, 0], "patch": tokens[:, 1:]}


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g * v / ||v|| per output row (``torch.nn.utils.weight_norm``, dim 0).

    Own module so the state-dict keys stay DINOv2's ``weight_g`` / ``weight_v`` whatever torch does
    to its deprecated weight_norm helper.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default init
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINOv2 projection head: MLP to a bottleneck, L2 normalisation, weight-normed prototypes.

    ``last_layer.weight_g`` is fixed at 1 (``norm_last_layer``), so prototypes are unit vectors and
    the logits are cosine similarities; trainers freeze ``last_layer`` in the first epoch.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int = 3):
        super().__init__()
        if nlayers < 1:
            raise ValueError("nlayers must be >= 1")
        layers: list[nn.Module] = []
        if nlayers == 1:
            layers.append(nn.Linear(in_dim, bottleneck_dim))
        else:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)


class VersaMammoTeacher(nn.Module):
    """Backbone plus the DINO (CLS) head and the separate iBOT (patch) head.

    ``forward`` returns the backbone outputs and the DINO logits of the CLS token; the iBOT head is
    applied by the trainer to the masked patch tokens only (131072 prototypes on every patch
    would be wasteful).
    """

    def __init__(self, cfg: VersaMammoConfig, drop_path_rate: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = TeacherBackbone(
            cfg.teacher_arch,
            cfg.teacher_global,
            drop_path_rate=cfg.drop_path_rate if drop_path_rate is None else drop_path_rate,
            layerscale=cfg.teacher_layerscale,
            interpolate_offset=cfg.teacher_interpolate_offset,
        )
        if self.backbone.patch_size != cfg.teacher_patch:
            raise ValueError(f"{cfg.teacher_arch} has patch {self.backbone.patch_size}, "
                             f"config says {cfg.teacher_patch}")
        dim = self.backbone.embed_dim
        self.dino_head = DINOHead(dim, cfg.dino_prototypes, cfg.dino_hidden, cfg.dino_bottleneck)
        self.ibot_head = DINOHead(dim, cfg.ibot_prototypes, cfg.ibot_hidden, cfg.ibot_bottleneck)
        self.load_notes: list[str] = []  # filled by the official loader

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.backbone(x, masks)
        out["dino"] = self.dino_head(out["cls"])
        return out


def build_teacher(cfg: VersaMammoConfig, drop_path_rate: float | None = None) -> VersaMammoTeacher:
    """A randomly initialised teacher (or SSL student: pass its drop-path rate) for ``cfg``."""
    return VersaMammoTeacher(cfg, drop_path_rate)
