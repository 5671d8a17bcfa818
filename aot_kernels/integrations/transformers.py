"""One-line token reduction for HuggingFace video LLMs: `patch(model, reducer)`.

    from aot_kernels import AOTReducer
    from aot_kernels.integrations.transformers import patch, unpatch
    patch(model, AOTReducer.preset("llava-onevision-7b", retention=0.10))
    model.generate(**inputs)        # the language model now sees ~10% of the video tokens

Covered: LlavaOnevisionForConditionalGeneration (which also serves the LLaVA-Video checkpoints),
Qwen2_5_VLForConditionalGeneration, and the Qwen3-VL family (SPEC §11):
Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration,
Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration; transformers
TESTED_TRANSFORMERS (5.17 to 5.23; `patch` raises below, warns above). On every call with
`pixel_values_videos`, the patch:
1. runs the model's own `get_video_features` (vision tower, projector / merger, pooling), reading
   scores off the vision tower on the way (below);
2. reduces every video with the reducer (AOT or any `aot_kernels.reducers.build(...)` baseline);
3. shortens `input_ids` (and `attention_mask`, `labels`, `mm_token_type_ids`) to the reduced
   count of video placeholders (+ the newline token LLaVA-OneVision appends to a video),
   re-padding the batch when the counts differ, and hands the reduced features to the model as
   `mm_encoder_outputs` (on releases without it, such as 5.17: through the model's
   get_video_features for the duration of the call). For the Qwen models it also passes
   position_ids: the kept tokens' original 3-D M-RoPE positions, gathered from the full
   prompt's. Qwen3-VL / Qwen3.5 keep every timestamp and vision start/end token (only
   `<|video_pad|>` tokens go), and Qwen3-VL's DeepStack levels are reduced with the reducer's
   own operator (return_map=True, `ReducedVideo.apply`). Generation
   then runs on the shortened prompt, so positions and the KV cache are consistent by
   construction;
4. `generate` returns what the unpatched model returns: the caller's own `input_ids` (full length,
   with the caller's padding), then the generated tokens, so `out[:, input_ids.shape[1]:]` is the
   answer; with return_dict_in_generate, `sequences` likewise (scores / logits are per generated
   token). `max_length` / `min_length` passed to generate count the caller's prompt (a
   max_length set only in the model's generation_config counts the shortened one: prefer
   max_new_tokens). Hidden states, attentions and the returned cache are the language model's,
   over the shortened prompt.

With an AuthorsAOTReducer (SPEC §8, LLaVA-OneVision / LLaVA-Video), step 1 stops after the
projector: the reducer gets the un-pooled features [F, 27*27, D] and the scores of layers 5 and
24 (summed over queries, heads averaged, not pooled), pools itself and keeps a data-dependent
count per video; steps 2-3 are the same.

Scores (SPEC §4; SigLIP and the Qwen2.5-VL ViT have no [CLS]): the mean attention each patch
receives, heads averaged, in the layer whose output the features come from (global) and in a
shallow layer (local, `local_layer`), pooled like the features (LLaVA-OneVision: 2x2 bilinear;
Qwen2.5-VL: the mean over each 2x2 merge unit, window order undone). They are recomputed from that
layer's input with its own projections in a forward pre-hook, so the model keeps its sdpa / flash
attention (forcing eager attention would slow the whole tower and store every attention map).
"""
from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
import math
import warnings
from contextlib import contextmanager, nullcontext
from typing import Dict, List, Optional

import torch

# The transformers releases the patch is tested with (CI runs the oldest and the newest); keep in
# step with pyproject's [hf] extra and the Makefile's HF_OLDEST.
OLDEST_TRANSFORMERS, NEWEST_TRANSFORMERS = (5, 17), (5, 23)
TESTED_TRANSFORMERS = ">=5.17,<5.24"
_ATTR = "_aot_kernels_patch"


def _check_version(version: str) -> None:
    """Raise below the tested range (the model code the patch reads differs), warn above it."""
    from packaging.version import Version

    release = Version(version).release[:2]
    if release < OLDEST_TRANSFORMERS:
        raise RuntimeError(f"aot_kernels.integrations.transformers needs transformers "
                           f"{TESTED_TRANSFORMERS}, this is {version}: "
                           f"pip install 'transformers{TESTED_TRANSFORMERS}'")
    if release > NEWEST_TRANSFORMERS:
        warnings.warn(f"aot_kernels is tested with transformers {TESTED_TRANSFORMERS}, this is "
                      f"{version}", UserWarning, stacklevel=3)


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
def _capture_scores(layers, wanted: Dict[str, int], received):
    """Pre-hooks on the attention of `layers[index]` for each name; `received(module, args,
    kwargs)` turns what the attention is called with into received attention per token."""
    got: Dict[str, torch.Tensor] = {}
    handles = []
    for name, index in wanted.items():
        def hook(module, args, kwargs, name=name):
            with torch.no_grad():
                got[name] = received(module, args, kwargs)

        attn = getattr(layers[index], "self_attn", None) or layers[index].attn  # SigLIP | Qwen ViT
        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def _siglip_received(attn, args, kwargs) -> torch.Tensor:
    return _received_attention(attn, args[0] if args else kwargs["hidden_states"])


def _qwen_vision_received(attn, args, kwargs) -> torch.Tensor:
    """Qwen2.5-VL / Qwen3-VL / Qwen3.5 ViT attention: fused qkv, 2-D rotary embeddings (the
    attention module's own `apply_rotary_pos_emb_vision`), attention within the cu_seqlens
    segments (frames, or Qwen2.5-VL's windows). [L] in the tower's order."""
    import importlib

    apply_rotary_pos_emb_vision = importlib.import_module(
        type(attn).__module__).apply_rotary_pos_emb_vision
    hidden = args[0] if args else kwargs["hidden_states"]
    bounds = kwargs["cu_seqlens"].tolist()
    length = hidden.shape[0]
    q, k, _ = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *kwargs["position_embeddings"])
    out = torch.empty(length, dtype=torch.float32, device=hidden.device)
    for a, b in zip(bounds[:-1], bounds[1:]):
        qs, ks = q[a:b].transpose(0, 1).float(), k[a:b].transpose(0, 1).float()
        out[a:b] = torch.softmax(qs @ ks.transpose(-1, -2) * attn.scaling, dim=-1).mean(dim=(0, 1))
    return out


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

    def __init__(self, model, local_layer, score_layers="auto"):
        self.model = model
        self.tower = model.model.vision_tower
        self.layers = self.tower.encoder.layers
        depth = len(self.layers)
        self.local_layer = depth // 4 if local_layer == "auto" else local_layer
        if self.local_layer is not None and not -depth <= self.local_layer < depth:
            raise ValueError(f"local_layer={local_layer} is outside the vision tower's {depth} layers")
        # SPEC §8.2: layers 5 and 24 of the 26 the LLaVA checkpoints keep, scaled to this depth.
        if score_layers == "auto":
            score_layers = (5 * depth // 26, 24 * depth // 26)
        if (not isinstance(score_layers, (tuple, list)) or len(score_layers) != 2
                or not all(isinstance(i, int) and -depth <= i < depth for i in score_layers)):
            raise ValueError(f"score_layers must be (local, global) layer indices of the vision "
                             f"tower's {depth} layers, got {score_layers!r}")
        self.score_layers = tuple(i % depth for i in score_layers)

    def reduce(self, reducer, kwargs, left: bool) -> dict:
        model, cfg = self.model, self.model.config
        video = kwargs.pop("pixel_values_videos")
        side = math.ceil(cfg.vision_config.image_size // cfg.vision_config.patch_size / 2)
        places = _placeholders(kwargs, cfg.video_token_id, [video.shape[1] * side * side + 1])
        layer = kwargs.get("vision_feature_layer") or cfg.vision_feature_layer
        strategy = kwargs.get("vision_feature_select_strategy") or cfg.vision_feature_select_strategy
        wanted = {"global": _layer_of(layer, len(self.layers))}
        if self.local_layer is not None:
            wanted["local"] = self.local_layer % len(self.layers)
        with _capture_scores(self.layers, wanted, _siglip_received) as got:
            out = model.model.get_video_features(video, vision_feature_layer=layer,
                                                 vision_feature_select_strategy=strategy,
                                                 return_dict=True)
        pooled, newline = self._split_newline(out.pooler_output, video.shape[1] * side * side)
        b, frames = video.shape[:2]
        n = pooled.shape[1] // frames
        side = math.isqrt(n)
        features = pooled.reshape(b, frames, n, -1)

        def pool(score):  # exactly like the features: strategy, then 2x2 bilinear pooling
            if strategy == "default":
                score = score[:, 1:]
            return model.model.apply_pooling(score.unsqueeze(-1)).reshape(b, frames, n)

        scores = pool(got["global"])
        local = pool(got["local"]) if "local" in got else None
        reduced = reducer([f for f in features], [s for s in scores],
                          None if local is None else [s for s in local], grid=(side, side))
        return self._hand_over(kwargs, places, reduced, newline, left)

    def _split_newline(self, pooled: torch.Tensor, tokens: int):
        """get_video_features' output [B, F*N, D] and the newline [B, 1, D]: recent transformers
        (5.20, 5.23) append the newline to the features, 5.17 appends it in forward."""
        if pooled.shape[1] == tokens + 1:
            return pooled[:, :-1], pooled[:, -1:]
        newline = self.model.model.image_newline[None, None, :]
        return pooled, newline.expand(pooled.shape[0], 1, -1).to(pooled)

    @staticmethod
    def legacy_features(encoded):
        """What get_video_features must return for a transformers without mm_encoder_outputs
        (5.17), whose forward appends one newline after it: every video's tokens and newline
        but the last newline, as one flat row [1, sum(K_v + 1) - 1, D]."""
        return encoded.pooler_output[:, :-1]

    def reduce_authors(self, reducer, kwargs, left: bool) -> dict:
        """SPEC §8: the reducer takes the un-pooled features after the projector and the local
        and global scores (attention each patch receives, summed over queries, heads averaged)
        and pools itself; the model's own pooling is not run."""
        model, cfg = self.model, self.model.config
        video = kwargs.pop("pixel_values_videos")
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        pooled_side = math.ceil(side / 2)
        places = _placeholders(kwargs, cfg.video_token_id,
                               [video.shape[1] * pooled_side * pooled_side + 1])
        layer = kwargs.get("vision_feature_layer") or cfg.vision_feature_layer
        strategy = kwargs.get("vision_feature_select_strategy") or cfg.vision_feature_select_strategy
        local, global_ = self.score_layers
        with _capture_scores(self.layers, {"local": local, "global": global_},
                             _siglip_received) as got:
            out = model.model.vision_tower(video.flatten(0, 1), output_hidden_states=True,
                                           return_dict=True)
        if isinstance(layer, int):
            hidden = out.hidden_states[layer]
        else:
            hidden = torch.cat([out.hidden_states[i] for i in layer], dim=-1)
        if strategy == "default":
            hidden = hidden[:, 1:]
        unpooled = model.model.multi_modal_projector(hidden)  # [B*F, P, D], before pooling
        b, frames = video.shape[:2]
        patches = unpooled.shape[1]
        if patches != side * side:
            raise ValueError(f"the tower gave {patches} patches per frame, not {side}x{side}")

        def total(score):  # mean over queries -> sum over queries (SPEC §8.2), strategy applied
            score = score[:, 1:] if strategy == "default" else score
            return (score * score.shape[1]).reshape(b, frames, patches)

        features = unpooled.reshape(b, frames, patches, -1)
        reduced = reducer([f for f in features], [s for s in total(got["global"])],
                          [s for s in total(got["local"])], grid=(side, side))
        newline = model.model.image_newline[None, None, :].expand(b, 1, -1).to(unpooled)
        return self._hand_over(kwargs, places, reduced, newline, left)

    def _hand_over(self, kwargs, places, reduced, newline, left: bool) -> dict:
        """Shorten the prompt to each video's reduced tokens + its newline, and give the model
        those embeddings in placeholder order."""
        cfg = self.model.config
        pieces = [torch.cat([r.tokens.to(newline.dtype), newline[i]]) for i, r in enumerate(reduced)]
        keep = []
        for place, piece in zip(places, pieces):
            row = torch.ones(kwargs["input_ids"].shape[1], dtype=torch.bool, device=place[0].device)
            row[place[0][len(piece):]] = False  # the first K + 1 placeholders stay
            keep.append(row)
        kwargs = _shorten(kwargs, keep, getattr(cfg.text_config, "pad_token_id", None), left)
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        encoded = dict(kwargs.get("mm_encoder_outputs") or {})
        # One flat row: forward flattens (batch, tokens) and fills the placeholders in order,
        # which also serves batches whose videos kept different counts.
        encoded["video"] = BaseModelOutputWithPooling(pooler_output=torch.cat(pieces).unsqueeze(0))
        kwargs["mm_encoder_outputs"] = encoded
        kwargs.pop("vision_feature_layer", None)
        kwargs.pop("vision_feature_select_strategy", None)
        return kwargs


class _QwenVL(ABC):
    """What the Qwen adapters share: videos come as patches with video_grid_thw [V, 3]; the LM
    sees T x (H/2) x (W/2) merged tokens per video (2 frames per temporal patch), placed with 3-D
    M-RoPE positions that the patch gathers from the full prompt's positions at the kept tokens'
    original places (the model's get_rope_index reads the full prompt's placeholder layout, so it
    never sees the shortened one). Subclasses say where a video's placeholders are (`_runs`),
    how the tower's per-patch scores map to merged tokens (`_pool`) and what the model is handed
    (`_encoded`)."""
    family = "Qwen2.5-VL"

    def __init__(self, model, local_layer):
        self.model = model
        self.visual = model.model.visual
        self.layers = self.visual.blocks
        depth = len(self.layers)
        if local_layer == "auto":
            local_layer = self.default_local_layer()
        self.local_layer = local_layer
        if local_layer is not None and not -depth <= local_layer < depth:
            raise ValueError(f"local_layer={local_layer} is outside the vision tower's {depth} blocks")

    @abstractmethod
    def default_local_layer(self) -> int:
        """The vision block for local scores when local_layer="auto"."""

    @abstractmethod
    def _runs(self, kwargs, grid_thw) -> List[List[torch.Tensor]]:
        """Per row of input_ids, per video: its placeholder columns in token order."""

    @abstractmethod
    def _rope_kwargs(self, kwargs) -> dict:
        """Extra keywords for the model's get_rope_index."""

    @abstractmethod
    def _pool(self, received: torch.Tensor, grid_thw: torch.Tensor) -> List[torch.Tensor]:
        """The tower's per-patch scores -> per merged token [T, H/2 * W/2], per video."""

    def reduce(self, reducer, kwargs, left: bool) -> dict:
        model, cfg = self.model, self.model.config
        video = kwargs.pop("pixel_values_videos")
        grid_thw = kwargs.get("video_grid_thw")
        if grid_thw is None:
            raise ValueError(f"{self.family} videos need video_grid_thw (the processor returns it)")
        places = self._runs(kwargs, grid_thw)  # per row, per video: its placeholder columns
        ids = kwargs["input_ids"]
        if kwargs.get("mm_token_type_ids") is None:  # what the processor would have given
            kwargs["mm_token_type_ids"] = ((ids == cfg.image_token_id).int()
                                           + 2 * (ids == cfg.video_token_id).int())
        positions, _ = model.model.get_rope_index(
            ids, kwargs["mm_token_type_ids"], image_grid_thw=kwargs.get("image_grid_thw"),
            video_grid_thw=grid_thw, attention_mask=kwargs.get("attention_mask"),
            **self._rope_kwargs(kwargs))
        depth = len(self.layers)
        wanted = {"global": depth - 1}
        if self.local_layer is not None:
            wanted["local"] = self.local_layer % depth
        with _capture_scores(self.layers, wanted, _qwen_vision_received) as got:
            out = model.model.get_video_features(video, grid_thw, return_dict=True)
        features = list(out.pooler_output)  # per video [T * H/2 * W/2, D]
        scores = self._pool(got["global"], grid_thw)
        local = self._pool(got["local"], grid_thw) if "local" in got else None
        merge = self.visual.spatial_merge_size
        grids = [(int(h) // merge, int(w) // merge) for _, h, w in grid_thw.tolist()]
        frames = [len(s) for s in scores]
        call = functools.partial(reducer, return_map=True) if self.needs_map(out) else reducer
        reduced: List = [None] * len(features)
        for grid in set(grids):  # one reducer call per token grid (a list of videos)
            which = [v for v, g in enumerate(grids) if g == grid]
            got_v = call([features[v].view(frames[v], -1, features[v].shape[-1]) for v in which],
                         [scores[v] for v in which],
                         None if local is None else [local[v] for v in which], grid=grid)
            for v, r in zip(which, got_v):
                if call is not reducer and r.token_map is None:
                    raise TypeError(f"{type(reducer).__name__} was called with return_map=True "
                                    f"but returned no token_map: DeepStack needs the reduction's "
                                    f"operator (ReducedVideo.token_map)")
                reduced[v] = _in_position_order(r)
        keep, kept_positions, video = [], [], 0
        for b, runs in enumerate(places):
            row = torch.ones(ids.shape[1], dtype=torch.bool, device=ids.device)
            for run in runs:
                row[run] = False
                row[run[reduced[video].positions.to(run.device)]] = True
                video += 1
            keep.append(row)
            kept_positions.append(positions[:, b, row])
        kwargs = _shorten(kwargs, keep, getattr(cfg.text_config, "pad_token_id", None), left,
                          positions=kept_positions)
        encoded = dict(kwargs.get("mm_encoder_outputs") or {})
        encoded["video"] = self._encoded(out, reduced, features[0].dtype, frames)
        kwargs["mm_encoder_outputs"] = encoded
        # Positions are given from here on; the deltas the model keeps for later calls match them.
        valid = kwargs.get("attention_mask")
        lengths = kwargs["input_ids"].shape[1] if valid is None else valid.sum(-1)
        top = kwargs["position_ids"][1:].amax(dim=(0, 2))
        model.model.rope_deltas = (top + 1 - lengths).view(-1, 1)
        return kwargs

    def needs_map(self, out) -> bool:
        """Whether other per-token tensors must follow the reduction (DeepStack)."""
        return False

    def _encoded(self, out, reduced, dtype, frames):
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        return BaseModelOutputWithPooling(pooler_output=tuple(r.tokens.to(dtype) for r in reduced))

    @staticmethod
    def legacy_features(encoded):
        return encoded.pooler_output  # per video [K_v, D]; forward concatenates them


class _Qwen2_5_VL(_QwenVL):
    """Qwen2_5_VLForConditionalGeneration: one run of T x H/2 x W/2 placeholders per video; the
    tower's tokens come in window order."""

    def default_local_layer(self) -> int:
        # The first full-attention block: a whole frame's context.
        depth = len(self.layers)
        full = [i for i in self.visual.fullatt_block_indexes if i < depth - 1]
        return full[0] if full else depth // 4

    def _runs(self, kwargs, grid_thw):
        return _placeholders(kwargs, self.model.config.video_token_id,
                             (grid_thw.prod(-1) // self.visual.spatial_merge_unit).tolist())

    @staticmethod
    def _rope_kwargs(kwargs):
        return {"second_per_grid_ts": kwargs.get("second_per_grid_ts")}

    def _pool(self, received: torch.Tensor, grid_thw: torch.Tensor) -> List[torch.Tensor]:
        """Per-patch scores in the tower's window order -> per merged token, raster order, split
        per video [T, H/2 * W/2]: the mean over each 2x2 merge unit (the merger's grouping)."""
        from transformers.vision_utils import get_vision_window_index

        vis = self.visual
        window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=vis.spatial_merge_size,
                                                  window_size=vis.window_size,
                                                  patch_size=vis.patch_size)
        merged = received.view(-1, vis.spatial_merge_unit).mean(1)[torch.argsort(window_index)]
        return _per_video(merged, grid_thw, vis.spatial_merge_unit)


class _Qwen3_VL(_QwenVL):
    """Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE (SPEC §11). Per video, one run of H/2 x
    W/2 placeholders per temporal patch, each wrapped as `<t seconds><|vision_start|> ...
    <|vision_end|>`: only the `<|video_pad|>` tokens are removed (the timestamps and the
    start/end tokens stay, also around a temporal patch that keeps no token). The tower attends
    within each temporal patch and emits its tokens in raster order (merge units in a row).
    DeepStack (Qwen3-VL): the features the tower takes from several blocks, added to the first LM
    layers at the video positions, are reduced with the same selection and merge weights as the
    main features (the reducer's return_map). local_layer "auto": the first DeepStack block (8
    of 27 for Qwen3-VL-8B), or a quarter of the depth (Qwen3.5)."""
    family = "Qwen3-VL"

    def default_local_layer(self) -> int:
        depth = len(self.layers)
        deep = [i for i in self._deepstack_layers() if i < depth - 1]
        return deep[0] if deep else depth // 4

    def _deepstack_layers(self) -> List[int]:
        return list(getattr(self.visual, "deepstack_visual_indexes", None) or [])

    def _runs(self, kwargs, grid_thw):
        unit = self.visual.spatial_merge_unit
        per_patch = (grid_thw[:, 1] * grid_thw[:, 2] // unit).tolist()
        temporal = grid_thw[:, 0].tolist()
        counts = [c for c, t in zip(per_patch, temporal) for _ in range(int(t))]
        try:
            runs = _placeholders(kwargs, self.model.config.video_token_id, counts)
        except ValueError as exc:
            if not str(exc).startswith(("row ", "input_ids hold")):  # not about the layout
                raise
            raise ValueError(f"{exc} (for {self.family}: one run of H/2 x W/2 `<|video_pad|>` per "
                             f"temporal patch, T runs per video, each between <|vision_start|> "
                             f"and <|vision_end|>)") from None
        out = []  # regroup the runs per video: its T runs in order
        bounds = [0]
        for t in temporal:
            bounds.append(bounds[-1] + int(t))
        video = 0
        for row in runs:
            grouped, at = [], 0
            while at < len(row):
                t = bounds[video + 1] - bounds[video]
                if at + t > len(row):
                    raise ValueError(f"video {video}'s {t} temporal patches span two rows of "
                                     f"input_ids")
                grouped.append(torch.cat(row[at:at + t]))
                at += t
                video += 1
            out.append(grouped)
        return out

    @staticmethod
    def _rope_kwargs(kwargs):
        return {}

    def _pool(self, received: torch.Tensor, grid_thw: torch.Tensor) -> List[torch.Tensor]:
        """Per-patch scores (raster merge units) -> per merged token [T, H/2 * W/2] per video."""
        unit = self.visual.spatial_merge_unit
        return _per_video(received.view(-1, unit).mean(1), grid_thw, unit)

    def needs_map(self, out) -> bool:
        return bool(getattr(out, "deepstack_features", None))

    def _encoded(self, out, reduced, dtype, frames):
        if not self.needs_map(out):
            return super()._encoded(out, reduced, dtype, frames)
        from transformers.models.qwen3_vl.modeling_qwen3_vl import (
            BaseModelOutputWithDeepstackFeatures)

        sizes = [len(r) for r in out.pooler_output]
        levels = []
        for level in out.deepstack_features:
            # 5.19+: a tuple per video; 5.17: one tensor [sum T N, D] per level
            per_video = level if isinstance(level, (tuple, list)) else torch.split(level, sizes)
            levels.append(tuple(
                r.apply(x.view(t, -1, x.shape[-1])).to(dtype)
                for r, x, t in zip(reduced, per_video, frames)))
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(r.tokens.to(dtype) for r in reduced), deepstack_features=levels)

    @staticmethod
    def legacy_features(encoded):
        """5.17's forward reads get_video_features' whole output: pooler_output per video, and
        DeepStack as one tensor per level."""
        levels = getattr(encoded, "deepstack_features", None)
        if levels:
            encoded.deepstack_features = [torch.cat(level) for level in levels]
        return encoded


def _per_video(merged: torch.Tensor, grid_thw: torch.Tensor, unit: int) -> List[torch.Tensor]:
    sizes = (grid_thw.prod(-1) // unit).tolist()
    return [m.view(int(t), -1) for m, t in zip(torch.split(merged, sizes), grid_thw[:, 0])]


def _in_position_order(reduced):
    """The reduction with its tokens ascending by position (the model fills the kept
    placeholders in column order); a reducer that places two tokens at one position cannot be
    fed to a prompt with one placeholder per position."""
    order = torch.argsort(reduced.positions)
    ordered = reduced.positions[order]
    if len(ordered) > 1 and bool((ordered[1:] == ordered[:-1]).any()):
        raise ValueError("the reducer placed two tokens at one position (e.g. the authors' "
                         "duplicate_anchors); a Qwen prompt has one placeholder per position")
    if bool((order == torch.arange(len(order), device=order.device)).all()):
        return reduced
    import dataclasses

    token_map = None if reduced.token_map is None else reduced.token_map.reordered(order)
    return dataclasses.replace(reduced, tokens=reduced.tokens[order], positions=ordered,
                               frame_ids=reduced.frame_ids[order], sizes=reduced.sizes[order],
                               dynamic=reduced.dynamic[order], token_map=token_map)


SUPPORTED = {"LlavaOnevisionForConditionalGeneration": _LlavaOnevision,
             "Qwen2_5_VLForConditionalGeneration": _Qwen2_5_VL,
             "Qwen3VLForConditionalGeneration": _Qwen3_VL,
             "Qwen3VLMoeForConditionalGeneration": _Qwen3_VL,
             "Qwen3_5ForConditionalGeneration": _Qwen3_VL,
             "Qwen3_5MoeForConditionalGeneration": _Qwen3_VL}


def _placeholders(kwargs: dict, token_id: int, counts: List[int]) -> List[List[torch.Tensor]]:
    """Positions of each row's video placeholder runs, one run per video in order; `counts`: the
    tokens of each video (all of them, or one shared count when a single entry is given).
    Checked before any encoding."""
    ids = kwargs.get("input_ids")
    if ids is None:
        raise ValueError("the aot_kernels patch needs input_ids (to find the video placeholders); "
                         "inputs_embeds alone cannot be shortened")
    if kwargs.get("position_ids") is not None:
        raise ValueError("position_ids with pixel_values_videos: the patch shortens the prompt "
                         "and computes the positions itself")
    shared = len(counts) == 1
    runs, video = [], 0
    for b in range(ids.shape[0]):
        place = torch.nonzero(ids[b] == token_id).flatten()
        row, start = [], 0
        while start < len(place):
            want = counts[0] if shared else (counts[video] if video < len(counts) else 0)
            run = place[start:start + want]
            if want == 0 or len(run) != want or (run[-1] - run[0] + 1) != want:
                raise ValueError(f"row {b} of input_ids does not hold its videos' placeholders as "
                                 f"contiguous runs of {want} tokens (frames x tokens per frame"
                                 f"{' + newline' if shared else ''}), as the processor expands them")
            row.append(run)
            start += want
            video += 1
        if shared and len(row) != 1:  # per-video counts: a row may hold no video
            raise ValueError(f"row {b} of input_ids has {len(place)} video placeholders; the patch "
                             f"expects {'one video of ' + str(counts[0]) if shared else 'its videos'}"
                             " per row, expanded by the processor")
        runs.append(row)
    if not shared and video != len(counts):
        raise ValueError(f"input_ids hold {video} videos' placeholders, video_grid_thw {len(counts)}")
    return runs


def _shorten(kwargs: dict, keep: List[torch.Tensor], pad_id, left: bool,
             positions: Optional[List[torch.Tensor]] = None) -> dict:
    """Keep the columns `keep[b]` of each row of input_ids and of every per-token input
    (attention_mask, labels, mm_token_type_ids); re-pad rows that end up with different lengths
    on the left (generation, or a left-padded batch) or on the right. positions: per row, the
    kept tokens' 3-D M-RoPE positions [3, L_b]; they become position_ids [4, B, L] (text positions
    first, as Qwen2.5-VL's generate builds them)."""
    mask = kwargs.get("attention_mask")
    fill = {"input_ids": 0 if pad_id is None else pad_id, "attention_mask": 0, "labels": -100,
            "mm_token_type_ids": 0}
    rows = {name: [kwargs[name][b][keep[b]] for b in range(len(keep))]
            for name in fill if kwargs.get(name) is not None}
    lengths = [len(r) for r in rows["input_ids"]]
    longest = max(lengths)
    left = left or (mask is not None and bool((mask[:, 0] == 0).any()))

    def pad(r, value):
        extra = r.new_full((*r.shape[:-1], longest - r.shape[-1]), value)
        return torch.cat([extra, r], -1) if left else torch.cat([r, extra], -1)

    for name, values in rows.items():
        kwargs[name] = torch.stack([pad(r, fill[name]) for r in values])
    if mask is None and len(set(lengths)) > 1:
        kwargs["attention_mask"] = torch.stack([pad(torch.ones_like(r), 0) for r in rows["input_ids"]])
    if positions is not None:
        valid = kwargs.get("attention_mask")
        valid = torch.ones_like(kwargs["input_ids"]) if valid is None else valid
        text = (valid.long().cumsum(-1) - 1).masked_fill(valid == 0, 0)
        vision = torch.stack([pad(p, 0) for p in positions], 1)  # [3, B, L]
        kwargs["position_ids"] = torch.cat([text.unsqueeze(0), vision.to(text)], 0)
    return kwargs


def patch(model, reducer, *, local_layer="auto", score_layers="auto"):
    """Reduce the video tokens of `model` with `reducer` on every forward / generate call; returns
    the model (patched in place). `reducer`: an AOTReducer or any `aot_kernels.reducers.build`
    reducer. local_layer: the vision tower layer for local scores ("auto": a quarter of the depth;
    None: local = global scores). Calling patch again replaces the reducer.

    An AuthorsAOTReducer (SPEC §8, LLaVA-OneVision / LLaVA-Video only) is run where the authors
    run it: on the un-pooled features after the projector, before the model's pooling (the
    reducer pools), with scores from the vision tower layers score_layers = (local, global)
    ("auto": 5 and 24 of 26, scaled to the tower's depth)."""
    name = type(model).__name__
    if name not in SUPPORTED:
        raise TypeError(f"aot_kernels.integrations.transformers.patch supports {sorted(SUPPORTED)}, "
                        f"not {name}")
    if not callable(reducer):
        raise TypeError(f"reducer must be callable like aot_kernels.AOTReducer, got {type(reducer).__name__}")
    from ..reducers.authors import AuthorsAOTReducer

    authors = isinstance(reducer, AuthorsAOTReducer)
    if authors and name != "LlavaOnevisionForConditionalGeneration":
        raise TypeError("the authors' variant (SPEC §8) runs on LLaVA-OneVision / LLaVA-Video "
                        f"(LlavaOnevisionForConditionalGeneration), not {name}")
    if authors and reducer.pool != "bilinear":
        raise ValueError(f"{name} pools its video features bilinearly (apply_pooling), so its "
                         f"prompt expects the bilinear grid; the reducer has pool="
                         f"{reducer.pool!r}: use pool='bilinear'")
    if authors and local_layer != "auto":
        raise ValueError("local_layer applies to AOTReducer and the baselines; the authors' "
                         "variant takes score_layers=(local, global)")
    if not authors and score_layers != "auto":
        raise ValueError("score_layers applies to the authors' variant (AuthorsAOTReducer); "
                         "use local_layer= for this reducer")
    import transformers

    _check_version(transformers.__version__)
    if hasattr(model, _ATTR):
        unpatch(model)
    adapter = (SUPPORTED[name](model, local_layer, score_layers) if authors
               else SUPPORTED[name](model, local_layer))
    if isinstance(adapter, _Qwen3_VL) and adapter._deepstack_layers() and not _takes_map(reducer):
        raise TypeError(f"{name} adds DeepStack features at the video positions, which must be "
                        f"reduced like the tokens: the reducer must accept return_map=True (every "
                        f"aot_kernels reducer does), {type(reducer).__name__} does not")
    forward, generate = model.forward, model.generate
    forward_params = list(inspect.signature(forward).parameters)
    # Recent transformers (5.20, 5.23) take pre-encoded features (mm_encoder_outputs); 5.17 does
    # not, so there the model's get_video_features hands the reduced features over (_feeding).
    legacy = "mm_encoder_outputs" not in forward_params
    feeding = []  # non-empty while the model's own forward runs on features handed over

    def prepare(args, kwargs, left=False):
        """(kwargs for the model's own forward / generate, the context to run it in)."""
        kwargs = dict(zip(forward_params, args), **kwargs)
        video = kwargs.get("pixel_values_videos")
        if video is None:
            if kwargs.get("pixel_values") is not None:
                raise ValueError("this model is patched to reduce video tokens, and this call has "
                                 "images but no video; call aot_kernels.integrations.transformers"
                                 ".unpatch(model) for image-only inputs")
            return kwargs, nullcontext()
        if (kwargs.get("mm_encoder_outputs") or {}).get("video") is not None:
            raise ValueError("pass pixel_values_videos or mm_encoder_outputs['video'], not both")
        run = adapter.reduce_authors if authors else adapter.reduce
        kwargs = run(reducer, kwargs, left)
        if not legacy:
            if kwargs.get("pixel_values") is not None and isinstance(adapter, _QwenVL):
                # The model takes pixels or encoder outputs, not both: encode the images too
                # (untouched), as its forward would.
                kwargs["mm_encoder_outputs"]["image"] = model.model.get_image_features(
                    kwargs.pop("pixel_values"), kwargs.get("image_grid_thw"), return_dict=True)
            return kwargs, nullcontext()
        encoded = kwargs.pop("mm_encoder_outputs")
        kwargs["pixel_values_videos"] = video  # the model's forward then asks for its features
        return kwargs, _feeding(model.model, video, adapter.legacy_features(encoded["video"]),
                                feeding)

    @functools.wraps(forward)
    def patched_forward(*args, **kwargs):
        if feeding:  # generate's own steps on a legacy transformers: already reduced
            return forward(*args, **kwargs)
        kwargs, context = prepare(args, kwargs)
        with context:
            return forward(**kwargs)

    @functools.wraps(generate)
    def patched_generate(*args, **kwargs):
        if len(args) > 1:
            raise TypeError("the patched generate takes input_ids as its only positional "
                            "argument; pass the others by keyword")
        if args:
            kwargs["input_ids"] = args[0]
        if kwargs.get("inputs") is not None:  # generate's own name for its first argument
            kwargs["input_ids"] = kwargs.pop("inputs")
        prompt = kwargs.get("input_ids")
        kwargs, context = prepare((), kwargs, left=True)  # decoder-only: pad on the left
        if kwargs.get("input_ids") is prompt:  # no video: nothing shortened
            with context:
                return generate(**kwargs)
        short = kwargs["input_ids"].shape[1]
        for name in ("max_length", "min_length"):  # they count the prompt: the caller's one
            if kwargs.get(name) is not None:
                kwargs[name] -= prompt.shape[1] - short
        with context:
            out = generate(**kwargs)
        return _with_prompt(out, prompt, short)

    model.forward, model.generate = patched_forward, patched_generate
    setattr(model, _ATTR, {"reducer": reducer, "adapter": adapter})
    return model


def _takes_map(reducer) -> bool:
    try:
        params = inspect.signature(reducer).parameters
    except (TypeError, ValueError):
        return False
    return "return_map" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _with_prompt(out, prompt: torch.Tensor, short: int):
    """generate's output on the shortened prompt [R, short + T] (or its sequences) -> the caller's
    prompt [B, L] followed by the T generated tokens, as the unpatched model returns it
    (transformers' contract: out[:, L:] is the answer). R = B x num_return_sequences: each
    prompt row repeats, as generate expands its inputs. scores / logits are per generated step
    and stay as they are."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    prompt = prompt.to(sequences.device)
    if sequences.shape[0] != prompt.shape[0]:
        prompt = prompt.repeat_interleave(sequences.shape[0] // prompt.shape[0], dim=0)
    full = torch.cat([prompt, sequences[:, short:]], dim=1)
    if isinstance(out, torch.Tensor):
        return full
    out.sequences = full  # a ModelOutput: updates the attribute and the dict entry
    return out


@contextmanager
def _feeding(inner, video: torch.Tensor, features, feeding: list):
    """transformers without mm_encoder_outputs (5.17): while the model's own forward / generate
    runs, its get_video_features(video) returns the reduced `features` (the shortened prompt's
    placeholders match them). `feeding` tells the patched forward not to reduce again."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from transformers.utils import ModelOutput

    def fed(pixel_values_videos, *args, **kwargs):
        if pixel_values_videos is not video:  # generate expanded the batch (beams, samples)
            raise ValueError("num_beams / num_return_sequences > 1 on a patched model need a "
                             "transformers with mm_encoder_outputs (5.20 or later)")
        if isinstance(features, ModelOutput):  # a whole output (Qwen3-VL: with DeepStack)
            return features
        return BaseModelOutputWithPooling(pooler_output=features)

    inner.get_video_features = fed
    feeding.append(True)
    try:
        yield
    finally:
        feeding.pop()
        del inner.get_video_features


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
