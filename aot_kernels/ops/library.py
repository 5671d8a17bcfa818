"""Loads the compiled aot op library and registers its fake kernels and autograd.

The schemas are defined once in csrc/schemas.cpp; importing aot_kernels._C runs that
registration. A missing or broken extension is not an error here: HAS_EXTENSION is False,
EXTENSION_ERROR says why, and the Python API falls back to the "torch" backend with a warning.
"""
from __future__ import annotations

import torch

from . import composite
from .implicit_grad import ImplicitPotentials, cost_grad

try:
    from . import _C  # noqa: F401  (side effect: TORCH_LIBRARY(aot, ...) registration)

    HAS_EXTENSION = True
    EXTENSION_ERROR = None
except ImportError as exc:  # not built, or built against another torch
    HAS_EXTENSION = False
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"


def _cd(t: torch.Tensor) -> torch.dtype:
    return composite.compute_dtype(t.dtype)


def _no_weight_grad(ctx, index: int, op: str) -> None:
    """The compiled ops differentiate w.r.t. features (and sizes), not marginals: say so rather
    than return a silent None."""
    needs = ctx.needs_input_grad  # covers the arguments given (defaults left out)
    if index < len(needs) and needs[index]:
        raise RuntimeError(f"{op}: the compiled backends do not differentiate w.r.t. the "
                           "marginal weights; detach them, or use backend='torch' (unrolled)")


# ---- cosine_cost -----------------------------------------------------------------------------

def _cosine_cost_fake(x, y, x_pos=None, y_pos=None, spatial=0.0):
    return x.new_empty(x.shape[0], x.shape[1], y.shape[1])


def _cosine_cost_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])  # the spatial term does not depend on x, y


def _cosine_cost_backward(ctx, grad):
    x, y = ctx.saved_tensors
    with torch.enable_grad():
        xr, yr = x.detach().requires_grad_(), y.detach().requires_grad_()
        cost = composite.cosine_cost(xr, yr)
        gx, gy = torch.autograd.grad(cost, (xr, yr), grad.to(cost.dtype))
    return gx.to(x.dtype), gy.to(y.dtype), None, None, None


# ---- sinkhorn --------------------------------------------------------------------------------

def _sinkhorn_fake(cost, anchor_weight=None, source_weight=None, eps=0.1, max_iter=100, tol=0.0,
                   stop="marginal"):
    b, m, n = cost.shape
    return (cost.new_empty(b, m), cost.new_empty(b, n), cost.new_empty(b, dtype=torch.int64),
            cost.new_empty(b))


def _sinkhorn_setup(ctx, inputs, output):
    cost, eps = inputs[0], inputs[3]
    f, g, iterations, error = output
    ctx.eps = eps
    ctx.mark_non_differentiable(iterations, error)
    ctx.save_for_backward(cost, f, g)


def _sinkhorn_backward(ctx, grad_f, grad_g, _grad_iterations, _grad_error):
    _no_weight_grad(ctx, 1, "sinkhorn")
    _no_weight_grad(ctx, 2, "sinkhorn")
    cost, f, g = ctx.saved_tensors
    cd = _cd(cost)
    grad_f = None if grad_f is None else grad_f.to(cd)
    grad_g = None if grad_g is None else grad_g.to(cd)
    grad = cost_grad(cost.to(cd), f.to(cd), g.to(cd), ctx.eps, grad_f, grad_g)
    return (grad.to(cost.dtype),) + (None,) * 6


# ---- sinkhorn_aggregate ----------------------------------------------------------------------

def _aggregate_fake(anchors, sources, anchor_weight=None, source_weight=None, eps=0.1, lam=1.0,
                    max_iter=100, tol=0.0, tau=None, keep=None, anchor_pos=None, source_pos=None,
                    spatial=0.0, stop="marginal", nn_blend=0.0, keep_quantile=None,
                    shift_min=False):
    b, m, _ = anchors.shape
    n = sources.shape[1]
    return (anchors.new_empty(anchors.shape), anchors.new_empty(b, m), anchors.new_empty(b, n),
            anchors.new_empty(b, n, dtype=torch.bool), anchors.new_empty(b),
            anchors.new_empty(b, dtype=torch.int64), anchors.new_empty(b, m),
            anchors.new_empty(b, n), anchors.new_empty(b))


def _aggregate_setup(ctx, inputs, output):
    # inputs holds every schema argument, defaults filled in.
    (anchors, sources, anchor_weight, source_weight, eps, lam, _, _, tau, keep, anchor_pos,
     source_pos, spatial, _, nn_blend, keep_quantile, shift_min) = inputs
    _, _, _, kept, _, iterations, f, g, error = output
    ctx.eps, ctx.lam = eps, lam
    ctx.inter = tau is not None or keep is not None or keep_quantile is not None
    ctx.cost_options = (anchor_pos, source_pos, spatial, shift_min)
    ctx.nn_blend = nn_blend
    ctx.mark_non_differentiable(kept, iterations, error)
    ctx.weights = (anchor_weight, source_weight)
    ctx.save_for_backward(anchors, sources, f, g, kept)


def _aggregate_backward(ctx, g_tokens, g_mass, g_confidence, _g_kept, g_distance, _g_iter,
                        g_f, g_g, _g_error):
    """Recompute the differentiable tail (cost, plan, aggregation) with autograd from the saved
    potentials; the Sinkhorn fixed point is differentiated implicitly (implicit_grad.py)."""
    _no_weight_grad(ctx, 2, "sinkhorn_aggregate")
    _no_weight_grad(ctx, 3, "sinkhorn_aggregate")
    anchors, sources, f, g, kept = ctx.saved_tensors
    cd = _cd(anchors)
    with torch.enable_grad():
        x = anchors.detach().to(cd).requires_grad_()
        y = sources.detach().to(cd).requires_grad_()
        a, s = composite.marginals(*ctx.weights, x.shape[0], x.shape[1], y.shape[1], cd, x.device)
        semantic, cost = composite.aggregate_cost(x, y, a, s, *ctx.cost_options)
        f_, g_ = ImplicitPotentials.apply(cost, f.to(cd), g.to(cd), ctx.eps)
        transport = composite.plan(cost, f_, g_, ctx.eps)
        tokens, mass = composite.aggregate(x, y, transport, s, ctx.lam, kept if ctx.inter else None)
        if ctx.nn_blend:
            tokens = (1.0 - ctx.nn_blend) * tokens + ctx.nn_blend * composite.nearest_anchor_average(
                x, y, semantic, a, s)
        pairs = [
            (tokens, g_tokens), (mass, g_mass),
            (composite.confidence_of(transport, s), g_confidence),
            ((transport * cost).sum((1, 2)), g_distance), (f_, g_f), (g_, g_g),
        ]
        outs = [o for o, go in pairs if go is not None]
        grads = [go.to(cd) for _, go in pairs if go is not None]
        gx, gy = torch.autograd.grad(outs, (x, y), grads, allow_unused=True)
    gx = torch.zeros_like(anchors) if gx is None else gx.to(anchors.dtype)
    gy = torch.zeros_like(sources) if gy is None else gy.to(sources.dtype)
    return (gx, gy) + (None,) * 15


# ---- clip_aggregate --------------------------------------------------------------------------

def _clip_fake(frames, lengths, sizes, anchor_weight=None, eps=0.1, lam=1.0, max_iter=100,
               tol=0.0, tau=None, keep=None):
    c, length, m, d = frames.shape
    per_step = frames.new_empty(c, length, m)
    return (frames.new_empty(c, m, d), sizes.new_empty(c, m),
            frames.new_empty(c, length, m, dtype=torch.bool), per_step, torch.empty_like(per_step),
            torch.empty_like(per_step), frames.new_empty(c, length, dtype=torch.int64),
            frames.new_empty(c, length))


def _clip_setup(ctx, inputs, output):
    frames, lengths, sizes, anchor_weight, eps, lam, _, _, _, _ = inputs
    _, _, kept, _, f, g, iterations, error = output
    ctx.eps, ctx.lam, ctx.anchor_weight = eps, lam, anchor_weight
    ctx.mark_non_differentiable(kept, iterations, error)
    ctx.save_for_backward(frames, lengths, sizes, f, g, kept)


def _clip_backward(ctx, g_anchors, g_sizes, _g_kept, g_confidence, g_f, g_g, _g_iter, _g_error):
    """Replay the scan from the saved potentials and dynamic tokens with autograd (no Sinkhorn
    iterations), each step's fixed point differentiated implicitly: memory O(L C M^2), not
    O(max_iter). Gradients w.r.t. frames and sizes."""
    _no_weight_grad(ctx, 3, "clip_aggregate")
    frames, lengths, sizes, f, g, kept = ctx.saved_tensors
    cd = _cd(frames)
    f, g = f.to(cd), g.to(cd)

    def potentials(step, cost):
        return ImplicitPotentials.apply(cost, f[:, step], g[:, step], ctx.eps)

    with torch.enable_grad():
        x = frames.detach().to(cd).requires_grad_()
        z = sizes.detach().requires_grad_()
        out = composite.clip_aggregate(x, lengths, z, ctx.anchor_weight, ctx.eps, ctx.lam,
                                       1, 0.0, replay=(potentials, kept))
        pairs = [(out[0], g_anchors), (out[1], g_sizes), (out[3], g_confidence), (out[4], g_f),
                 (out[5], g_g)]
        pairs = [(o, go) for o, go in pairs if go is not None and o.requires_grad]  # L = 1: none
        gx, gz = torch.autograd.grad([o for o, _ in pairs], (x, z),
                                     [go.to(o.dtype) for o, go in pairs],
                                     allow_unused=True) if pairs else (None, None)
    gx = torch.zeros_like(frames) if gx is None else gx.to(frames.dtype)
    gz = torch.zeros_like(sizes) if gz is None else gz.to(sizes.dtype)
    return (gx, None, gz) + (None,) * 7


if HAS_EXTENSION:
    torch.library.register_fake("aot::cosine_cost")(_cosine_cost_fake)
    torch.library.register_fake("aot::sinkhorn")(_sinkhorn_fake)
    torch.library.register_fake("aot::sinkhorn_aggregate")(_aggregate_fake)
    torch.library.register_fake("aot::clip_aggregate")(_clip_fake)
    torch.library.register_autograd("aot::cosine_cost", _cosine_cost_backward,
                                    setup_context=_cosine_cost_setup)
    torch.library.register_autograd("aot::sinkhorn", _sinkhorn_backward,
                                    setup_context=_sinkhorn_setup)
    torch.library.register_autograd("aot::sinkhorn_aggregate", _aggregate_backward,
                                    setup_context=_aggregate_setup)
    torch.library.register_autograd("aot::clip_aggregate", _clip_backward,
                                    setup_context=_clip_setup)
