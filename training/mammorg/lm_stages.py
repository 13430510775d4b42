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

from models.mammorg import MammoRG, save_mammorg
from training import distributed as du
from training.mammorg.common import Prepared, load_vision, model_dir, prepare, previous_model, stage_dir
from training.mammorg.loop import StageSpec, run_stage
from training.mammorg.terms import mask_base_rows, term_parameters

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


def run_lm_stage(cfg: Any, stage: str, *, max_iterations: int | None = None) -> Path:
    """``stage`` is "align" or "sft"; returns the saved model directory."""
    return du.launched(cfg, lambda info: _run(cfg, stage, info, max_iterations))


def _run(cfg: Any, stage: str, info: du.DistInfo, max_iterations: int | None) -> Path:
    du.seed_everything(cfg.run.seed)
    device = info.device
    section = cfg.align if stage == "align" else cfg.sft
    out = stage_dir(cfg, stage)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = previous_model(cfg, stage)
    model.requires_grad_(False)
    student = model.vision if model.vision is not None else load_vision(cfg)
    data = prepare(cfg, student, device)
    model = model.to(device)
    targets, truncated = encode_targets(tokenizer, [s.report for s in data.studies], cfg.mammorg.max_report_tokens)
    if truncated and du.is_main():
        log.warning("%d reports are longer than mammorg.max_report_tokens = %d and were truncated",
                    truncated, cfg.mammorg.max_report_tokens)

    named: dict[str, nn.Parameter] = {}
    if stage == "sft":
        named.update(_lora(model, section))
        if section.gradient_checkpointing:
            model.lm.gradient_checkpointing_enable()
    for prefix, module in (("image_projector", model.image_projector), ("graph_projector", model.graph_projector),
                           ("report_projector", model.report_projector)):
        named.update({f"{prefix}.{n}": p for n, p in module.named_parameters()})
    named["missing_view"] = model.missing_view
    base_rows = model.cfg.base_vocab_size
    for i, weight in enumerate(term_parameters(model.lm)):
        named[f"term_rows_{i}"] = weight
    for p in named.values():
        p.requires_grad_(True)
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
        torch.save({k: v.detach().cpu() for k, v in trainables.state_dict().items()}, best_file)

    spec = StageSpec(stage, wrapper, list(named.values()), len(train_idx), section.epochs,
                     section.batch_size_per_rank, section.lr, section.weight_decay, section.warmup_ratio,
                     step, validate, on_best)
    best = run_stage(spec, out, info, cfg.run.seed, cfg.run.precision, cfg.run.log_every, max_iterations)
    for h in hooks:
        h.remove()
    if du.is_main():
        if best_file.exists():
            trainables.load_state_dict(torch.load(best_file, map_location="cpu", weights_only=True))
        if stage == "sft":
            if section.gradient_checkpointing:
                model.lm.gradient_checkpointing_disable()
            model.lm = model.lm.merge_and_unload()
        model.requires_grad_(False)
        save_mammorg(model, model_dir(cfg, stage), tokenizer,
                     extra={"stage": stage, "best": best, "selected_on": "val loss", "truncated_reports": truncated})
    du.barrier()
    return model_dir(cfg, stage)
