"""Implicit differentiation of the Sinkhorn potentials with respect to the cost.

Why implicit and not unrolled: unrolling keeps every iterate for the backward pass, i.e. memory
of order max_iter * B*M*N (100x the plan at the paper's settings). At the fixed point the
potentials satisfy the marginal constraints

    sum_i T_ji = r_j,   sum_j T_ji = c_i,   T_ji = exp((f_j + g_i - C_ji) / eps),

whose linearisation gives H [df; dg] = [(T*dC) 1; (T*dC)^T 1] with H = [[diag r, T], [T^T, diag c]].
So for upstream gradients (gf, gg): solve H w = (gf, gg) and grad_C = T * (w_f[j] + w_g[i]).
Cost: one dense solve of size min(M, N) per problem, memory O(B*M*N + B*min(M,N)^2), independent
of max_iter. The result is exact for a converged problem; for a truncated one it is the gradient
of the fixed point the iterations approach. H is singular along (1, -1) (the gauge f + k, g - k),
and to working precision along one such direction per block of a near-block-diagonal plan
(square, small-eps, near-permutation problems); the upstream gradient is projected off the
global gauge and the system solved with a tiny ridge, which is exact for every gauge-invariant
quantity (plan, aggregated tokens, distance) up to the couplings float64 cannot resolve.
"""
from __future__ import annotations

import torch

from .composite import plan

# Tikhonov term of the Schur solve, relative to the mean column mass (see potentials_vjp): far
# above float64's rounding of the Laplacian (~1e-16), far below any coupling that moves a
# gradient by more than 1e-8 of itself.
RIDGE = 1e-12


def potentials_vjp(transport: torch.Tensor, grad_f: torch.Tensor, grad_g: torch.Tensor):
    """Solve H w = (grad_f, grad_g) for a batch of plans.

    transport [B,M,N] (padding rows/columns all zero), grad_f [B,M], grad_g [B,N].
    Returns (w_f [B,M], w_g [B,N]); the cost gradient is T * (w_f[:, :, None] + w_g[:, None, :]).
    """
    out_dtype = transport.dtype
    # The Schur complement is ill-conditioned for small eps: solve in float64 (size min(M,N)).
    t = transport.to(torch.float64)
    gf, gg = grad_f.to(torch.float64), grad_g.to(torch.float64)
    swap = t.shape[1] < t.shape[2]  # eliminate the larger side, solve on the smaller one
    if swap:
        t, gf, gg = t.transpose(1, 2), gg, gf
    r, c = t.sum(2), t.sum(1)
    row_live, col_live = r > 0, c > 0
    gf = torch.where(row_live, gf, 0.0)
    gg = torch.where(col_live, gg, 0.0)
    kappa = (gf.sum(1) - gg.sum(1)) / (row_live.sum(1) + col_live.sum(1))
    gf = torch.where(row_live, gf - kappa.unsqueeze(1), 0.0)
    gg = torch.where(col_live, gg + kappa.unsqueeze(1), 0.0)

    t_over_r = t / torch.where(row_live, r, 1.0).unsqueeze(2)  # diag(1/r) T
    # The Schur complement S = diag(c) - T^T diag(1/r) T is a weighted graph Laplacian of the
    # plan's support: symmetric, PSD, with one zero eigenvalue (the gauge f + k, g - k) per
    # connected block of the support. A near-permutation plan (small eps, sources near anchors)
    # has cross-block entries below float64's resolution, so S is singular to working precision
    # along each block's gauge; those potentials are not identifiable, and every gauge-invariant
    # output is flat along them. A ridge (RIDGE x the mean column mass on the diagonal) keeps the
    # solution finite and smooth there; a cut-off by eigenvalue would pick noisy eigenvectors
    # out of the near-zero cluster. S is built as L = diag(A 1) - A, A the off-diagonal of
    # T^T diag(1/r) T: for a column one anchor holds alone, c_i - T_ji^2 / r_j would cancel to
    # rounding noise instead of its true (tiny) value. Padding sits on the live columns' scale.
    live = col_live.to(torch.float64)
    scale = (c.sum(1) / live.sum(1)).view(-1, 1)
    gram = t.transpose(1, 2) @ t_over_r
    adjacency = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    schur = torch.diag_embed(adjacency.sum(2) + scale * (1.0 - live + RIDGE)) - adjacency
    rhs = gg - (t_over_r.transpose(1, 2) @ gf.unsqueeze(2)).squeeze(2)
    w_g = torch.linalg.solve(schur, rhs)
    w_g = torch.where(col_live, w_g, 0.0)
    w_f = torch.where(row_live, (gf - (t @ w_g.unsqueeze(2)).squeeze(2)) / torch.where(row_live, r, 1.0), 0.0)
    if swap:
        w_f, w_g = w_g, w_f
    return w_f.to(out_dtype), w_g.to(out_dtype)


def cost_grad(cost, f, g, eps: float, grad_f, grad_g):
    """Gradient w.r.t. cost [B,M,N] of a loss with gradients grad_f [B,M], grad_g [B,N] (either
    may be None) on converged potentials f, g."""
    transport = plan(cost, f, g, eps)
    grad_f = torch.zeros_like(f) if grad_f is None else grad_f
    grad_g = torch.zeros_like(g) if grad_g is None else grad_g
    w_f, w_g = potentials_vjp(transport, grad_f, grad_g)
    return transport * (w_f.unsqueeze(2) + w_g.unsqueeze(1))


class ImplicitPotentials(torch.autograd.Function):
    """Identity on (f, g) in the forward pass; in the backward pass routes their gradients to
    the cost through the fixed-point conditions (module docstring)."""

    @staticmethod
    def forward(ctx, cost, f, g, eps):
        ctx.eps = eps
        ctx.save_for_backward(cost, f, g)
        return f.clone(), g.clone()

    @staticmethod
    def backward(ctx, grad_f, grad_g):
        cost, f, g = ctx.saved_tensors
        return cost_grad(cost, f, g, ctx.eps, grad_f, grad_g), None, None, None
