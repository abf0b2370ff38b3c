"""torchrun/DistributedDataParallel support, so cloud-side loops run unchanged on many processes.

Under `torchrun` (WORLD_SIZE > 1 in the environment) the process group starts on first use: gloo
on CPU, NCCL when CUDA is available. Without torchrun everything is a world of one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_CONTEXT: DistContext | None = None


def context() -> DistContext:
    """The process's distributed context, initialising the process group under torchrun."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    return _CONTEXT


def barrier() -> None:
    if context().enabled:
        dist.barrier()


def shutdown() -> None:
    global _CONTEXT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None
