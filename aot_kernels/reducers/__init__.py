"""Swappable token reducers behind one interface: `build(name, **config)`.

Every reducer is called as `reducer(features, scores=None, local_scores=None, *, grid=None)`
with features [F,N,D] (or [B,F,N,D], or a list) and returns a ReducedVideo (or a batch / list).
"aot" is AOTReducer (SPEC §1-5, exact budget); "aot-authors" is AuthorsAOTReducer, the pipeline
the authors released (SPEC §8), built from its model and benchmark settings; the others are the
baselines of baselines.py, each with a swappable merge step (merge=None | "average" | "ot"; "ot"
folds the dropped tokens with aot::sinkhorn_aggregate).

Modules: video (input forms, ReducedVideo, budgets), selection (anchors), clips (uniform and
DySeg clips), scores (scores for encoders without [CLS]); AOT as stages: planning, intra
(stages 1-2), inter (stage 3), layout (output order), aot (AOTReducer, presets); authors
(AuthorsAOTReducer); base and baselines. Above the ops (and gpu), below eval.
"""
from __future__ import annotations

from .aot import AOTReducer
from .authors import AuthorsAOTReducer
from .base import MERGES, Group, TokenReducer
from .baselines import DyCoke, Pool, RandomTokens, ToMe, TopK, VisionZip

# Reducers with a retention budget (what the compare tool and the CLI sweep); "aot-authors" has
# its own budget (anchors, keep_ratio) and is built by name in `build`.
REDUCERS = {"aot": AOTReducer, "visionzip": VisionZip, "tome": ToMe, "dycoke": DyCoke,
            "topk": TopK, "pool": Pool, "random": RandomTokens}
NAMES = tuple(REDUCERS)
ALL_NAMES = NAMES + ("aot-authors",)


def build(name: str, **config):
    """A reducer by name with its configuration (retention, merge, check_values, ... see each
    class).

    "aot" folds by OT by construction: it accepts merge="ot" (or no merge) only.
    "aot-authors" takes model= ("llava-onevision-7b" | "llava-video-7b") and benchmark=
    ("mvbench" | "egoschema" | "videomme" | "longvideobench") for SPEC §8.8's settings, plus any
    AuthorsAOTReducer keyword to override them.
    """
    if name not in ALL_NAMES:
        raise ValueError(f"unknown reducer {name!r}; choose from {ALL_NAMES}")
    if name == "aot-authors":
        for key in ("merge", "retention"):
            if key in config:
                raise ValueError(f"'aot-authors' has no {key}=: its budget is anchors= and "
                                 "keep_ratio= (or model= and benchmark=)")
        if "model" in config or "benchmark" in config:
            return AuthorsAOTReducer.preset(config.pop("model", "llava-onevision-7b"),
                                            config.pop("benchmark", "mvbench"), **config)
        return AuthorsAOTReducer(**config)
    if name == "aot":
        merge = config.pop("merge", "ot")
        if merge != "ot":
            raise ValueError(f"the 'aot' reducer merges by optimal transport; merge={merge!r} "
                             "is for the baselines")
    return REDUCERS[name](**config)


__all__ = ["build", "NAMES", "ALL_NAMES", "REDUCERS", "MERGES", "Group", "TokenReducer", "AOTReducer",
           "AuthorsAOTReducer",
           "VisionZip", "ToMe", "DyCoke", "TopK", "Pool", "RandomTokens"]
