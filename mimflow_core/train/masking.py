"""How each training batch picks its mask ratio (paper Table 5a's rows).

Torch is imported only where a ratio is drawn, so that :mod:`mimflow_core.train.options`,
which parses policies, loads without torch (``mimflow-lab train --help`` stays quick).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mimflow_core.errors import MIMFlowError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MaskPolicy:
    """How each training batch picks its mask ratio: ``none``, ``lo-hi`` (uniform) or ``mix`` (Table 5a)."""

    kind: str          # "none" | "range" | "mix"
    low: float = 0.4
    high: float = 0.6

    @classmethod
    def parse(cls, text: str) -> "MaskPolicy":
        if text == "none":
            return cls("none", 0.0, 0.0)
        kind, _, rng = text.partition(":") if text.startswith("mix") else ("range", "", text)
        if kind == "mix" and not rng:
            return cls("mix")  # 50/50 none vs 0.4-0.6, as in the paper's Table 5a
        try:
            low, high = (float(v) for v in rng.split("-")) if "-" in rng else (float(rng),) * 2
        except ValueError:
            raise MIMFlowError(f"--mask-ratio {text!r}: use none, mix, mix:LO-HI, LO-HI (e.g. 0.4-0.6) or R") from None
        if not 0.0 <= low <= high < 1.0:
            raise MIMFlowError(f"--mask-ratio {text!r}: need 0 <= LO <= HI < 1")
        return cls(kind, low, high)

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        rng = f"{self.low:g}-{self.high:g}"
        return ("mix" if (self.low, self.high) == (0.4, 0.6) else f"mix:{rng}") if self.kind == "mix" else rng

    def sample(self, generator: torch.Generator) -> float:
        """One ratio for the whole batch."""
        import torch

        u = torch.rand(2, generator=generator).tolist()
        if self.kind == "none" or (self.kind == "mix" and u[0] < 0.5):
            return 0.0
        return self.low + (self.high - self.low) * u[1]

    def typical(self) -> float:
        """The ratio an evaluation uses for "latents as the flow saw them in training"."""
        return 0.0 if self.kind == "none" else 0.5 * (self.low + self.high)
