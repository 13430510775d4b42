"""Image records: one labelled mammogram, whatever data set it comes from.

Every source (phantom studies, VinDr-Mammo, a generic CSV manifest) is turned into the same
flat list of ``ImageRecord`` so the datasets, the split logic and the training loops never care
where an image came from. Labels are already class indices of ``models.labels``; ``None``
means "not labelled" (the loss masks it), never "negative".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.config import DataSection

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LesionBox:
    """One annotated finding on one image: a VinDr-Mammo / CBIS-DDSM style bounding box.

    Coordinates are in the *source* pixel array of the DICOM file (columns x, rows y; pixel
    edges, ``x1``/``y1`` exclusive), so annotations survive any change of preprocessing.
    ``birads`` is the finding's own category index (models.labels) where the annotation has one.
    """

    finding: int                           # index into FINDING_CLASSES
    x0: float
    y0: float
    x1: float
    y1: float
    birads: int | None = None

    def __post_init__(self) -> None:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"empty lesion box {(self.x0, self.y0, self.x1, self.y1)}")


@dataclass(frozen=True)
class ImageRecord:
    """One image and its labels. ``split`` is None until assigned (``assign_splits``)."""

    path: Path
    study_id: str
    patient_id: str
    laterality: str                        # "L" | "R"
    view: str                              # "CC" | "MLO" | ...
    birads: int | None                     # 0-5 (models.labels.birads_index); None = unlabelled/dropped
    density: int | None                    # 0-3 (A-D)
    findings: tuple[int, ...] | None       # indices into FINDING_CLASSES present; None = findings unlabelled
    split: str | None = None               # "train" | "val" | "test"; None = not assigned yet
    boxes: tuple[LesionBox, ...] | None = None  # annotated findings; None = no box annotation

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, not {self.split!r}")


def load_records(data_section: "DataSection") -> list[ImageRecord]:
    """All records of the configured data set, with every record's split assigned.

    ``kind="phantom"`` with ``root`` None generates ``phantom_studies`` studies once into
    ``cache_dir/phantoms-v2-<seed>-<n>-<size>/`` and reuses them. Splits: the source's own where it
    has one (VinDr's test set, a manifest's split column), the rest by ``assign_splits`` with
    ``split_seed``, ``val_fraction`` and ``test_fraction`` (grouped by patient).
    """
    from training.data.splits import assign_splits

    d = data_section
    if d.kind == "phantom":
        from training.data.phantom_records import ensure_phantoms, phantom_records

        root = Path(d.root) if d.root is not None else ensure_phantoms(
            d.cache_dir, d.phantom_studies, d.phantom_seed, d.phantom_size)
        records = phantom_records(root)
    elif d.kind == "vindr":
        from training.data.vindr import vindr_records

        if d.root is None:
            raise ValueError("data.root must point at the VinDr-Mammo folder for kind = 'vindr'")
        records = vindr_records(Path(d.root), val_fraction=d.val_fraction, seed=d.split_seed)
    elif d.kind == "manifest":
        from training.data.manifest import manifest_records

        if d.root is None:
            raise ValueError("data.root must point at the manifest CSV for kind = 'manifest'")
        records = manifest_records(Path(d.root))
    else:
        raise ValueError(f"unknown data kind {d.kind!r}")
    if not records:
        raise ValueError(f"no images found for data kind {d.kind!r} at {d.root}")
    return assign_splits(records, d.split_seed, d.val_fraction, d.test_fraction)
