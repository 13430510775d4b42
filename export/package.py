"""Assemble a model package: manifest (with sha256 of every file), optional .tar of the directory.

The on-disk format is defined by ``models.package.manifest`` (the node reads what export writes)
and documented in docs/model-packages.md.
"""
from __future__ import annotations

import shutil
import tarfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from models.report.lexicon import LEXICON_VERSION
from models.package.manifest import Manifest, write_manifest

DEMO_NOTICE = ("DEMONSTRATION MODEL trained on synthetic phantom images: its outputs carry no clinical "
               "meaning. Not for clinical use.")
CLINICAL_NOTICE = ("Preliminary AI output for review by a qualified radiologist; not a diagnosis. "
                   "Validate on local data before use.")


def producer_versions() -> dict[str, str]:
    versions = {}
    for dist in ("mammo-node", "torch", "onnx", "onnxruntime-gpu", "onnxruntime", "transformers", "timm",
                 "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def finish_package(root: Path, name: str, version: str, fields: dict[str, Any], *,
                   training: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   demonstration: bool = False, tar: bool = False) -> tuple[Path, Manifest]:
    """Write ``manifest.json`` for the files the exporter left in ``root``; optionally tar it.

    Returns (the directory, or the .tar beside it; the manifest).
    """
    from export.onnx_io import OPSET

    data = {
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "producer": {"versions": producer_versions(), "onnx_opset": OPSET},
        "lexicon_version": LEXICON_VERSION,
        "demonstration": demonstration,
        "intended_use": DEMO_NOTICE if demonstration else CLINICAL_NOTICE,
        "training": training or {},
        "metrics": metrics or {},
        **fields,
    }
    manifest = write_manifest(root, data)
    if not tar:
        return root, manifest
    archive = root.with_name(root.name + ".tar")
    with tarfile.open(archive, "w") as out:
        out.add(root, arcname=root.name)
    shutil.rmtree(root)
    return archive, manifest
