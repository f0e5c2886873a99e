"""Which checkpoint a command means when it is not named, and where caches live.

``mimflow-lab probe --depths all`` and ``mimflow-lab fid --samples 50000``
work without a checkpoint argument when there is an obvious one: the file in
``$MIMFLOW_CHECKPOINT``, else the newest ``*.pt`` of the most recently
modified run directory under ``./runs/`` or under ``./*/runs/`` (where
``mimflow-lab demo --out DIR`` puts its models). The choice is always printed.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from mimflow_core.errors import MIMFlowError

ENV_VAR = "MIMFLOW_CHECKPOINT"
# Root of the on-disk caches (features per checkpoint, Inception features per reference batch).
CACHE_ROOT = Path(os.environ.get("MIMFLOW_CACHE", "~/.cache/mimflow-lab")).expanduser()


def default_checkpoint(runs: str | os.PathLike = "runs") -> Path:
    """The checkpoint to use when none is named (see the module docstring)."""
    named = os.environ.get(ENV_VAR)
    if named:
        path = Path(named)
        if not path.is_file():
            raise MIMFlowError(f"${ENV_VAR}={named}: no such checkpoint file")
        return path
    root = Path(runs)
    patterns = (f"{root.name}/*/*.pt", f"*/{root.name}/*/*.pt")
    candidates = [p for pattern in patterns for p in root.parent.glob(pattern) if p.is_file()]
    if not candidates:
        raise MIMFlowError(f"no checkpoint given and none found under {root}/*/ or */{root.name}/*/ "
                           f"(name one, or set ${ENV_VAR})")
    newest_run = max({p.parent for p in candidates}, key=lambda d: max(q.stat().st_mtime for q in d.glob("*.pt")))
    return max(newest_run.glob("*.pt"), key=lambda p: p.stat().st_mtime)


def resolve_checkpoints(given: tuple[str, ...] | list[str]) -> list[str]:
    """``given`` if non-empty, else ``[default_checkpoint()]``, saying on stderr which file was chosen."""
    if given:
        return list(given)
    path = default_checkpoint()
    click.echo(f"mimflow-lab: no checkpoint named; using {path}", err=True)
    return [str(path)]
