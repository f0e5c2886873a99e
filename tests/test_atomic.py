"""The atomic writer under refusal: a full disk, a file where --out's directory should be, an interrupted write."""
from __future__ import annotations

import errno
import os

import pytest

from mimflow_core.atomic import atomic_open, temp_files, write_json
from mimflow_core.errors import MIMFlowError


def test_a_full_disk_keeps_the_old_file_byte_identical_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text('{"fid": 12.5}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(MIMFlowError) as err:
        write_json(target, {"fid": 99.0})
    assert str(err.value) == (f"{target}: cannot write (No space left on device); its previous contents are intact, "
                              "and earlier results are unchanged")
    assert target.read_text() == '{"fid": 12.5}\n' and temp_files(target) == []


def test_an_out_that_is_a_file_is_named_as_the_problem(tmp_path):
    (tmp_path / "results").write_text("I am a file")
    with pytest.raises(MIMFlowError, match=r"results/metrics.json: cannot write \(.*/results is a file, not a "
                                           r"directory\); nothing was written there"):
        write_json(tmp_path / "results" / "metrics.json", {})
    assert (tmp_path / "results").read_text() == "I am a file"


def test_an_exception_inside_the_write_removes_the_temp_file_and_keeps_its_type(tmp_path):
    target = tmp_path / "shard.npz"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert not target.exists() and temp_files(target) == []
