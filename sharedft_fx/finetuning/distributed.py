"""Distributed training under torchrun: process group set-up, device choice, rank helpers.

``torchrun --nproc-per-node=N script.py`` sets RANK / WORLD_SIZE / LOCAL_RANK; `finetune` then
initialises the process group itself (gloo on CPU, nccl on CUDA) and wraps the model in
DistributedDataParallel. DDP reduces a bank's gradient once per step after autograd has summed
the contributions of all its uses, so shared weights need nothing special.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "setup", "teardown", "all_reduce_mean", "any_rank"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs: rank, world size, device, and whether we created the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str | torch.device | None = None) -> DistEnv:
    """Join (or create, from torchrun's environment) the process group and pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    elif world > 1:
        on_cpu = device is not None and torch.device(device).type == "cpu"
        backend = "nccl" if torch.cuda.is_available() and not on_cpu else "gloo"
        dist.init_process_group(backend=backend)
        owns = True
        log.info("initialised process group (%s, world size %d)", backend, world)
    rank = dist.get_rank() if world > 1 else 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistEnv(rank, world, local, dev, owns)


def teardown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float, env: DistEnv) -> float:
    """Mean of a float over the processes (the value itself when not distributed)."""
    if not env.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return float(t.item()) / env.world_size


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every process when `flag` is true on at least one."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
