"""Fixtures shared by the training tests."""
from __future__ import annotations

import sys
from typing import Iterator

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Two shared cores: one intra-op thread is faster and steadier than two under load."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def versamammo_proof(tmp_path_factory) -> dict:
    """The tiny VersaMammo proof run (SSL, probes, distillation, evaluation), once per session:
    its student is also the frozen encoder of the MammoRG proof."""
    import torch

    from training.versamammo.proof import run_proof

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the proofs run alone; the per-test default is one thread
    root = tmp_path_factory.mktemp("versamammo-proof")
    try:
        result = run_proof(root / "run", root / "cache", studies=120, ssl_iterations=240, distill_epochs=8,
                           **{"distill.batch_size_per_rank": 16})
    finally:
        torch.set_num_threads(before)
    result["cache"] = str(root / "cache")
    return result
