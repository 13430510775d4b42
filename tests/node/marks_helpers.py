"""CAD marks for the output tests, made by the node's own mark extraction (node.marks) from the
box-supervision target of training (the map a perfect lesion map would give), so the marks sit
where the phantom's lesions are, through the real preprocessing geometry and its inverse."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from models.package.labels import FINDING_CLASSES
from models.preprocess import PreprocessConfig, prepare_uint8
from models.preprocess.geometry import ModelGeometry
from models.versamammo.checkpoint import config_for
from models.versamammo.config import student_preprocess_config
from node.marks import image_marks, lesion_map_record, mark_settings
from training.data.lesion_map import lesion_grid_target
from training.data.phantom_records import study_records

TINY = student_preprocess_config(config_for("tiny"))


def oracle_maps(study_dir: Path, cfg: PreprocessConfig = TINY, grid: int = 8) -> dict[str, tuple[np.ndarray, Any, Any]]:
    """{position: (target map, prepared image, geometry)} of one phantom study."""
    out = {}
    for record in study_records(study_dir):
        prepared = prepare_uint8(pydicom.dcmread(record.path), cfg)
        target, _ = lesion_grid_target(record, prepared, cfg, grid)
        out[f"{record.laterality}-{record.view}"] = (target, prepared, ModelGeometry.of(prepared, cfg))
    return out


def oracle_marks(study_dir: Path, cfg: PreprocessConfig = TINY, threshold: float = 0.2,
                 kind_hot: str = "Mass") -> dict[str, Any]:
    """``{"localization": ..., "marks": [...], "lesion_maps": {...}}`` as the pipeline adds them to a result."""
    findings = np.full(len(FINDING_CLASSES), 0.1)
    findings[FINDING_CLASSES.index(kind_hot)] = 0.8
    marks, maps = [], {}
    for position, (target, prepared, geometry) in oracle_maps(study_dir, cfg).items():
        marks += [m.to_dict() for m in image_marks(position, target, geometry, cfg.size, prepared.source_shape,
                                                   findings, FINDING_CLASSES, threshold, 3)]
        maps[position] = lesion_map_record(target, geometry, cfg.size)
    return {"localization": mark_settings({"mark_threshold": threshold}, None, 3), "marks": marks,
            "lesion_maps": maps}


def lesion_boxes(study_dir: Path) -> dict[str, list[list[float]]]:
    """{position: [box (x0, y0, x1, y1), ...]} from the phantom's labels.json."""
    labels = json.loads((study_dir / "labels.json").read_text())
    out: dict[str, list[list[float]]] = {}
    for breast in labels["breasts"].values():
        for finding in breast["findings"]:
            for position, box in finding.get("boxes", {}).items():
                out.setdefault(position, []).append([float(v) for v in box])
    return out


def near(point: list[float], box: list[float], margin: float) -> bool:
    """Whether ``point`` lies inside ``box`` grown by ``margin`` pixels."""
    return box[0] - margin <= point[0] <= box[2] + margin and box[1] - margin <= point[1] <= box[3] + margin
