"""MammoRG in PyTorch: configuration (``config``, torch-free), the knowledge graph's edges
(``edges``, torch-free) and modules (``knowledge``), and the model (``model``). Never imported by
the node. Empty on purpose: importing ``models.mammorg.config`` must not load torch.
"""
