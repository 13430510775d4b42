"""Run a package's golden vectors on this machine's providers: does it compute what export saw?

``models install`` and ``models verify`` call ``check_golden``. A package whose graphs load but
compute something else here (a broken provider, a truncated external-data file that still
parses, a different ORT build) is refused with the output and the error size.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.package.manifest import Manifest
from models.package.tolerance import tolerance_violation
from node.inference.session import SessionSettings


def check_golden(root: Path, manifest: Manifest, settings: SessionSettings) -> list[str]:
    """Problems found running the golden vectors (empty list = the package reproduces them)."""
    golden = manifest.data.get("golden", {}).get("file")
    if not golden:
        return ["the manifest names no golden vectors"]
    data = np.load(Path(root) / golden)
    if manifest.kind == "versamammo":
        return _check_versamammo(root, manifest, settings, data)
    return _check_mammorg(root, manifest, settings, data)


def _check_versamammo(root: Path, manifest: Manifest, settings: SessionSettings, data) -> list[str]:
    from models.package.outputs import LESION_MAP, OUTPUTS
    from node.inference.versamammo import VersaMammoRunner

    problems = []
    for role, graph in manifest.graphs.items():
        precision = graph.get("precision", "fp32")
        runner = VersaMammoRunner(root, manifest, settings, precision=precision, warm_up=False)
        result = runner.run(data["image"])
        tol = graph.get("tolerance", {"rtol": 1e-3, "atol": 1e-3})
        names = list(OUTPUTS)
        if runner.has_lesion_map or f"expected.{LESION_MAP}" in data:  # both must have it
            names.append(LESION_MAP)
        for name in names:
            if f"expected.{name}" not in data or getattr(result, name) is None:
                problems.append(f"{graph['file']}: {name}: in the graph or the golden vectors, not both")
                continue
            issue = tolerance_violation(name, data[f"expected.{name}"], getattr(result, name), tol)
            if issue:
                problems.append(f"{graph['file']}: {issue}")
    return problems


def _check_mammorg(root: Path, manifest: Manifest, settings: SessionSettings, data) -> list[str]:
    from node.inference.mammorg import MammoRGRunner

    runner = MammoRGRunner(root, manifest, settings, warm_up=False)
    tol = manifest.graphs["prefix"].get("tolerance", {"rtol": 1e-3, "atol": 1e-3})
    problems = []
    issue = tolerance_violation("context", data["expected.context"], runner.context(data["views"], data["present"]),
                                tol)
    if issue:
        problems.append(f"{manifest.graphs['prefix']['file']}: {issue}")
    expected = [[int(t) for t in row if t >= 0] for row in data["expected.token_ids"]]
    got = runner.generate_ids(data["views"], data["present"])
    for i, (want, have) in enumerate(zip(expected, got)):
        if want != have:
            same = next((j for j, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
            problems.append(f"greedy report of golden study {i} differs from export from token {same} "
                            f"({len(have)} vs {len(want)} tokens)")
    return problems
