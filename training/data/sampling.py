"""Batches as a pure function of (seed, iteration, rank), shared by both training stages.

The sampler walks an endless stream of sample positions; each pass over the images is a fresh
permutation seeded by (seed, pass), and every position carries its own augmentation seed. A
run resumed at iteration ``k`` therefore sees exactly the batches and augmentations that the
uninterrupted run saw from ``k`` on, on any number of ranks and loader workers.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, position: int) -> int:
    """Augmentation seed of global sample position ``position``."""
    return int(np.random.SeedSequence([int(seed), int(position), 0x55A1]).generate_state(1)[0])


class SeededBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for iterations ``start_iteration .. total_iterations - 1``, this rank's batch as
    ``[(image index, augmentation seed), ...]`` (see the module docstring)."""

    def __init__(self, n_images: int, batch_size: int, total_iterations: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, start_iteration: int = 0) -> None:
        if n_images < 1:
            raise ValueError("no training images")
        self.n, self.batch_size = int(n_images), int(batch_size)
        self.total, self.start = int(total_iterations), int(start_iteration)
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        self._perm_pass = -1
        self._perm: list[int] = []

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _image_at(self, position: int) -> int:
        pass_ = position // self.n
        if pass_ != self._perm_pass:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, pass_, 0x9E37]).generate_state(1)[0]))
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._perm_pass = pass_
        return self._perm[position % self.n]

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        first = (iteration * self.world + self.rank) * self.batch_size
        return [(self._image_at(p), sample_seed(self.seed, p)) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.total):
            yield self.batch(it)
