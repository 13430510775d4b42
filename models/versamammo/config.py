"""VersaMammo model configurations: the official-size ``full`` preset and a CPU-sized ``tiny`` one.

One frozen dataclass describes both networks (stage-1 ViT teacher, stage-2 EfficientNet
student) so that a checkpoint can embed it (``dataclasses.asdict``) and be rebuilt from it alone.
``tiny`` keeps every code path of ``full`` (same-padding EfficientNet, patch-14 ViT with
interpolated positional embeddings, separate DINO and iBOT heads) at a size that trains on two
CPU cores in minutes. See docs/models.md for the table and where each value comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

# Stage-2 normalisation of the official student (Mammo-CLIP constants, after /255).
STUDENT_NORM: tuple[tuple[float, ...], tuple[float, ...]] = ((0.3089,), (0.2505,))
# The official downstream code instead normalises with 0.5/0.5 (docs/models.md, "Normalisation").
DOWNSTREAM_NORM: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5,), (0.5,))
# The stage-1 teacher uses ImageNet statistics (DINOv2 default).
IMAGENET_NORM: tuple[tuple[float, ...], tuple[float, ...]] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# What the student's classification heads may see (VersaMammoConfig.student_head_pool).
HEAD_POOLS = ("avg", "avg_max", "avg_lesion")


@dataclass(frozen=True)
class VersaMammoConfig:
    """Every architectural number of the VersaMammo teacher and student.

    Fields after ``n_findings`` are additions to the agreed API; they default to the official
    values so that configs written by older code still load.
    """

    size: str  # "full" | "tiny" (free text for custom configs)
    student_backbone: str  # timm model name
    student_input: int  # square input side in pixels
    student_dim: int  # pooled feature dimension (= conv-head channels)
    student_grid: int  # final feature-grid side at student_input (input / 32)
    student_norm: tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) after /255
    teacher_arch: str  # see models.versamammo.teacher.teacher_geometry
    teacher_global: int  # global crop side; the positional embedding is learnt for this grid
    teacher_local: int  # local crop side
    teacher_norm: tuple[tuple[float, ...], tuple[float, ...]]
    dino_prototypes: int
    dino_bottleneck: int
    dino_hidden: int
    ibot_prototypes: int
    ibot_bottleneck: int
    ibot_hidden: int
    drop_path_rate: float  # teacher (ViT) stochastic depth, uniform over blocks as in the official run
    n_birads: int = 6
    n_density: int = 4
    n_findings: int = 10
    # --- additions -------------------------------------------------------------------------
    # Image side for which the student's stride-2 TF-"same" pads are computed once and then kept
    # fixed at every input size (efficientnet_pytorch's Conv2dStaticSamePadding). None = timm's
    # dynamic padding. full: 456, the official B5 default image size (fed 512 downstream).
    student_pad_size: int | None = 456
    student_dropout: float = 0.4  # on the pooled feature before the heads (include_top Dropout)
    student_drop_path_rate: float = 0.2  # drop-connect of efficientnet_pytorch B5
    student_bn_momentum: float = 0.01  # PyTorch convention; B5 uses 1 - 0.99
    teacher_patch: int = 14
    teacher_layerscale: float = 1e-5
    teacher_interpolate_offset: float = 0.1  # DINOv2 positional-embedding interpolation offset
    # What the student's classification heads see: "avg" (official: the global average of the
    # feature grid) or "avg_max" (average and maximum side by side, twice the width): a lesion
    # fills one or two cells of the grid and averaging dilutes it 30-60 times (docs/models.md);
    # "avg_lesion" (needs student_lesion_map): the average, the grid pooled with the softmax of the
    # lesion map as attention weights, and the map's strongest logit (2 * dim + 1 wide).
    student_head_pool: str = "avg"
    # A 1x1-conv lesion map over the feature grid (one logit per cell), trained with box
    # supervision where boxes exist (distill.lesion_map_weight). The official student has none.
    student_lesion_map: bool = False

    def __post_init__(self) -> None:
        if self.student_head_pool not in HEAD_POOLS:
            raise ValueError(f"student_head_pool must be one of {HEAD_POOLS}, not {self.student_head_pool!r}")
        if self.student_head_pool == "avg_lesion" and not self.student_lesion_map:
            raise ValueError("student_head_pool 'avg_lesion' pools by the lesion map: it needs student_lesion_map")
        if self.student_input % 32:
            raise ValueError(f"student_input {self.student_input} is not a multiple of 32")
        if self.student_grid != self.student_input // 32:
            raise ValueError(f"student_grid {self.student_grid} != student_input // 32")
        for name in ("teacher_global", "teacher_local"):
            if getattr(self, name) % self.teacher_patch:
                raise ValueError(f"{name} {getattr(self, name)} is not a multiple of {self.teacher_patch}")


_FULL = VersaMammoConfig(
    size="full",
    student_backbone="tf_efficientnet_b5",
    student_input=512,
    student_dim=2048,
    student_grid=16,
    student_norm=STUDENT_NORM,
    teacher_arch="vit_base_patch14_dinov2",
    teacher_global=224,
    teacher_local=98,
    teacher_norm=IMAGENET_NORM,
    dino_prototypes=131072,
    dino_bottleneck=384,
    dino_hidden=2048,
    ibot_prototypes=131072,
    ibot_bottleneck=256,
    ibot_hidden=2048,
    drop_path_rate=0.4,
)

_TINY = VersaMammoConfig(
    size="tiny",
    # timm's tinynet_e: an EfficientNet scaled down in width, depth and resolution (TinyNet),
    # 3x faster than B0 on CPU. 256 px, not 128: on phantoms a 10 mm mass at 128 px is the size
    # of the parenchymal texture and a from-scratch student does not find it (mass AUC ~0.5);
    # at 256 it does (0.63-0.69 after 6 epochs of 600 studies).
    student_backbone="tinynet_e",
    student_input=256,
    student_dim=1280,
    student_grid=8,
    student_norm=STUDENT_NORM,
    teacher_arch="vit_tiny_patch14_d4",
    teacher_global=56,
    teacher_local=28,
    teacher_norm=IMAGENET_NORM,
    dino_prototypes=512,
    dino_bottleneck=64,
    dino_hidden=256,
    ibot_prototypes=512,
    ibot_bottleneck=64,
    ibot_hidden=256,
    drop_path_rate=0.1,
    student_pad_size=None,  # tinynet uses symmetric PyTorch padding, not TF "same"
    # Short CPU runs take a few dozen steps: the official 0.01 would leave BatchNorm's running
    # statistics near their initial values, and the model useless in eval mode.
    student_bn_momentum=0.1,
)

_PRESETS = {"full": _FULL, "tiny": _TINY}


def config_for(size: str) -> VersaMammoConfig:
    """The preset for ``size`` ("full" or "tiny")."""
    try:
        return _PRESETS[size]
    except KeyError:
        raise ValueError(f"unknown VersaMammo size {size!r}; expected one of {sorted(_PRESETS)}") from None


def config_from_dict(data: dict[str, Any]) -> VersaMammoConfig:
    """Rebuild a config from ``dataclasses.asdict`` output (lists back to tuples); unknown keys fail."""
    known = {f.name for f in fields(VersaMammoConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown VersaMammo config keys: {unknown}")
    values = dict(data)
    for key in ("student_norm", "teacher_norm"):
        if key in values:
            mean, std = values[key]
            values[key] = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    return VersaMammoConfig(**values)


def student_preprocess_config(model: VersaMammoConfig) -> "PreprocessConfig":
    """The serving preprocessing of the student: squash to its input, its own normalisation.

    Training, export (into the package manifest) and the node all take it from here.
    """
    from models.preprocess import PreprocessConfig

    mean, std = model.student_norm
    return PreprocessConfig(size=(model.student_input, model.student_input), mean=tuple(mean), std=tuple(std))
