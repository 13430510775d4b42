"""Records from phantom studies (labels.json), and the on-demand phantom set of a training run.

The phantom's finding kinds are mapped onto the 10 VinDr-Mammo finding classes the findings
head predicts. A finding counts for an image only when it is visible in that view
(``visible_in``): a one-view asymmetry is, by definition, absent from the other view. For the
same reason an image's BI-RADS category is the view's own (``views[key]["birads"]``, phantom
version 2), falling back to the breast's category for labels.json files written before it.
Extras (spot compression, XCCL) are not four-view screening images and are left out.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models.package.labels import FINDING_CLASSES, birads_index, density_index
from training.data.image_record import ImageRecord, LesionBox

PHANTOM_FINDINGS: dict[str, str] = {
    "mass": "Mass",
    "calcification": "Suspicious Calcification",
    "architectural_distortion": "Architectural Distortion",
    "asymmetry": "Asymmetry",                 # subtype "asymmetry" (one view)
    "focal_asymmetry": "Focal Asymmetry",     # subtype "focal_asymmetry" (both views)
}


def finding_class(finding: dict[str, Any]) -> int:
    """FINDING_CLASSES index of one labels.json finding."""
    kind = finding["kind"]
    if kind == "asymmetry":
        kind = finding.get("subtype", "asymmetry")
    try:
        return FINDING_CLASSES.index(PHANTOM_FINDINGS[kind])
    except KeyError:
        raise ValueError(f"unknown phantom finding kind {kind!r}") from None


def study_records(study_dir: Path) -> list[ImageRecord]:
    """The four standard views of one phantom study folder."""
    labels = json.loads((study_dir / "labels.json").read_text(encoding="utf-8"))
    out = []
    for key, view in labels["views"].items():
        side = view.get("laterality", key[0])
        breast = labels["breasts"][side]
        found = sorted({finding_class(f) for f in breast["findings"] if key in f.get("visible_in", f.get("boxes", {}))})
        out.append(ImageRecord(
            path=study_dir / view["file"], study_id=str(labels["study_uid"]), patient_id=str(labels["patient_id"]),
            laterality=side, view=str(view.get("view", key.split("-")[1])),
            birads=birads_index(view.get("birads", breast["birads"])), density=density_index(breast["density"]),
            findings=tuple(found), boxes=view_boxes(breast["findings"], key)))
    return out


def view_boxes(findings: list[dict[str, Any]], key: str) -> tuple[LesionBox, ...]:
    """The lesion boxes of one view (labels.json boxes are pixel edges of that image)."""
    out = []
    for f in findings:
        box = f.get("boxes", {}).get(key)
        if box:
            out.append(LesionBox(finding_class(f), *(float(v) for v in box), birads_index(f.get("birads"))))
    return tuple(out)


def phantom_records(root: Path) -> list[ImageRecord]:
    """Records of every ``study-*/labels.json`` under ``root`` (sorted by folder name)."""
    root = Path(root)
    studies = sorted(p.parent for p in root.glob("*/labels.json"))
    if (root / "labels.json").is_file():          # a single study folder
        studies = [root]
    return [r for study in studies for r in study_records(study)]


def phantom_cache_name(studies: int, seed: int, size: str, start: int = 0) -> str:
    """``phantoms-v<PHANTOM_VERSION>-<seed>-<n>-<size>`` (``<seed>-<start>+<n>`` for a set that
    starts past index 0): a new generator version never reuses an older version's cached studies."""
    from phantoms.study import PHANTOM_VERSION

    count = f"{start}+{studies}" if start else f"{studies}"
    return f"phantoms-v{PHANTOM_VERSION}-{seed}-{count}-{size}"


def ensure_phantoms(cache_dir: Path | None, studies: int, seed: int, size: str, start: int = 0) -> Path:
    """``cache_dir/phantom_cache_name(...)/``, generated once; safe when processes race.

    Generation writes into a private temporary folder that is renamed into place when complete,
    so a folder that exists is always whole; the loser of a race discards its copy.
    """
    from phantoms.study import PhantomOptions, write_phantom_studies

    base = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "mammo-node-cache"
    target = base / phantom_cache_name(studies, seed, size, start)
    if target.is_dir():
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=base))
    try:
        write_phantom_studies(tmp, studies, seed, PhantomOptions(size=size), start=start)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
