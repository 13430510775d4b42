"""GPU benchmark of the full-size VersaMammo: student inference and training, one teacher SSL step.

    python -m bench.gpu_versamammo [--json OUT] [--quick]

On a CUDA machine, in bf16 autocast:

1. Student (EfficientNet-B5 with the official static padding, 512x512): inference images/s at
   batch 4 and 32, eager and ``torch.compile``, channels-last (the reference point on an H200:
   a compiled channels-last bf16 timm efficientnet_b5 forward took 10 ms for 4 and 22 ms for 32).
2. Student stage-2 training step (batch 28 as the official run: 512 view + 224 low-res view,
   CE + relational KD + contrastive + findings BCE, Adam): images/s and peak memory.
3. Teacher stage-1 step (ViT-B/14, 131072 prototypes in both heads, 2 global 224 + 2 local 98
   crops per image, block masking): seconds per step and peak memory at a per-GPU batch of 32.

It needs only torch and timm besides this repository (plus pydantic for the training config).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def _time(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median milliseconds of ``fn`` (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


def student_inference(quick: bool) -> list[dict[str, Any]]:
    from models.versamammo.checkpoint import build_student, config_for

    cfg = config_for("full")
    student = build_student(cfg).cuda().eval().to(memory_format=torch.channels_last)
    rows = []
    variants = [("eager", student.features)]
    if not quick:
        variants.append(("compiled", torch.compile(student.features)))
    for name, fn in variants:
        for batch in (4, 32):
            x = torch.randn(batch, 3, 512, 512, device="cuda").to(memory_format=torch.channels_last)

            def run() -> None:
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
                    fn(x)

            ms = _time(run, warmup=5 if name == "eager" else 3, iters=20)
            rows.append({"mode": name, "batch": batch, "ms": ms, "images_per_s": batch * 1000 / ms})
            print(f"student inference {name:8s} batch {batch:2d}: {ms:7.2f} ms  {batch * 1000 / ms:8.1f} img/s",
                  flush=True)
    return rows


def student_training(batch: int = 28) -> dict[str, Any]:
    from models.versamammo.checkpoint import build_student, config_for
    from training.versamammo.distill.losses import (
        contrastive_structure_loss, masked_bce, masked_ce, relational_kd_loss,
    )
    from training.versamammo.distill.train import DistillModule

    cfg = config_for("full")
    student = build_student(cfg).cuda().train().to(memory_format=torch.channels_last)
    module = DistillModule(student)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    high = torch.randn(batch, 3, 512, 512, device="cuda").to(memory_format=torch.channels_last)
    low = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    teacher = torch.randn(batch, 768, device="cuda")
    birads = torch.randint(0, 6, (batch,), device="cuda")
    density = torch.randint(0, 4, (batch,), device="cuda")
    findings = torch.randint(0, 2, (batch, 10), device="cuda").float()
    mask = torch.ones(batch, device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, low_feat = module(high, low)
            loss = (contrastive_structure_loss(out["feature"].float(), low_feat.float())
                    + relational_kd_loss(teacher, out["feature"].float())
                    + 10 * (masked_ce(out["birads"].float(), birads) + masked_ce(out["density"].float(), density))
                    + masked_bce(out["findings"].float(), findings, mask))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    torch.cuda.reset_peak_memory_stats()
    ms = _time(step, warmup=3, iters=10)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"student stage-2 step batch {batch}: {ms:.1f} ms  {batch * 1000 / ms:.1f} img/s  peak {peak:.1f} GiB",
          flush=True)
    del student, module, optimizer
    torch.cuda.empty_cache()
    return {"batch": batch, "ms": ms, "images_per_s": batch * 1000 / ms, "peak_gib": peak}


def teacher_ssl_step(batch: int = 32) -> dict[str, Any]:
    from models.versamammo.checkpoint import config_for
    from training.config import SSLSection
    from training.versamammo.ssl.augment import AugmentConfig, MultiCropAugmentation
    from training.versamammo.ssl.masking import SSLCollate
    from training.versamammo.ssl.meta_arch import SSLMetaArch

    model_cfg = config_for("full")
    ssl_cfg = SSLSection()
    meta = SSLMetaArch(model_cfg, ssl_cfg).cuda().train()
    optimizer = torch.optim.AdamW([p for p in meta.student.parameters() if p.requires_grad], lr=1e-4)
    augment = MultiCropAugmentation(AugmentConfig.from_configs(ssl_cfg, model_cfg))
    collate = SSLCollate(model_cfg.teacher_patch, model_cfg.teacher_global, ssl_cfg.mask_sample_probability,
                         ssl_cfg.mask_ratio_min, ssl_cfg.mask_ratio_max)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(batch):
        image = rng.integers(0, 255, (256, 256), dtype=np.uint8)
        samples.append({**augment(image, torch.Generator().manual_seed(i)), "seed": i})
    cpu_batch = collate(samples)
    gpu_batch = {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in cpu_batch.items()}

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = meta(gpu_batch, 0.04)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meta.update_teacher(0.994)

    torch.cuda.reset_peak_memory_stats()
    ms = _time(step, warmup=2, iters=5)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"teacher SSL step batch {batch} (2x224 + 2x98 crops): {ms:.1f} ms  "
          f"{batch * 1000 / ms:.1f} img/s  peak {peak:.1f} GiB", flush=True)
    return {"batch": batch, "ms": ms, "images_per_s": batch * 1000 / ms, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for GPU machines")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    print(f"{result['device']}, torch {result['torch']}", flush=True)
    sections = [("student_training", student_training), ("teacher_ssl_step", teacher_ssl_step),
                ("student_inference", lambda: student_inference(args.quick))]
    for name, fn in sections:
        started = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as exc:  # report and go on: one failing part must not hide the others
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name} failed: {exc}", flush=True)
        torch.cuda.empty_cache()
        print(f"  ({name} took {time.perf_counter() - started:.0f} s)", flush=True)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
