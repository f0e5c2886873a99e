"""Atomic file writes: a reader sees the old file or the new one, never half.

Every long job writes its results through these helpers (temp file in the
same directory, fsync, ``os.replace``), so a crash or Ctrl-C never leaves a
truncated checkpoint, shard or JSON behind. A write the system refuses (a
full disk, a read-only directory) removes its temporary file and becomes one
:class:`MIMFlowError` line naming the file; whatever was at the path before
is untouched.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Iterator

from mimflow_core.errors import MIMFlowError

TEMP_SUFFIX = ".tmp"  # a temp file is .<name>.<random>.tmp beside <name>: hidden, and never mistaken for <name>


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def temp_files(path: str | os.PathLike) -> list[Path]:
    """The temp siblings :func:`atomic_open` makes for ``path``, sorted: what a writer killed mid-write left there
    (only a caller that knows no write of ``path`` is under way may delete them)."""
    path = Path(path)
    return sorted(path.parent.glob(glob.escape(_temp_prefix(path)) + "*" + TEMP_SUFFIX))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; rename it over ``path`` on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_error(path, e, tmp) from None
        raise


def write_error(path: Path, error: OSError, tmp: str | None = None) -> MIMFlowError:
    """The one line for a file the system would not let us write (ENOSPC, EACCES, EROFS, ...)."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename and str(error.filename) not in (str(path), tmp, str(path.parent)):
        reason += f" on {error.filename}"
    if blocker := next((p for p in path.parents if p.exists() and not p.is_dir()), None):
        reason = f"{blocker} is a file, not a directory"  # e.g. --out given a file's name
    kept = "its previous contents are intact" if path.is_file() else "nothing was written there"
    return MIMFlowError(f"{path}: cannot write ({reason}); {kept}, and earlier results are unchanged")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file and move it to ``path``."""
    with atomic_open(path, mode) as f:
        write(f)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (NaN is written as null)."""
    text = json.dumps(_finite_or_none(obj), indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so any parser can read the file."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj
