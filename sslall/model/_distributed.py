"""Process-group helpers for `torchrun` (PyTorch's own distributed engine).

A round started by `torchrun --nproc_per_node N -m sslall round ...` runs in N processes. They
find each other through torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); without WORLD_SIZE > 1 there is no process group and everything runs as one
process, exactly as before. The backend is NCCL when the round runs on CUDA (rank r on
`cuda:LOCAL_RANK`) and gloo on the CPU.

Who does what (see `sslall.rounds`): rank 0 alone takes the workspace lock, reads and writes
the pool store, the feature cache and the checkpoint; it sends the round's snapshot to the
others, which join the collective steps only (feature extraction and scoring in shards, DDP
training) and then leave. An error rank 0 raises before the snapshot is sent (the lock is busy,
no labels) is sent instead, so every rank exits with the same code and none waits forever.

The torch-free part (WORLD_SIZE, the exit-code file, the `--nproc` launcher) lives in
`sslall.model._launcher`, so a refused round answers without loading torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
from torch.utils.data import Sampler

from sslall.errors import SslallError
from sslall.model._launcher import world_size_from_env

__all__ = ["DealtSampler", "Dist", "RankZeroFailed", "broadcast", "gather_rows", "setup", "shard_bounds",
           "teardown"]

GATHER_ROWS = 16_384  # rows per message when shards are sent to rank 0 (bounds message size)


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class RankZeroFailed(SslallError):
    """Rank 0 failed before the round's snapshot was sent; every other rank exits with its code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message, exit_code)  # both in args, so it survives pickling
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"rank 0: {self.args[0]}"


def setup(device: torch.device) -> Dist | None:
    """Join torchrun's process group (once) when WORLD_SIZE > 1; None for a single process.

    `device` is the resolved `model.device`: on CUDA each rank takes `cuda:LOCAL_RANK` and the
    backend is NCCL; otherwise gloo on the CPU.
    """
    world = world_size_from_env()
    if world == 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend, timeout=timedelta(hours=2))
    return Dist(rank, world, local_rank, backend, device)


def teardown(dist: Dist | None) -> None:
    """Leave the process group (every rank calls this at the end of its command)."""
    if dist is not None and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()


def broadcast(dist: Dist | None, obj: Any = None) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small things: a snapshot, a message, scores)."""
    if dist is None:
        return obj
    box = [obj if dist.is_main else None]
    tdist.broadcast_object_list(box, src=0, device=_object_device(dist))
    return box[0]


def shard_bounds(n: int, dist: Dist | None) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of n rows (the first ranks take one more)."""
    if dist is None:
        return 0, n
    base, extra = divmod(n, dist.world_size)
    start = dist.rank * base + min(dist.rank, extra)
    return start, start + base + (dist.rank < extra)


def gather_rows(dist: Dist, local: np.ndarray, sink: Callable[[int, np.ndarray], None] | None,
                *, chunk: int = GATHER_ROWS) -> None:
    """Send every rank's `local` rows (its `shard_bounds` share) to rank 0, in row order.

    Rank 0 calls `sink(offset, rows)` for each piece (its own included), so it can write them
    to a memory-mapped array or the feature cache as they arrive; at most `chunk` rows travel
    per message. Other ranks pass `sink=None`.
    """
    counts = [0] * dist.world_size
    tdist.all_gather_object(counts, len(local))
    device = _object_device(dist)
    offset = 0
    for rank, count in enumerate(counts):
        for start in range(0, count, chunk):
            piece = [local[start : start + chunk] if dist.rank == rank else None]
            if rank != 0 and dist.rank == rank:
                tdist.send_object_list(piece, dst=0, device=device)
            elif rank != 0 and dist.is_main:
                tdist.recv_object_list(piece, src=rank, device=device)
            if dist.is_main and sink is not None:
                sink(offset + start, np.asarray(piece[0]))
        offset += count


class DealtSampler(Sampler[int]):
    """Rank `rank`'s share of another sampler's draw: every `world`-th index, padded to equal
    length. Every rank draws the same sequence (same seeded generator), so the union of the
    ranks' k-th local batches is the k-th batch one process would have drawn."""

    def __init__(self, base: Sampler[int], rank: int, world: int) -> None:
        self.base, self.rank, self.world = base, rank, world

    def __len__(self) -> int:
        return -(-len(self.base) // self.world)

    def __iter__(self) -> Iterator[int]:
        drawn = list(self.base)
        drawn += drawn[: len(self) * self.world - len(drawn)]
        return iter(drawn[self.rank :: self.world])


def _object_device(dist: Dist) -> torch.device | None:
    """Object collectives travel as tensors on the rank's CUDA device under NCCL."""
    return dist.device if dist.backend == "nccl" else None
