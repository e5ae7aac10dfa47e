"""Work on a list of files spread over several processes, GPUs or nodes with Lightning Fabric (DDP).

``mucosa predict --devices N --num-nodes M`` gives every process a share of the files: each file goes to
exactly one process (no sampler padding: a plain partition, balanced by file size) and all of a file's
frames stay in that process. Rank 0's list of files and the partition are broadcast, so every process works
on the same list even where a folder changes during the run or nodes see it differently. Each process
returns one result per file of its share; the results are gathered on rank 0 in the list's order, and rank 0
alone goes on (writes the outputs). A process that fails sends its error instead, and rank 0 raises the
first one, so that no process waits for one that died.

Processes are started by Lightning: it re-runs the command once per extra device (``ddp``), or finds those
that SLURM (``srun``) or ``torchrun`` started. Processes that finish early wait for the slowest at the end,
for up to :data:`WAIT` (Lightning's default of 30 minutes is too short for a large archive). The processes
only exchange Python objects (the file list, the results), never model tensors, so they talk over gloo (TCP)
also on GPUs: no GPU memory for the results, and a process that exits ends the others' wait.
"""

from __future__ import annotations

import heapq
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mucosa.choices import STRATEGIES
from mucosa.errors import ConfigError, MucosaError
from mucosa.models.tracking import check_nodes_started

log = logging.getLogger(__name__)

WAIT = timedelta(days=1)  # the longest a finished process waits for the others


@dataclass(frozen=True)
class Processes:
    """Where the work runs: Lightning's accelerator, devices per node, number of nodes and strategy."""

    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"

    @property
    def several(self) -> bool:
        """More than one process (one device on one node is the single-process path, without Lightning)."""
        return str(self.devices).strip() != "1" or self.num_nodes != 1

    def check_launcher(self) -> None:
        """Refuse one process's settings in a process that ``torchrun`` started as one of several (each would
        do all the work and write the outputs).

        Raises:
            ConfigError: naming the settings that match torchrun's.
        """
        size = os.environ.get("WORLD_SIZE", "1") if os.environ.get("TORCHELASTIC_RUN_ID") else "1"
        if not self.several and size.isdigit() and int(size) > 1:
            raise ConfigError(f"torchrun started {size} processes, but devices 1 and num_nodes 1 ask for one: "
                              "pass --devices (processes per node) and --num-nodes as given to torchrun "
                              "(--nproc-per-node, --nnodes)")


def shares(weights: Sequence[float], world: int) -> list[list[int]]:
    """Split item indices over ``world`` processes: each index exactly once, no padding, largest items first
    to the least loaded process (ties: the lower rank); each share in index order.

    >>> shares([5, 1, 1, 1, 4], 2)
    [[0, 2], [1, 3, 4]]
    """
    if world < 1:
        raise ValueError(f"world size {world} must be at least 1")
    loads = [(0.0, rank) for rank in range(world)]
    parts: list[list[int]] = [[] for _ in range(world)]
    for index in sorted(range(len(weights)), key=lambda i: (-float(weights[i]), i)):
        load, rank = heapq.heappop(loads)
        parts[rank].append(index)
        heapq.heappush(loads, (load + max(float(weights[index]), 1.0), rank))
    return [sorted(part) for part in parts]


def _fabric(processes: Processes):
    """The Fabric object for these settings; ConfigError where Lightning cannot use them here."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    if processes.strategy not in STRATEGIES:
        raise ConfigError(f"strategy {processes.strategy!r}: predicting on several processes supports "
                          f"{' or '.join(STRATEGIES)}")
    try:
        fabric = Fabric(accelerator=processes.accelerator, devices=processes.devices, num_nodes=processes.num_nodes,
                        strategy=DDPStrategy(start_method="popen", timeout=WAIT, process_group_backend="gloo"))
        strategy = fabric.strategy  # SLURM's or torchrun's process counts must match (checked again at launch)
        strategy.cluster_environment.validate_settings(num_devices=strategy.num_processes,
                                                       num_nodes=strategy.num_nodes)
    except (ValueError, TypeError, RuntimeError, ImportError) as error:  # MisconfigurationException: ValueError
        lines = str(error).strip().splitlines()
        raise ConfigError(f"accelerator {processes.accelerator}, devices {processes.devices}, num_nodes "
                          f"{processes.num_nodes}: Lightning cannot use them here "
                          f"({lines[0][:300] if lines else type(error).__name__})") from None
    check_nodes_started(processes.num_nodes, strategy.cluster_environment)
    return fabric


def _portable(error: BaseException, rank: int) -> BaseException:
    """The error itself when it can travel to rank 0 (pickle), else a MucosaError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure: send the text instead
        return MucosaError(f"process {rank}: {type(error).__name__}: {error}")


def _gather(payload: Any, world: int, rank: int) -> list | None:
    """Every process's payload on rank 0 (in rank order); None elsewhere."""
    import torch.distributed as dist

    if world == 1:
        return [payload]
    received = [None] * world if rank == 0 else None
    dist.gather_object(payload, received, dst=0)
    return received


Work = Callable[[list, Any, int], list]  # (the items of this process, its torch device, its rank) -> results


def _run(fabric, items: list, weight: Callable[[Any], float], work: Work) -> tuple[list, list] | None:
    """In every process: take rank 0's items and partition, do this process's share, gather on rank 0."""
    rank, world = fabric.global_rank, fabric.world_size
    plan = (items, shares([weight(item) for item in items], world)) if rank == 0 else None
    items, parts = fabric.broadcast(plan, src=0)
    mine = parts[rank]
    log.info("process %d of %d (%s): %d of %d files", rank, world, fabric.device, len(mine), len(items))
    try:
        results = list(work([items[i] for i in mine], fabric.device, rank))
        if len(results) != len(mine):
            raise MucosaError(f"process {rank}: {len(results)} results for {len(mine)} files")
        payload: tuple[str, Any] = ("done", results)
    except Exception as error:  # noqa: BLE001 - sent to rank 0, which raises it
        payload = ("failed", _portable(error, rank))
    gathered = _gather(payload, world, rank)
    if rank != 0:
        if payload[0] == "failed":
            log.info("process %d failed; rank 0 reports it", rank)
        return None
    ordered: list = [None] * len(items)
    for part, (state, value) in zip(parts, gathered):
        if state == "failed":
            raise value
        for index, result in zip(part, value):
            ordered[index] = result
    return items, ordered


def map_files(items: list, work: Work, processes: Processes,
              weight: Callable[[Any], float] | None = None) -> tuple[list, list] | None:
    """Run ``work`` over ``items`` on several processes; on rank 0 return (rank 0's items, their results in
    that order), elsewhere None.

    ``work(share, device, rank)`` gets the items of one process (in list order), the torch device it runs on
    and its rank, and returns one result per item. ``weight(item)`` (e.g. a file's size, asked on rank 0
    only) balances the shares.

    Raises:
        ConfigError: settings Lightning cannot use here (no GPU, unknown accelerator, strategy...).
        Whatever ``work`` raised in any process (on rank 0).
    """
    fabric = _fabric(processes)
    return fabric.launch(_run, items, weight or _one, work)


def _one(item: Any) -> float:
    return 1.0
