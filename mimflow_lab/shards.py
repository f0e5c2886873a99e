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
  finished shard and a rerun skips it -- once it has read back whole: a rank
  first checks its existing shards (every array readable, ``indices`` those
  of the plan, the plan's ``keys``, one row per index) and deletes a damaged
  one with a warning naming it, to compute it again;
- merging concatenates the shards in index order, refusing (one line) a
  missing shard or one that does not read back as the plan expects.

A finished result (the merged shards of the feature cache) is read back by
:func:`read_finished`, which treats a damaged one the same way.

A plan without a directory keeps its shards in memory (a single process
that wants nothing written).
"""
from __future__ import annotations

import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from mimflow_core.errors import one_line
from mimflow_core.distributed import Process
from mimflow_core.errors import MIMFlowError
from mimflow_lab.metrics.npz import write_npz

Arrays = dict[str, np.ndarray]
DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile)  # what np.load raises on a cut or garbled npz


@dataclass(frozen=True)
class ShardPlan:
    """``total`` items cut into shards of ``shard_size`` consecutive positions, stored under ``directory``."""

    total: int
    shard_size: int
    directory: Path | None
    items: np.ndarray | None = field(default=None, compare=False)  # what position i stands for (default: i)
    keys: frozenset[str] | None = field(default=None, compare=False)  # every shard's arrays but indices, when known
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

    def problem(self, shard: int) -> str | None:
        """What is wrong with a stored shard (None when it reads back whole, as this plan expects)."""
        try:
            arrays = _load(self.path(shard))
        except DAMAGED as e:
            return f"unreadable ({e})"
        if self.keys is not None and set(arrays) != self.keys | {"indices"}:
            return f"holds arrays {sorted(arrays)}, expected {sorted(self.keys | {'indices'})}"
        return _arrays_problem(arrays, self.indices(shard))

    def discard_damaged(self, shards: list[int]) -> None:
        """Delete the stored ``shards`` that do not read back whole, each named in a warning, so they are redone."""
        if self.directory is None:
            return  # shards kept in memory cannot be damaged
        for shard in shards:
            if self.is_done(shard) and (problem := self.problem(shard)):
                _discard(self.path(shard), problem)


def run_shards(plan: ShardPlan, produce: Callable[[Any], Arrays], process: Process, *,
               inputs: Callable[[list[int]], Iterable[Any]] | None = None, desc: str | None = None,
               progress: bool = True, leave: bool = True) -> int:
    """Compute and save this rank's missing shards; returns how many it wrote.

    ``produce`` gets one input per shard: the shard's ``indices``, or what
    ``inputs(shards)`` yields for each of them in order (a DataLoader that
    prefetches the shards' images). Progress goes to stderr, one tick a shard.
    """
    plan.discard_damaged(plan.owned(process.rank, process.world))
    mine = [s for s in plan.owned(process.rank, process.world) if not plan.is_done(s)]
    work = inputs(mine) if inputs is not None else map(plan.indices, mine)
    with tqdm(total=len(mine), desc=desc or f"shards (rank {process.rank})", unit="shard", file=sys.stderr,
              disable=not (progress and mine), leave=leave, dynamic_ncols=True) as bar:
        for shard, item in zip(mine, work):
            plan.save(shard, {**produce(item), "indices": plan.indices(shard)})
            bar.update(1)
    return len(mine)


def merge_shards(plan: ShardPlan, skip: tuple[str, ...] = ()) -> Arrays:
    """All shards' arrays but ``skip`` concatenated in index order.

    Checks what it reads (run_shards checked the shards before): nothing missing, every shard readable,
    with the plan's indices, one row per index and the arrays of the first shard (else a merged array
    would silently lack rows).
    """
    where = plan.directory or "memory"
    if missing := plan.missing():
        raise MIMFlowError(one_line(f"{where}: {len(missing)} shard(s) missing (first: {plan.name(missing[0])})"))
    parts: dict[str, list[np.ndarray]] = {}
    for shard in range(plan.num_shards):
        arrays = _read(plan, shard, lambda key: key not in skip)
        problem = _arrays_problem(arrays, plan.indices(shard))
        if problem is None and parts and set(arrays) != set(parts):
            problem = f"holds arrays {sorted(arrays)}, but {plan.name(0)} holds {sorted(parts)}"
        if problem is not None:
            raise MIMFlowError(one_line(f"{where}/{plan.name(shard)}: {problem}; rerun to compute it again"))
        for key, value in arrays.items():
            parts.setdefault(key, []).append(value)
    return {key: np.concatenate(arrays) for key, arrays in parts.items()}


def shard_batches(plan: ShardPlan, key: str) -> Iterator[np.ndarray]:
    """One array of every shard, in order, one shard in memory at a time (to stream images out)."""
    for shard in range(plan.num_shards):
        yield _read(plan, shard, key.__eq__)[key]


def read_finished(path: Path, indices: np.ndarray, keys: Iterable[str]) -> Arrays | None:
    """Every array of a finished npz (a merged result) for ``indices`` with at least ``keys``, or None when it
    is absent; a damaged or mismatching one is named in a warning and deleted (so it is computed again)."""
    if not path.is_file():
        return None
    try:
        arrays = _load(path)
    except DAMAGED as e:
        problem = f"unreadable ({e})"
    else:
        missing = sorted(set(keys) - set(arrays))
        problem = _arrays_problem(arrays, indices) or (f"lacks {', '.join(missing)}" if missing else None)
    if problem is None:
        return arrays
    _discard(path, problem)
    return None


def _arrays_problem(arrays: Arrays, indices: np.ndarray) -> str | None:
    """Why stored arrays cannot stand for ``indices`` (None when they can): other indices, or an array
    without one row per index."""
    if "indices" not in arrays or not np.array_equal(arrays["indices"], indices):
        return "holds other indices than this run expects"
    if uneven := sorted(k for k, v in arrays.items() if v.ndim == 0 or len(v) != len(indices)):
        return f"{', '.join(uneven)} without one row per index"
    return None


def _discard(path: Path, problem: str) -> None:
    """Delete a damaged result file, named in a one-line warning: it is computed again, never used, never fatal."""
    warnings.warn(one_line(f"{path}: {problem}; discarded, computing it again"), stacklevel=3)
    path.unlink(missing_ok=True)


def _read(plan: ShardPlan, shard: int, wanted: Callable[[str], bool]) -> Arrays:
    """The ``wanted`` arrays of a shard, reading no others from disk (``images`` are large)."""
    if plan.directory is None:
        return {k: v for k, v in plan._kept[shard].items() if wanted(k)}
    try:
        return _load(plan.path(shard), wanted)
    except DAMAGED as e:
        raise MIMFlowError(one_line(f"{plan.path(shard)}: unreadable shard ({e}); rerun to compute it again")) from None


def _load(path: Path, wanted: Callable[[str], bool] = lambda key: True) -> Arrays:
    """The ``wanted`` arrays of an npz, pickles refused; raises one of DAMAGED when the file is cut or garbled.

    The file is opened here, not by np.load, which leaves its handle open when the zip is broken.
    """
    with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if wanted(k)}
