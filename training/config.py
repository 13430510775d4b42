"""Training configuration: one TOML file per run, validated like the node's.

``mammo-train <command> --config FILE`` reads it; every key has a default so a config file
only states what differs. Defaults follow the official VersaMammo code where it is sound and
say so where we deviate (see docs/training.md). ``training/configs/`` holds the shipped
presets: ``versamammo_tiny.toml`` (2 CPU cores, minutes) and ``versamammo_full.toml`` (GPU
clusters, torchrun).
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Section):
    """Where outputs go and how the run executes."""

    out_dir: Path = Path("runs/versamammo")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype on GPU; CPU runs fp32 or bf16
    num_workers: int = Field(default=0, ge=0)
    log_every: int = Field(default=10, ge=1)  # iterations between JSON-lines metric records
    checkpoint_every: int = Field(default=0, ge=0)  # iterations; 0 = at the end of each epoch only
    distributed_backend: Literal["auto", "nccl", "gloo"] = "auto"


class ModelSection(_Section):
    """Which VersaMammo preset (models.versamammo.checkpoint) and optional overrides."""

    size: Literal["tiny", "full"] = "tiny"
    teacher_checkpoint: Path | None = None  # official DINOv2-format or our own stage-1 checkpoint
    student_checkpoint: Path | None = None  # official student or our own stage-2 checkpoint
    # Where stage 2 starts when student_checkpoint is None: "random" (what our full preset does,
    # since ImageNet weights cannot be downloaded here; the official code starts from ImageNet)
    # or "lesion_patches": the student pretrained on lesion patches of the training set's boxes
    # (`mammo-train versamammo-patches`, output run.out_dir/patches/student_patches.pt).
    student_init: Literal["random", "lesion_patches"] = "random"
    # Student head options over the preset (None keeps the preset's; models.versamammo.config):
    # "avg_max" pooling for the heads, and the lesion map that distill.lesion_map_weight trains.
    student_head_pool: Literal["avg", "avg_max", "avg_lesion"] | None = None
    student_lesion_map: bool | None = None
    # The student's square input side (a multiple of 32; the feature grid is input / 32). None keeps
    # the preset's (full 512, tiny 256). The tiny preset at 512 reads the small phantom at its native
    # height: descriptors near one pixel at 256 px (docs/training.md, "The student at 512 px").
    student_input: int | None = Field(default=None, ge=32, multiple_of=32)


class DataSection(_Section):
    """Where images and labels come from (training.data)."""

    kind: Literal["phantom", "vindr", "manifest", "reports"] = "phantom"  # "reports": MammoRG JSONL (training.mammorg.data)
    root: Path | None = None  # phantom studies folder, VinDr-Mammo root, or the manifest CSV
    phantom_studies: int = Field(default=48, ge=1)  # generated on the fly when root is None
    # Further phantom studies of the same seed (indices phantom_studies ..) that join the training
    # split only: more training data while validation and test stay the first set's (kind "phantom").
    phantom_extra_train_studies: int = Field(default=0, ge=0)
    phantom_seed: int = 0
    phantom_size: Literal["small", "full"] = "small"
    cache_dir: Path | None = Path("var/cache/preprocessed")
    split_seed: int = 0
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    test_fraction: float = Field(default=0.15, ge=0, lt=1)


class SSLSection(_Section):
    """Stage 1: DINOv2-style self-distillation of the ViT teacher (official defaults)."""

    epochs: int = Field(default=100, ge=1)
    iterations_per_epoch: int = Field(default=1250, ge=1)  # OFFICIAL_EPOCH_LENGTH
    batch_size_per_rank: int = Field(default=4, ge=1)
    base_lr: float = 1e-4  # scaled by sqrt(total batch / 1024), as DINOv2 does
    min_lr: float = 1e-6
    warmup_epochs: int = Field(default=30, ge=0)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    momentum_teacher: float = 0.994
    final_momentum_teacher: float = 1.0
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_final: float = 0.07
    warmup_teacher_temp_epochs: int = Field(default=30, ge=0)
    student_temp: float = 0.1
    centering: Literal["centering", "sinkhorn_knopp"] = "centering"
    center_momentum: float = 0.9
    dino_loss_weight: float = 1.0
    ibot_loss_weight: float = 1.0
    koleo_loss_weight: float = 0.1
    mask_sample_probability: float = 0.5
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.5
    global_crops_scale: tuple[float, float] = (0.95, 1.0)
    local_crops_number: int = Field(default=2, ge=0)
    local_crops_scale: tuple[float, float] = (0.2, 0.6)
    patch_embed_lr_mult: float = 0.2
    layerwise_decay: float = 1.0
    clip_grad: float = 3.0
    freeze_last_layer_epochs: int = Field(default=1, ge=0)
    drop_path_rate: float = 0.4
    use_fsdp: bool = False  # shard the teacher/student with FSDP under torchrun
    # --- additions for training/versamammo/ssl (docs/training-ssl.md) ----------------------
    # Warm start: our teacher checkpoint or an official DINOv2-format one (student and teacher
    # start from it; the official run had its `pretrained_weights` line commented out).
    init_checkpoint: Path | None = None
    # True reproduces the official GaussianBlur quirk (blur applied with 1 - p); we fix it.
    official_blur_bug: bool = False
    keep_checkpoints: int = Field(default=3, ge=1)  # training-state files kept in out_dir/ssl/
    # End the run (final teacher export) at this iteration while the schedules stay sized by
    # `epochs`: the released teacher is iteration 325k of a 1000-epoch schedule.
    stop_at_iteration: int | None = Field(default=None, ge=1)


class DistillSection(_Section):
    """Stage 2: supervised training of the EfficientNet student with knowledge distillation."""

    epochs: int = Field(default=30, ge=1)
    batch_size_per_rank: int = Field(default=28, ge=2)
    lr: float = 1e-4
    weight_decay: float = 0.0
    ce_weight: float = 10.0  # lambda2 on CE(BI-RADS) + CE(density)
    kd_weight: float = 1.0  # lambda1 on the relational distillation loss
    kd_temperature: float = 1.0  # official: no temperature
    # official: F.kl_div(log_softmax(S_teacher), softmax(S_student)) = KL(student || teacher)
    kd_direction: Literal["student_teacher", "teacher_student"] = "student_teacher"
    contrastive_weight: float = 1.0
    contrastive_temperature: float = 0.07
    low_res_size: int = 224  # the *different* low-resolution view (the official code passes the same tensor)
    findings_weight: float = 1.0
    # Per-class CE weights for BI-RADS and density: "none" (official) or "balanced" (inverse
    # frequency of the training labels, capped at 10x) for heavily imbalanced screening data.
    class_weights: Literal["none", "balanced"] = "none"
    teacher_features: Literal["offline", "online"] = "offline"
    # Box supervision of the student's lesion map (model.student_lesion_map): balanced BCE per
    # feature-grid cell on images whose boxes are known (training.data.lesion_map). Not in the
    # paper (0 = the official loss); the tiny preset uses it to grow lesion features from little data.
    lesion_map_weight: float = Field(default=0.0, ge=0)
    # Learning rate of the backbone as a multiple of `lr` (the heads and lesion map get `lr`).
    # 1 = the official single rate; below 1 keeps what a started student learnt (lesion patches)
    # while fresh heads settle.
    backbone_lr_mult: float = Field(default=1.0, gt=0, le=1)
    # Epochs at the start of stage 2 that train the lesion map alone (at full `lr`, no CE, KD or
    # contrastive term): box supervision learns lesion features several times faster on its own
    # than beside the image-level losses (docs/training.md). 0 = all terms from the first step.
    lesion_map_warmup_epochs: int = Field(default=0, ge=0)
    # After training, refit the BI-RADS and density heads on the frozen student's head inputs
    # (L2-regularised multinomial regression, strength and class weighting chosen on the validation
    # split; training/versamammo/distill/refit.py). Not in the paper: the heads trained beside KD,
    # contrastive and dropout lag a linear fit of the same features on small data (docs/training.md).
    head_refit: bool = False


class PatchesSection(_Section):
    """Lesion-patch pretraining of the student (training/versamammo/patches; Shen et al. 2019)."""

    epochs: int = Field(default=10, ge=1)
    samples_per_epoch: int = Field(default=4096, ge=1)   # patches drawn per epoch (with replacement)
    val_samples: int = Field(default=512, ge=0)          # fixed validation patches
    batch_size_per_rank: int = Field(default=64, ge=2)
    lr: float = 2e-3                                     # peak (warm-up, then cosine)
    weight_decay: float = 1e-4
    size: int = Field(default=64, ge=16)                 # patch side in model-image pixels
    positive_fraction: float = Field(default=0.5, gt=0, lt=1)
    jitter: float = Field(default=0.25, ge=0, le=0.5)    # lesion centre offset, fraction of the patch side
    max_overlap: float = Field(default=0.1, ge=0, le=1)  # share of a lesion box a normal patch may cover


class MammoRGSection(_Section):
    """MammoRG model and tokenizer (models.mammorg.model); the frozen student is ``model.student_checkpoint``."""

    size: Literal["tiny", "full"] = "tiny"
    lm_path: Path | None = None  # local Hugging Face causal LM directory; None = built from the preset (tiny)
    tokenizer_path: Path | None = None  # local tokenizer directory; None = BPE trained on the training reports
    tokenizer_vocab: int = Field(default=2000, ge=300)
    terms_language: Literal["en", "zh", "all"] = "all"  # which lexicon surface forms become atomic tokens
    knowledge: bool = True  # False: no graph or report tokens (the ablation)
    # Knowledge-graph edges (models.mammorg.edges): "knowledge" = the curated BI-RADS-atlas table
    # plus co-occurrence in the parsed training reports seen at least graph_min_count times and in
    # at least graph_min_fraction of the head's occurrences; "atlas", "reports" alone; "complete"
    # (every schema pair, the old graph) and "none" for ablations.
    graph_edges: Literal["knowledge", "atlas", "reports", "complete", "none"] = "knowledge"
    graph_min_count: int = Field(default=3, ge=1)
    graph_min_fraction: float = Field(default=0.05, ge=0, le=1)
    # The images MammoRG's frozen encoder sees (saved in the model, written into its package manifest,
    # so the node serves what was trained): "student" = the student's own preprocessing (squash,
    # its normalisation; ours); "official" = the official MammoRG pipeline (shortest side resized,
    # centre crop, mean = std = 0.5), for an encoder or weights trained that way.
    preprocessing: Literal["student", "official"] = "student"
    # Alignment and SFT under torchrun: shard every decoder layer of the language model (its frozen
    # weights and LoRA adapters) with FSDP2 instead of replicating the LM on each GPU; the rest
    # (embeddings with the term rows, output head, projectors) stays replicated, gradients averaged.
    fsdp: bool = False
    prompt: str | None = None  # must contain <image> once; None = the preset's
    max_report_tokens: int = Field(default=512, ge=8)  # longer training targets are truncated, and counted
    retrieval_temperature: float = Field(default=0.05, gt=0)
    # The frozen student's feature grid average-pooled by this factor into tokens (MammoRGConfig.
    # vision_pool): 2 keeps 8 x 8 tokens per view from a tiny student trained at 512 px. 1 = official.
    vision_pool: int = Field(default=1, ge=1)
    # A language model built from config starts random; these epochs of plain next-token training
    # on the training reports stand in for the pretrained LLM of the full config (0 = none).
    lm_warmup_epochs: int = Field(default=0, ge=0)
    lm_warmup_lr: float = 1e-3


class KnowledgeSection(_Section):
    """Stage 1: graph, cross-attention and retrieval trained through classification heads."""

    epochs: int = Field(default=11, ge=1)
    batch_size_per_rank: int = Field(default=64, ge=1)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)


class AlignSection(_Section):
    """Stage 2a: projectors and the new term-token rows (official: 1 epoch, batch 16, lr 1e-3)."""

    epochs: int = Field(default=1, ge=1)
    batch_size_per_rank: int = Field(default=16, ge=1)
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    gradient_checkpointing: bool = False


class SFTSection(_Section):
    """Stage 2b: LoRA on every linear layer of the LM, projectors and term rows (official: 3 epochs, lr 1e-4)."""

    epochs: int = Field(default=3, ge=1)
    batch_size_per_rank: int = Field(default=4, ge=1)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    lora_r: int = Field(default=64, ge=1)
    lora_alpha: int = Field(default=128, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    gradient_checkpointing: bool = False


class GenerateSection(_Section):
    """Report generation for evaluation (and the defaults saved with the model)."""

    max_new_tokens: int = Field(default=1024, ge=1)
    num_beams: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8, ge=1)


class EvalSection(_Section):
    """Evaluation: which split and how many bootstrap resamples for the 95% intervals."""

    split: Literal["val", "test"] = "test"
    bootstrap: int = Field(default=1000, ge=0)


class TrainConfig(_Section):
    """One training run."""

    run: RunSection = Field(default_factory=RunSection)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    ssl: SSLSection = Field(default_factory=SSLSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    patches: PatchesSection = Field(default_factory=PatchesSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    mammorg: MammoRGSection = Field(default_factory=MammoRGSection)
    knowledge: KnowledgeSection = Field(default_factory=KnowledgeSection)
    align: AlignSection = Field(default_factory=AlignSection)
    sft: SFTSection = Field(default_factory=SFTSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)


class TrainConfigError(Exception):
    """Invalid training configuration; the message names every bad key."""


def load_train_config(path: Path | str | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML training config (optional) with dotted-key ``overrides`` applied on top."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TrainConfigError(f"configuration file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise TrainConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return TrainConfig(**data)
    except ValidationError as exc:
        lines = [f"invalid training configuration ({path or 'defaults'}):"]
        for item in exc.errors():
            key = ".".join(str(p) for p in item["loc"])
            lines.append(f"  {key}: {'unknown key' if item['type'] == 'extra_forbidden' else item['msg']}")
        raise TrainConfigError("\n".join(lines)) from None
