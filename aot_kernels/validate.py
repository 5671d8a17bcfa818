"""Argument checks of the public API: every mistake a user can make gets a TypeError or
ValueError naming the argument. Shared by all backends. Data-dependent checks (NaN, negative
weights) are skipped while torch.compile traces, where they would break the graph."""
from __future__ import annotations

import math
import numbers

import torch

BACKENDS = ("auto", "cpp", "torch", "triton")


def _no_data(t: torch.Tensor) -> bool:
    """True where values cannot be read: while tracing, or on meta tensors."""
    return torch.compiler.is_compiling() or t.device.type == "meta"


def features(t, name: str, rank: int = 3, what: str = "[B, rows, D]") -> None:
    """Structure only: a floating tensor of the given rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or "
                        f"float64), got {t.dtype}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have shape {what}, got shape {tuple(t.shape)}")


def finite(t: torch.Tensor, name: str) -> None:
    if not t.numel() or _no_data(t):
        return
    # min/max propagate NaN and see +-inf: one pass, no [numel] bool tensor (10x cheaper).
    low, high = torch.aminmax(t)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError(f"{name} contains NaN or inf")


def pair(x, y, xname: str, yname: str) -> None:
    """Two feature tensors [B,M,D] and [B,N,D] that belong together."""
    features(x, xname)
    features(y, yname)
    if x.device != y.device:
        raise ValueError(f"{xname} and {yname} are on different devices: {x.device} and {y.device}")
    if x.dtype != y.dtype:
        raise TypeError(f"{xname} and {yname} must have the same dtype, got {x.dtype} and {y.dtype}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"batch sizes differ: {xname} has B={x.shape[0]}, {yname} has B={y.shape[0]}")
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"feature sizes differ: {xname} has D={x.shape[2]}, {yname} has D={y.shape[2]}")
    if x.shape[2] == 0:
        raise ValueError(f"{xname} and {yname} have no features (D == 0)")
    if x.shape[1] == 0:
        raise ValueError(f"{xname} has no rows (M == 0)")
    if y.shape[1] == 0:
        raise ValueError(f"{yname} has no rows (N == 0)")
    finite(x, xname)
    finite(y, yname)


def cost(c) -> None:
    features(c, "cost", what="[B, M, N]")
    if c.shape[1] == 0 or c.shape[2] == 0:
        raise ValueError(f"cost must have M > 0 anchors and N > 0 sources, got shape {tuple(c.shape)}")
    finite(c, "cost")


def weight(w, name: str, batch: int, length: int, device) -> None:
    """Optional marginal [B, length]: finite, >= 0, not all zero per problem (zero = padding)."""
    if w is None:
        return
    features(w, name, rank=2, what=f"[B={batch}, {length}]")
    if tuple(w.shape) != (batch, length):
        raise ValueError(f"{name} must have shape [{batch}, {length}], got {tuple(w.shape)}")
    if w.device != device:
        raise ValueError(f"{name} is on device {w.device} but the features are on device {device}")
    finite(w, name)
    if _no_data(w):
        return
    if bool((w < 0).any()):
        raise ValueError(f"{name} has negative entries")
    if not bool((w.sum(1) > 0).all()):
        raise ValueError(f"{name} is all zero for some problem: every entry would be padding")


def _real(v, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def integer(value, name: str, minimum: int) -> int:
    """An int (not a bool) >= minimum: TypeError otherwise, ValueError below the minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def pair_of_ints(value, name: str):
    """(rows, cols), both ints >= 1: a grid or a window grid."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair of ints (rows, cols), got {value!r}")
    return integer(value[0], f"{name} rows", 1), integer(value[1], f"{name} cols", 1)


def solver(eps, max_iter, tol) -> None:
    if _real(eps, "eps") <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    integer(max_iter, "max_iter", 1)
    if _real(tol, "tol") < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")


def aggregation(lam, tau, keep, source_weight, n: int) -> None:
    """lam >= 0; at most one of tau (in [0, 1]) and keep (0..N, and no more than the
    non-padded sources of any problem)."""
    if _real(lam, "lam") < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if tau is not None and keep is not None:
        raise ValueError("give tau (threshold mode) or keep (keep-count mode), not both")
    if tau is not None and not 0.0 <= _real(tau, "tau") <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if keep is None:
        return
    if integer(keep, "keep", 0) > n:
        raise ValueError(f"keep must be in [0, N={n}], got {keep}")
    if source_weight is not None and not _no_data(source_weight):
        fewest = int((source_weight > 0).sum(1).min())
        if keep > fewest:
            raise ValueError(f"keep={keep} exceeds the {fewest} non-padded sources of a problem")


def backend(name) -> None:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
