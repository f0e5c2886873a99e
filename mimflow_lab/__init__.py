"""Analyses and evaluation of MIMFlow checkpoints (Jacobian spectra, probes, UMAP, ADM metrics).

Checkpoints are read only through :func:`load_model`.
"""
from mimflow_core.checkpoint import load_model

__all__ = ["load_model"]
