"""Shared fixtures for the whole suite."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_packages(tmp_path_factory):
    """Small random-weight packages, built once: two VersaMammo versions (one as .tar), one MammoRG."""
    from tests.packages import build_mammorg_package, build_versamammo_package

    root = tmp_path_factory.mktemp("packages")
    return {
        "vm1": build_versamammo_package(root / "vm1", "1.0.0", seed=0),
        "vm2": build_versamammo_package(root / "vm2", "2.0.0", seed=1, tar=True),
        "rg1": build_mammorg_package(root / "rg1", "1.0.0", seed=0),
    }
