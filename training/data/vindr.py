"""Records from the VinDr-Mammo release layout (PhysioNet).

    root/breast-level_annotations.csv   study_id, series_id, image_id, laterality, view_position,
                                        height, width, breast_birads ("BI-RADS 1".."BI-RADS 5"),
                                        breast_density ("DENSITY A".."DENSITY D"), split ("training"/"test")
    root/finding_annotations.csv        image_id, finding_categories ("['Mass', 'Suspicious Calcification']"
                                        or "['No Finding']"), finding_birads, xmin, ymin, xmax, ymax
                                        (pixels of the DICOM image; empty for "No Finding"), one row per finding
    root/images/<study_id>/<image_id>.dicom

VinDr-Mammo has one study per patient and no separate patient column, so the study is the
patient for split grouping. Its own split is kept: "test" stays test, and validation is carved
out of "training" deterministically by study (same rule as ``assign_splits``), so the official
test set is never touched.
"""
from __future__ import annotations

import ast
import csv
from collections import defaultdict
from pathlib import Path

from models.package.labels import birads_index, density_index, finding_index
from training.data.image_record import ImageRecord, LesionBox
from training.data.splits import assign_splits

NO_FINDING = "no finding"


def parse_categories(text: str) -> list[str]:
    """``"['Mass', 'Suspicious Calcification']"`` -> names (a Python list literal, read safely)."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = [part.strip(" '\"") for part in text.strip("[]").split(",")]
    if isinstance(value, str):
        value = [value]
    return [str(v).strip() for v in value if str(v).strip()]


def _box(row: dict[str, str], finding: int) -> LesionBox | None:
    """The row's box (xmin..ymax) for one of its categories; None where it has none."""
    try:
        x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (KeyError, TypeError, ValueError):
        return None
    if not (x1 > x0 and y1 > y0):          # NaN or empty boxes compare False
        return None
    return LesionBox(finding, x0, y0, x1, y1, birads_index(row.get("finding_birads")))


def _annotations_by_image(path: Path) -> tuple[dict[str, set[int]], dict[str, list[LesionBox]]]:
    """Finding class indices and lesion boxes per image_id. Images listed only with "No Finding"
    get an empty set; a box with several categories counts once per category."""
    findings: dict[str, set[int]] = defaultdict(set)
    boxes: dict[str, list[LesionBox]] = defaultdict(list)
    if not path.is_file():
        return findings, boxes
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            image = row["image_id"].strip()
            found = findings[image]
            for name in parse_categories(row.get("finding_categories", "")):
                if name.lower() == NO_FINDING:
                    continue
                index = finding_index(name)
                if index is None:
                    raise ValueError(f"{path.name}: unknown finding category {name!r} (image {row['image_id']})")
                found.add(index)
                box = _box(row, index)
                if box is not None:
                    boxes[image].append(box)
    return findings, boxes


def vindr_records(root: Path, val_fraction: float = 0.1, seed: int = 0) -> list[ImageRecord]:
    """One record per image of breast-level_annotations.csv; findings None for images absent from
    finding_annotations.csv. "training" -> train/val (``val_fraction`` of the studies), "test" -> test."""
    root = Path(root)
    findings, boxes = _annotations_by_image(root / "finding_annotations.csv")
    has_findings_file = (root / "finding_annotations.csv").is_file()
    records = []
    with (root / "breast-level_annotations.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            study, image = row["study_id"].strip(), row["image_id"].strip()
            split = row.get("split", "").strip().lower()
            found = findings.get(image) if has_findings_file else None
            records.append(ImageRecord(
                path=root / "images" / study / f"{image}.dicom", study_id=study, patient_id=study,
                laterality=row["laterality"].strip().upper(), view=row["view_position"].strip().upper(),
                birads=birads_index(row.get("breast_birads")), density=density_index(row.get("breast_density")),
                findings=None if found is None else tuple(sorted(found)),
                split="test" if split == "test" else None,
                boxes=tuple(boxes.get(image, ())) if has_findings_file else None))
    # Carve val out of the "training" studies only; the official test set stays as it is.
    training = [i for i, r in enumerate(records) if r.split is None]
    for i, r in zip(training, assign_splits([records[i] for i in training], seed, val_fraction, 0.0)):
        records[i] = r
    return records
