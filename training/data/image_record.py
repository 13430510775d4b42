"""Image records: one labelled mammogram, whatever data set it comes from.

Every source (phantom studies, VinDr-Mammo, a generic CSV manifest) is turned into the same
flat list of ``ImageRecord`` so the datasets, the split logic and the training loops never care
where an image came from. Labels are already class indices of ``models.package.labels``; ``None``
means "not labelled" (the loss masks it), never "negative".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class LesionBox:
    """One annotated finding on one image: a VinDr-Mammo / CBIS-DDSM style bounding box.

    Coordinates are in the *source* pixel array of the DICOM file (columns x, rows y; pixel
    edges, ``x1``/``y1`` exclusive), so annotations survive any change of preprocessing.
    ``birads`` is the finding's own category index (models.package.labels) where the annotation has one.
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
    birads: int | None                     # 0-5 (models.package.labels.birads_index); None = unlabelled/dropped
    density: int | None                    # 0-3 (A-D)
    findings: tuple[int, ...] | None       # indices into FINDING_CLASSES present; None = findings unlabelled
    split: str | None = None               # "train" | "val" | "test"; None = not assigned yet
    boxes: tuple[LesionBox, ...] | None = None  # annotated findings; None = no box annotation

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, not {self.split!r}")
