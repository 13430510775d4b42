"""Loaders for the officially released VersaMammo checkpoints (student EfficientNet-B5, DINOv2 teacher).

Both are pure renames onto our modules; nothing is resampled or guessed. Every key of the file
must land somewhere and every tensor of the model must be filled, otherwise
``OfficialCheckpointError`` lists the offending keys (the only tolerated gaps are spelled out in
each loader's docstring and recorded in the returned model's ``load_notes``).

Formats (docs/models.md, "Official checkpoints"):

* student: a plain state_dict, keys ``module.image_encoder.<efficientnet_pytorch name>`` plus
  optionally ``module.birads_head.*`` / ``module.density_head.*``;
* teacher: ``{"teacher": state_dict}`` with ``backbone.*`` (DINOv2 ViT, ``block_chunks=4`` so
  block keys are ``blocks.<chunk>.<global index>.*``), ``dino_head.*`` and ``ibot_head.*``.
"""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from os import PathLike
from typing import Any

import torch
from torch import nn

from models.versamammo.config import VersaMammoConfig, config_for
from models.versamammo.student import VersaMammoStudent, build_student
from models.versamammo.teacher import VersaMammoTeacher, build_teacher

log = logging.getLogger(__name__)

# efficientnet_pytorch B5 constructs its static pads for this image size.
OFFICIAL_STUDENT_PAD_SIZE = 456

# efficientnet_pytorch MBConv sub-module -> timm sub-module, per block kind.
_IR_NAMES = {  # blocks with an expansion conv: timm InvertedResidual
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_DS_NAMES = {  # expand ratio 1 (first stage): timm DepthwiseSeparableConv
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
    "_project_conv": "conv_pw", "_bn2": "bn2",
}
_STEM_HEAD_NAMES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


class OfficialCheckpointError(ValueError):
    """The file is not in the expected official layout; the message lists every offending key."""


def _load_file(path: str | PathLike[str]) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        raise OfficialCheckpointError(f"{path}: cannot be read as a tensor-only torch checkpoint: {exc}") from exc


def _listing(title: str, keys: list[str], limit: int = 40) -> str:
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{title} ({len(keys)}): {shown}"


def _raise_if_problems(path: Any, missing: list[str], unexpected: list[str], shapes: list[str]) -> None:
    parts = []
    if missing:
        parts.append(_listing("missing", sorted(missing)))
    if unexpected:
        parts.append(_listing("unexpected", sorted(unexpected)))
    if shapes:
        parts.append(_listing("shape mismatch", shapes))
    if parts:
        raise OfficialCheckpointError(f"{path}: does not match the official layout; " + "; ".join(parts))


# --------------------------------------------------------------------------------------------
# Student
# --------------------------------------------------------------------------------------------

def _timm_block_names(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm EfficientNet blocks in execution order, flattened over stages ("blocks.<s>.<i>")."""
    return [(f"blocks.{s}.{i}", block) for s, stage in enumerate(backbone.blocks) for i, block in enumerate(stage)]


def map_official_student_keys(encoder: dict[str, torch.Tensor], backbone: nn.Module
                              ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """efficientnet_pytorch names -> timm names of ``backbone``, walking both block lists in order.

    Returns (state dict under timm names, timm name -> efficientnet_pytorch name, names with no
    counterpart). The block kind comes from the timm module; a file block whose kind differs
    (an expansion conv where timm has none, or the reverse) shows up as unexpected/missing keys.
    """
    blocks = _timm_block_names(backbone)
    unknown: list[str] = []
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    for key, value in encoder.items():
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            index = int(parts[1])
            if index >= len(blocks):
                unknown.append(key)
                continue
            name, block = blocks[index]
            table = _DS_NAMES if type(block).__name__ == "DepthwiseSeparableConv" else _IR_NAMES
            target = table.get(parts[2])
            if target is None:
                unknown.append(key)
                continue
            new = ".".join([name, target, *parts[3:]])
        elif parts[0] in _STEM_HEAD_NAMES and len(parts) >= 2:
            new = ".".join([_STEM_HEAD_NAMES[parts[0]], *parts[1:]])
        else:
            unknown.append(key)
            continue
        mapped[new] = value
        source[new] = key
    return mapped, source, unknown


def official_student_name(timm_key: str, backbone: nn.Module) -> str:
    """The efficientnet_pytorch name of a timm backbone key (inverse of map_official_student_keys)."""
    parts = timm_key.split(".")
    if parts[0] == "blocks" and len(parts) >= 4:
        index = next(j for j, (name, _) in enumerate(_timm_block_names(backbone)) if name == ".".join(parts[:3]))
        block = backbone.blocks[int(parts[1])][int(parts[2])]
        table = _DS_NAMES if type(block).__name__ == "DepthwiseSeparableConv" else _IR_NAMES
        rest = ".".join(parts[3:])
        for theirs, ours in table.items():
            if rest.startswith(ours + "."):
                return f"_blocks.{index}.{theirs}{rest[len(ours):]}"
    for theirs, ours in _STEM_HEAD_NAMES.items():
        if timm_key.startswith(ours + "."):
            return theirs + timm_key[len(ours):]
    return timm_key


def _split_student_file(state: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, torch.Tensor], list[str]]:
    """(encoder tensors by efficientnet_pytorch name, that name -> file key, head tensors, ignored keys).

    Accepts the official ``module.image_encoder.`` prefix, the same without ``module.``, and a
    bare efficientnet_pytorch state dict.
    """
    encoder: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    heads: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in state.items():
        bare = key[len("module."):] if key.startswith("module.") else key
        if bare.startswith("image_encoder.") or bare.startswith("_"):
            name = bare[len("image_encoder."):] if bare.startswith("image_encoder.") else bare
            encoder[name] = value
            origin[name] = key
        elif bare.startswith(("birads_head.", "density_head.", "findings_head.")):
            heads[bare] = value
        else:
            ignored.append(key)
    return encoder, origin, heads, ignored


def load_official_student(path: str | PathLike[str]) -> VersaMammoStudent:
    """The official VersaMammo EfficientNet-B5 student, in eval mode.

    The backbone is timm ``tf_efficientnet_b5`` with static pads for 456 (as efficientnet_pytorch
    B5 builds them), so ``features`` at 512 equals the official extract_features + average pool.
    Encoder keys must match exactly (``_fc.*`` of an include_top classifier is ignored). BI-RADS /
    density heads are loaded when present with fitting shapes; otherwise the heads stay random
    and ``student.load_notes`` (also logged) says so. The findings head is always new.
    """
    state = _load_file(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise OfficialCheckpointError(f"{path}: expected a state_dict, got {type(state).__name__}")
    encoder, origin, heads, ignored = _split_student_file(state)
    if not encoder:
        raise OfficialCheckpointError(
            f"{path}: no module.image_encoder.* keys (torchvision-layout stage-2 checkpoints are not supported)")
    notes: list[str] = []
    fc_keys = [k for k in encoder if k.startswith("_fc.")]
    for key in fc_keys:
        del encoder[key]
    if fc_keys:
        notes.append(f"ignored the include_top classifier {sorted(fc_keys)}")
    if ignored:
        notes.append(_listing("ignored keys outside image_encoder and the heads", sorted(ignored)))

    cfg = replace(config_for("full"), student_pad_size=OFFICIAL_STUDENT_PAD_SIZE)
    student = build_student(cfg)
    mapped, source, unknown = map_official_student_keys(encoder, student.backbone)
    own = student.backbone.state_dict()
    missing = [f"module.image_encoder.{official_student_name(k, student.backbone)} ({k})"
               for k in own if k not in mapped]
    shapes = [f"{origin[source[k]]} {tuple(v.shape)} vs {k} {tuple(own[k].shape)}"
              for k, v in mapped.items() if k in own and v.shape != own[k].shape]
    unexpected = [origin[k] for k in unknown] + [origin[source[k]] for k in mapped if k not in own]
    _raise_if_problems(path, missing, unexpected, shapes)
    student.backbone.load_state_dict(mapped, strict=True)

    for head in ("birads_head", "density_head", "findings_head"):
        module: nn.Linear = getattr(student, head)
        given = {k.split(".", 1)[1]: v for k, v in heads.items() if k.startswith(head + ".")}
        if not given:
            notes.append(f"{head}: not in the checkpoint, randomly initialised")
            continue
        expected = module.state_dict()
        if set(given) == set(expected) and all(given[k].shape == expected[k].shape for k in expected):
            module.load_state_dict(given)
        else:
            got = {k: tuple(v.shape) for k, v in given.items()}
            want = {k: tuple(v.shape) for k, v in expected.items()}
            notes.append(f"{head}: checkpoint shapes {got} do not fit {want}, randomly initialised")
    for note in notes:
        log.warning("official student %s: %s", path, note)
    student.load_notes = notes
    return student.eval()


# --------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def map_official_teacher_key(key: str) -> str:
    """DINOv2 teacher key -> our key: ``backbone.blocks.<chunk>.<i>.x`` -> ``backbone.blocks.<i>.x``.

    With ``block_chunks`` the second index is already the global block index (DINOv2 pads each
    chunk with Identity modules), so the chunk index is simply dropped. Other keys are unchanged.
    """
    if key.startswith("backbone."):
        rest = key[len("backbone."):]
        match = _CHUNKED_BLOCK.match(rest)
        if match:
            return f"backbone.blocks.{match.group(2)}.{match.group(3)}"
    return key


def load_official_teacher(path: str | PathLike[str], cfg: VersaMammoConfig | None = None,
                          ignore_prefixes: tuple[str, ...] = ()) -> VersaMammoTeacher:
    """An official (DINOv2-format) VersaMammo teacher checkpoint as a ``VersaMammoTeacher`` in eval mode.

    Strict: any key that does not map, any model tensor left unfilled, and any shape mismatch
    raise ``OfficialCheckpointError`` naming them. Tolerated: checkpoints without block chunking
    (``blocks.<i>.*``), a bare backbone state dict (no ``backbone.`` prefix), and a head that is
    absent as a whole (it stays random; noted in ``load_notes``). ``ignore_prefixes`` drops keys
    on purpose (e.g. ``("birads_head.", "density_head.")`` if a checkpoint carries those unused
    stage-1 heads).
    """
    cfg = config_for("full") if cfg is None else cfg
    obj = _load_file(path)
    if not isinstance(obj, dict):
        raise OfficialCheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    state = obj["teacher"] if isinstance(obj.get("teacher"), dict) else obj
    if state and not any(k.startswith("backbone.") for k in state) and "cls_token" in state:
        state = {f"backbone.{k}": v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore_prefixes))}

    teacher = build_teacher(cfg)
    own = teacher.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unexpected: list[str] = []
    for key, value in state.items():
        target = map_official_teacher_key(key)
        if target not in own or target in mapped:
            unexpected.append(key)
        else:
            mapped[target] = value
            source[target] = key
    notes: list[str] = []
    absent_heads: list[str] = []
    for head in ("dino_head", "ibot_head"):
        if not any(k.startswith(head + ".") for k in mapped):
            absent_heads.append(head + ".")
            notes.append(f"{head}: not in the checkpoint, randomly initialised")
    missing = [k for k in own if k not in mapped and not k.startswith(tuple(absent_heads))]
    shapes = [f"{source[k]} {tuple(v.shape)} vs {k} {tuple(own[k].shape)}"
              for k, v in mapped.items() if v.shape != own[k].shape]
    _raise_if_problems(path, missing, unexpected, shapes)
    teacher.load_state_dict(mapped, strict=False)
    for head in ("dino_head", "ibot_head"):
        g = getattr(teacher, head).last_layer.weight_g
        if (head + ".last_layer.weight_g") in mapped and not torch.allclose(g, torch.ones_like(g)):
            notes.append(f"{head}: last_layer.weight_g is not 1 in the checkpoint; kept as loaded")
    for note in notes:
        log.warning("official teacher %s: %s", path, note)
    teacher.load_notes = notes
    return teacher.eval()
