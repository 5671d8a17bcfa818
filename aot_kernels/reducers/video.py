"""What every reducer shares: the input forms it accepts, the token budget, and ReducedVideo.

A video is `features [F,N,D]` (F frames of N tokens on an h x w grid, raster order) with scores
`[F,N]`. Reducers accept one video, a rectangular batch `[B,F,N,D]`, or a list of videos whose F
differ; they return a ReducedVideo, a batched ReducedVideo, or a list, respectively. IndexCache
keeps the index tensors that depend only on shapes on the device, built once.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..ops import validate
from .token_map import TokenMaps

Clip = Tuple[int, int]


@dataclass
class ReducedVideo:
    """The tokens a reducer kept, in output order, and where each came from.

    tokens [K,D] (input dtype); frame_ids [K] int64: frame of each token; positions [K] int64:
    original flat index t*N + n, for RoPE / M-RoPE gathers; sizes [K]: the total weight of the
    original tokens in the weighted mean each token is (size x token = sum_k w_k x_k over the
    originals x_k; SPEC §9): 1 for an original, the member count for an average, fractional
    under OT folding, which absorbs only part of a source (AOT: lam T_ji in the intra step);
    dynamic [K] bool: AOT's dynamic tokens (kept as they are by the inter-frame stage);
    clips: [start, end) frame ranges the reducer worked in; grid (h, w). From a batch
    [B,F,N,D] in quota mode every tensor gains a leading B. `stats`: token counts (and, when
    profiling, milliseconds) per stage. token_map: with return_map=True, the reduction as an
    operator on any per-token tensor (`apply`); else None.
    """
    tokens: torch.Tensor
    frame_ids: torch.Tensor
    positions: torch.Tensor
    sizes: torch.Tensor
    dynamic: torch.Tensor
    clips: List[Clip]
    grid: Tuple[int, int]
    stats: Dict[str, float] = field(default_factory=dict)
    token_map: Optional[object] = None

    def __len__(self) -> int:
        return self.tokens.shape[-2]

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """The same reduction applied to another per-token tensor (SPEC §11): values [F,N,*]
        ([B,F,N,*] for a batch) -> [K,*] ([B,K,*]), the same selection and merge weights as the
        tokens (a merged token's value is the same weighted mean). Needs return_map=True."""
        if self.token_map is None:
            raise ValueError("this reduction kept no operator: call the reducer with "
                             "return_map=True to apply it to other per-token tensors")
        return self.token_map(values)

    def to_dict(self) -> dict:
        """Plain dict of tensors and lists (what `python -m aot_kernels reduce` saves)."""
        return {"tokens": self.tokens, "frame_ids": self.frame_ids, "positions": self.positions,
                "sizes": self.sizes, "dynamic": self.dynamic, "clips": self.clips,
                "grid": self.grid, "stats": self.stats}


def stack(videos: Sequence[ReducedVideo]) -> ReducedVideo:
    """Batch reductions that kept the same number of tokens (quota mode) along a new dim 0."""
    counts = {len(v) for v in videos}
    if len(counts) != 1:
        raise ValueError(f"cannot stack reductions of different lengths {sorted(counts)}; "
                         "use a list of videos (threshold mode keeps a data-dependent count)")
    cat = lambda name: torch.stack([getattr(v, name) for v in videos])  # noqa: E731
    maps = [v.token_map for v in videos]
    return ReducedVideo(cat("tokens"), cat("frame_ids"), cat("positions"), cat("sizes"),
                        cat("dynamic"), [c for v in videos for c in v.clips], videos[0].grid,
                        dict(videos[0].stats),
                        None if any(m is None for m in maps) else TokenMaps(maps))


@dataclass
class Video:
    """One validated input video."""
    features: torch.Tensor  # [F,N,D]
    scores: Optional[torch.Tensor]  # [F,N] or None
    local_scores: Optional[torch.Tensor]  # [F,N] or None

    @property
    def frames(self) -> int:
        return self.features.shape[0]


def retention(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"retention must be a number in (0, 1], got {type(value).__name__}")
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"retention must be in (0, 1], got {value}")
    return float(value)


def token_budget(frames: int, tokens: int, kept_fraction: float) -> int:
    """K = round(retention * F * N) tokens for the whole video (half to even, like Python)."""
    k = round(kept_fraction * frames * tokens)
    if k < 1:
        raise ValueError(f"retention {kept_fraction} keeps no token of a {frames}x{tokens} video "
                         f"(round({kept_fraction} * {frames * tokens}) = 0)")
    return k


def grid_of(grid, n: int) -> Tuple[int, int]:
    """(h, w) with h*w = N; None means a square grid."""
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"N={n} tokens per frame is not a square: pass grid=(h, w)")
        return side, side
    h, w = validate.pair_of_ints(grid, "grid")
    if h * w != n:
        raise ValueError(f"grid {h}x{w} has {h * w} tokens but the features have N={n} per frame")
    return h, w


def _scores(s, name: str, features: torch.Tensor, where: str) -> Optional[torch.Tensor]:
    if s is None:
        return None
    validate.features(s, f"{name}{where}", rank=2, what=f"[F={features.shape[0]}, N={features.shape[1]}]")
    if tuple(s.shape) != tuple(features.shape[:2]):
        raise ValueError(f"{name}{where} must have shape [F, N] = {list(features.shape[:2])}, "
                         f"got {list(s.shape)}")
    if s.device != features.device:
        raise ValueError(f"{name}{where} is on {s.device} but the features are on {features.device}")
    return s


def _one(features, scores, local_scores, where: str = "") -> Video:
    """One video's structure (shapes, dtypes, devices); values are checked in as_videos."""
    validate.features(features, f"features{where}", rank=3, what="[F, N, D]")
    if min(features.shape) == 0:
        raise ValueError(f"features{where} is empty: shape {list(features.shape)}")
    return Video(features, _scores(scores, "scores", features, where),
                 _scores(local_scores, "local_scores", features, where))


def _index(x, b):
    return None if x is None else x[b]


def as_videos(features, scores, local_scores, check_values: bool = True
              ) -> Tuple[List[Video], str]:
    """Validate the input and return (videos, form), form in {"single", "batch", "list"}.

    Shapes, dtypes and devices are always checked. check_values: NaN/inf in the features and
    scores too, all in one validate.values call (one host sync for all videos); False reads no
    values."""
    if isinstance(features, (list, tuple)):
        n = len(features)
        if n == 0:
            raise ValueError("features is an empty list")
        for name, s in (("scores", scores), ("local_scores", local_scores)):
            if s is not None and (not isinstance(s, (list, tuple)) or len(s) != n):
                raise TypeError(f"with a list of {n} videos, {name} must be a list of {n} "
                                f"[F, N] tensors (or None), got {type(s).__name__}")
        videos = [_one(features[b], _index(scores, b), _index(local_scores, b), f"[{b}]")
                  for b in range(n)]
        form = "list"
    elif isinstance(features, torch.Tensor) and features.dim() == 4:
        for name, s in (("scores", scores), ("local_scores", local_scores)):
            if s is not None and (not isinstance(s, torch.Tensor) or s.dim() != 3):
                raise ValueError(f"with features [B, F, N, D], {name} must be [B, F, N]")
            if s is not None and s.shape[0] != features.shape[0]:
                raise ValueError(f"{name} has B={s.shape[0]}, features B={features.shape[0]}")
        videos = [_one(features[b], _index(scores, b), _index(local_scores, b), f"[{b}]")
                  for b in range(features.shape[0])]
        if not videos:
            raise ValueError("features has batch size 0")
        form = "batch"
    else:
        if isinstance(features, torch.Tensor) and features.dim() not in (3, 4):
            raise ValueError(f"features must be [F, N, D], [B, F, N, D] or a list of [F, N, D], "
                             f"got shape {list(features.shape)}")
        videos = [_one(features, scores, local_scores)]
        form = "single"
    first = videos[0].features
    for b, v in enumerate(videos[1:], 1):
        f = v.features
        if f.shape[1:] != first.shape[1:]:
            raise ValueError(f"video {b} has N, D = {list(f.shape[1:])}, video 0 has "
                             f"{list(first.shape[1:])}: all videos need the same tokens per frame and D")
        if f.dtype != first.dtype or f.device != first.device:
            raise ValueError(f"video {b} is {f.dtype} on {f.device}, video 0 {first.dtype} on "
                             f"{first.device}")
    if form == "batch":  # the [B, ...] tensors themselves: one reduction each
        checks = [(features, "features", "finite"), (scores, "scores", "finite"),
                  (local_scores, "local_scores", "finite")]
    else:
        checks = [(t, f"{name}[{b}]" if form == "list" else name, "finite")
                  for b, v in enumerate(videos)
                  for t, name in ((v.features, "features"), (v.scores, "scores"),
                                  (v.local_scores, "local_scores"))]
    validate.values(checks, check_values)
    return videos, form


def map_precision(videos: List[Video], return_map) -> Tuple[List[Video], Optional[torch.dtype]]:
    """With return_map=True, fp16/bf16 videos are reduced in float32: the map's weights come
    from the OT potentials, which half precision rounds too coarsely (a bf16 potential is off
    by ~1e-3, 5% of a plan entry at eps 0.02). Returns (videos, the dtype to give the tokens
    back in, or None)."""
    if not isinstance(return_map, bool):
        raise TypeError(f"return_map must be a bool, got {type(return_map).__name__}")
    dtype = videos[0].features.dtype
    if not return_map or dtype not in (torch.float16, torch.bfloat16):
        return videos, None
    up = lambda t: None if t is None else t.float()  # noqa: E731
    return [Video(v.features.float(), up(v.scores), up(v.local_scores)) for v in videos], dtype


def finish(results: List[ReducedVideo], form: str, dtype: Optional[torch.dtype] = None):
    """Shape the per-video results like the input: one, stacked, or a list. dtype: the tokens'
    dtype to restore (`map_precision`)."""
    if dtype is not None:
        for r in results:
            r.tokens = r.tokens.to(dtype)
    if form == "single":
        return results[0]
    if form == "batch":
        return stack(results)
    return results


def size_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def folded_sizes(mass: torch.Tensor, lam: float) -> torch.Tensor:
    """Sizes after an OT fold of original tokens into original tokens (SPEC §3, §9): 1 + lam m_j.

    The fold x~_j = (x_j + lam sum_i T_ji y_i) / (1 + lam m_j) (Eq. 11) is the weighted mean of
    the anchor (weight 1) and each source i (weight lam T_ji), so the total weight of originals
    in x~_j, its size, is 1 + lam m_j with m_j = sum_i T_ji the mass it received. Both callers
    fold originals into originals: AOT's intra-frame step and the baselines' merge="ot".
    mass [B,M] -> sizes [B,M]."""
    return 1.0 + lam * mass


def _tracing(like: torch.Tensor) -> bool:
    """True where tensors are not real: under torch.compile, or for fake or meta tensors."""
    return (torch.compiler.is_compiling() or isinstance(like, FakeTensor)
            or like.device.type == "meta")


class IndexCache:
    """Index tensors that depend only on shapes, built once per (key, device) and kept there, so
    a warmed-up call copies nothing from the host (and can be captured in a CUDA graph).

    get(key, like, build) returns build(like.device). Nothing is stored while tracing
    (torch.compile, fake or meta tensors): those tensors would not be real. Entries are built
    outside inference mode (usable with and without it) and must not be modified; a full cache
    (`size` entries) starts over.
    """

    def __init__(self, size: int = 64):
        self.size = size
        self._entries: Dict[Hashable, object] = {}

    def get(self, key: Hashable, like: torch.Tensor, build: Callable[[torch.device], object]):
        if _tracing(like):
            return build(like.device)
        key = (key, like.device)
        hit = self._entries.get(key)
        if hit is None:
            with torch.inference_mode(False):
                hit = build(like.device)
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[key] = hit
        return hit
