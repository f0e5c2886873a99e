"""The shard engine: one long pass cut into resumable pieces that any number of ranks share.

Both long passes of this project (per-depth features for the probe and UMAP,
sampling for FID) must survive a crash, resume where they stopped and give
the same arrays however many ``torchrun`` processes share them. They do it
the same way, here:

- the work is ``total`` items cut into shards of ``shard_size`` consecutive
  positions; what position i stands for (a sample index, a dataset index) is
  ``items[i]``, stored in every shard as ``indices``;
- rank r of W computes the missing shards r, r + W, ... (by shard number, so
  ranks agree on who does what whatever they find on disk);
- each shard is written atomically as an npz, so an existing file is a
  finished shard and a rerun skips it;
- merging concatenates the shards in index order, refusing a missing shard
  or one that holds other indices than the plan expects.

A plan without a directory keeps its shards in memory (a single process
that wants nothing written).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from mimflow_core.distributed import Process
from mimflow_core.errors import MIMFlowError
from mimflow_lab.metrics.npz import write_npz

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ShardPlan:
    """``total`` items cut into shards of ``shard_size`` consecutive positions, stored under ``directory``."""

    total: int
    shard_size: int
    directory: Path | None
    items: np.ndarray | None = field(default=None, compare=False)  # what position i stands for (default: i)
    _kept: dict[int, Arrays] = field(default_factory=dict, init=False, compare=False, repr=False)  # without a directory

    @property
    def num_shards(self) -> int:
        return -(-self.total // self.shard_size)

    def positions(self, shard: int) -> slice:
        return slice(shard * self.shard_size, min((shard + 1) * self.shard_size, self.total))

    def indices(self, shard: int) -> np.ndarray:
        """The items of one shard (what it stores as ``indices``)."""
        span = self.positions(shard)
        return np.arange(span.start, span.stop) if self.items is None else self.items[span]

    def owned(self, rank: int, world: int) -> list[int]:
        """Shards computed by ``rank`` of ``world`` processes: rank, rank + world, ..."""
        return list(range(rank, self.num_shards, world))

    def name(self, shard: int) -> str:
        return f"shard_{shard:06d}.npz"

    def path(self, shard: int) -> Path:
        return self.directory / self.name(shard)

    def is_done(self, shard: int) -> bool:
        return shard in self._kept if self.directory is None else self.path(shard).is_file()

    def missing(self) -> list[int]:
        return [s for s in range(self.num_shards) if not self.is_done(s)]

    def save(self, shard: int, arrays: Arrays) -> None:
        if self.directory is None:
            self._kept[shard] = arrays
        else:
            write_npz(self.path(shard), arrays)

    def remove(self) -> None:
        """Delete every shard file (once their merge is stored)."""
        for shard in range(self.num_shards):
            self.path(shard).unlink(missing_ok=True)


def run_shards(plan: ShardPlan, produce: Callable[[Any], Arrays], process: Process, *,
               inputs: Callable[[list[int]], Iterable[Any]] | None = None, desc: str | None = None,
               progress: bool = True, leave: bool = True) -> int:
    """Compute and save this rank's missing shards; returns how many it wrote.

    ``produce`` gets one input per shard: the shard's ``indices``, or what
    ``inputs(shards)`` yields for each of them in order (a DataLoader that
    prefetches the shards' images). Progress goes to stderr, one tick a shard.
    """
    mine = [s for s in plan.owned(process.rank, process.world) if not plan.is_done(s)]
    work = inputs(mine) if inputs is not None else map(plan.indices, mine)
    with tqdm(total=len(mine), desc=desc or f"shards (rank {process.rank})", unit="shard", file=sys.stderr,
              disable=not (progress and mine), leave=leave, dynamic_ncols=True) as bar:
        for shard, item in zip(mine, work):
            plan.save(shard, {**produce(item), "indices": plan.indices(shard)})
            bar.update(1)
    return len(mine)


def merge_shards(plan: ShardPlan, skip: tuple[str, ...] = ()) -> Arrays:
    """All shards' arrays but ``skip`` concatenated in index order; checks nothing is missing."""
    where = plan.directory or "memory"
    if missing := plan.missing():
        raise MIMFlowError(f"{where}: {len(missing)} shard(s) missing (first: {plan.name(missing[0])})")
    parts: dict[str, list[np.ndarray]] = {}
    for shard in range(plan.num_shards):
        arrays = _read(plan, shard, lambda key: key not in skip)
        if not np.array_equal(arrays["indices"], plan.indices(shard)):
            raise MIMFlowError(f"{where}/{plan.name(shard)}: holds other indices than this run expects")
        for key, value in arrays.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(arrays) for key, arrays in parts.items()}


def shard_batches(plan: ShardPlan, key: str) -> Iterator[np.ndarray]:
    """One array of every shard, in order, one shard in memory at a time (to stream images out)."""
    for shard in range(plan.num_shards):
        yield _read(plan, shard, key.__eq__)[key]


def read_arrays(path: Path) -> Arrays | None:
    """Every array of a finished npz (a merged result), or None when it is absent or unreadable (recompute it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        return None


def _read(plan: ShardPlan, shard: int, wanted: Callable[[str], bool]) -> Arrays:
    """The ``wanted`` arrays of a shard, reading no others from disk (``images`` are large)."""
    if plan.directory is None:
        return {k: v for k, v in plan._kept[shard].items() if wanted(k)}
    with np.load(plan.path(shard)) as data:
        return {k: data[k] for k in data.files if wanted(k)}
