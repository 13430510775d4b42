"""What every MammoRG stage starts from: studies and splits, the frozen student and its cached
tokens, stage folders, and text embeddings in the language model's own space."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from models.mammorg.model import MammoRG, load_mammorg
from models.preprocess import PreprocessConfig, official_mammorg_config
from models.versamammo.student import VersaMammoStudent
from training import distributed as du
from training.data.cache import PreprocessedCache
from training.mammorg.data import StudyRecord, load_studies
from training.mammorg.features import study_tokens
from training.config import TrainConfig

log = logging.getLogger(__name__)

STAGES = ("knowledge", "align", "sft")
MODEL_DIR = "model"


def stage_dir(cfg: TrainConfig, stage: str) -> Path:
    return Path(cfg.run.out_dir) / "mammorg" / stage


def model_dir(cfg: TrainConfig, stage: str) -> Path:
    """Where a stage leaves its whole model (``save_mammorg`` layout)."""
    return stage_dir(cfg, stage) / MODEL_DIR


def previous_model(cfg: TrainConfig, stage: str) -> tuple[MammoRG, Any]:
    """The output of the stage before ``stage`` (each stage starts from it; the official code does not)."""
    before = STAGES[STAGES.index(stage) - 1]
    path = model_dir(cfg, before)
    if not (path / "mammorg.json").exists():
        raise FileNotFoundError(f"no {before} model at {path}: run `mammo-train mammorg-{before}` first")
    return load_mammorg(path)


def load_vision(cfg: TrainConfig) -> VersaMammoStudent:
    """The frozen VersaMammo student (``model.student_checkpoint``: ours or the official format)."""
    from models.versamammo.checkpoint import config_for, read_checkpoint
    from models.versamammo.config import config_from_dict
    from training.versamammo.distill.train import load_student

    if cfg.model.student_checkpoint is None:
        log.warning("model.student_checkpoint is not set: MammoRG sees a randomly initialised student "
                    "(fine for a smoke test, useless for a real model)")
    model_cfg = config_for(cfg.model.size)
    if cfg.model.student_checkpoint is not None:
        try:  # our checkpoint: its own input side and grid (a student trained at model.student_input)
            saved = config_from_dict(read_checkpoint(cfg.model.student_checkpoint)["config"])
            model_cfg = replace(model_cfg, student_input=saved.student_input, student_grid=saved.student_grid)
        except (ValueError, KeyError, TypeError):
            pass  # an official student: the preset's geometry
    student = load_student(cfg, model_cfg)
    return student.eval().requires_grad_(False)


@dataclass
class Prepared:
    studies: list[StudyRecord]
    splits: dict[str, list[int]]        # split -> study indices
    tokens: torch.Tensor                # (N, 4, T, C) float16
    present: torch.Tensor               # (N, 4) bool


def encoder_preprocessing(cfg: TrainConfig, student: VersaMammoStudent) -> PreprocessConfig:
    """What the frozen encoder sees for a model built from this training config
    (``mammorg.preprocessing``); a saved model carries its own (``models.mammorg.config.preprocess_config``)."""
    from models.versamammo.config import student_preprocess_config

    if cfg.mammorg.preprocessing == "official":
        return official_mammorg_config(student.cfg.student_input)
    return student_preprocess_config(student.cfg)


def prepare(cfg: TrainConfig, student: VersaMammoStudent, device: torch.device,
            pre: PreprocessConfig | None = None, pool: int | None = None) -> Prepared:
    """Studies, splits and the student's tokens of every study (computed on rank 0, cached).

    ``pre``: the images' preprocessing, a saved model's own; None = ``encoder_preprocessing(cfg, ...)``.
    ``pool``: the grid pooling, a saved model's own ``vision_pool``; None = ``mammorg.vision_pool``.
    """
    pool = cfg.mammorg.vision_pool if pool is None else pool
    pre = pre or encoder_preprocessing(cfg, student)
    studies = load_studies(cfg.data)
    splits = {name: [i for i, s in enumerate(studies) if s.split == name] for name in ("train", "val", "test")}
    if not splits["train"]:
        raise ValueError("no training studies (check data.* and the split fractions)")
    image_cache = PreprocessedCache(cfg.data.cache_dir) if cfg.data.cache_dir else None
    token_dir = Path(cfg.run.out_dir) / "mammorg" / "tokens"
    if du.is_main():
        study_tokens(studies, student, device, token_dir, image_cache, pre=pre, pool=pool)
    du.barrier()
    tokens, present = study_tokens(studies, student, device, token_dir, image_cache, progress=False, pre=pre, pool=pool)
    return Prepared(studies, splits, tokens, present)


@torch.no_grad()
def text_embeddings(lm: torch.nn.Module, base_tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """(len(texts), hidden): mean input embedding of each text's base-vocabulary pieces.

    Base pieces, not the atomic term tokens: the term rows are new (mean + noise) until stage 2,
    while the pieces' rows carry what the language model knows.
    """
    table = lm.get_input_embeddings().weight.detach().float()
    out = torch.zeros(len(texts), table.shape[1])
    for i, text in enumerate(texts):
        ids = base_tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids:
            out[i] = table[torch.tensor(ids, device=table.device)].mean(0).cpu()
    return out
