"""Small model packages for the export, runtime and registry tests (random weights, real graphs).

Random weights are enough to prove that export, parity, golden vectors, installation and the
decoding loop are exact; whether the models learn is the training tests' business.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from export.golden import phantom_images, phantom_views
from export.mammorg import export_mammorg
from export.package import finish_package
from export.versamammo import export_versamammo
from models.mammorg.model import build_mammorg, set_bank
from models.mammorg.config import config_for as mammorg_config
from models.mammorg.config import preprocess_config
from models.versamammo.checkpoint import build_student, config_for
from models.versamammo.config import student_preprocess_config
from training.mammorg.tokenizer import train_bpe, with_terms

REPORTS = [
    "FINDINGS:\nThe breasts are heterogeneously dense. No suspicious masses or calcifications.\n\n"
    "IMPRESSION:\nRight breast: BI-RADS 1 - negative.\nLeft breast: BI-RADS 1 - negative.",
    "FINDINGS:\nThe breasts are extremely dense. Grouped punctate calcifications in the right breast.\n\n"
    "IMPRESSION:\nRight breast: BI-RADS 3 - probably benign.\nLeft breast: BI-RADS 1 - negative.",
]


def tiny_student(seed: int = 0):
    torch.manual_seed(seed)
    student = build_student(config_for("tiny")).eval()
    # Non-trivial BN statistics, so the graph computes something other than the init's identity.
    for module in student.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return student


def tiny_mammorg(seed: int = 0, max_new_tokens: int = 12, preprocessing: dict | None = None, vision_pool: int = 1):
    base = train_bpe(REPORTS * 3, 400)
    tokenizer, base_rows = with_terms(base, "en")
    small_lm = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False}
    cfg = replace(mammorg_config("tiny"), cross_heads=4, graph_layers=1, lm=small_lm, max_new_tokens=max_new_tokens,
                  base_vocab_size=base_rows, preprocessing=preprocessing, vision_pool=vision_pool)
    student = tiny_student(seed)
    cfg = replace(cfg, vision_grid=student.cfg.student_grid // vision_pool)
    torch.manual_seed(seed)
    model = build_mammorg(cfg, tokenizer, student)
    set_bank(model, torch.randn(6, model.cfg.embed_dim))
    model.node_features.normal_()
    # Sharper logits than the init's near-uniform ones: no argmax near-ties between torch and ORT.
    with torch.no_grad():
        model.lm.lm_head.weight.mul_(20)
    return model.eval(), tokenizer


def build_versamammo_package(out: Path, version: str = "1.0.0", seed: int = 0, tar: bool = False,
                             name: str = "versamammo-test") -> Path:
    student = tiny_student(seed)
    fields = export_versamammo(student, out, phantom_images(student_preprocess_config(student.cfg), 3))
    path, _ = finish_package(out, name, version, fields, training={"note": "random weights"}, tar=tar)
    return path


def build_mammorg_package(out: Path, version: str = "1.0.0", seed: int = 0, tar: bool = False,
                          name: str = "mammorg-test", preprocessing: dict | None = None) -> Path:
    """``preprocessing``: the encoder's (``MammoRGConfig.preprocessing``); None = the student's."""
    model, tokenizer = tiny_mammorg(seed, preprocessing=preprocessing)
    views, present = phantom_views(preprocess_config(model.cfg, model.vision.cfg), 2)
    fields = export_mammorg(model, tokenizer, out, views, present)
    path, _ = finish_package(out, name, version, fields, training={"note": "random weights"}, tar=tar)
    return path
