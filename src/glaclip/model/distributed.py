"""Splitting work across processes started by ``torchrun`` (one node or many)."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place: ``rank`` of ``world_size``; ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info_from_env() -> DistInfo:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` as set by torchrun (defaults: 0, 1, 0)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(device: str | None) -> tuple[DistInfo, str | None]:
    """Join the torchrun process group if there is one.

    The backend is nccl when the processes use CUDA, gloo otherwise. Under torchrun with
    CUDA, each process takes the GPU of its local rank unless ``device`` names one.

    Returns:
        ``(DistInfo, device)``: the device this process should use.
    """
    info = dist_info_from_env()
    if not info.enabled:
        return info, device
    import torch.distributed as dist

    use_cuda = (device or "").startswith("cuda") or (device is None and torch.cuda.is_available())
    if use_cuda and (device in (None, "cuda")):
        device = f"cuda:{info.local_rank}"
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info, device


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's items: every ``world_size``-th item starting at ``rank``.

    Every item goes to exactly one rank; none is repeated and none is padded in.
    """
    return list(items[info.rank :: info.world_size])


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op in a single process). Returns the summed tensor."""
    if not info.enabled:
        return t
    import torch.distributed as dist

    backend = dist.get_backend()
    work = t.cuda() if backend == "nccl" else t.cpu()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def gather_messages(message: str, info: DistInfo, max_bytes: int = 2048) -> list[str]:
    """Every rank's ``message`` (UTF-8, its first ``max_bytes`` bytes), on every rank.

    A collective: every rank must call it. Uses ``all_reduce_sum`` (gloo and nccl alike).
    """
    data = message.encode("utf-8")[:max_bytes]
    cpu = torch.device("cpu")  # host data; all_reduce_sum moves it where the backend needs it
    table = torch.zeros(info.world_size, max_bytes, dtype=torch.int64, device=cpu)
    table[info.rank, : len(data)] = torch.tensor(list(data), dtype=torch.int64, device=cpu)
    table = all_reduce_sum(table, info)
    return [bytes(row[row > 0].tolist()).decode("utf-8", "replace") for row in table]


def barrier(info: DistInfo) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def finalize(info: DistInfo, clean: bool = True) -> None:
    """Leave the process group.

    After a ``clean`` run, every rank first waits until every rank has left its last
    collective (``_leave_together``): a rank that closes its connections while a peer is
    still reading from them can make that peer's process abort (seen with gloo, rarely).
    After an error no rank waits: a peer may be stuck in a collective this rank never joins.
    """
    if not info.enabled:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    _leave_together(info, wait=clean)
    dist.destroy_process_group()


_TEARDOWNS = itertools.count()  # one key set per process group this process has left


def _leave_together(info: DistInfo, wait: bool) -> None:
    """Tell the other ranks, through the rendezvous store (not the group's own connections),
    that this rank has left its collectives; with ``wait``, wait until every rank has.

    Best effort: where the store cannot be reached or a rank never comes (it failed outside
    a collective and torchrun stops the run), the process group is left all the same.
    """
    from torch.distributed import distributed_c10d

    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefix = f"glaclip/left/{run}/{attempt}/{next(_TEARDOWNS)}"
    try:
        store = distributed_c10d._get_default_store()
        store.set(f"{prefix}/{info.rank}", "1")
        if wait:
            store.wait([f"{prefix}/{r}" for r in range(info.world_size)])
    except Exception:  # the group is left in any case
        return


@contextlib.contextmanager
def process_group(device: str | None) -> Iterator[tuple[DistInfo, str | None]]:
    """``init_distributed`` for the duration of a run: yields ``(DistInfo, device)`` and
    always leaves the process group afterwards (``finalize``): after a run that ended
    without an error, every rank leaves it together."""
    info, device = init_distributed(device)
    try:
        yield info, device
    except BaseException:
        finalize(info, clean=False)
        raise
    finalize(info)
