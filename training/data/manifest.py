"""Records from a generic CSV manifest, for any data set that is not VinDr-Mammo or a phantom.

Columns (header required; order free):

    path        DICOM file; relative paths are relative to the CSV's folder
    study       study identifier
    patient     optional; defaults to the study (split grouping)
    laterality  L | R
    view        CC | MLO | ...
    birads      0-5, "4A", "BI-RADS 3"...; empty = unlabelled (6 is dropped: not a screening class)
    density     A-D or 1-4; empty = unlabelled
    findings    ';'-separated FINDING_CLASSES names; empty = none present; '-' or no column = unlabelled
    split       optional: train | val | test (also training/validation); empty = assign later
    boxes       optional lesion boxes in source pixels, ';'-separated, each
                "<finding>:x0,y0,x1,y1[:birads]" (a quoted CSV cell), e.g. "Mass:120,340,180,410:4;Suspicious
                Calcification:50,60,70,90"; empty = none; '-' or no column = not annotated
                (a CBIS-DDSM ROI mask becomes the box around its nonzero pixels)

Unknown finding names, lateralities or splits are errors with the line number: a silently
dropped label is a wrong label.
"""
from __future__ import annotations

import csv
from pathlib import Path

from models.package.labels import birads_index, density_index, finding_index
from training.data.image_record import ImageRecord, LesionBox

REQUIRED = ("path", "study", "laterality", "view")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "test": "test", "": None}


def _findings(text: str | None, where: str) -> tuple[int, ...] | None:
    if text is None or text.strip() == "-":
        return None
    out = set()
    for name in (n.strip() for n in text.split(";")):
        if not name:
            continue
        index = finding_index(name)
        if index is None:
            raise ValueError(f"{where}: unknown finding {name!r}")
        out.add(index)
    return tuple(sorted(out))


def _boxes(text: str | None, where: str) -> tuple[LesionBox, ...] | None:
    if text is None or text.strip() == "-":
        return None
    out = []
    for item in (i.strip() for i in text.split(";")):
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"{where}: a box is '<finding>:x0,y0,x1,y1[:birads]', not {item!r}")
        finding = finding_index(parts[0])
        if finding is None:
            raise ValueError(f"{where}: unknown finding {parts[0]!r} in a box")
        try:
            x0, y0, x1, y1 = (float(v) for v in parts[1].split(","))
            out.append(LesionBox(finding, x0, y0, x1, y1, birads_index(parts[2]) if len(parts) == 3 else None))
        except ValueError as exc:
            raise ValueError(f"{where}: bad box {item!r} ({exc})") from None
    return tuple(out)


def manifest_records(csv_path: Path) -> list[ImageRecord]:
    """One record per CSV row."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    records = []
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path.name}:{line}"
            side = row["laterality"].strip().upper()
            if side not in ("L", "R"):
                raise ValueError(f"{where}: laterality must be L or R, not {row['laterality']!r}")
            split_text = (row.get("split") or "").strip().lower()
            if split_text not in _SPLIT_ALIASES:
                raise ValueError(f"{where}: unknown split {row['split']!r}")
            path = Path(row["path"].strip())
            study = row["study"].strip()
            records.append(ImageRecord(
                path=path if path.is_absolute() else base / path, study_id=study,
                patient_id=(row.get("patient") or "").strip() or study,
                laterality=side, view=row["view"].strip().upper(),
                birads=birads_index((row.get("birads") or "").strip() or None),
                density=density_index((row.get("density") or "").strip() or None),
                findings=_findings(row.get("findings"), where),
                split=_SPLIT_ALIASES[split_text],
                boxes=_boxes(row.get("boxes"), where)))
    return records
