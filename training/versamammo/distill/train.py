"""Stage-2 training loop: ``run_distill(cfg) -> Path`` (the best student checkpoint, our format).

    total = L_contrastive(high, low) + kd_weight * L_KD(teacher, student)
            + ce_weight * (CE_birads + CE_density) + findings_weight * BCE_findings
            [+ lesion_map_weight * L_lesion_map(boxes)]

(official weights: kd 1, ce 10, contrastive 1; findings BCE only where findings are labelled).
The teacher is frozen; its features are either computed once for every training image and
cached (``teacher_features = "offline"``, as the official code does) or computed each step
(``"online"``). The student starts from ``model.student_checkpoint`` (official or ours) or at
random. Model selection uses the validation split only (mean of density accuracy and BI-RADS
macro-F1), never the test split.

Outputs in ``run.out_dir/distill/``: ``checkpoint_<iteration>.pt`` (full training state,
resumed automatically), ``metrics.jsonl``, ``teacher_features.pt`` (offline cache),
``student_best.pt`` and ``student_last.pt`` (``models.versamammo.checkpoint.load_checkpoint``).
Under torchrun each rank trains on its shard (DDP); the relational and contrastive terms use
each rank's own batch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.versamammo.checkpoint import (
    VersaMammoConfig, VersaMammoStudent, build_student, load_checkpoint, load_official_student,
    load_official_teacher, read_checkpoint, save_checkpoint,
)
from training import distributed as du
from training.data.cache import PreprocessedCache
from training.data.datasets import MammoImageDataset
from training.data.image_record import ImageRecord
from training.data.records import load_records
from training.data.sampling import SeededBatchSampler
from training.eval.classification import accuracy, binary_auc, macro_f1
from training.loop import Loop, autocast, effective_precision, iteration_plan
from training.versamammo.distill.data import SeededDataset, TwoViewTransform, student_preprocess_config, teacher_input
from training.versamammo.distill.losses import (
    class_weights, contrastive_structure_loss, lesion_map_loss, masked_bce, masked_ce, relational_kd_loss,
)
from training.versamammo.student_config import student_model_config
from training.config import DistillSection, TrainConfig

log = logging.getLogger(__name__)

BEST = "student_best.pt"
LAST = "student_last.pt"
FEATURES = "teacher_features.pt"
LESION_CLASSES = (0, 3, 4, 5)  # BI-RADS head classes that mean "something is there"


@contextlib.contextmanager
def bn_stats_frozen(module: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with batch statistics but leaves its running statistics alone.

    The low-resolution, jittered, rotated view has other activation statistics than the
    high-resolution view the student is evaluated and served on. Had it updated the running
    statistics, evaluation would normalise 256 px inputs with a mix of both (unstable validation
    and a student that loses what it learnt in eval mode). Momentum 0 keeps the running values.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


class DistillModule(nn.Module):
    """Both student passes in one forward, so DDP sees a single graph per step.

    Only the high-resolution pass updates BatchNorm running statistics (``bn_stats_frozen``).
    """

    def __init__(self, student: VersaMammoStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        out = self.student(high)
        with bn_stats_frozen(self.student):
            low_feature = self.student.features(low)
        return out, low_feature


# ----------------------------------------------------------------------------- model loading
def load_student(cfg: TrainConfig, model_cfg: VersaMammoConfig) -> VersaMammoStudent:
    """The starting student: ``model.student_checkpoint`` (ours or official), else by
    ``model.student_init``: the lesion-patch pretrained student of this run, or random init."""
    path = cfg.model.student_checkpoint
    if path is None and cfg.model.student_init == "lesion_patches":
        from training.versamammo.patches.train import PATCH_STUDENT

        path = Path(cfg.run.out_dir) / "patches" / PATCH_STUDENT
        if not path.exists():
            raise FileNotFoundError(f"model.student_init = 'lesion_patches' but {path} does not exist: "
                                    "run `mammo-train versamammo-patches` first")
    if path is None:
        return build_student(model_cfg)
    try:
        info = read_checkpoint(path)
    except (ValueError, KeyError, TypeError):
        info = None
    start = load_checkpoint(path, kind="student") if info is not None else load_official_student(path)
    return adopt_heads(start, model_cfg)


def adopt_heads(start: VersaMammoStudent, model_cfg: VersaMammoConfig) -> VersaMammoStudent:
    """``start``'s weights in a student of ``model_cfg``'s architecture: the run decides the heads.

    The backbone must match exactly; heads (and the lesion map) are kept where their shapes fit
    and start afresh where the run asks for other ones (e.g. ``avg_max`` pooling on a student
    pretrained with ``avg``). Returns ``start`` itself when nothing differs.
    """
    if start.cfg == model_cfg:
        return start
    student = build_student(model_cfg)
    student.backbone.load_state_dict(start.backbone.state_dict(), strict=True)
    own = student.state_dict()
    kept = {k: v for k, v in start.state_dict().items()
            if not k.startswith("backbone.") and k in own and own[k].shape == v.shape}
    student.load_state_dict(kept, strict=False)
    fresh = sorted({k.split(".")[0] for k in own if not k.startswith("backbone.") and k not in kept})
    student.load_notes = list(start.load_notes) + [f"{name}: new for this run's heads, randomly initialised"
                                                   for name in fresh]
    for note in student.load_notes:
        log.info("starting student: %s", note)
    return student.train(start.training)


def find_teacher(cfg: TrainConfig) -> Path:
    """``model.teacher_checkpoint`` or the stage-1 output of this run."""
    if cfg.model.teacher_checkpoint is not None:
        return Path(cfg.model.teacher_checkpoint)
    from training.versamammo.ssl.train import TEACHER_FINAL

    candidate = Path(cfg.run.out_dir) / "ssl" / TEACHER_FINAL
    if not candidate.exists():
        raise FileNotFoundError(
            f"no teacher: set model.teacher_checkpoint or run `mammo-train versamammo-ssl` first ({candidate})")
    return candidate


def load_teacher_backbone(path: Path, model_cfg: VersaMammoConfig) -> nn.Module:
    try:
        read_checkpoint(path)
        teacher = load_checkpoint(path, kind="teacher")
    except (ValueError, KeyError, TypeError):
        teacher = load_official_teacher(path, model_cfg)
    backbone = teacher.backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


# ----------------------------------------------------------------------- teacher features
def _features_key(teacher_path: Path, records: list[ImageRecord]) -> str:
    digest = hashlib.sha256()
    stat = teacher_path.stat()
    digest.update(f"{teacher_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for r in records:
        digest.update(str(r.path).encode())
    return digest.hexdigest()


@torch.no_grad()
def offline_teacher_features(dataset: MammoImageDataset, backbone: nn.Module, model_cfg: VersaMammoConfig,
                             device: torch.device, cache_file: Path, key: str, batch: int = 32) -> torch.Tensor:
    """Teacher CLS features for every training image, computed once (rank 0) and cached.

    Every rank passes the barrier whatever it finds on disk: a rank that started late could
    otherwise see the file rank 0 has just written, skip the barrier, and leave rank 0 waiting
    in it while its own next collective never finds a partner (a torchrun hang).
    """
    if du.is_main() and _cached_features(cache_file, key) is None:
        backbone.to(device)
        chunks = []
        for start in range(0, len(dataset), batch):
            views = [teacher_input(dataset.prepared(i).image, model_cfg) for i in
                     range(start, min(start + batch, len(dataset)))]
            chunks.append(backbone(torch.stack(views).to(device))["cls"].float().cpu())
        features = torch.cat(chunks) if chunks else torch.zeros(0)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        from training.checkpoint import atomic_torch_save

        atomic_torch_save({"key": key, "features": features}, cache_file)
    du.barrier()
    features = _cached_features(cache_file, key)
    if features is None:
        raise RuntimeError(f"teacher feature cache {cache_file} is missing or stale after rank 0 wrote it")
    return features


def _cached_features(cache_file: Path, key: str) -> torch.Tensor | None:
    """The cached teacher features when the file exists and was made for ``key``."""
    if not cache_file.exists():
        return None
    cached = torch.load(cache_file, map_location="cpu", weights_only=True)
    return cached["features"] if cached.get("key") == key else None


# ------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict(student: VersaMammoStudent, dataset: MammoImageDataset, device: torch.device,
            batch: int = 32) -> dict[str, np.ndarray]:
    """Head probabilities and labels over a dataset (eval mode, high-resolution view)."""
    student.eval()
    # its own generator, so evaluation never draws from the global RNG of the training run
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    out: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("birads", "density", "findings", "y_birads", "y_density",
                                          "y_findings", "findings_mask")}
    for item in loader:
        image = item["image"]["high"] if isinstance(item["image"], dict) else item["image"]
        result = student(image.to(device))
        out["birads"].append(result["birads"].softmax(1).float().cpu().numpy())
        out["density"].append(result["density"].softmax(1).float().cpu().numpy())
        out["findings"].append(result["findings"].sigmoid().float().cpu().numpy())
        out["y_birads"].append(item["birads"].numpy())
        out["y_density"].append(item["density"].numpy())
        out["y_findings"].append(item["findings"].numpy())
        out["findings_mask"].append(item["findings_mask"].numpy())
        if "lesion_map" in result:
            out.setdefault("lesion_map_max", []).append(result["lesion_map"].amax(dim=(1, 2)).float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def selection_score(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """Validation metrics and the model-selection score (mean of density acc and BI-RADS macro-F1)."""
    metrics: dict[str, float] = {}
    yd, yb = pred["y_density"], pred["y_birads"]
    d_keep, b_keep = yd >= 0, yb >= 0
    metrics["density_acc"] = accuracy(yd[d_keep], pred["density"][d_keep].argmax(1)) if d_keep.any() else float("nan")
    metrics["birads_macro_f1"] = (macro_f1(yb[b_keep], pred["birads"][b_keep].argmax(1), pred["birads"].shape[1])
                                  if b_keep.any() else float("nan"))
    parts = [v for v in metrics.values() if not np.isnan(v)]
    metrics["score"] = float(np.mean(parts)) if parts else 0.0
    # logged beside the score (not part of it): does the BI-RADS head find lesions at all?
    lesion = np.isin(yb[b_keep], LESION_CLASSES).astype(int)
    if b_keep.any() and 0 < lesion.sum() < len(lesion):
        metrics["lesion_auc"] = binary_auc(lesion, pred["birads"][b_keep][:, list(LESION_CLASSES)].sum(1))
        if "lesion_map_max" in pred:  # the lesion map's own answer: its strongest cell
            metrics["lesion_map_auc"] = binary_auc(lesion, pred["lesion_map_max"][b_keep])
    return metrics


# ---------------------------------------------------------------------------------- the run
def _split(records: list[ImageRecord], split: str) -> list[ImageRecord]:
    return [r for r in records if r.split == split]


def run_distill(cfg: TrainConfig, *, max_iterations: int | None = None) -> Path:
    """Train the student; returns the best (validation) checkpoint path. Resumes automatically."""
    return du.launched(cfg, lambda info: _run(cfg, info, max_iterations))


def _run(cfg: TrainConfig, info: du.DistInfo, max_iterations: int | None) -> Path:
    dcfg = cfg.distill
    device = info.device
    du.seed_everything(cfg.run.seed)
    out_dir = Path(cfg.run.out_dir) / "distill"
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = student_model_config(cfg)
    if dcfg.lesion_map_weight > 0 and not model_cfg.student_lesion_map:
        raise ValueError("distill.lesion_map_weight > 0 needs a student with a lesion map "
                         "(model.student_lesion_map = true)")
    if dcfg.lesion_map_warmup_epochs and not dcfg.lesion_map_weight > 0:
        raise ValueError("distill.lesion_map_warmup_epochs needs distill.lesion_map_weight > 0 (box supervision)")
    lesion_grid = model_cfg.student_grid if dcfg.lesion_map_weight > 0 else None
    records = load_records(cfg.data)
    train_records, val_records = _split(records, "train"), _split(records, "val")
    if not train_records:
        raise ValueError("no training images (check data.* and the split fractions)")
    pre = student_preprocess_config(model_cfg)
    cache = PreprocessedCache(cfg.data.cache_dir) if cfg.data.cache_dir else None
    online = dcfg.teacher_features == "online"
    train_set = MammoImageDataset(train_records, pre, cache,
                                  TwoViewTransform(model_cfg, dcfg.low_res_size, train=True, online_teacher=online),
                                  lesion_grid=lesion_grid)
    val_set = MammoImageDataset(val_records, pre, cache, TwoViewTransform(model_cfg, dcfg.low_res_size, train=False))

    teacher_path = find_teacher(cfg)
    teacher = load_teacher_backbone(teacher_path, model_cfg).to(device)
    features = None
    if not online:
        features = offline_teacher_features(train_set, teacher, model_cfg, device, out_dir / FEATURES,
                                            _features_key(teacher_path, train_records))

    student = load_student(cfg, model_cfg).to(device)
    module: nn.Module = DistillModule(student)
    if info.distributed:
        # the lesion-map warm-up leaves the heads without gradients
        module = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                                     find_unused_parameters=dcfg.lesion_map_warmup_epochs > 0)
    backbone = list(student.backbone.parameters())
    heads = [p for name, p in student.named_parameters() if not name.startswith("backbone.")]
    optimizer = torch.optim.Adam([{"params": backbone, "lr": dcfg.lr * dcfg.backbone_lr_mult}, {"params": heads}],
                                 lr=dcfg.lr, weight_decay=dcfg.weight_decay)
    precision = effective_precision(cfg.run.precision, device)

    weights = {"birads": class_weights([r.birads for r in train_records], model_cfg.n_birads, dcfg.class_weights),
               "density": class_weights([r.density for r in train_records], model_cfg.n_density, dcfg.class_weights)}
    per_epoch, total = iteration_plan(len(train_set), dcfg.batch_size_per_rank, info.world_size, dcfg.epochs,
                                      max_iterations, "stage 2: training images")

    def batches(start: int) -> DataLoader:
        # (image, augmentation seed) batches as a pure function of the iteration: exact resume
        sampler = SeededBatchSampler(len(train_set), dcfg.batch_size_per_rank, total, seed=cfg.run.seed,
                                     rank=info.rank, world_size=info.world_size, start_iteration=start)
        return DataLoader(SeededDataset(train_set), batch_sampler=sampler, num_workers=cfg.run.num_workers,
                          generator=torch.Generator().manual_seed(cfg.run.seed))

    def lr_at(iteration: int) -> tuple[float, float]:
        warmup = iteration // per_epoch < dcfg.lesion_map_warmup_epochs
        return dcfg.lr * (1.0 if warmup else dcfg.backbone_lr_mult), dcfg.lr

    def step(batch: dict[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        teacher_feat = None if online else features[batch["index"]]
        return _step(module, teacher, batch, teacher_feat, dcfg, device, precision, weights,
                     lesion_map_only=iteration // per_epoch < dcfg.lesion_map_warmup_epochs)

    def validate() -> dict[str, float]:
        return selection_score(predict(student, val_set, device))

    def on_best(best: dict[str, Any]) -> None:
        scores = {k: v for k, v in best.items() if k not in ("epoch", "iteration")}
        save_checkpoint(student, out_dir / BEST,
                        extra={"stage": "distill", "selected_on": "val", "val": scores, "epoch": best["epoch"]})

    loop = Loop("distill", out_dir, student, optimizer, per_epoch, total, batches, step, device,
                precision=precision, lr_at=lr_at, validate=validate if len(val_set) else None, on_best=on_best,
                label="stage 2", log_every=cfg.run.log_every, checkpoint_every=cfg.run.checkpoint_every,
                config=json.loads(cfg.model_dump_json()),
                items_per_iteration=dcfg.batch_size_per_rank * info.world_size, throughput_key="images_per_s")
    _, iteration = loop.run()
    if du.is_main():
        save_checkpoint(student, out_dir / LAST, extra={"stage": "distill", "iterations": iteration})
        if not (out_dir / BEST).exists():
            save_checkpoint(student, out_dir / BEST, extra={"stage": "distill", "iterations": iteration})
        if dcfg.head_refit:
            plain_train = MammoImageDataset(train_records, pre, cache,
                                            TwoViewTransform(model_cfg, dcfg.low_res_size, train=False))
            refit_best(out_dir / BEST, plain_train, val_set, device)
    du.barrier()
    return out_dir / BEST


def refit_best(path: Path, train_set: MammoImageDataset, val_set: MammoImageDataset, device: torch.device) -> None:
    """``distill.head_refit``: refit the selected student's heads once (refit.py); the summary goes
    into the checkpoint's ``extra`` and beside it as ``head_refit.json``. A rerun finds it done."""
    from training.versamammo.distill.refit import refit_heads

    extra = read_checkpoint(path).get("extra") or {}
    if "head_refit" in extra:
        return
    student = load_checkpoint(path, kind="student").to(device)
    summary = refit_heads(student, train_set, val_set, device)
    save_checkpoint(student, path, extra={**extra, "head_refit": summary})
    (path.parent / "head_refit.json").write_text(json.dumps(summary, indent=1))


def _step(module: nn.Module, teacher: nn.Module, batch: dict[str, Any], teacher_feat: torch.Tensor | None,
          dcfg: DistillSection, device: torch.device, precision: str,
          weights: dict[str, torch.Tensor | None] | None = None,
          lesion_map_only: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """One stage-2 loss (see the module docstring) and its parts as plain floats; with
    ``lesion_map_only`` (the lesion-map warm-up) only the lesion-map term."""
    views = batch["image"]
    if lesion_map_only:
        with autocast(device, precision):
            out, _ = module(views["high"].to(device), views["low"].to(device))
        lesion = _lesion_term(out, batch, views, device)
        return lesion, {"lesion_map": lesion.item(), "loss": lesion.item()}
    if teacher_feat is None:  # online teacher
        with torch.no_grad():
            teacher_feat = teacher(views["teacher"].to(device))["cls"].float()
    teacher_feat = teacher_feat.to(device)
    with autocast(device, precision):
        out, low_feat = module(views["high"].to(device), views["low"].to(device))
    feature = out["feature"].float()
    weights = weights or {}
    ce = masked_ce(out["birads"].float(), batch["birads"].to(device), weights.get("birads")) + \
        masked_ce(out["density"].float(), batch["density"].to(device), weights.get("density"))
    kd = relational_kd_loss(teacher_feat, feature, dcfg.kd_temperature, dcfg.kd_direction)
    con = contrastive_structure_loss(feature, low_feat.float(), dcfg.contrastive_temperature)
    bce = masked_bce(out["findings"].float(), batch["findings"].to(device), batch["findings_mask"].to(device))
    loss = dcfg.contrastive_weight * con + dcfg.kd_weight * kd + dcfg.ce_weight * ce + dcfg.findings_weight * bce
    parts = {"ce": ce.item(), "kd": kd.item(), "contrastive": con.item(), "findings_bce": bce.item()}
    if getattr(dcfg, "lesion_map_weight", 0.0) > 0:
        lesion = _lesion_term(out, batch, views, device)
        loss = loss + dcfg.lesion_map_weight * lesion
        parts["lesion_map"] = lesion.item()
    parts["loss"] = loss.item()
    return loss, parts


def _lesion_term(out: dict[str, torch.Tensor], batch: dict[str, Any], views: dict[str, Any],
                 device: torch.device) -> torch.Tensor:
    """The lesion-map loss against the box targets, mirrored where the high view was."""
    target = batch["lesion_map"].to(device)
    flipped = views["high_flipped"].to(device)
    target = torch.where(flipped[:, None, None], target.flip(-1), target)  # follow the high view's mirror
    return lesion_map_loss(out["lesion_map"], target, batch["lesion_map_known"].to(device))
