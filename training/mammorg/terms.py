"""The lexicon's term tokens in the language model: their initial rows and the gradient mask.

New rows (input embeddings and, when untied, the output head) start at the mean of the
existing rows plus 0.01 x N(0, 1), as the official code does; during alignment and SFT a hook
zeroes the gradient of every original row, so only the term rows of those matrices move.
"""
from __future__ import annotations

import torch
from torch import nn


def _matrices(lm: nn.Module) -> list[nn.Parameter]:
    out = [lm.get_input_embeddings().weight]
    head = lm.get_output_embeddings()
    if head is not None and head.weight is not out[0]:
        out.append(head.weight)
    return out


@torch.no_grad()
def init_term_rows(lm: nn.Module, base_rows: int, seed: int = 0) -> None:
    """Rows ``base_rows:`` = mean of rows ``:base_rows`` + 0.01 N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    for weight in _matrices(lm):
        extra = weight.shape[0] - base_rows
        if extra <= 0:
            continue
        mean = weight[:base_rows].float().mean(0, keepdim=True)
        noise = torch.randn(extra, weight.shape[1], generator=g) * 0.01
        weight[base_rows:] = (mean.cpu() + noise).to(weight.dtype).to(weight.device)


def mask_base_rows(lm: nn.Module, base_rows: int) -> list[torch.utils.hooks.RemovableHandle]:
    """Make the embedding matrices trainable with gradients only on the term rows; returns the hooks."""
    handles = []
    for weight in _matrices(lm):
        weight.requires_grad_(True)

        def hook(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            grad[:base_rows] = 0
            return grad

        handles.append(weight.register_hook(hook))
    return handles


def term_parameters(lm: nn.Module) -> list[nn.Parameter]:
    return _matrices(lm)
