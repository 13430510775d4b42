"""The student's architecture for a run: the model preset plus the run's head options.

``[model] student_head_pool`` / ``student_lesion_map`` / ``student_input`` change what the preset
says (None keeps it); every stage that builds a student (patches, distill) asks here, so they agree.
"""
from __future__ import annotations

from dataclasses import replace


from models.versamammo.config import VersaMammoConfig, config_for
from training.config import TrainConfig


def student_model_config(cfg: TrainConfig) -> VersaMammoConfig:
    """``config_for(cfg.model.size)`` with the run's student head options applied."""
    model_cfg = config_for(cfg.model.size)
    changes = {name: getattr(cfg.model, name) for name in ("student_head_pool", "student_lesion_map")
               if getattr(cfg.model, name, None) is not None}
    if cfg.model.student_input is not None:
        changes["student_input"] = cfg.model.student_input
        changes["student_grid"] = cfg.model.student_input // 32
    return replace(model_cfg, **changes) if changes else model_cfg
