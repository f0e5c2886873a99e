"""Batched Jacobian operators: J·v, Jᵀ·u, J⁻¹·w, J⁻ᵀ·w for B samples at once.

An operator holds B independent D×D Jacobians (the flow's Jacobian at B
latents is block-diagonal over the batch) and answers products for any
subset ``idx`` of its samples, so an estimator can drop samples that have
converged. Every product is counted per sample and per kind, which is what
the benchmark and the result files report.
"""
from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("J", "JT", "Jinv", "JinvT")


class JacobianOperator:
    """Products with B Jacobians of size ``dim``; subclasses implement the four ``_kind`` methods."""

    batch: int
    dim: int

    def __init__(self, batch: int, dim: int, device: torch.device | str = "cpu") -> None:
        self.batch, self.dim, self.device = batch, dim, torch.device(device)
        self.counts = {k: torch.zeros(batch, dtype=torch.long, device=device) for k in KINDS}

    def products(self) -> dict[str, Tensor]:
        """Per-sample counts of each product kind, and their total."""
        counts = {k: c.clone() for k, c in self.counts.items()}
        counts["total"] = sum(self.counts.values())
        return counts

    def _tally(self, kind: str, idx: Tensor) -> None:
        self.counts[kind][idx] += 1

    def matvec(self, v: Tensor, idx: Tensor) -> Tensor:
        """J v for the samples ``idx``; ``v`` is (len(idx), dim)."""
        self._tally("J", idx)
        return self._matvec(v, idx)

    def rmatvec(self, u: Tensor, idx: Tensor) -> Tensor:
        """Jᵀ u."""
        self._tally("JT", idx)
        return self._rmatvec(u, idx)

    def solve(self, w: Tensor, idx: Tensor) -> Tensor:
        """J⁻¹ w."""
        self._tally("Jinv", idx)
        return self._solve(w, idx)

    def rsolve(self, w: Tensor, idx: Tensor) -> Tensor:
        """J⁻ᵀ w."""
        self._tally("JinvT", idx)
        return self._rsolve(w, idx)

    def normal(self, v: Tensor, idx: Tensor) -> Tensor:
        """JᵀJ v: its top eigenvalue is σmax², its bottom one σmin²."""
        return self.rmatvec(self.matvec(v, idx), idx)

    def inverse_normal(self, w: Tensor, idx: Tensor) -> Tensor:
        """J⁻ᵀJ⁻¹ w = (J⁻¹)ᵀ(J⁻¹) w: its top eigenvalue is 1/σmin²."""
        return self.rsolve(self.solve(w, idx), idx)

    def logabsdet(self) -> Tensor:
        """log|det J| per sample, from the operator's own structure (not from a spectrum)."""
        raise NotImplementedError

    def dense(self, i: int) -> Tensor:
        """The full D×D Jacobian of sample ``i`` (the exact reference)."""
        raise NotImplementedError

    def _matvec(self, v: Tensor, idx: Tensor) -> Tensor:
        raise NotImplementedError

    def _rmatvec(self, u: Tensor, idx: Tensor) -> Tensor:
        raise NotImplementedError

    def _solve(self, w: Tensor, idx: Tensor) -> Tensor:
        raise NotImplementedError

    def _rsolve(self, w: Tensor, idx: Tensor) -> Tensor:
        raise NotImplementedError


class DenseJacobian(JacobianOperator):
    """A batch of explicit matrices (linear flows, synthetic spectra, Kahan matrices).

    ``lower=True`` declares them lower triangular, so inverse products are
    triangular solves — the structure an autoregressive flow block has.
    """

    def __init__(self, matrices: Tensor, lower: bool = False) -> None:
        super().__init__(matrices.shape[0], matrices.shape[-1], matrices.device)
        self.matrices = matrices.to(torch.float64)
        self.lower = lower
        self._lu = None if lower else torch.linalg.lu_factor(self.matrices)

    def logabsdet(self) -> Tensor:
        return torch.linalg.slogdet(self.matrices).logabsdet

    def dense(self, i: int) -> Tensor:
        return self.matrices[i]

    def _matvec(self, v: Tensor, idx: Tensor) -> Tensor:
        return torch.einsum("bij,bj->bi", self.matrices[idx], v)

    def _rmatvec(self, u: Tensor, idx: Tensor) -> Tensor:
        return torch.einsum("bji,bj->bi", self.matrices[idx], u)

    def _solve(self, w: Tensor, idx: Tensor) -> Tensor:
        if self.lower:
            return torch.linalg.solve_triangular(self.matrices[idx], w[..., None], upper=False).squeeze(-1)
        return torch.linalg.lu_solve(self._lu[0][idx], self._lu[1][idx], w[..., None]).squeeze(-1)

    def _rsolve(self, w: Tensor, idx: Tensor) -> Tensor:
        if self.lower:
            return torch.linalg.solve_triangular(self.matrices[idx].mT, w[..., None], upper=True).squeeze(-1)
        return torch.linalg.lu_solve(self._lu[0][idx], self._lu[1][idx], w[..., None], adjoint=True).squeeze(-1)


class _Linearisation:
    """A map recorded once at a primal point, so that J·v and Jᵀ·u reuse its graph.

    ``vjp`` is one backward pass through the recorded graph. ``jvp`` uses the
    double-backward identity J v = ∂/∂u ⟨Jᵀu, v⟩: the graph of u ↦ Jᵀu is
    built once (``create_graph``) and differentiated again for every v.
    Through the flow's 128-step KV-cached inverse this is ≈10× faster than
    ``torch.func.jvp`` or ``forward_ad``, whose per-operation overhead is paid
    at every token step, and ``torch.func.linearize`` spends minutes tracing it.
    """

    def __init__(self, fn, x: Tensor, idx: Tensor) -> None:
        from mimflow_core.layers import math_attention

        self.idx = idx
        self.x = x.detach().clone().requires_grad_(True)
        with torch.enable_grad(), math_attention():
            self.out = fn(self.x)
            self.u = torch.zeros_like(self.out, requires_grad=True)
            (self.g,) = torch.autograd.grad(self.out, self.x, self.u, create_graph=True)

    def jvp(self, v: Tensor) -> Tensor:
        (jv,) = torch.autograd.grad(self.g, self.u, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if jv is None else jv

    def vjp(self, u: Tensor) -> Tensor:
        return torch.autograd.grad(self.out, self.x, u, retain_graph=True)[0]


class FlowJacobian(JacobianOperator):
    """Jacobian of blocks ``first_block`` to ``num_blocks`` − 1 of a latent flow at the points z (B, K, D) they see.

    J = J_N ⋯ J_1 with one autoregressive affine block per factor. Each J_b is
    triangular in its block's token order, so J⁻¹ is the linearisation of the
    flow's own token-by-token inverse (exact, KV-cached, O(K) sequential
    steps) and J⁻ᵀ its transpose: inverse products cost about what forward
    products cost, with no inner solver. log|det J| = −Σ log-scales is the
    flow's own. The flow must be float64 and in eval mode.

    With the defaults z is the flow's input and J the whole flow's Jacobian
    (or that of its first ``num_blocks`` blocks); ``first_block=b,
    num_blocks=b + 1`` with z the output of blocks < b is block b's own J_b
    (:func:`block_jacobians`), with the same exact products.
    """

    def __init__(self, flow, z: Tensor, y: Tensor, num_blocks: int | None = None, first_block: int = 0) -> None:
        from mimflow_core.layers import math_attention

        B, K, D = z.shape
        super().__init__(B, K * D, z.device)
        self.blocks = list(flow.blocks)[first_block:num_blocks]
        self.shape = (K, D)
        self.z = z.detach().to(torch.float64)
        self.y = y
        with torch.no_grad(), math_attention():
            x, logdet = self.z, torch.zeros(B, dtype=torch.float64, device=z.device)
            for block in self.blocks:
                x, ld = block(x, y)
                logdet = logdet + ld
        self.eps, self._logdet = x, logdet
        self._forward: _Linearisation | None = None
        self._inverse: _Linearisation | None = None

    def apply_flow(self, x: Tensor, y: Tensor) -> Tensor:
        for block in self.blocks:
            x, _ = block(x, y)
        return x

    def apply_inverse(self, eps: Tensor, y: Tensor) -> Tensor:
        for block in reversed(self.blocks):
            eps = block.reverse(eps, y)
        return eps

    def logabsdet(self) -> Tensor:
        return self._logdet

    def dense(self, i: int, chunk_size: int = 256) -> Tensor:
        """Row-by-row Jacobian of sample ``i`` by chunked ``jacrev`` (D vector-Jacobian products)."""
        from mimflow_core.layers import math_attention

        y = self.y[i : i + 1]
        flat = lambda v: self.apply_flow(v.view(1, *self.shape), y).reshape(-1)  # noqa: E731
        with math_attention():
            return torch.func.jacrev(flat, chunk_size=chunk_size)(self.z[i].reshape(-1)).detach()

    def _linearisation(self, which: str, idx: Tensor) -> _Linearisation:
        """Recorded graph covering ``idx``: reused while idx is more than half of it, else re-recorded."""
        lin = getattr(self, "_" + which)
        covered = lin is not None and 2 * idx.numel() > lin.idx.numel() and bool(torch.isin(idx, lin.idx).all())
        if not covered:
            setattr(self, "_" + which, None)  # free the old graph before recording a new one
            y = self.y[idx]
            if which == "forward":
                lin = _Linearisation(lambda x: self.apply_flow(x, y), self.z[idx], idx)
            else:
                lin = _Linearisation(lambda e: self.apply_inverse(e, y), self.eps[idx], idx)
            setattr(self, "_" + which, lin)
        return lin

    def _through(self, which: str, transpose: bool, v: Tensor, idx: Tensor) -> Tensor:
        lin = self._linearisation(which, idx)
        rows = torch.searchsorted(lin.idx, idx) if not torch.equal(lin.idx, idx) else None
        full = v.view(-1, *self.shape)
        if rows is not None:
            full = v.new_zeros(lin.idx.numel(), *self.shape).index_copy_(0, rows, full)
        out = lin.vjp(full) if transpose else lin.jvp(full)
        out = out if rows is None else out[rows]
        return out.reshape(v.shape[0], -1).detach()

    def _matvec(self, v: Tensor, idx: Tensor) -> Tensor:
        return self._through("forward", False, v, idx)

    def _rmatvec(self, u: Tensor, idx: Tensor) -> Tensor:
        return self._through("forward", True, u, idx)

    def _solve(self, w: Tensor, idx: Tensor) -> Tensor:
        return self._through("inverse", False, w, idx)

    def _rsolve(self, w: Tensor, idx: Tensor) -> Tensor:
        return self._through("inverse", True, w, idx)


def block_jacobians(flow, z: Tensor, y: Tensor, num_blocks: int | None = None) -> list[FlowJacobian]:
    """One operator per block b < ``num_blocks``: J_b at the point x_b = (blocks < b)(z) that block b sees.

    Each operator's ``eps`` is the next one's input, so the flow runs forward
    once in all; J = J_B ⋯ J_1 is their product.
    """
    ops, x = [], z
    for b in range(len(list(flow.blocks)[:num_blocks])):
        ops.append(FlowJacobian(flow, x, y, num_blocks=b + 1, first_block=b))
        x = ops[-1].eps
    return ops
