"""The dataset split names that every loader and every command share.

``test`` is the held-out split. An ImageFolder tree calls its held-out folder
``val/``, so ``val`` names the same split. Nothing here imports torch, so the
command line can show the choices without loading it.
"""
from __future__ import annotations

from mimflow_core.errors import MIMFlowError

SPLITS = ("train", "test", "all")
ALIASES = {"val": "test"}


def canonical_split(split: str) -> str:
    """``split`` by its one name (``val`` -> ``test``); anything else is refused in one line."""
    name = ALIASES.get(split, split)
    if name not in SPLITS:
        raise MIMFlowError(f"split: {split!r} is not one of {', '.join(SPLITS)} (or val, the same as test)")
    return name
