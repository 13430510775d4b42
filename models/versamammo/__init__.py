"""VersaMammo in PyTorch: configuration (``config``, torch-free), the EfficientNet student
(``student``), the ViT teacher (``teacher``), TF-"SAME" padding for export (``padding``), the
official checkpoint formats (``official``) and our checkpoints (``checkpoint``). Never imported by
the node. Empty on purpose: importing ``models.versamammo.config`` must not load torch.
"""
