"""Matrix-free σmax, σmin and κ of the latent flow's Jacobian (the paper's §4.4, Appendix B, Figure 5).

- :mod:`.operators`: batched J·v, Jᵀ·u, J⁻¹·w, J⁻ᵀ·w with per-sample product counts.
- :mod:`.krylov`: batched Lanczos, power iteration, CG inverse iteration.
- :mod:`.estimators`: the ``paper``, ``fast`` and ``exact`` routes.
- :mod:`.certificates`: log|det J| and ‖Jv‖ checks on every estimate.
- :mod:`.analysis`: the CLI's protocol and ``jacobian.json``; :mod:`.plot`: Figure 5.
"""
from .estimators import METHODS, SpectrumEstimate, estimate
from .operators import DenseJacobian, FlowJacobian, JacobianOperator
from .plot import plot_jacobian

__all__ = ["METHODS", "DenseJacobian", "FlowJacobian", "JacobianOperator", "SpectrumEstimate", "estimate",
           "plot_jacobian"]
