"""Stage 1 of VersaMammo: DINOv2-style self-distillation of the ViT teacher.

Modules: ``augment`` (multi-crop), ``masking`` (iBOT block masks, collate), ``losses`` (DINO,
iBOT, KoLeo, centering / Sinkhorn-Knopp), ``meta_arch`` (student + EMA teacher), ``data``
(images, deterministic batch sampler), ``train`` (``run_ssl``), ``probe`` (``linear_probe``).
``python -m training.versamammo.ssl`` (or ``torchrun ... -m training.versamammo.ssl``) runs
``run_ssl``. See docs/training-ssl.md.
"""
