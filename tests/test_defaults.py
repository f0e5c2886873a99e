"""Commands that need a checkpoint find the obvious one when none is named, and say which."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mimflow_core.errors import MIMFlowError
from mimflow_lab.defaults import default_checkpoint


def _touch(path, age_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_newest_checkpoint_of_newest_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MIMFLOW_CHECKPOINT", raising=False)
    _touch(tmp_path / "runs" / "old" / "ckpt.pt", 300)
    _touch(tmp_path / "runs" / "new" / "a.pt", 100)
    newest = _touch(tmp_path / "runs" / "new" / "ckpt.pt", 50)
    _touch(tmp_path / "runs" / "new" / "notes.txt", 1)
    assert default_checkpoint(tmp_path / "runs") == newest


def test_environment_variable_wins_and_is_checked(tmp_path, monkeypatch):
    chosen = _touch(tmp_path / "elsewhere.pt", 1000)
    _touch(tmp_path / "runs" / "r" / "ckpt.pt", 0)
    monkeypatch.setenv("MIMFLOW_CHECKPOINT", str(chosen))
    assert default_checkpoint(tmp_path / "runs") == chosen
    monkeypatch.setenv("MIMFLOW_CHECKPOINT", str(tmp_path / "gone.pt"))
    with pytest.raises(MIMFlowError, match="gone.pt: no such checkpoint"):
        default_checkpoint(tmp_path / "runs")


def test_no_checkpoint_anywhere_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MIMFLOW_CHECKPOINT"}
    for args in (["probe", "--depths", "all"], ["fid", "--samples", "10", "--rfid", "digits"]):
        run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", *args], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert run.returncode == 2 and "no checkpoint given and none found under runs/" in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1


def test_probe_says_which_checkpoint_it_used(tmp_path):
    _touch(tmp_path / "runs" / "r" / "ckpt.pt", 0)  # not a real checkpoint: the loader names it
    env = {k: v for k, v in os.environ.items() if k != "MIMFLOW_CHECKPOINT"}
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "probe", "--depths", "all"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert "no checkpoint named; using runs/r/ckpt.pt" in run.stderr
    assert run.returncode == 2 and "runs/r/ckpt.pt: not a PyTorch checkpoint" in run.stderr
