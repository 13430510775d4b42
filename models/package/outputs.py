"""The output names of a VersaMammo package's graph: what export writes and the node reads.

``feature`` (N, D), ``birads`` and ``density`` (softmax probabilities), ``findings`` (sigmoid,
multi-label) and ``feature_grid`` (N, D, G, G) always; ``lesion_map`` (N, G, G) only from a
student with a lesion map (packages without it run unchanged, without CAD marks).
"""
from __future__ import annotations

OUTPUTS: tuple[str, ...] = ("feature", "birads", "density", "findings", "feature_grid")
LESION_MAP = "lesion_map"  # optional output: only packages whose student has a lesion map
