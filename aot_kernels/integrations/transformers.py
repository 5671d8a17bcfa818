"""One-line token reduction for HuggingFace video LLMs: `patch(model, reducer)`.

    from aot_kernels import AOTReducer
    from aot_kernels.integrations.transformers import patch, unpatch
    patch(model, AOTReducer.preset("llava-onevision-7b", retention=0.10))
    model.generate(**inputs)        # the language model now sees ~10% of the video tokens

Covered: LlavaOnevisionForConditionalGeneration (which also serves the LLaVA-Video checkpoints),
transformers TESTED_TRANSFORMERS. On every call with `pixel_values_videos`, the patch:
1. runs the model's own `get_video_features` (vision tower, projector, 2x2 bilinear pooling),
   reading scores off the vision tower on the way (below);
2. reduces every video with the reducer (AOT or any `aot_kernels.reducers.build(...)` baseline);
3. shortens `input_ids` (and `attention_mask`, `labels`) to the reduced count of video
   placeholders (+ the image-newline token LLaVA-OneVision appends to a video), re-padding the
   batch on the side it was padded when the counts differ, and hands the reduced features to the
   model as `mm_encoder_outputs`. Generation then runs on the shortened prompt, so positions and
   the KV cache are consistent by construction.

Scores (SPEC §4, SigLIP has no [CLS]): the mean attention each patch receives, heads averaged,
in the layer whose output the features come from (global) and in a shallow layer (local,
`local_layer`), pooled like the features. They are recomputed from that layer's input with its
own q/k projections in a forward pre-hook, so the model keeps its sdpa / flash attention (forcing
eager attention would make the whole tower slower and store every attention map).
"""
from __future__ import annotations

import functools
import inspect
import math
import warnings
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch

TESTED_TRANSFORMERS = ">=5.23,<5.24"
_ATTR = "_aot_kernels_patch"


def _version_ok() -> bool:
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return (major, minor) == (5, 23)


def _received_attention(attn, hidden: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Mean attention each token receives [BF, P] (over heads and queries), from the layer's input
    hidden states [BF, P, E] and its own projections; fp32 softmax, a few frames at a time."""
    bf, p, _ = hidden.shape
    heads, dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(hidden).view(bf, p, heads, dim).transpose(1, 2)
    k = attn.k_proj(hidden).view(bf, p, heads, dim).transpose(1, 2)
    out = []
    for s in range(0, bf, chunk):
        logits = (q[s:s + chunk].float() @ k[s:s + chunk].float().transpose(-1, -2)) * attn.scale
        out.append(torch.softmax(logits, dim=-1).mean(dim=(1, 2)))
    return torch.cat(out)


@contextmanager
def _capture_scores(layers, wanted: Dict[str, int]):
    """Pre-hooks on the attention of `layers[index]` for each name: received attention [BF, P]."""
    got: Dict[str, torch.Tensor] = {}
    handles = []
    for name, index in wanted.items():
        attn = layers[index].self_attn

        def hook(module, args, kwargs, name=name):
            hidden = args[0] if args else kwargs["hidden_states"]
            with torch.no_grad():
                got[name] = _received_attention(module, hidden)

        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def _layer_of(feature_layer, depth: int) -> int:
    """The encoder layer whose output is hidden_states[feature_layer] (hidden_states[0] is the
    embedding output); the last one when several are concatenated."""
    if isinstance(feature_layer, (list, tuple)):
        feature_layer = max(feature_layer, key=lambda i: i % (depth + 1))
    index = feature_layer % (depth + 1) - 1
    if index < 0:
        raise ValueError("vision_feature_layer 0 is the patch embedding: no attention to score")
    return index


class _LlavaOnevision:
    """What the patch needs to know about LlavaOnevisionForConditionalGeneration."""

    def __init__(self, model, local_layer):
        self.model = model
        self.tower = model.model.vision_tower
        self.layers = self.tower.encoder.layers
        depth = len(self.layers)
        self.local_layer = depth // 4 if local_layer == "auto" else local_layer
        if self.local_layer is not None and not -depth <= self.local_layer < depth:
            raise ValueError(f"local_layer={local_layer} is outside the vision tower's {depth} layers")

    def reduce(self, reducer, kwargs, left: bool) -> dict:
        model, cfg = self.model, self.model.config
        video = kwargs.pop("pixel_values_videos")
        side = math.ceil(cfg.vision_config.image_size // cfg.vision_config.patch_size / 2)
        places = _placeholders(kwargs, cfg.video_token_id, video.shape[1] * side * side + 1)
        layer = kwargs.get("vision_feature_layer") or cfg.vision_feature_layer
        strategy = kwargs.get("vision_feature_select_strategy") or cfg.vision_feature_select_strategy
        wanted = {"global": _layer_of(layer, len(self.layers))}
        if self.local_layer is not None:
            wanted["local"] = self.local_layer % len(self.layers)
        with _capture_scores(self.layers, wanted) as got:
            out = model.model.get_video_features(video, vision_feature_layer=layer,
                                                 vision_feature_select_strategy=strategy,
                                                 return_dict=True)
        pooled = out.pooler_output  # [B, F*N + 1, D]: the video's tokens, then the newline
        b, frames = video.shape[:2]
        n = (pooled.shape[1] - 1) // frames
        side = math.isqrt(n)
        features = pooled[:, :-1].reshape(b, frames, n, -1)

        def pool(score):  # exactly like the features: strategy, then 2x2 bilinear pooling
            if strategy == "default":
                score = score[:, 1:]
            return model.model.apply_pooling(score.unsqueeze(-1)).reshape(b, frames, n)

        scores = pool(got["global"])
        local = pool(got["local"]) if "local" in got else None
        reduced = reducer([f for f in features], [s for s in scores],
                          None if local is None else [s for s in local], grid=(side, side))
        pieces = [torch.cat([r.tokens.to(pooled.dtype), pooled[i, -1:]]) for i, r in enumerate(reduced)]
        kwargs = _shorten(kwargs, places, [len(p) for p in pieces],
                          getattr(cfg.text_config, "pad_token_id", None), left)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        encoded = dict(kwargs.get("mm_encoder_outputs") or {})
        # One flat row: forward flattens (batch, tokens) and fills the placeholders in order,
        # which also serves batches whose videos kept different counts.
        encoded["video"] = BaseModelOutputWithPooling(pooler_output=torch.cat(pieces).unsqueeze(0))
        kwargs["mm_encoder_outputs"] = encoded
        kwargs.pop("vision_feature_layer", None)
        kwargs.pop("vision_feature_select_strategy", None)
        return kwargs


SUPPORTED = {"LlavaOnevisionForConditionalGeneration": _LlavaOnevision}


def _placeholders(kwargs: dict, token_id: int, full: int) -> List[torch.Tensor]:
    """Positions of each row's video placeholders; checked before any encoding."""
    ids = kwargs.get("input_ids")
    if ids is None:
        raise ValueError("the aot_kernels patch needs input_ids (to find the video placeholders); "
                         "inputs_embeds alone cannot be shortened")
    if kwargs.get("position_ids") is not None:
        raise ValueError("position_ids with pixel_values_videos: the patch shortens the prompt, "
                         "so leave positions to the model")
    places = []
    for b in range(ids.shape[0]):
        place = torch.nonzero(ids[b] == token_id).flatten()
        if len(place) != full:
            raise ValueError(f"row {b} of input_ids has {len(place)} video placeholders, but its "
                             f"video has {full} tokens (frames x tokens + newline); one video per "
                             "row, expanded by the processor, is what the patch supports")
        places.append(place)
    return places


def _shorten(kwargs: dict, places: List[torch.Tensor], kept: List[int], pad_id, left: bool) -> dict:
    """Drop the surplus video placeholders of each row (and the same columns of attention_mask
    and labels); re-pad rows that end up with different lengths on the left (generation, or a
    left-padded batch) or on the right."""
    ids = kwargs["input_ids"]
    mask = kwargs.get("attention_mask")
    labels = kwargs.get("labels")
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for b, place in enumerate(places):
        keep = torch.ones(ids.shape[1], dtype=torch.bool, device=ids.device)
        keep[place[kept[b]:]] = False
        rows["input_ids"].append(ids[b][keep])
        if mask is not None:
            rows["attention_mask"].append(mask[b][keep])
        if labels is not None:
            rows["labels"].append(labels[b][keep])
    longest = max(len(r) for r in rows["input_ids"])
    left = left or (mask is not None and bool((mask[:, 0] == 0).any()))
    if pad_id is None:
        pad_id = 0
    fill = {"input_ids": pad_id, "attention_mask": 0, "labels": -100}
    for name, values in rows.items():
        if not values:
            continue
        padded = []
        for r in values:
            pad = r.new_full((longest - len(r),), fill[name])
            padded.append(torch.cat([pad, r]) if left else torch.cat([r, pad]))
        kwargs[name] = torch.stack(padded)
    if mask is None and len({len(r) for r in rows["input_ids"]}) > 1:
        kwargs["attention_mask"] = torch.stack([
            torch.cat([r.new_zeros(longest - len(r)), r.new_ones(len(r))]) if left else
            torch.cat([r.new_ones(len(r)), r.new_zeros(longest - len(r))])
            for r in rows["input_ids"]])
    return kwargs


def patch(model, reducer, *, local_layer="auto"):
    """Reduce the video tokens of `model` with `reducer` on every forward / generate call; returns
    the model (patched in place). `reducer`: an AOTReducer or any `aot_kernels.reducers.build`
    reducer. local_layer: the vision tower layer for local scores ("auto": a quarter of the depth;
    None: local = global scores). Calling patch again replaces the reducer."""
    name = type(model).__name__
    if name not in SUPPORTED:
        raise TypeError(f"aot_kernels.integrations.transformers.patch supports {sorted(SUPPORTED)}, "
                        f"not {name}")
    if not callable(reducer):
        raise TypeError(f"reducer must be callable like aot_kernels.AOTReducer, got {type(reducer).__name__}")
    if not _version_ok():
        import transformers

        warnings.warn(f"aot_kernels is tested with transformers {TESTED_TRANSFORMERS}, this is "
                      f"{transformers.__version__}", UserWarning, stacklevel=2)
    if hasattr(model, _ATTR):
        unpatch(model)
    adapter = SUPPORTED[name](model, local_layer)
    forward, generate = model.forward, model.generate
    forward_params = list(inspect.signature(forward).parameters)

    def prepare(args, kwargs, left=False):
        kwargs = dict(zip(forward_params, args), **kwargs)
        if kwargs.get("pixel_values_videos") is None:
            if kwargs.get("pixel_values") is not None:
                raise ValueError("this model is patched to reduce video tokens, and this call has "
                                 "images but no video; call aot_kernels.integrations.transformers"
                                 ".unpatch(model) for image-only inputs")
            return kwargs
        if (kwargs.get("mm_encoder_outputs") or {}).get("video") is not None:
            raise ValueError("pass pixel_values_videos or mm_encoder_outputs['video'], not both")
        return adapter.reduce(reducer, kwargs, left)

    @functools.wraps(forward)
    def patched_forward(*args, **kwargs):
        return forward(**prepare(args, kwargs))

    @functools.wraps(generate)
    def patched_generate(*args, **kwargs):
        if args:
            kwargs["input_ids"] = args[0]
        return generate(**prepare((), kwargs, left=True))  # decoder-only: pad on the left

    model.forward, model.generate = patched_forward, patched_generate
    setattr(model, _ATTR, {"reducer": reducer, "adapter": adapter})
    return model


def unpatch(model):
    """Undo `patch`: the model's own forward and generate again. Returns the model."""
    if not hasattr(model, _ATTR):
        raise ValueError(f"{type(model).__name__} is not patched by aot_kernels")
    del model.forward, model.generate
    delattr(model, _ATTR)
    return model


def reducer_of(model) -> Optional[object]:
    """The reducer a patched model uses (None if not patched)."""
    state = getattr(model, _ATTR, None)
    return None if state is None else state["reducer"]
