"""Data parallelism over local devices: one process per device under torch.distributed.run.

Every rank reads the same data and builds the same order; each step's micro-batches are dealt
out round-robin, so the ranks together take exactly the global batch one device would. The
loss of a step is normalized by its trained-token count summed over the ranks, the LoRA
gradients are summed across the ranks once per step (one flat all-reduce: a LoRA adapter's
parameters fit one buffer), and every rank then takes the same optimizer step. Rank 0 alone
writes events, checkpoints (with every rank's RNG state) and artifacts. With one device
nothing here communicates.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.contract import RANK_VARIABLE

LOCAL_RANK_VARIABLE = "LOCAL_RANK"
"""The rank's device index, set by torch.distributed.run."""


@dataclass(frozen=True)
class Group:
    """This process's place among the ranks of one training run."""

    rank: int = 0
    world: int = 1

    @classmethod
    def join(cls) -> "Group":
        """The group torch.distributed.run started this process in (gloo on the CPU, NCCL on
        GPUs, each rank on its own GPU), or a group of one."""
        if RANK_VARIABLE not in os.environ:
            return ALONE
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ[LOCAL_RANK_VARIABLE]))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def mine(self, index: int) -> bool:
        """Whether the `index`-th micro-batch of a step is this rank's."""
        return index % self.world == self.rank

    def sum(self, values: list[float]) -> list[float]:
        """`values` summed element-wise over the ranks."""
        if self.world == 1:
            return values
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def sum_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sums the parameters' gradients over the ranks, in place."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank (for what rank 0 alone looks at)."""
        if self.world == 1:
            return flag
        box = [flag]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    def barrier(self) -> None:
        """Waits until every rank is here."""
        if self.world > 1:
            dist.barrier()

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, by rank."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def leave(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


ALONE = Group()
"""One process, one device: nothing to communicate."""
