"""Issue 20: the full-size MammoRG (Vicuna-7B-sized Llama from a local path, EfficientNet-B5 student
at 512) built on the meta device: no memory, no weights, the real shapes and parameter counts."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.mammorg.model import build_mammorg
from models.mammorg.config import VIEWS, config_for
from models.versamammo.checkpoint import build_student
from models.versamammo.checkpoint import config_for as vision_config
from training.config import load_train_config
from training.mammorg.tokenizer import term_strings

FULL = Path("training/configs/mammorg_full.toml")
# lmsys/vicuna-7b-v1.5's config.json (LLaMA-2-7B): the full preset expects a directory like it.
VICUNA_7B = {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
LLAMA2_7B_PARAMETERS = 6_738_415_616   # at the 32000-token vocabulary


class _Tokenizer:
    """Stands in for Vicuna's tokenizer with the lexicon terms added (only its size and ids are used)."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, added: int) -> None:
        self.size = VICUNA_7B["vocab_size"] + added

    def __len__(self) -> int:
        return self.size

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [5] * len(text.split())}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from transformers import LlamaConfig

    lm_dir = tmp_path_factory.mktemp("vicuna-7b")
    LlamaConfig(**VICUNA_7B).save_pretrained(lm_dir)          # config.json only: no weights anywhere
    cfg = load_train_config(FULL)
    added = len(term_strings(cfg.mammorg.terms_language))
    mcfg = config_for(cfg.mammorg.size, lm_path=str(lm_dir))
    with torch.device("meta"):
        vision = build_student(vision_config(cfg.model.size))
        model = build_mammorg(mcfg, _Tokenizer(added), vision, lm_weights=False)
    return model, added


def test_the_full_model_has_vicuna_7b_and_the_b5_student_without_memory(full):
    model, added = full
    assert all(p.is_meta for p in model.parameters())
    count = lambda m: sum(p.numel() for p in m.parameters())   # noqa: E731
    hidden = VICUNA_7B["hidden_size"]
    # LLaMA-2-7B plus one input and one output row per added lexicon term
    assert count(model.lm) == LLAMA2_7B_PARAMETERS + 2 * added * hidden
    assert model.lm.dtype == torch.bfloat16                  # loaded in bf16 (mammorg_config lm_dtype)
    assert 28_000_000 < count(model.vision) < 28_800_000      # EfficientNet-B5 without its classifier
    # projectors (3 x mlp2x_gelu 2048 -> 4096 -> 4096, as the official mm_projector1/2)
    for proj in (model.image_projector, model.graph_projector, model.report_projector):
        assert count(proj) == 2048 * 4096 + 4096 + 4096 * 4096 + 4096
    assert 6.9e9 < count(model) < 7.1e9


def test_the_full_prefix_is_1029_soft_tokens_of_4096(full):
    model, _ = full
    cfg = model.cfg
    assert (cfg.vision_grid, cfg.vision_dim, cfg.cross_heads) == (16, 2048, 32)
    assert cfg.prefix_tokens == 4 * (256 + 1) + 1 == 1029
    views = torch.zeros(len(VIEWS), 3, 512, 512, device="meta")
    grid = model.vision.feature_grid(views)
    assert tuple(grid.shape) == (4, 2048, 16, 16)
    raw = grid.flatten(2).transpose(1, 2).reshape(1, len(VIEWS), 256, 2048)
    prefix = model.prefix(raw, torch.ones(1, len(VIEWS), dtype=torch.bool, device="meta"))
    assert tuple(prefix.shape) == (1, 1029, 4096)


def test_the_full_preset_is_the_official_recipe():
    cfg = load_train_config(FULL)
    assert (cfg.run.precision, cfg.mammorg.size, cfg.model.size) == ("bf16", "full", "full")
    assert cfg.mammorg.lm_path is not None and cfg.mammorg.tokenizer_path is not None and cfg.mammorg.fsdp
    assert (cfg.sft.lora_r, cfg.sft.lora_alpha, cfg.sft.lora_dropout) == (64, 128, 0.05)
    assert cfg.sft.gradient_checkpointing and cfg.align.gradient_checkpointing
    # official: stage 1 11 epochs x 64, lr 1e-4; alignment 1 epoch x 16 (4 x grad-acc 4), lr 1e-3;
    # SFT 3 epochs x 4, lr 1e-4; cosine, warm-up 0.03, wd 0; context 2048
    assert (cfg.knowledge.epochs, cfg.knowledge.batch_size_per_rank, cfg.knowledge.lr) == (11, 64, 1e-4)
    assert (cfg.align.epochs, cfg.align.batch_size_per_rank, cfg.align.lr) == (1, 16, 1e-3)
    assert (cfg.sft.epochs, cfg.sft.batch_size_per_rank, cfg.sft.lr) == (3, 4, 1e-4)
    assert cfg.generate.max_new_tokens == 1024 and cfg.generate.num_beams == 1
