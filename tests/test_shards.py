"""The shard engine: shards partition the work across ranks, and a plan without a directory stays in memory."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mimflow_core.distributed import Process
from mimflow_core.errors import MIMFlowError
from mimflow_lab.shards import ShardPlan, merge_shards, run_shards


def test_shards_partition_the_work():
    plan = ShardPlan(1000, 256, None)
    slices = [plan.positions(s) for s in range(plan.num_shards)]
    assert [(s.start, s.stop) for s in slices] == [(0, 256), (256, 512), (512, 768), (768, 1000)]
    for world in (1, 2, 3, 5):
        owned = [plan.owned(r, world) for r in range(world)]
        assert sorted(s for o in owned for s in o) == list(range(len(slices)))


def test_ranks_merge_in_index_order_and_refuse_gaps(tmp_path):
    """Two ranks' shards on disk merge to the arrays one process would give; items are what ``indices`` store."""
    items = np.array([3, 5, 8, 13, 21, 34, 55])
    produce = lambda indices: {"square": indices ** 2}  # noqa: E731
    plan = ShardPlan(len(items), 3, tmp_path, items=items)
    assert run_shards(plan, produce, Process(1, 2, torch.device("cpu")), progress=False) == 1
    with pytest.raises(MIMFlowError, match=r"2 shard\(s\) missing \(first: shard_000000\.npz\)"):
        merge_shards(plan)
    assert run_shards(plan, produce, Process(0, 2, torch.device("cpu")), progress=False) == 2
    assert run_shards(plan, produce, Process(0, 1, torch.device("cpu")), progress=False) == 0  # resumed: all done
    on_disk = merge_shards(plan)
    in_memory = ShardPlan(len(items), 3, None, items=items)
    run_shards(in_memory, produce, Process(0, 1, torch.device("cpu")), progress=False)
    for merged in (on_disk, merge_shards(in_memory)):
        np.testing.assert_array_equal(merged["indices"], items)
        np.testing.assert_array_equal(merged["square"], items ** 2)
    with pytest.raises(MIMFlowError, match="holds other indices"):
        merge_shards(ShardPlan(len(items), 3, tmp_path))
