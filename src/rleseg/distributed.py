"""DDP under torchrun for the training loop: the process group (gloo on CPU, NCCL on GPU), and what ranks
must agree on so that they stay in step: rank 0's schedule and clock, a stop any rank was asked for, and
rank 0's buffers before they evaluate."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import resolve_device


@dataclass
class Distributed:
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (nothing to wait for in a single process)."""
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: str | None = None) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process on ``device``
    (:func:`rleseg.device.resolve_device`: None is cuda when available, else cpu)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = resolve_device(device)
    if world == 1:
        return Distributed(device=chosen)
    if device is not None and chosen.index is not None:
        raise ValueError(f"device {device}: under torchrun each process takes cuda:LOCAL_RANK; give cuda or cpu")
    cuda = chosen.type == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Distributed(device, dist.get_rank(), dist.get_world_size())


def agree(total_steps: int, elapsed: float, stop: bool, env: Distributed) -> tuple[int, float, bool]:
    """Rank 0's schedule length and clock for every rank, and a stop when any rank was asked to.

    Ranks time their steps differently; without this a wall-clock budget would give them different
    learning rates and step counts (diverging weights, then a hang in the next collective).
    """
    if env.world == 1:
        return total_steps, elapsed, stop
    own = [float(stop), float(total_steps), elapsed] if env.main else [float(stop), 0.0, 0.0]
    shared = torch.tensor(own, dtype=torch.float64, device=env.device)  # NCCL reduces only GPU tensors
    dist.all_reduce(shared)
    return int(shared[1].item()), float(shared[2].item()), bool(shared[0].item() > 0)


def sync_buffers(model: torch.nn.Module, env: Distributed) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart, each rank seeing its own
    batches), so that all ranks evaluate the model rank 0 saves."""
    if env.world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
