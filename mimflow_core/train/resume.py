"""The checkpoint ``--resume`` continues, with every entry the trainer reads back checked first.

The trainer wrote ``train`` and ``resume`` itself, but the file is the
user's (copied, edited, written by another tool): an entry of the wrong type
must be one line naming the file and the entry, not a KeyError or TypeError
in the middle of the trainer's set-up, or a run that resumes at an epoch
"1" it cannot count from.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mimflow_core.checkpoint import load_checkpoint
from mimflow_core.errors import MIMFlowError
from mimflow_core.train.options import check_stored
from mimflow_core.validate import is_kind

COUNTERS = ("ema_updates", "epoch", "batch_in_epoch")  # resume-state integers >= 0


def read_resume_checkpoint(path: Path) -> dict:
    """Load ``path`` (whose loader checks the step) and check its train record (the options it fixes) and its
    resume state."""
    ckpt = load_checkpoint(path)
    train = ckpt.get("train")
    if "resume" not in ckpt or not isinstance(train, dict) or "mask_ratio" not in train:
        raise MIMFlowError(f"{path}: has no resume state (not written by this trainer)")
    check_stored(train, path)
    state = ckpt["resume"]
    _require(isinstance(state, dict), path, "resume", state, "a dict")
    for key in COUNTERS:
        value = state.get(key)
        _require(is_kind(value, "int") and value >= 0, path, f"resume.{key}", value, "an integer >= 0")
    _require(isinstance(state.get("stage"), str), path, "resume.stage", state.get("stage"), "a stage name")
    _require(isinstance(state.get("optimizer"), dict), path, "resume.optimizer", state.get("optimizer"),
             "an optimizer state dict")
    seconds = state.get("train_seconds", 0.0)  # absent in checkpoints before 2026-12
    _require(is_kind(seconds, "float") and seconds >= 0, path, "resume.train_seconds", seconds, "a number >= 0")
    rng, own = state.get("rng_cpu"), torch.get_rng_state()
    _require(isinstance(rng, torch.Tensor) and rng.dtype == own.dtype and rng.shape == own.shape, path,
             "resume.rng_cpu", rng, f"a CPU generator state (uint8 tensor of {len(own)} bytes)")
    return ckpt


def load_optimizer(optimizer: torch.optim.Optimizer, state: object, path: Path, name: str) -> None:
    """``optimizer.load_state_dict(state)``, where a state that does not fit the parameters is one line."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as e:
        raise MIMFlowError(f"{path}: resume.{name} does not fit this run's parameters "
                           f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None


def _require(ok: bool, path: Path, name: str, value: object, what: str) -> None:
    """One line naming the file and the entry when ``ok`` is false."""
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else f"a {type(value).__name__}"
        raise MIMFlowError(f"{path}: {name} is {shown}, not {what}")
