"""MammoRG's studies: four views and the reference report of each, with a split.

Sources: the phantom generator (``data.kind = "phantom"``: ``report.txt`` beside the views) and a
JSON Lines file (``data.kind = "reports"``, ``data.root``), one study per line::

    {"id": "S1", "patient_id": "P1", "split": "train",
     "views": {"R-CC": "a.dcm", "R-MLO": "b.dcm", "L-CC": "c.dcm", "L-MLO": "d.dcm"},
     "report": "FINDINGS: ... IMPRESSION: ..."}

``patient_id`` and ``split`` are optional (splits are then assigned by patient, as for
VersaMammo); relative view paths are relative to the file; a missing view is allowed (the model
has a learned stand-in). VinDr-Mammo has no report text and cannot train MammoRG.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path


from models.mammorg.config import VIEWS
from training.data.image_record import ImageRecord
from training.config import DataSection


@dataclass(frozen=True)
class StudyRecord:
    study_id: str
    patient_id: str
    views: dict[str, Path]          # view key ("R-CC", ...) -> DICOM path; absent keys are missing views
    report: str
    split: str | None = None


def load_studies(data: DataSection) -> list[StudyRecord]:
    """Every study of the configured source with its split (sorted by study id)."""
    if data.kind == "phantom":
        from training.data.records import load_records

        return _phantom_studies(load_records(data))
    if data.kind == "reports":
        if data.root is None:
            raise ValueError("data.root must point at the studies JSON Lines file for kind = 'reports'")
        return _assign(_jsonl_studies(Path(data.root)), data)
    raise ValueError(f"MammoRG needs report text: data.kind {data.kind!r} has none (use 'phantom' or 'reports')")


def _phantom_studies(records: list[ImageRecord]) -> list[StudyRecord]:
    grouped: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        grouped[r.study_id].append(r)
    out = []
    for study_id, recs in sorted(grouped.items()):
        views = {f"{r.laterality}-{r.view}": Path(r.path) for r in recs if f"{r.laterality}-{r.view}" in VIEWS}
        report = (Path(recs[0].path).parent / "report.txt").read_text(encoding="utf-8")
        out.append(StudyRecord(study_id, recs[0].patient_id, views, report, recs[0].split))
    return out


def _jsonl_studies(path: Path) -> list[StudyRecord]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            views = {k: (path.parent / v if not Path(v).is_absolute() else Path(v)) for k, v in item["views"].items()}
            unknown = sorted(set(views) - set(VIEWS))
            if unknown:
                raise ValueError(f"unknown view keys {unknown}; expected {list(VIEWS)}")
            out.append(StudyRecord(str(item["id"]), str(item.get("patient_id", item["id"])), views,
                                   str(item["report"]), item.get("split")))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return sorted(out, key=lambda s: s.study_id)


def _assign(studies: list[StudyRecord], data: DataSection) -> list[StudyRecord]:
    from training.data.splits import assign_splits

    proxies = [ImageRecord(path=Path(s.study_id), study_id=s.study_id, patient_id=s.patient_id, laterality="R",
                           view="CC", birads=None, density=None, findings=None, split=s.split) for s in studies]
    assigned = assign_splits(proxies, data.split_seed, data.val_fraction, data.test_fraction)
    return [replace(s, split=p.split) for s, p in zip(studies, assigned)]
