"""Stage-1 training loop: ``run_ssl(cfg) -> Path`` (the final teacher checkpoint, our format).

Single process (``python -m training.versamammo.ssl --config FILE``) or under torchrun
(``torchrun --nproc_per_node=N -m training.versamammo.ssl --config FILE``): NCCL on GPUs,
gloo on CPUs. The student is wrapped in DDP (or, with ``ssl.use_fsdp`` under torchrun,
student and teacher are sharded with FSDP2, also with gloo on CPUs), the teacher follows it
by EMA.

Outputs in ``run.out_dir/ssl/``:

* ``checkpoint_<iteration>.pt``: full training state (training/checkpoint.py), written
  atomically every ``run.checkpoint_every`` iterations and at each epoch end; the newest
  ``ssl.keep_checkpoints`` are kept. Starting the same run again resumes from the newest one
  and continues bit for bit (same batches, same RNG streams, same optimiser state).
* ``metrics.jsonl``: one record every ``run.log_every`` iterations (and the last).
* ``teacher_final.pt``: the EMA teacher in our format (``models.versamammo.checkpoint.load_checkpoint``).
* ``teacher_checkpoint.pth``: the same weights as ``{"teacher": state_dict}`` with DINOv2 key
  names (block chunks of 4), which ``models.versamammo.checkpoint.load_official_teacher`` and the
  official DINOv2 code read.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from training import distributed as du
from training.checkpoint import (
    atomic_torch_save,
    checkpoint_path,
    gather_model_state,
    latest_checkpoint,
    load_training_state,
    prune_checkpoints,
    save_training_state,
)
from training.metrics_log import MetricsLogger
from training.schedules import Schedule, cosine_schedule, linear_warmup_constant
from training.versamammo.ssl.augment import AugmentConfig, MultiCropAugmentation
from training.data.sampling import SeededBatchSampler
from training.versamammo.ssl.data import SSLDataset, build_image_source
from training.versamammo.ssl.masking import SSLCollate
from training.versamammo.ssl.meta_arch import SSLMetaArch, StudentForward, last_layer_parameters
from training.config import SSLSection, TrainConfig
from training.loop import autocast, effective_precision
from models.versamammo.config import VersaMammoConfig

log = logging.getLogger(__name__)

TEACHER_FINAL = "teacher_final.pt"
TEACHER_OFFICIAL = "teacher_checkpoint.pth"
METRICS = "metrics.jsonl"
OFFICIAL_BLOCK_CHUNKS = 4


# ------------------------------------------------------------------------------ schedules
@dataclass
class SSLSchedules:
    lr: Schedule
    last_layer_lr: Schedule
    wd: Schedule
    momentum: Schedule
    teacher_temp: Schedule
    peak_lr: float
    total_iterations: int


def peak_learning_rate(ssl_cfg: SSLSection, world_size: int) -> float:
    """``base_lr * sqrt(total batch / 1024)`` (DINOv2's ``sqrt_wrt_1024`` scaling rule)."""
    return float(ssl_cfg.base_lr) * math.sqrt(ssl_cfg.batch_size_per_rank * world_size / 1024.0)


def build_schedules(ssl_cfg: SSLSection, world_size: int) -> SSLSchedules:
    ipe = int(ssl_cfg.iterations_per_epoch)
    total = int(ssl_cfg.epochs) * ipe
    peak = peak_learning_rate(ssl_cfg, world_size)
    lr = cosine_schedule(peak, ssl_cfg.min_lr, total, warmup_iters=ssl_cfg.warmup_epochs * ipe)
    last = cosine_schedule(peak, ssl_cfg.min_lr, total, warmup_iters=ssl_cfg.warmup_epochs * ipe)
    freeze = min(total, ssl_cfg.freeze_last_layer_epochs * ipe)
    last.values[:freeze] = 0.0
    return SSLSchedules(
        lr=lr, last_layer_lr=last,
        wd=cosine_schedule(ssl_cfg.weight_decay, ssl_cfg.weight_decay_end, total),
        momentum=cosine_schedule(ssl_cfg.momentum_teacher, ssl_cfg.final_momentum_teacher, total),
        teacher_temp=linear_warmup_constant(ssl_cfg.warmup_teacher_temp, ssl_cfg.warmup_teacher_temp_final, total,
                                            ssl_cfg.warmup_teacher_temp_epochs * ipe),
        peak_lr=peak, total_iterations=total,
    )


# ------------------------------------------------------------------------------ optimiser
_TOKENS = ("cls_token", "pos_embed", "mask_token", "register_tokens")


def layer_decay_rate(name: str, decay: float, n_blocks: int) -> float:
    """DINOv2 layer-wise lr decay: tokens/patch embed layer 0, block i layer i+1, rest n+1."""
    layer_id = n_blocks + 1
    if name.startswith("backbone."):
        rest = name[len("backbone."):]
        if rest.startswith(("patch_embed",) + _TOKENS):
            layer_id = 0
        elif rest.startswith("blocks."):
            layer_id = int(rest.split(".")[1]) + 1
    return decay ** (n_blocks + 1 - layer_id)


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norms, LayerScale gammas, other 1-D parameters, CLS/mask tokens and the positional embedding."""
    leaf = name.rsplit(".", 1)[-1]
    return (name.endswith(".bias") or "norm" in name or leaf == "gamma" or param.ndim <= 1 or leaf in _TOKENS)


def param_groups(student: nn.Module, ssl_cfg: SSLSection) -> list[dict[str, Any]]:
    """AdamW groups keyed by (lr multiplier, weight-decay multiplier, is last layer), fixed order."""
    n_blocks = len(getattr(student.backbone, "blocks", []))
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        lr_mult = layer_decay_rate(name, float(ssl_cfg.layerwise_decay), n_blocks)
        if "patch_embed" in name:
            lr_mult *= float(ssl_cfg.patch_embed_lr_mult)
        wd_mult = 0.0 if no_weight_decay(name, p) else 1.0
        is_last = ".last_layer." in f".{name}"
        key = (lr_mult, wd_mult, is_last)
        if key not in groups:
            groups[key] = {"params": [], "lr_multiplier": lr_mult, "wd_multiplier": wd_mult, "is_last_layer": is_last}
        groups[key]["params"].append(p)
    return list(groups.values())


def apply_schedules(optimizer: torch.optim.Optimizer, sched: SSLSchedules, it: int) -> None:
    lr, last_lr, wd = sched.lr[it], sched.last_layer_lr[it], sched.wd[it]
    for g in optimizer.param_groups:
        g["lr"] = (last_lr if g["is_last_layer"] else lr) * g["lr_multiplier"]
        g["weight_decay"] = wd * g["wd_multiplier"]


# --------------------------------------------------------------------------- model helpers
def official_teacher_state(state: dict[str, torch.Tensor], depth: int,
                           block_chunks: int = OFFICIAL_BLOCK_CHUNKS) -> dict[str, torch.Tensor]:
    """Our teacher keys -> DINOv2's (``backbone.blocks.<i>`` -> ``backbone.blocks.<chunk>.<i>``)."""
    if block_chunks <= 1 or depth % block_chunks:
        return dict(state)
    per_chunk = depth // block_chunks
    out = {}
    for k, v in state.items():
        if k.startswith("backbone.blocks."):
            parts = k.split(".")
            i = int(parts[2])
            k = ".".join(["backbone", "blocks", str(i // per_chunk), str(i)] + parts[3:])
        out[k] = v
    return out


def _load_init_weights(meta: SSLMetaArch, path: Path, model_cfg: VersaMammoConfig) -> None:
    from models.versamammo.checkpoint import load_checkpoint, load_official_teacher, read_checkpoint

    try:
        read_checkpoint(path)
        source = load_checkpoint(path, kind="teacher")
    except ValueError:
        source = load_official_teacher(path, model_cfg)
    state = source.state_dict()
    meta.student.load_state_dict(state)
    meta.teacher.load_state_dict(state)


def _shard_fsdp(meta: SSLMetaArch, precision: str) -> None:
    """FSDP2 over student and teacher, each block its own unit. The student is SHARD_GRAD_OP-like
    (parameters stay gathered between forward and backward), as the official run configured FSDP."""
    import warnings

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # the backbone returns CLS/patch views of one tensor; nothing modifies them in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    # the teacher has no backward pass: it must reshard right after its forward, or its
    # parameters would stay gathered (and unsharded for the EMA update)
    for model, reshard in ((meta.student, False), (meta.teacher, True)):
        for block in model.backbone.blocks:
            fully_shard(block, mp_policy=mp, reshard_after_forward=reshard)
        for part in (model.backbone, model.dino_head, model.ibot_head):
            fully_shard(part, mp_policy=mp, reshard_after_forward=reshard)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _progress(enabled: bool, total: int, start: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("ssl"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), disable=not enabled, transient=False)
    task = progress.add_task("ssl", total=total, completed=start, info="")
    return progress, task


# ----------------------------------------------------------------------------------- run
def run_ssl(cfg: TrainConfig, *, max_iterations: int | None = None) -> Path:
    """Train (or resume) stage 1 for the run ``cfg`` (a ``training.config.TrainConfig``).

    Returns ``out_dir/ssl/teacher_final.pt`` (written at ``epochs * iterations_per_epoch``
    iterations, or at ``ssl.stop_at_iteration``). ``max_iterations`` stops once that many
    iterations are done in total, after writing a checkpoint (a simulated pre-emption; the
    next call resumes), and then returns the checkpoint's path instead.
    """
    # FSDP needs a process group even for one rank (torchrun --nproc_per_node=1)
    had_group = du.is_dist()
    info = du.init_distributed(cfg.run.device, cfg.run.distributed_backend,
                               force=bool(cfg.ssl.use_fsdp) and "WORLD_SIZE" in os.environ)
    created_group = info.distributed and not had_group
    try:
        return _run(cfg, info, max_iterations)
    finally:
        if created_group:
            du.barrier()
            du.cleanup()


def _run(cfg: TrainConfig, info: du.DistInfo, max_iterations: int | None) -> Path:
    from models.versamammo.checkpoint import build_teacher, config_for, save_checkpoint

    ssl = cfg.ssl
    out_dir = Path(cfg.run.out_dir) / "ssl"
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    du.barrier()
    device = info.device
    precision = effective_precision(cfg.run.precision, device)
    use_fsdp = bool(ssl.use_fsdp) and info.distributed
    if ssl.use_fsdp and not use_fsdp:
        log.warning("ssl.use_fsdp needs a process group (launch with torchrun); running without FSDP")

    ckpt = latest_checkpoint(out_dir)
    model_cfg = config_for(cfg.model.size)
    # same initial weights on every rank, then a different RNG stream per rank
    torch.manual_seed(cfg.run.seed)
    meta = SSLMetaArch(model_cfg, ssl)
    if ssl.init_checkpoint is not None and ckpt is None:
        _load_init_weights(meta, Path(ssl.init_checkpoint), model_cfg)
    du.seed_everything(cfg.run.seed, info.rank)
    meta.to(device)

    if use_fsdp:
        _shard_fsdp(meta, precision)
    elif info.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            StudentForward(meta.student), device_ids=[device.index] if device.type == "cuda" else None)
        meta.set_student_forward(ddp)

    optimizer = torch.optim.AdamW(param_groups(meta.student, ssl), lr=0.0, betas=(0.9, 0.999))
    fp16 = precision == "fp16" and device.type == "cuda"
    if use_fsdp and fp16:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler: Any = ShardedGradScaler(enabled=True)
    else:
        scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    sched = build_schedules(ssl, info.world_size)
    total = sched.total_iterations

    start = 0
    if ckpt is not None:
        state = load_training_state(ckpt, model=meta, optimizer=optimizer, scaler=scaler)
        start = int(state["iteration"])
        if state.get("world_size") != info.world_size and info.is_main:
            log.warning("resuming a run checkpointed with world size %s on %s ranks: the batches differ "
                        "from an uninterrupted run", state.get("world_size"), info.world_size)
        log.info("resumed from %s at iteration %d", ckpt, start)
    end = total if ssl.stop_at_iteration is None else min(total, int(ssl.stop_at_iteration))
    stop = end if max_iterations is None else min(end, int(max_iterations))

    last_ckpt: Path | None = ckpt
    if start < stop:
        last_ckpt = _train_loop(cfg, info, meta, optimizer, scaler, sched, model_cfg, out_dir, start, stop,
                                precision, use_fsdp) or last_ckpt
    if stop < end:
        return last_ckpt if last_ckpt is not None else out_dir

    # final exports: the EMA teacher in our format and in the official one
    teacher_state = gather_model_state(meta.teacher)
    final = out_dir / TEACHER_FINAL
    if info.is_main:
        teacher = build_teacher(model_cfg, drop_path_rate=0.0)
        teacher.load_state_dict(teacher_state)
        tmp = out_dir / f".{TEACHER_FINAL}.tmp"
        save_checkpoint(teacher, tmp, extra={"stage": "ssl", "iterations": int(end), "epochs": int(ssl.epochs),
                                             "seed": int(cfg.run.seed), "world_size": int(info.world_size)})
        os.replace(tmp, final)
        depth = len(teacher.backbone.blocks)
        atomic_torch_save({"teacher": official_teacher_state(teacher.state_dict(), depth)}, out_dir / TEACHER_OFFICIAL)
    du.barrier()
    return final


def _train_loop(cfg: TrainConfig, info: du.DistInfo, meta: SSLMetaArch, optimizer: torch.optim.Optimizer, scaler: Any,
                sched: SSLSchedules, model_cfg: VersaMammoConfig, out_dir: Path, start: int, stop: int,
                precision: str, use_fsdp: bool) -> Path | None:
    ssl = cfg.ssl
    device = info.device
    ipe = int(ssl.iterations_per_epoch)
    total = sched.total_iterations

    source = build_image_source(cfg, "train")
    augmentation = MultiCropAugmentation(AugmentConfig.from_configs(ssl, model_cfg))
    sampler = SeededBatchSampler(len(source), ssl.batch_size_per_rank, stop, seed=cfg.run.seed, rank=info.rank,
                              world_size=info.world_size, start_iteration=start)
    collate = SSLCollate(model_cfg.teacher_patch, model_cfg.teacher_global, ssl.mask_sample_probability,
                         ssl.mask_ratio_min, ssl.mask_ratio_max)
    loader = DataLoader(SSLDataset(source, augmentation), batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.run.num_workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.run.seed),
                        persistent_workers=False)

    last_layer = last_layer_parameters(meta.student)
    clip_parts = [meta.student.backbone, meta.student.dino_head, meta.student.ibot_head]
    metrics = MetricsLogger(out_dir / "metrics.jsonl", resume_from=start)
    config_json = cfg.model_dump(mode="json")
    progress, task = _progress(info.is_main, stop, start)
    last_ckpt: Path | None = None
    meta.train()
    images_per_iter = ssl.batch_size_per_rank * info.world_size
    t_last = time.perf_counter()
    try:
        with progress:
            for it, batch in zip(range(start, stop), loader):
                epoch = it // ipe
                batch = _to_device(batch, device)
                apply_schedules(optimizer, sched, it)
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    loss, parts = meta(batch, sched.teacher_temp[it])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite SSL loss at iteration {it}: {float(loss)}")
                scaler.scale(loss).backward()
                if epoch < ssl.freeze_last_layer_epochs:
                    for p in last_layer:
                        p.grad = None
                if ssl.clip_grad and ssl.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    for part in clip_parts:
                        torch.nn.utils.clip_grad_norm_(part.parameters(), ssl.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                meta.update_teacher(sched.momentum[it])

                done = it + 1
                now = time.perf_counter()
                dt = now - t_last
                t_last = now
                if done % cfg.run.log_every == 0 or done == stop or it == start:
                    values = du.reduce_dict_mean({k: float(v) for k, v in parts.items()})
                    record = {"iteration": it, "epoch": epoch, **values,
                              "lr": sched.lr[it], "last_layer_lr": sched.last_layer_lr[it], "wd": sched.wd[it],
                              "momentum": sched.momentum[it], "teacher_temp": sched.teacher_temp[it],
                              "images_per_s": images_per_iter / max(dt, 1e-9), "iter_time_s": dt}
                    if device.type == "cuda":
                        record["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    metrics.log(record)
                    progress.update(task, info=f"loss {values['loss']:.4f}")
                progress.update(task, completed=done)

                boundary = (cfg.run.checkpoint_every and done % cfg.run.checkpoint_every == 0) or done % ipe == 0
                if boundary or done == stop:
                    path = checkpoint_path(out_dir, done)
                    save_training_state(path, model=meta, optimizer=optimizer, scaler=scaler, iteration=done,
                                        epoch=done // ipe, config=config_json,
                                        extra={"stage": "ssl", "total_iterations": total},
                                        check_replicas=info.distributed and not use_fsdp)
                    last_ckpt = path
                    if info.is_main:
                        prune_checkpoints(out_dir, ssl.keep_checkpoints)
                    t_last = time.perf_counter()  # checkpoint time is not training throughput
    finally:
        metrics.close()
    return last_ckpt
