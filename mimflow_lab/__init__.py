"""Analyses and evaluation of MIMFlow checkpoints (Jacobian spectra, probes, UMAP, ADM metrics).

Checkpoints are read only through :func:`load_model`. It is imported on
first use, so ``import mimflow_lab`` (and with it ``mimflow-lab --help``)
does not load torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def __getattr__(name: str) -> Any:
    if name == "load_model":
        from mimflow_core.checkpoint import load_model

        return load_model
    raise AttributeError(f"module 'mimflow_lab' has no attribute {name!r}")
