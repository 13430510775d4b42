"""Block-wise masking for the iBOT objective and the batch collate of stage 1.

:class:`BlockMaskGenerator` follows BEiT/DINOv2's ``MaskingGenerator``: it adds rectangular
blocks of patches (area at least ``min_num_patches``, at most ``max_num_patches``, aspect ratio
in [0.3, 1/0.3]) until the requested number of patches is masked or a block cannot be placed.
Each block only counts the patches it newly masks, so blocks may overlap and the total never
exceeds the request.

:func:`collate_ssl` stacks the crops of a batch (global crops ordered crop-1 of every image,
then crop-2 of every image; local crops likewise per local index) and masks
``int(n_global_crops * mask_sample_probability)`` of the global crops. As in DINOv2 the masked
crops' ratios are stratified: the i-th masked crop draws its ratio uniformly in the i-th of
equal sub-intervals of [mask_ratio_min, mask_ratio_max], so a batch covers the whole range;
the masks are then shuffled over the crops. Every random draw uses the ``torch.Generator``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch


class BlockMaskGenerator:
    def __init__(self, grid: tuple[int, int] | int, max_num_patches: int | None = None, min_num_patches: int = 4,
                 min_aspect: float = 0.3, max_aspect: float | None = None) -> None:
        if isinstance(grid, int):
            grid = (grid, grid)
        self.height, self.width = int(grid[0]), int(grid[1])
        self.num_patches = self.height * self.width
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = int(max_num_patches) if max_num_patches is not None else int(0.5 * self.num_patches)
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))

    def __repr__(self) -> str:
        return (f"BlockMaskGenerator({self.height}x{self.width}, blocks {self.min_num_patches}.."
                f"{self.max_num_patches} patches)")

    def _add_block(self, mask: np.ndarray, max_mask_patches: int, g: torch.Generator) -> int:
        delta = 0
        for _ in range(10):
            u = torch.rand(2, generator=g, dtype=torch.float64).tolist()
            target_area = self.min_num_patches + (max_mask_patches - self.min_num_patches) * u[0]
            aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * u[1])
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 0 < w < self.width and 0 < h < self.height:
                top = int(torch.randint(0, self.height - h + 1, (), generator=g))
                left = int(torch.randint(0, self.width - w + 1, (), generator=g))
                already = int(mask[top:top + h, left:left + w].sum())
                if 0 < h * w - already <= max_mask_patches:
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not mask[i, j]:
                                mask[i, j] = True
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches: int, generator: torch.Generator) -> np.ndarray:
        """A ``(height, width)`` bool mask with at most ``num_masking_patches`` patches set."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            budget = min(num_masking_patches - count, self.max_num_patches)
            delta = self._add_block(mask, budget, generator)
            if delta == 0:
                break
            count += delta
        return mask


def make_masks(n_crops: int, grid: tuple[int, int], generator: torch.Generator, mask_probability: float,
               ratio_min: float, ratio_max: float, mask_generator: BlockMaskGenerator) -> torch.Tensor:
    """``(n_crops, N)`` bool masks: ``int(n_crops * mask_probability)`` crops masked, shuffled."""
    n_patches = grid[0] * grid[1]
    n_masked = int(n_crops * mask_probability)
    bounds = np.linspace(ratio_min, ratio_max, n_masked + 1)
    masks = []
    for i in range(n_masked):
        ratio = bounds[i] + (bounds[i + 1] - bounds[i]) * float(torch.rand((), generator=generator, dtype=torch.float64))
        masks.append(torch.from_numpy(mask_generator(int(n_patches * ratio), generator)))
    for _ in range(n_masked, n_crops):
        masks.append(torch.zeros(grid, dtype=torch.bool))
    order = torch.randperm(n_crops, generator=generator).tolist()
    return torch.stack([masks[i] for i in order]).flatten(1) if n_crops else torch.zeros((0, n_patches), dtype=torch.bool)


def mask_index_and_weights(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (into ``masks.flatten()``) of the masked tokens and each one's weight
    ``1 / (masked tokens of its crop)``."""
    indices = masks.flatten().nonzero().flatten()
    per_crop = masks.sum(-1).clamp(min=1).to(torch.float32)
    weights = (1.0 / per_crop).unsqueeze(-1).expand_as(masks)[masks]
    return indices, weights


class SSLCollate:
    """Picklable collate for the SSL DataLoader (runs in the worker processes).

    Each sample is ``{"global_crops": [2 x (3,G,G)], "local_crops": [L x (3,l,l)], "seed": int}``;
    the masks of a batch are drawn from a generator seeded by the batch's sample seeds, so a
    batch is a pure function of its samples.
    """

    def __init__(self, patch_size: int, global_size: int, mask_probability: float, ratio_min: float,
                 ratio_max: float, min_num_patches: int = 4, max_num_patches: int | None = None) -> None:
        self.grid = (global_size // patch_size, global_size // patch_size)
        n = self.grid[0] * self.grid[1]
        self.mask_generator = BlockMaskGenerator(self.grid, max_num_patches=max_num_patches or int(0.5 * n),
                                                 min_num_patches=min_num_patches)
        self.mask_probability = float(mask_probability)
        self.ratio_min, self.ratio_max = float(ratio_min), float(ratio_max)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n_global = len(samples[0]["global_crops"])
        n_local = len(samples[0]["local_crops"])
        global_crops = torch.stack([s["global_crops"][i] for i in range(n_global) for s in samples])
        if n_local:
            local_crops = torch.stack([s["local_crops"][i] for i in range(n_local) for s in samples])
        else:
            local_crops = torch.zeros((0,) + tuple(global_crops.shape[1:2]) + (1, 1))
        seeds = [int(s.get("seed", 0)) for s in samples]
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([*seeds, 0x3A5C]).generate_state(1)[0]))
        masks = make_masks(global_crops.shape[0], self.grid, g, self.mask_probability, self.ratio_min,
                           self.ratio_max, self.mask_generator)
        indices, weights = mask_index_and_weights(masks)
        out = {"global_crops": global_crops, "local_crops": local_crops, "masks": masks,
               "mask_indices": indices, "mask_weights": weights, "n_masked": int(indices.numel()),
               "batch_size": len(samples), "seeds": torch.tensor(seeds, dtype=torch.int64)}
        if "index" in samples[0]:
            out["indices"] = torch.tensor([int(s["index"]) for s in samples], dtype=torch.int64)
        return out
