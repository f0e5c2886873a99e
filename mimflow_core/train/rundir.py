"""One trainer per run directory: the lock a run holds on ``--out``, and the temp files a killed run left there.

Two runs writing one ``--out`` would interleave their log and overwrite each
other's checkpoints, so a run holds ``fcntl.flock`` on ``--out/.train.lock``
for its whole life. The operating system drops that lock when the process
ends, however it ends, so a crashed run never leaves the directory stuck; the
PID and host written into the file only say who holds it. Under torchrun
rank 0 alone locks (it alone writes). Holding the lock also makes every
atomic-write temp file of a run's outputs a dead run's: the only writer that
could own one is this run, which has not written yet.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from mimflow_core.atomic import temp_files
from mimflow_core.errors import MIMFlowError

LOCK = ".train.lock"


@contextlib.contextmanager
def claim_run_directory(out: Path, outputs: Iterable[str], is_main: bool) -> Iterator[None]:
    """Hold ``out``'s lock while the body runs, after removing stale temp files of ``outputs`` (rank 0 only)."""
    if not is_main:
        yield
        return
    fd = _lock(out)
    try:
        remove_stale_temps(out, outputs)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, since deleting it would let two runs lock two files


def _lock(out: Path) -> int:
    """The open, exclusively locked lock file of ``out`` (created with the directory if need be)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MIMFlowError(f"--out {out}: cannot write there ({e.strerror or e}); nothing was written") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "a process that has not written its PID"
        os.close(fd)
        raise MIMFlowError(f"--out {out}: another train run is using it ({holder}; lock {out / LOCK}); "
                           "wait for it to end or choose another --out") from None
    except OSError as e:  # a file system without locks
        os.close(fd)
        raise MIMFlowError(f"--out {out}: cannot lock {out / LOCK} ({e.strerror or e})") from None
    with contextlib.suppress(OSError):  # the holder's name only informs a refused run; the lock works without it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def remove_stale_temps(out: Path, outputs: Iterable[str]) -> None:
    """Delete the temp files (:func:`~mimflow_core.atomic.temp_files`) that a run killed mid-write left beside
    ``outputs``; call it only while holding the lock."""
    stale = [p for name in outputs for p in temp_files(out / name)]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        warnings.warn(f"{out}: removed {len(stale)} temp file(s) a stopped run left: "
                      f"{', '.join(p.name for p in stale)}")
