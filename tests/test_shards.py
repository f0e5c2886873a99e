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


def _damage(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(b"PK\x03\x04 not a zip at all")
    elif how == "bit flip":  # the first data byte of the first array changes: only the zip's CRC tells
        data = bytearray(path.read_bytes())
        magic = data.index(b"\x93NUMPY")
        data[magic + 10 + int.from_bytes(data[magic + 8: magic + 10], "little")] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "other indices":
        np.savez(path, square=np.zeros(3, np.int64), indices=np.array([0, 1, 2]))
    elif how == "missing key":
        with np.load(path) as z:
            np.savez(path, indices=z["indices"])


def test_damaged_shards_are_named_discarded_and_recomputed(tmp_path):
    items = np.arange(100, 115)
    produce = lambda indices: {"square": indices ** 2}  # noqa: E731
    plan = ShardPlan(len(items), 3, tmp_path, items=items, keys=frozenset({"square"}))
    one = Process(0, 1, torch.device("cpu"))
    assert run_shards(plan, produce, one, progress=False) == 5
    clean = merge_shards(plan)
    damage = ["truncated", "garbage", "bit flip", "other indices", "missing key"]
    for shard, how in enumerate(damage):
        _damage(plan.path(shard), how)
    with pytest.warns(UserWarning) as caught:
        assert run_shards(plan, produce, one, progress=False) == 5  # all five redone, none used
    assert sorted(str(w.message).split(":")[0] for w in caught) == [str(plan.path(s)) for s in range(5)]
    assert all("discarded, computing it again" in str(w.message) and "\n" not in str(w.message) for w in caught)
    for key, value in merge_shards(plan).items():
        np.testing.assert_array_equal(value, clean[key])


def test_merge_refuses_in_one_line_what_it_cannot_trust(tmp_path):
    """A shard damaged after its rank checked it, or (plan without declared keys) lacking an array, is one line."""
    plan = ShardPlan(6, 3, tmp_path)
    run_shards(plan, lambda indices: {"a": indices, "b": -indices}, Process(0, 1, torch.device("cpu")), progress=False)
    np.savez(plan.path(1), a=np.arange(3, 6), indices=np.arange(3, 6))
    with pytest.raises(MIMFlowError, match=r"shard_000001\.npz: holds arrays \['a', 'indices'\], but "
                                           r"shard_000000\.npz holds \['a', 'b', 'indices'\]"):
        merge_shards(plan)
    _damage(plan.path(0), "truncated")
    with pytest.raises(MIMFlowError, match=r"shard_000000\.npz: unreadable shard .*rerun") as refused:
        merge_shards(plan)
    assert "\n" not in str(refused.value)
