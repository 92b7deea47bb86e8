"""Deterministic, resumable, rank-sharded order of training samples.

Epoch ``e`` visits a permutation drawn from ``seed + e``; with ``world`` ranks, rank ``r`` takes every
``world``-th index of it (padded by wrap-around so that every rank does the same number of steps). A run
resumed at (epoch, position) sees exactly the samples the uninterrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_order(num_samples: int, seed: int, epoch: int, rank: int = 0, world: int = 1, shuffle: bool = True):
    """The indices rank ``rank`` visits in ``epoch``, as an int64 array."""
    if num_samples < 1:
        raise ValueError("cannot sample from an empty dataset")
    order = np.random.default_rng([seed, epoch]).permutation(num_samples) if shuffle else np.arange(num_samples)
    per_rank = -(-num_samples // world)
    order = np.resize(order, per_rank * world)  # wrap around so that every rank gets as many samples
    return order[rank::world]


class ResumableSampler(Sampler[int]):
    """Yields one epoch of this rank's indices from ``position`` on; call ``set_epoch`` between epochs."""

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.num_samples, self.seed, self.rank, self.world, self.shuffle = num_samples, seed, rank, world, shuffle
        self.epoch, self.position = 0, 0

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.num_samples, self.seed, self.epoch, self.rank, self.world, self.shuffle)
        return iter(order[self.position :].tolist())

    def __len__(self) -> int:
        return -(-self.num_samples // self.world) - self.position
