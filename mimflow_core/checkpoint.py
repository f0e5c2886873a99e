"""The checkpoint format ("mimflow-lab/1") and the one public loader.

A checkpoint is one ``.pt`` file holding plain types only::

    {"format": "mimflow-lab/1", "config": {...ModelConfig fields...},
     "model": state_dict, "ema": state_dict | None, "step": int, "phase": 1 | 2,
     "train": {data, mask_ratio, variant, ...}, "meta": {...},
     "resume": {...} (optional: optimizer/RNG state written by the trainer)}

It is written atomically and read with ``torch.load(weights_only=True)``, so
loading a file can never run code from it; every problem with a file is
reported as one :class:`MIMFlowError` line naming the file.
"""
from __future__ import annotations

import functools
import hashlib
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mimflow_core.atomic import atomic_write
from mimflow_core.config import ModelConfig
from mimflow_core.errors import MIMFlowError
from mimflow_core.model import MIMFlow

FORMAT = "mimflow-lab/1"
REQUIRED_KEYS = ("format", "config", "model", "step", "phase")


def save_checkpoint(path: str | Path, model: MIMFlow, *, ema_state: dict | None = None, step: int = 0,
                    phase: int = 1, train: dict | None = None, meta: dict | None = None,
                    resume: dict | None = None) -> None:
    """Write ``model`` (and optionally EMA weights and resume state) to ``path`` atomically."""
    ckpt = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "model": _cpu_state(model.state_dict()),
        "ema": None if ema_state is None else _cpu_state(ema_state),
        "step": int(step),
        "phase": int(phase),
        "train": dict(train or {}),
        "meta": {"torch": str(torch.__version__), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 **(meta or {})},
    }
    if resume is not None:
        ckpt["resume"] = resume
    atomic_write(path, lambda f: torch.save(ckpt, f))


def _cpu_state(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint dict; never unpickles anything but plain data and tensors."""
    path = Path(path)
    ckpt = load_plain(path, "checkpoint")
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise MIMFlowError(f"{path}: not a mimflow-lab checkpoint (no 'format' key)")
    if ckpt["format"] != FORMAT:
        raise MIMFlowError(f"{path}: unsupported checkpoint format {ckpt['format']!r} (this version reads {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise MIMFlowError(f"{path}: checkpoint lacks {', '.join(missing)}")
    _check_fields(ckpt, path)
    return ckpt


def load_plain(path: Path, what: str) -> Any:
    """What ``torch.save`` wrote to ``path``, if it is tensors and plain data only; one line naming the file
    otherwise (absent, not a zip archive, truncated, or holding objects whose unpickling could run code)."""
    if not path.is_file():
        raise MIMFlowError(f"{path}: no such {what} file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith(b"PK"):
            raise MIMFlowError(f"{path}: {what} is truncated or corrupt (incomplete zip archive)")
        raise MIMFlowError(f"{path}: not a PyTorch {what} (expected a zip archive written by torch.save)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MIMFlowError(f"{path}: refused to load: it contains objects other than tensors and plain data, "
                           f"which could run code ({_unpickler_reason(e)})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise MIMFlowError(f"{path}: {what} is truncated or corrupt ({str(e).splitlines()[0][:160]})") from None


def _check_fields(ckpt: dict, path: Path) -> None:
    """The plain fields beside the weights have the types every reader assumes (a file is anyone's data)."""
    step, phase = ckpt["step"], ckpt["phase"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise MIMFlowError(f"{path}: 'step' must be a non-negative integer, not {step!r:.60}")
    if phase not in (1, 2) or isinstance(phase, bool):
        raise MIMFlowError(f"{path}: 'phase' must be 1 or 2, not {phase!r:.60}")
    for key in ("config", "train", "meta"):
        if (key == "config" or ckpt.get(key) is not None) and not isinstance(ckpt[key], dict):
            raise MIMFlowError(f"{path}: '{key}' must be a dict, not {type(ckpt[key]).__name__}")
    seed = (ckpt.get("train") or {}).get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise MIMFlowError(f"{path}: train.seed must be an integer, not {seed!r:.60}")


def _unpickler_reason(error: Exception) -> str:
    """The informative line of torch's long weights-only error, e.g. 'Unsupported global: GLOBAL posix.system'."""
    for line in str(error).splitlines():
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1]
        if "GLOBAL" in line:
            return line.strip().split(" was not")[0][:160]
    return type(error).__name__


def build_model(config: dict | ModelConfig, path: str | Path = "<config>") -> MIMFlow:
    """Rebuild the model from a stored config, naming ``path`` if the config is invalid."""
    try:
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(dict(config))
    except (MIMFlowError, TypeError) as e:
        raise MIMFlowError(f"{path}: {e}") from None
    return MIMFlow(cfg)


def check_weights(model: MIMFlow, state: dict, path: str | Path, what: str) -> None:
    """Fail with one line if ``state`` has missing, unexpected or mis-shaped weights for ``model``."""
    own = model.state_dict()
    if not isinstance(state, dict):
        raise MIMFlowError(f"{path}: {what} weights are not a state dict")
    problems = {
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
        "wrong shape": sorted(k for k in own.keys() & state.keys()
                              if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape),
    }
    # loading casts silently, so integer or complex numbers where floats belong would be truncated into the model
    problems["wrong dtype"] = sorted(k for k in own.keys() & state.keys() if k not in problems["wrong shape"]
                                     and state[k].is_floating_point() != own[k].is_floating_point())
    parts = [f"{len(keys)} {name} (e.g. {keys[0]})" for name, keys in problems.items() if keys]
    if parts:
        raise MIMFlowError(f"{path}: {what} weights do not match the stored config: " + ", ".join(parts))


def nonfinite_weights(state: dict) -> str | None:
    """A one-line description of the NaN/Inf entries of a state dict (a diverged run), or None when all are finite."""
    bad = [(k, int((~torch.isfinite(v)).sum())) for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not bad:
        return None
    name, count = bad[0]
    return (f"{len(bad)} tensor(s) hold NaN or Inf (first: {name}, {count} of {state[name].numel()} values); "
            "the run diverged before this checkpoint, use an earlier one")


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself, beside the weights."""

    path: Path
    config: ModelConfig
    step: int
    phase: int
    train: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    weights: str = "ema"
    nonfinite: str | None = None  # what nonfinite_weights says of the loaded weights (only with allow_nonfinite)

    @property
    def variant(self) -> str:
        return str(self.train.get("variant", "mimflow"))

    @property
    def label(self) -> str:
        """A short legend label, e.g. "mimflow (mask 0.4-0.6)", "mimflow (mask 0.4-0.6, seed 1)" for a run with
        another seed, or the file name when nothing is recorded."""
        mask, seed = self.train.get("mask_ratio"), self.train.get("seed")
        if "variant" not in self.train and mask is None:
            return self.path.stem
        details = ([f"mask {mask}"] if mask is not None else []) + ([f"seed {seed}"] if seed not in (None, 0) else [])
        return f"{self.variant} ({', '.join(details)})" if details else self.variant

    @functools.cached_property
    def sha256(self) -> str:
        """Hash of the file's bytes: the cache key of everything computed from this checkpoint."""
        return file_sha256(self.path)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read 4 MiB at a time (checkpoints and weights are gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(path: str | Path, weights: str = "ema", device: str | torch.device = "cpu", *,
               allow_nonfinite: bool = False) -> tuple[MIMFlow, CheckpointInfo]:
    """Load a checkpoint for analysis: ``(model in eval mode, info)``.

    ``weights="ema"`` (default) takes the EMA weights when the checkpoint has
    them and the raw weights otherwise (``info.weights`` says which);
    ``weights="raw"`` always takes the raw training weights. Weights holding
    NaN or Inf are refused (every number computed from them would be NaN, found
    only after the work), unless ``allow_nonfinite`` (``info`` shows them).
    """
    if weights not in ("ema", "raw"):
        raise MIMFlowError(f"weights must be 'ema' or 'raw', not {weights!r}")
    path = Path(path)
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["config"], path)
    check_weights(model, ckpt["model"], path, "raw")
    if ckpt.get("ema") is not None:
        check_weights(model, ckpt["ema"], path, "ema")
    used = "ema" if weights == "ema" and ckpt.get("ema") is not None else "raw"
    state = ckpt["ema"] if used == "ema" else ckpt["model"]
    nonfinite = nonfinite_weights(state)
    if nonfinite and not allow_nonfinite:
        raise MIMFlowError(f"{path}: {used} weights: {nonfinite}")
    model.load_state_dict(state)
    info = CheckpointInfo(path=path, config=model.config, step=ckpt["step"], phase=ckpt["phase"],
                          train=dict(ckpt.get("train") or {}), meta=dict(ckpt.get("meta") or {}), weights=used,
                          nonfinite=nonfinite and f"{used} weights: {nonfinite}")
    return model.to(device).eval(), info
