"""Stages 2a (alignment) and 2b (terminology-aware SFT): the report as the LM's target.

Both start from the previous stage's saved model (the official code silently does not) and
train on the reference report after the prompt and the soft-token prefix, with the loss on the
report tokens only. Alignment trains the three projectors, the missing-view embedding and the
term-token rows (gradients of the original vocabulary rows masked). SFT adds LoRA (peft) on
every linear layer of the LM (not the output head), keeps the projectors and term rows
trainable, and merges the adapters into the LM at the end so the saved model is a plain one
that exports like any other. The knowledge modules stay frozen after stage 1, as in the paper.
The best epoch is chosen by the validation loss.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.mammorg.model import MammoRG, save_mammorg
from models.mammorg.config import preprocess_config
from training import distributed as du
from training.mammorg.common import Prepared, load_vision, model_dir, prepare, previous_model, stage_dir
from training.mammorg.loop import StageSpec, run_stage
from training.mammorg.terms import mask_base_rows, term_parameters
from training.config import TrainConfig

log = logging.getLogger(__name__)


class Trainables(nn.Module):
    """Registers (shares) exactly the parameters a stage trains, so its state is what resume needs."""

    def __init__(self, named: dict[str, nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterDict({name.replace(".", "__"): p for name, p in named.items()})


def encode_targets(tokenizer: Any, reports: list[str], max_tokens: int) -> tuple[list[list[int]], int]:
    """Report ids + EOS, truncated to ``max_tokens``; also how many were truncated."""
    out, truncated = [], 0
    for text in reports:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + 1 > max_tokens:
            ids, truncated = ids[: max_tokens - 1], truncated + 1
        out.append(ids + [tokenizer.eos_token_id])
    return out, truncated


def pad_batch(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = True
    return ids, mask


class ReportLoss(nn.Module):
    """Wraps the model so DDP sees one module whose forward returns the report loss."""

    def __init__(self, model: MammoRG, trainables: Trainables) -> None:
        super().__init__()
        self.trainables = trainables
        self._model = [model]

    def forward(self, tokens: torch.Tensor, present: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._model[0](tokens, present, ids, mask)["loss"]


@torch.no_grad()
def mean_loss(model: MammoRG, data: Prepared, indices: list[int], targets: list[list[int]],
              device: torch.device, batch: int = 16) -> float:
    """Teacher-forced loss per report token over ``indices`` (the validation score, negated)."""
    total, count = 0.0, 0
    for start in range(0, len(indices), batch):
        idx = indices[start:start + batch]
        ids, mask = pad_batch([targets[i] for i in idx], model.pad_id)
        loss = model(data.tokens[idx].to(device).float(), data.present[idx].to(device), ids.to(device),
                     mask.to(device))["loss"]
        n = int(mask.sum())
        total, count = total + loss.item() * n, count + n
    return total / max(count, 1)


def _lora(model: MammoRG, s: Any) -> dict[str, nn.Parameter]:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, bias="none",
                        target_modules="all-linear", task_type="CAUSAL_LM")
    model.lm = get_peft_model(model.lm, config)
    return {f"lm.{n}": p for n, p in model.lm.named_parameters() if "lora_" in n}


def trainable_parameters(model: MammoRG, stage: str) -> dict[str, nn.Parameter]:
    """What alignment (projectors, missing-view embedding, term rows) or SFT (plus LoRA) trains."""
    named: dict[str, nn.Parameter] = {}
    if stage == "sft":
        named.update({f"lm.{n}": p for n, p in model.lm.named_parameters() if "lora_" in n})
    for prefix, module in (("image_projector", model.image_projector), ("graph_projector", model.graph_projector),
                           ("report_projector", model.report_projector)):
        named.update({f"{prefix}.{n}": p for n, p in module.named_parameters()})
    named["missing_view"] = model.missing_view
    for i, weight in enumerate(term_parameters(model.lm)):
        named[f"term_rows_{i}"] = weight
    return named


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a (LoRA-wrapped) Hugging Face causal LM."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    layers = getattr(getattr(base, "model", base), "layers", None)
    if layers is None:
        raise ValueError(f"{type(base).__name__}: no decoder layers found to shard")
    return list(layers)


def shard_lm(lm: nn.Module, precision: str) -> None:
    """FSDP2 over each decoder layer (frozen weights and LoRA adapters alike): parameters are
    gathered for a layer's forward and backward and sharded otherwise. Embeddings, output head
    and final norm stay replicated (their term rows are masked by row, which needs whole rows)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in decoder_layers(lm):
        fully_shard(layer, mp_policy=mp)


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """CPU state dict with sharded (DTensor) entries gathered; collective when any is sharded."""
    from training.mammorg.loop import _dtensor

    return {k: (v.full_tensor() if _dtensor(v) else v).detach().to("cpu", copy=True)
            for k, v in module.state_dict().items()}


def run_lm_stage(cfg: TrainConfig, stage: str, *, max_iterations: int | None = None) -> Path:
    """``stage`` is "align" or "sft"; returns the saved model directory."""
    return du.launched(cfg, lambda info: _run(cfg, stage, info, max_iterations))


def _run(cfg: TrainConfig, stage: str, info: du.DistInfo, max_iterations: int | None) -> Path:
    du.seed_everything(cfg.run.seed)
    device = info.device
    section = cfg.align if stage == "align" else cfg.sft
    out = stage_dir(cfg, stage)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = previous_model(cfg, stage)
    model.requires_grad_(False)
    student = model.vision if model.vision is not None else load_vision(cfg)
    data = prepare(cfg, student, device, preprocess_config(model.cfg, student.cfg), pool=model.cfg.vision_pool)
    model = model.to(device)
    targets, truncated = encode_targets(tokenizer, [s.report for s in data.studies], cfg.mammorg.max_report_tokens)
    if truncated and du.is_main():
        log.warning("%d reports are longer than mammorg.max_report_tokens = %d and were truncated",
                    truncated, cfg.mammorg.max_report_tokens)

    use_fsdp = bool(cfg.mammorg.fsdp) and info.distributed
    if cfg.mammorg.fsdp and not use_fsdp and du.is_main():
        log.warning("mammorg.fsdp needs torchrun with a process group; running unsharded")
    if stage == "sft":
        _lora(model, section)
    if section.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable()
    named = trainable_parameters(model, stage)
    for p in named.values():
        p.requires_grad_(True)
    if use_fsdp:
        # every rank starts from rank 0's weights (LoRA's random init differs per rank seed), as
        # DDP's constructor broadcast does; then each rank keeps its shard of them
        import torch.distributed as dist

        for p in named.values():
            dist.broadcast(p.data, src=0)
        shard_lm(model.lm, cfg.run.precision)
        named = trainable_parameters(model, stage)    # sharding replaced the layers' parameters
    base_rows = model.cfg.base_vocab_size
    hooks = mask_base_rows(model.lm, base_rows)
    trainables = Trainables(named)
    wrapper = ReportLoss(model, trainables).to(device)
    train_idx, val_idx = data.splits["train"], data.splits["val"]
    best_file = out / "best_state.pt"

    def step(module: nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        studies = [train_idx[i] for i in idx.tolist()]
        ids, mask = pad_batch([targets[i] for i in studies], model.pad_id)
        loss = module(data.tokens[studies].to(device).float(), data.present[studies].to(device),
                      ids.to(device), mask.to(device))
        return loss, {"loss": loss.item()}

    def validate() -> dict[str, float]:
        if not val_idx:
            return {"score": 0.0}
        loss = mean_loss(model, data, val_idx, targets, device)
        return {"score": -loss, "loss": loss}

    def on_best(_: dict[str, float]) -> None:
        state = full_state(trainables)                 # collective when sharded
        if du.is_main():
            torch.save(state, best_file)

    spec = StageSpec(stage, wrapper, list(named.values()), len(train_idx), section.epochs,
                     section.batch_size_per_rank, section.lr, section.weight_decay, section.warmup_ratio,
                     step, validate, on_best, sharded=use_fsdp)
    best = run_stage(spec, out, info, cfg.run.seed, cfg.run.precision, cfg.run.log_every, max_iterations)
    for h in hooks:
        h.remove()
    if use_fsdp:
        # The sharded model cannot be merged or saved as it is: rank 0 rebuilds the stage's
        # starting model unsharded and loads the best trained parameters into it.
        if not best_file.exists():
            state = full_state(trainables)
            if du.is_main():
                torch.save(state, best_file)
        if du.is_main():
            model, _ = previous_model(cfg, stage)
            model.requires_grad_(False)
            if stage == "sft":
                _lora(model, section)
            if section.gradient_checkpointing:
                model.lm.gradient_checkpointing_enable()
            trainables = Trainables(trainable_parameters(model, stage))
    if du.is_main():
        if best_file.exists():
            trainables.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
        if section.gradient_checkpointing:
            model.lm.gradient_checkpointing_disable()
        if stage == "sft":
            model.lm = model.lm.merge_and_unload()
        model.requires_grad_(False)
        save_mammorg(model, model_dir(cfg, stage), tokenizer,
                     extra={"stage": stage, "best": best, "selected_on": "val loss", "truncated_reports": truncated})
    du.barrier()
    return model_dir(cfg, stage)
