"""Argument checks of the public API: every mistake a user can make gets a TypeError or
ValueError naming the argument. Shared by all backends. Data-dependent checks (NaN, negative
weights) are skipped while torch.compile traces, where they would break the graph."""
from __future__ import annotations

import math
import numbers
from typing import Optional

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
    values([(t, name, "finite")])


# One flag per check kind; the message names the argument.
_VALUE_MESSAGES = {
    "finite": "{} contains NaN or inf",
    "negative": "{} has negative entries",
    "empty": "{} is all zero for some problem: every entry would be padding",
}


def values(checks, enabled: bool = True) -> None:
    """Data checks of several tensors with one host synchronisation.

    checks: (tensor or None, name, kind) with kind "finite" (no NaN/inf), "nonnegative"
    (finite, >= 0), "weight" (finite, >= 0, and some positive entry in every row of the last
    dim), ("range", low, high) (integers in [low, high]) or ("keep", k) (a weight with >= k
    positive entries per row).
    Each check is a reduction or two; all flags come back in one transfer, so on CUDA the
    whole call is one sync.
    enabled=False (the API's check_values=False) skips it: nothing is read. Skipped while
    tracing and on meta tensors, where values cannot be read.
    """
    if not enabled:
        return
    flags, labels = [], []
    for t, name, kind in checks:
        if t is None or not t.numel() or _no_data(t):
            continue
        # min/max propagate NaN and see +-inf: one pass, no [numel] bool tensor (10x cheaper).
        if isinstance(kind, tuple) and kind[0] == "keep":
            flags.append((t > 0).sum(-1).min() < kind[1])
            labels.append((f"has fewer than keep={kind[1]} non-padded entries in some problem", name))
            continue
        low, high = torch.aminmax(t)
        if isinstance(kind, tuple):  # ("range", lo, hi)
            flags.append((low < kind[1]) | (high > kind[2]))
            labels.append((f"must be in [{kind[1]}, {kind[2]}]", name))
            continue
        flags.append(~(torch.isfinite(low) & torch.isfinite(high)))
        labels.append(("finite", name))
        if kind in ("weight", "nonnegative"):
            flags.append(low < 0)
            labels.append(("negative", name))
        if kind == "weight":
            flags.append(~(t.sum(-1) > 0).all())
            labels.append(("empty", name))
    if not flags:
        return
    for bad, (kind, name) in zip(torch.stack(flags).tolist(), labels):  # the one sync
        if bad:
            raise ValueError(_VALUE_MESSAGES.get(kind, "{} " + kind).format(name))


def pair(x, y, xname: str, yname: str, check_values: bool = True) -> None:
    """Two feature tensors [B,M,D] and [B,N,D] that belong together (values: `values`)."""
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
    values([(x, xname, "finite"), (y, yname, "finite")], check_values)


def cost(c, check_values: bool = True) -> None:
    features(c, "cost", what="[B, M, N]")
    if c.shape[1] == 0 or c.shape[2] == 0:
        raise ValueError(f"cost must have M > 0 anchors and N > 0 sources, got shape {tuple(c.shape)}")
    values([(c, "cost", "finite")], check_values)


def weight(w, name: str, batch: int, length: int, device, check_values: bool = True) -> None:
    """Optional marginal [B, length]: finite, >= 0, not all zero per problem (zero = padding).
    The value part runs only with check_values (see `values`, which can batch it with others)."""
    if w is None:
        return
    features(w, name, rank=2, what=f"[B={batch}, {length}]")
    if tuple(w.shape) != (batch, length):
        raise ValueError(f"{name} must have shape [{batch}, {length}], got {tuple(w.shape)}")
    if w.device != device:
        raise ValueError(f"{name} is on device {w.device} but the features are on device {device}")
    values([(w, name, "weight")], check_values)


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


def aggregation(lam, tau, keep, n: int) -> None:
    """lam >= 0; at most one of tau (in [0, 1]) and keep (0..N). That keep fits the non-padded
    sources of every problem is a value check: kind ("keep", k) of `values`."""
    if _real(lam, "lam") < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if tau is not None and keep is not None:
        raise ValueError("give tau (threshold mode) or keep (keep-count mode), not both")
    if tau is not None and not 0.0 <= _real(tau, "tau") <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    if keep is not None and integer(keep, "keep", 0) > n:
        raise ValueError(f"keep must be in [0, N={n}], got {keep}")


STOPS = ("marginal", "scaling")


def stop(value) -> str:
    """Sinkhorn's stopping rule: "marginal" (SPEC §2) or "scaling" (SPEC §8.4)."""
    if value not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {value!r}")
    return value


def spatial_term(spatial, x_pos, y_pos, xname: str, yname: str, batch: int, m: int, n: int,
                 device) -> float:
    """spatial >= 0; with spatial > 0 both positions [B,M,P] and [B,N,P] (floating, same P, on
    the features' device); positions without spatial are a mistake, not ignored."""
    weight = _real(spatial, "spatial")
    if weight < 0:
        raise ValueError(f"spatial must be >= 0, got {spatial}")
    if weight == 0:
        if x_pos is not None or y_pos is not None:
            raise ValueError(f"{xname}/{yname} are used only with spatial > 0 (got spatial=0)")
        return weight
    for pos, name, rows in ((x_pos, xname, m), (y_pos, yname, n)):
        if pos is None:
            raise ValueError(f"spatial > 0 needs {xname} and {yname}; {name} is missing")
        features(pos, name, rank=3, what=f"[B={batch}, {rows}, P]")
        if pos.shape[0] != batch or pos.shape[1] != rows or pos.shape[2] == 0:
            raise ValueError(f"{name} must have shape [{batch}, {rows}, P], got {tuple(pos.shape)}")
        if pos.device != device:
            raise ValueError(f"{name} is on device {pos.device} but the features are on {device}")
    if x_pos.shape[2] != y_pos.shape[2]:
        raise ValueError(f"{xname} and {yname} have different P: {x_pos.shape[2]} and {y_pos.shape[2]}")
    return weight


def quantile(keep_quantile, tau, keep) -> Optional[float]:
    """keep_quantile in [0, 1] (SPEC §8.7's inter-mode rule), instead of tau or keep."""
    if keep_quantile is None:
        return None
    value = _real(keep_quantile, "keep_quantile")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"keep_quantile must be in [0, 1], got {keep_quantile}")
    if tau is not None or keep is not None:
        raise ValueError("give one of tau, keep and keep_quantile")
    return value


def blend(nn_blend, tau, keep) -> float:
    """nn_blend in [0, 1], intra mode only (SPEC §8.5)."""
    value = _real(nn_blend, "nn_blend")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"nn_blend must be in [0, 1], got {nn_blend}")
    if value and (tau is not None or keep is not None):
        raise ValueError("nn_blend applies to intra mode (no tau or keep)")
    return value


def backend(name) -> None:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
