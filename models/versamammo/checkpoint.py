"""VersaMammo in PyTorch: configs, the ViT teacher, the EfficientNet student, official and own checkpoints.

Imported by training/ and export/, never by node/ (the node runs exported ONNX graphs). The code
lives in ``models/versamammo_*.py``; this module is the stable import surface:

* ``VersaMammoConfig``, ``config_for`` (versamammo_config)
* ``TeacherBackbone``, ``DINOHead``, ``VersaMammoTeacher``, ``build_teacher`` (versamammo_teacher)
* ``VersaMammoStudent``, ``build_student`` (versamammo_student)
* ``load_official_student``, ``load_official_teacher`` (versamammo_official)
* ``save_checkpoint``, ``load_checkpoint``: our own format (below)

docs/models.md describes the architectures, the checkpoint formats and the deviations from the
official code.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from os import PathLike
from typing import Any, Literal

import torch

from models.versamammo.config import (
    DOWNSTREAM_NORM,
    IMAGENET_NORM,
    STUDENT_NORM,
    VersaMammoConfig,
    config_for,
    config_from_dict,
)
from models.versamammo.official import OfficialCheckpointError, load_official_student, load_official_teacher
from models.versamammo.padding import StaticSamePadConv2d, apply_static_same_padding
from models.versamammo.student import VersaMammoStudent, build_student
from models.versamammo.teacher import DINOHead, TeacherBackbone, VersaMammoTeacher, build_teacher

__all__ = [
    "CHECKPOINT_FORMATS",
    "DINOHead",
    "DOWNSTREAM_NORM",
    "IMAGENET_NORM",
    "OfficialCheckpointError",
    "STUDENT_FORMAT",
    "STUDENT_NORM",
    "StaticSamePadConv2d",
    "TEACHER_FORMAT",
    "TeacherBackbone",
    "VersaMammoConfig",
    "VersaMammoStudent",
    "VersaMammoTeacher",
    "apply_static_same_padding",
    "build_student",
    "build_teacher",
    "config_for",
    "config_from_dict",
    "load_checkpoint",
    "load_official_student",
    "load_official_teacher",
    "read_checkpoint",
    "save_checkpoint",
]

STUDENT_FORMAT = "mammo-node/versamammo-student"
TEACHER_FORMAT = "mammo-node/versamammo-teacher"
CHECKPOINT_FORMATS = {"student": STUDENT_FORMAT, "teacher": TEACHER_FORMAT}


def save_checkpoint(model: VersaMammoStudent | VersaMammoTeacher, path: str | PathLike[str],
                    extra: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "config", "state_dict"[, "extra"]}``; the config alone rebuilds the model.

    ``extra`` is for plain data (epoch, metrics); it must survive ``torch.load(weights_only=True)``.
    """
    if isinstance(model, VersaMammoStudent):
        fmt = STUDENT_FORMAT
    elif isinstance(model, VersaMammoTeacher):
        fmt = TEACHER_FORMAT
    else:
        raise TypeError(f"cannot checkpoint a {type(model).__name__}")
    payload: dict[str, Any] = {
        "format": fmt,
        "config": asdict(model.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if extra:
        payload["extra"] = extra
    # write beside, then rename: a crash never leaves a half-written checkpoint under ``path``
    partial = Path(f"{os.fspath(path)}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def read_checkpoint(path: str | PathLike[str]) -> dict[str, Any]:
    """The raw payload of one of our checkpoints (format checked), e.g. to read ``extra``."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") not in CHECKPOINT_FORMATS.values():
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path}: not a mammo-node VersaMammo checkpoint (format {found!r}); "
                         "official files go through load_official_student / load_official_teacher")
    return payload


def load_checkpoint(path: str | PathLike[str], kind: Literal["student", "teacher"] | None = None
                    ) -> VersaMammoStudent | VersaMammoTeacher:
    """Rebuild a student or teacher from its embedded config and load its weights strictly (eval mode).

    ``kind`` makes the call fail on the other kind of checkpoint instead of returning it.
    """
    payload = read_checkpoint(path)
    if kind is not None and payload["format"] != CHECKPOINT_FORMATS[kind]:
        raise ValueError(f"{path}: is a {payload['format']} checkpoint, expected {CHECKPOINT_FORMATS[kind]}")
    cfg = config_from_dict(payload["config"])
    model: VersaMammoStudent | VersaMammoTeacher
    model = build_student(cfg) if payload["format"] == STUDENT_FORMAT else build_teacher(cfg)
    model.load_state_dict(payload["state_dict"], strict=True)
    return model.eval()
