"""The CAD mark threshold a VersaMammo package ships with, chosen on annotated validation images.

A lesion map's sigmoid is not a false-mark rate: at 0.5 the demo student 3.0.0 made more than one
false mark per image (bench.froc), a mark on most normal breasts. Mammography CAD states its
operating point in false marks per image, so the package's ``localization.mark_threshold`` is the
lowest threshold at which the node's own mark extraction (``node.marks.image_marks``) makes at most
``fp_per_image`` false marks per validation image (a mark is true when its centre lies in a
lesion's box, as in bench.froc). What it gave is recorded beside it (``operating_point``); a site
can still choose its own with ``[results] mark_threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pydicom
import torch

from models.preprocess import PreprocessConfig, normalize, prepare_uint8
from models.preprocess.geometry import ModelGeometry
from models.versamammo.checkpoint import VersaMammoStudent
from node.marks import image_marks
from training.data.image_record import ImageRecord

DEFAULT_FP_PER_IMAGE = 0.5
CANDIDATES_PER_IMAGE = 8


@dataclass(frozen=True)
class Candidates:
    """One image's candidate marks (score, centre x, centre y in source pixels) and lesion boxes."""

    marks: tuple[tuple[float, float, float], ...]
    boxes: tuple[tuple[float, float, float, float], ...]


def _hits(mark: tuple[float, float, float], box: Sequence[float]) -> bool:
    _, x, y = mark
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def operating_point(images: Sequence[Candidates], threshold: float) -> dict[str, float]:
    """False marks per image and lesion sensitivity (a lesion counts once per image it is boxed on)
    when every candidate scoring at least ``threshold`` becomes a mark."""
    false, found, lesions = 0, 0, 0
    for image in images:
        kept = [m for m in image.marks if m[0] >= threshold]
        false += sum(1 for m in kept if not any(_hits(m, b) for b in image.boxes))
        lesions += len(image.boxes)
        found += sum(1 for b in image.boxes if any(_hits(m, b) for m in kept))
    return {"threshold": float(threshold), "fp_per_image": false / max(1, len(images)),
            "sensitivity": found / lesions if lesions else float("nan")}


def choose_threshold(images: Sequence[Candidates], fp_per_image: float = DEFAULT_FP_PER_IMAGE) -> dict[str, float]:
    """The lowest candidate score whose operating point keeps at most ``fp_per_image`` false marks
    per image (false marks only fall as the threshold rises); 1.0 when even the strongest mark is
    too many (then the node marks nothing)."""
    best = {"threshold": 1.0, "fp_per_image": 0.0, "sensitivity": 0.0}
    for score in sorted({m[0] for image in images for m in image.marks}, reverse=True):
        point = operating_point(images, score)
        if point["fp_per_image"] > fp_per_image:
            break
        best = point
    return best


def student_candidates(student: VersaMammoStudent, records: Sequence[ImageRecord], pre: PreprocessConfig,
                       batch: int = 16) -> list[Candidates]:
    """Every record's candidate marks from the student's lesion map (torch, fp32), through the node's
    preprocessing and mark extraction, with the record's boxes."""
    prepared = []
    for record in records:
        image = prepare_uint8(pydicom.dcmread(record.path), pre)
        prepared.append((record, image, ModelGeometry.of(image, pre)))
    student = student.float().eval()
    out: list[Candidates] = []
    for start in range(0, len(prepared), batch):
        chunk = prepared[start:start + batch]
        x = torch.from_numpy(np.stack([normalize(p[1].image, pre) for p in chunk]))
        with torch.no_grad():
            maps = student.lesion_map(student.feature_grid(x)).sigmoid().numpy()
        for (record, image, geometry), prob in zip(chunk, maps):
            marks = image_marks(f"{record.laterality}-{record.view}", prob, geometry, tuple(x.shape[2:]),
                                image.source_shape, None, (), 1e-6, CANDIDATES_PER_IMAGE)
            boxes = tuple((b.x0, b.y0, b.x1, b.y1) for b in record.boxes or ())
            out.append(Candidates(tuple((m.score, m.center[0], m.center[1]) for m in marks), boxes))
    return out


def mark_threshold_on(student: VersaMammoStudent, records: Sequence[ImageRecord], pre: PreprocessConfig,
                      fp_per_image: float = DEFAULT_FP_PER_IMAGE) -> dict[str, Any]:
    """``{"mark_threshold", "operating_point": {...}}`` for a package's ``localization``."""
    images = student_candidates(student, records, pre)
    point = choose_threshold(images, fp_per_image)
    return {"mark_threshold": point["threshold"],
            "operating_point": {"target_fp_per_image": fp_per_image, "fp_per_image": round(point["fp_per_image"], 4),
                                "sensitivity": round(point["sensitivity"], 4), "images": len(images),
                                "lesions": sum(len(i.boxes) for i in images), "split": "val",
                                "hit": "mark centre inside the lesion's box"}}
