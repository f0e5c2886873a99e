"""Training MIMFlow models: options, mask policy, stages, the trainer, its evaluation, images and log.

- :mod:`.options`: :class:`TrainOptions`, the preset-, variant- and phase-dependent defaults, resume rules
- :mod:`.masking`: :class:`MaskPolicy` (a batch's mask ratio, paper Table 5a)
- :mod:`.sampler`: data order and per-step random draws that resumed and multi-process runs repeat
- :mod:`.stages`: the stretches of a run that train different modules, and their DDP-wrapped forward pass
- :mod:`.trainer`: :class:`Trainer` and :func:`train` (one job, or one torchrun process of it)
- :mod:`.evaluation`, :mod:`.images`, :mod:`.log`: ``eval.json``, the PNG grids, ``log.jsonl``
- :mod:`.rundir`: the lock that keeps a second run off ``--out``, and the temp files a killed run left there
- :mod:`.resume`: the checkpoint ``--resume`` continues, its resume state checked before it is used

The names below are loaded on first use, so that ``mimflow_core.train.options``
(what ``mimflow-lab train`` reads its defaults from) can be imported without torch.
"""
from __future__ import annotations

import importlib

# name -> the submodule that defines it
_EXPORTS = {
    "TrainOptions": "options",
    "MaskPolicy": "masking",
    "Trainer": "trainer",
    "train": "trainer",
    "evaluate_model": "evaluation",
    "sample_grid": "images",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
