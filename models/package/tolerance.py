"""Parity between two runs of a graph: what export measured and what a machine computes.

Export (fp32/fp16 against PyTorch) and ``models install/verify`` (the package's golden vectors on
this machine's providers) judge parity with the one function here, with the tolerance the
manifest records per graph.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def tolerance_violation(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: dict[str, Any]) -> str | None:
    """Why ``actual`` is not ``expected`` within ``tolerance`` (a manifest graph's), or None.

    The rule is ``|actual - expected| <= atol' + rtol * |expected|`` element by element, where
    ``atol' = atol`` or, with ``"atol_scale": "absmax"``, ``atol * max(1, max|expected|)``: half
    precision keeps about three significant digits, so its absolute error grows with the size of
    the activations (a feature map reaching 9 is off by ~0.1 somewhere after 100 fp16 layers).
    Export and ``models verify`` both judge parity with this function.
    """
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"{name}: shape {actual.shape} != golden {expected.shape}"
    if not np.isfinite(actual).all():
        return f"{name}: not finite"
    rtol, atol = float(tolerance["rtol"]), float(tolerance["atol"])
    scale = tolerance.get("atol_scale")
    if scale == "absmax":
        atol *= max(1.0, float(np.abs(expected).max()) if expected.size else 1.0)
    elif scale is not None:
        return f"{name}: unknown atol_scale {scale!r} in the manifest's tolerance"
    err = np.abs(actual - expected)
    if (err > atol + rtol * np.abs(expected)).any():
        return f"{name}: max abs error {float(err.max()):.3g} beyond rtol {rtol} / atol {atol:.3g}"
    return None
