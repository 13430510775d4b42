"""The demonstration model packages shipped in the repository, under ``deploy/demo-models/``.

``mammo-node models bootstrap-demo`` installs them when they are there for the current
``models.package.demo.DEMO_VERSION`` (``deploy/demo-models/<name>@<version>/``, one normal model
package per kind), so a node gets demo models without torch and without training. Torch-free:
this looks at files only; the registry checks the packages (sha256s, golden vectors) when it
installs them.
"""
from __future__ import annotations

import os
from pathlib import Path

from models.package.demo import DEMO_VERSION, NAMES
from models.package.manifest import MANIFEST

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DIR = REPO_ROOT / "deploy" / "demo-models"
ENV = "MAMMO_NODE_DEMO_MODELS_DIR"  # another directory in the same layout (tests, unpacked releases)


def demo_version() -> str:
    return DEMO_VERSION


def demo_refs() -> dict[str, str]:
    """``{kind: NAME@VERSION}`` of the demo packages of the current recipe."""
    return {kind: f"{name}@{DEMO_VERSION}" for kind, name in NAMES.items()}


def shipped_root(root: Path | None = None) -> Path:
    """``root``, else ``$MAMMO_NODE_DEMO_MODELS_DIR``, else the repository's ``deploy/demo-models``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV)
    return Path(env) if env else SHIPPED_DIR


def shipped_packages(root: Path | None = None) -> dict[str, Path] | None:
    """``{kind: package directory}`` when ``root`` (see ``shipped_root``) holds the demo package of
    every kind for the current ``DEMO_VERSION``; None otherwise (none, one kind only, another version)."""
    base = shipped_root(root)
    dirs = {kind: base / ref for kind, ref in demo_refs().items()}
    if all((d / MANIFEST).is_file() for d in dirs.values()):
        return dirs
    return None


def shipped_listing(root: Path | None = None) -> list[str]:
    """Names of the package directories in ``root`` whatever their version (for error messages)."""
    base = shipped_root(root)
    if not base.is_dir():
        return []
    return sorted(p.parent.name for p in base.glob(f"*/{MANIFEST}"))
