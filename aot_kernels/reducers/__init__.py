"""Swappable token reducers behind one interface: `build(name, **config)`.

Every reducer is called as `reducer(features, scores=None, local_scores=None, *, grid=None)`
with features [F,N,D] (or [B,F,N,D], or a list) and returns a ReducedVideo (or a batch / list).
"aot" is AOTReducer; the others are the baselines of baselines.py, each with a swappable merge
step (merge=None | "average" | "ot"; "ot" folds the dropped tokens with aot::sinkhorn_aggregate).
"""
from __future__ import annotations

from ..reducer import AOTReducer
from .base import MERGES, Group, TokenReducer
from .baselines import DyCoke, Pool, RandomTokens, ToMe, TopK, VisionZip

REDUCERS = {"aot": AOTReducer, "visionzip": VisionZip, "tome": ToMe, "dycoke": DyCoke,
            "topk": TopK, "pool": Pool, "random": RandomTokens}
NAMES = tuple(REDUCERS)


def build(name: str, **config):
    """A reducer by name with its configuration (retention, merge, check_values, ... see each
    class).

    "aot" folds by OT by construction: it accepts merge="ot" (or no merge) only.
    """
    if name not in REDUCERS:
        raise ValueError(f"unknown reducer {name!r}; choose from {NAMES}")
    if name == "aot":
        merge = config.pop("merge", "ot")
        if merge != "ot":
            raise ValueError(f"the 'aot' reducer merges by optimal transport; merge={merge!r} "
                             "is for the baselines")
    return REDUCERS[name](**config)


__all__ = ["build", "NAMES", "REDUCERS", "MERGES", "Group", "TokenReducer", "AOTReducer",
           "VisionZip", "ToMe", "DyCoke", "TopK", "Pool", "RandomTokens"]
