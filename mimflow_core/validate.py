"""The one reading of a dataclass field's annotation as a type test, for values that may hold anything.

A model config and a checkpoint's train record and resume state come from
files anyone can edit, and options can be made from Python with any value;
:class:`~mimflow_core.config.ModelConfig` and
:class:`~mimflow_core.train.options.TrainOptions` test their fields here, so
both agree on what a number is. No torch here: ``mimflow-lab train --help``
reads its options without it.
"""
from __future__ import annotations

import math


def is_kind(value: object, kind: str) -> bool:
    """isinstance for a field annotated ``kind`` (``int``, ``float``, ``str``, ``bool`` or ``tuple[int, ...]``):
    a bool is no number (``True == 1`` would pass a range check), an int is a float too, a float must be finite
    (no model or run can use NaN or Inf), and a tuple may be a list (what JSON and ``to_dict`` store)."""
    if kind == "tuple[int, ...]":
        return isinstance(value, (list, tuple)) and all(is_kind(v, "int") for v in value)
    if isinstance(value, bool):
        return kind == "bool"
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, {"int": int, "str": str, "bool": bool}[kind])
