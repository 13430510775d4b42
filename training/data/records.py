"""Load the configured data set as image records (``training.data.image_record``), splits assigned.

The one place that knows every source (phantom studies, VinDr-Mammo, a generic CSV manifest); each
source's reader turns its files into the same flat list of ``ImageRecord``.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from training.data.image_record import ImageRecord
from training.data.manifest import manifest_records
from training.data.phantom_records import ensure_phantoms, phantom_records
from training.data.splits import assign_splits
from training.data.vindr import vindr_records

if TYPE_CHECKING:
    from training.config import DataSection

def load_records(data_section: "DataSection") -> list[ImageRecord]:
    """All records of the configured data set, with every record's split assigned.

    ``kind="phantom"`` with ``root`` None generates ``phantom_studies`` studies once into
    ``cache_dir/phantoms-v2-<seed>-<n>-<size>/`` and reuses them. Splits: the source's own where it
    has one (VinDr's test set, a manifest's split column), the rest by ``assign_splits`` with
    ``split_seed``, ``val_fraction`` and ``test_fraction`` (grouped by patient). Phantom
    ``phantom_extra_train_studies`` come after the splits are drawn and all join train, so adding
    training data never moves a validation or test study.
    """
    d = data_section
    if d.kind == "phantom":
        if d.root is not None and d.phantom_extra_train_studies:
            raise ValueError("data.phantom_extra_train_studies needs generated phantoms (data.root unset)")
        root = Path(d.root) if d.root is not None else ensure_phantoms(
            d.cache_dir, d.phantom_studies, d.phantom_seed, d.phantom_size)
        records = phantom_records(root)
    elif d.kind == "vindr":
        if d.root is None:
            raise ValueError("data.root must point at the VinDr-Mammo folder for kind = 'vindr'")
        records = vindr_records(Path(d.root), val_fraction=d.val_fraction, seed=d.split_seed)
    elif d.kind == "manifest":
        if d.root is None:
            raise ValueError("data.root must point at the manifest CSV for kind = 'manifest'")
        records = manifest_records(Path(d.root))
    else:
        raise ValueError(f"unknown data kind {d.kind!r}")
    if not records:
        raise ValueError(f"no images found for data kind {d.kind!r} at {d.root}")
    records = assign_splits(records, d.split_seed, d.val_fraction, d.test_fraction)
    if d.kind == "phantom" and d.phantom_extra_train_studies:
        extra = ensure_phantoms(d.cache_dir, d.phantom_extra_train_studies, d.phantom_seed, d.phantom_size,
                                start=d.phantom_studies)
        records += [replace(r, split="train") for r in phantom_records(extra)]
    return records
