"""Lesion-patch pretraining of the student: ``run_patches(cfg) -> Path`` (a student checkpoint).

The student's backbone, global pooling and two training-only heads learn, on patches of the
model image (``patches.data``), what kind of finding a patch is centred on (normal tissue or one
of the 10 finding classes) and the finding's BI-RADS category. The backbone is then saved as a
student checkpoint (our format; its BI-RADS/density/findings heads untrained) that stage 2
starts from when ``model.student_init = "lesion_patches"``. Any data set with lesion boxes
works: phantoms, VinDr-Mammo's finding boxes, a manifest's ``boxes`` column.

Outputs in ``run.out_dir/patches/``: ``checkpoint_<iteration>.pt`` (full training state, resumed
automatically), ``metrics.jsonl`` (loss; per epoch the validation lesion-vs-normal AUC and kind
accuracy on fixed validation patches), ``student_patches.pt`` (the best by validation AUC).
Under torchrun each rank draws its own patches (DDP).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from models.package.labels import FINDING_CLASSES
from models.versamammo.checkpoint import VersaMammoStudent, build_student, config_for, save_checkpoint
from training import distributed as du
from training.data.cache import PreprocessedCache
from training.data.records import load_records
from training.data.sampling import SeededBatchSampler, sample_seed
from training.eval.classification import binary_auc
from training.loop import Loop, autocast, effective_precision
from training.versamammo.distill.data import student_preprocess_config
from training.versamammo.patches.data import LesionPatchDataset, PatchSettings
from training.config import TrainConfig

log = logging.getLogger(__name__)

PATCH_STUDENT = "student_patches.pt"
VAL_SEED = 0x7A11  # fixed validation patches: the same draws at every epoch and on resume


class PatchModel(nn.Module):
    """The student's backbone with the two patch heads (dropped when the student is saved)."""

    def __init__(self, student: VersaMammoStudent) -> None:
        super().__init__()
        self.student = student
        dim = student.cfg.student_dim
        self.kind_head = nn.Linear(dim, 1 + len(FINDING_CLASSES))
        self.birads_head = nn.Linear(dim, student.cfg.n_birads)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.student.features(x)
        return {"kind": self.kind_head(feature), "birads": self.birads_head(feature)}


def warmup_cosine(total: int, warmup_fraction: float = 0.05) -> Any:
    """LR factor per step: linear warm-up over the first 5 %, then a cosine to zero."""
    warmup = max(1, int(total * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def patch_settings(cfg: TrainConfig) -> PatchSettings:
    p = cfg.patches
    return PatchSettings(size=p.size, positive_fraction=p.positive_fraction, jitter=p.jitter,
                         max_overlap=p.max_overlap)


def run_patches(cfg: TrainConfig, *, max_iterations: int | None = None) -> Path:
    """Pretrain the student on lesion patches; returns the best student checkpoint. Resumes automatically."""
    return du.launched(cfg, lambda info: _run(cfg, info, max_iterations))


def _run(cfg: TrainConfig, info: du.DistInfo, max_iterations: int | None) -> Path:
    pcfg = cfg.patches
    device = info.device
    du.seed_everything(cfg.run.seed)
    out_dir = Path(cfg.run.out_dir) / "patches"
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = config_for(cfg.model.size)
    if cfg.model.student_input is not None:  # patches come from the model image at the student's input
        model_cfg = replace(model_cfg, student_input=cfg.model.student_input,
                            student_grid=cfg.model.student_input // 32)
    records = load_records(cfg.data)
    pre = student_preprocess_config(model_cfg)
    cache = PreprocessedCache(cfg.data.cache_dir) if cfg.data.cache_dir else None
    settings = patch_settings(cfg)
    train_set = LesionPatchDataset([r for r in records if r.split == "train"], pre, cache, settings,
                                   pcfg.samples_per_epoch)
    if not train_set.lesions:
        raise ValueError("no lesion boxes in the training images: lesion-patch pretraining needs box "
                         "annotations (phantoms, VinDr-Mammo finding boxes, or a manifest 'boxes' column)")
    val_set = LesionPatchDataset([r for r in records if r.split == "val"], pre, cache, settings,
                                 pcfg.val_samples)

    student = build_student(model_cfg)
    model = PatchModel(student).to(device)
    module: nn.Module = model
    if info.distributed:
        module = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=pcfg.lr, weight_decay=pcfg.weight_decay)
    per_epoch = max(1, pcfg.samples_per_epoch // (pcfg.batch_size_per_rank * info.world_size))
    planned = pcfg.epochs * per_epoch
    total = planned if max_iterations is None else min(planned, max_iterations)
    factor = warmup_cosine(planned)  # a stop early keeps the plan
    precision = effective_precision(cfg.run.precision, device)

    def batches(start: int) -> DataLoader:
        sampler = SeededBatchSampler(len(train_set), pcfg.batch_size_per_rank, total, seed=cfg.run.seed,
                                     rank=info.rank, world_size=info.world_size, start_iteration=start)
        return DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.run.num_workers)

    def step(batch: dict[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        with autocast(device, precision):
            out = module(batch["image"].to(device))
        kind_loss = F.cross_entropy(out["kind"].float(), batch["kind"].to(device))
        birads = batch["birads"].to(device)
        birads_loss = F.cross_entropy(out["birads"].float(), birads, ignore_index=-1) if (birads >= 0).any() \
            else out["birads"].sum() * 0.0
        return kind_loss + birads_loss, {"kind_ce": kind_loss.item(), "birads_ce": birads_loss.item()}

    def validate() -> dict[str, float]:
        scores = evaluate_patches(model, val_set, device)
        return {**scores, "score": -0.5 if np.isnan(scores["auc"]) else scores["auc"]}

    def on_best(best: dict[str, Any]) -> None:
        scores = {k: v for k, v in best.items() if k not in ("epoch", "iteration", "score")}
        save_checkpoint(model.student, out_dir / PATCH_STUDENT, extra={
            "stage": "patches", "selected_on": "val", "val": scores, "iteration": best["iteration"]})

    # Without validation lesions there is nothing to select on: the last backbone is kept.
    loop = Loop("patches", out_dir, model, optimizer, per_epoch, total, batches, step, device,
                precision=precision, lr_at=lambda i: [pcfg.lr * factor(i)],
                validate=validate if val_set.lesions else None, on_best=on_best, label="lesion patches",
                log_every=cfg.run.log_every, items_per_iteration=pcfg.batch_size_per_rank * info.world_size,
                throughput_key="patches_per_s")
    _, iteration = loop.run()
    if du.is_main() and not (out_dir / PATCH_STUDENT).exists():
        save_checkpoint(student, out_dir / PATCH_STUDENT, extra={"stage": "patches", "iterations": iteration})
    du.barrier()
    return out_dir / PATCH_STUDENT


@torch.no_grad()
def evaluate_patches(model: PatchModel, dataset: LesionPatchDataset, device: torch.device,
                     batch: int = 64) -> dict[str, float]:
    """Lesion-vs-normal AUC (1 - P(normal)), kind accuracy and lesion-patch BI-RADS accuracy on
    fixed validation draws."""
    model.eval()
    keys = [(i, sample_seed(VAL_SEED, i)) for i in range(len(dataset))]
    p_normal, kinds, pred_kinds, birads, pred_birads = [], [], [], [], []
    for start in range(0, len(keys), batch):
        items = [dataset[k] for k in keys[start:start + batch]]
        out = model(torch.stack([it["image"] for it in items]).to(device))
        prob = out["kind"].softmax(1).float().cpu().numpy()
        p_normal.append(prob[:, 0])
        pred_kinds.append(prob.argmax(1))
        pred_birads.append(out["birads"].argmax(1).cpu().numpy())
        kinds.extend(it["kind"] for it in items)
        birads.extend(it["birads"] for it in items)
    model.train()
    if not keys:
        return {"auc": float("nan"), "kind_acc": float("nan"), "lesion_birads_acc": float("nan")}
    y_kind, y_birads = np.asarray(kinds), np.asarray(birads)
    pk, pb = np.concatenate(pred_kinds), np.concatenate(pred_birads)
    lesion = (y_kind > 0) & (y_birads >= 0)
    return {"auc": binary_auc((y_kind > 0).astype(int), 1.0 - np.concatenate(p_normal)),
            "kind_acc": float((pk == y_kind).mean()),
            "lesion_birads_acc": float((pb[lesion] == y_birads[lesion]).mean()) if lesion.any() else float("nan")}
