"""Matrix-free σmax, σmin, κ and the whole spectrum of the latent flow's Jacobian (§4.4, Appendix B, Figure 5).

- :mod:`.operators`: batched J·v, Jᵀ·u, J⁻¹·w, J⁻ᵀ·w with per-sample product counts.
- :mod:`.krylov`: batched Lanczos (extreme pairs and Gauss quadrature), power iteration, CG inverse iteration.
- :mod:`.estimators`: the ``paper``, ``fast`` and ``exact`` routes.
- :mod:`.certificates`: log|det J| and ‖Jv‖ checks on every estimate.
- :mod:`.spectrum`: the density of log σᵢ by stochastic Lanczos quadrature (``--spectrum``).
- :mod:`.per_block`: every block's own σmax, σmin, κ and log|det| (``--per-block``).
- :mod:`.analysis`: the CLI's protocol and ``jacobian.json``; :mod:`.plot`: Figures 5 and 5b.
"""
from .estimators import METHODS, SpectrumEstimate, estimate
from .operators import DenseJacobian, FlowJacobian, JacobianOperator
from .plot import plot_jacobian

__all__ = ["METHODS", "DenseJacobian", "FlowJacobian", "JacobianOperator", "SpectrumEstimate", "estimate",
           "plot_jacobian"]
