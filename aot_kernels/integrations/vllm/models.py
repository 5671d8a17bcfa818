"""vLLM's Qwen2.5-VL and LLaVA-OneVision, subclassed (not copied) to reduce video tokens.

Imported by vLLM's model registry when it builds one of these architectures (see __init__.py);
without a configured reduction every method falls through to vLLM's own.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from vllm.model_executor.models.llava_onevision import (LlavaOnevisionDummyInputsBuilder,
                                                        LlavaOnevisionForConditionalGeneration,
                                                        LlavaOnevisionMultiModalProcessor,
                                                        LlavaOnevisionProcessingInfo)
from vllm.model_executor.models.qwen2_5_vl import (Qwen2_5_VLDummyInputsBuilder,
                                                   Qwen2_5_VLForConditionalGeneration,
                                                   Qwen2_5_VLMultiModalProcessor,
                                                   Qwen2_5_VLProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import VideoProcessorItems
from vllm.multimodal.processing import PromptReplacement
from vllm.multimodal.video_prune.evs import compute_mrope_for_media
from vllm.utils.torch_utils import async_tensor_h2d

from ...reducers.scores import self_attention_scores
from . import Settings, settings_from

# vLLM keys its pruning path (encode videos one at a time, then let the model rewrite the M-RoPE
# positions of what it kept) on video_pruning_rate > 0; with AOT on, the model sets it to this
# marker when the user has not (the rate itself is never read: the count is ours).
_PRUNING_ON = 1e-6


def video_tokens(settings: Settings, frames: int, tokens: int) -> int:
    """K, the video tokens a reduced F x N video keeps: round(retention F N) (ValueError when AOT
    cannot meet that budget for this shape). Depends on shapes only."""
    from ...reducers.aot import AOTReducer
    from ...reducers.video import token_budget

    reducer = settings.build()
    if isinstance(reducer, AOTReducer):
        return reducer.plan(frames, tokens).budget
    return token_budget(frames, tokens, settings.retention)


def grid_video_tokens(settings: Settings, item, merge: int):
    """A Qwen video item's grid (t, h, w) in patches (its video_grid_thw) and K, the tokens its
    reduction keeps (F = t, N = h w / merge^2)."""
    t, h, w = (int(x) for x in item["video_grid_thw"].data)
    return (t, h, w), video_tokens(settings, t, (h // merge) * (w // merge))


def reduce_video(reducer, feats: torch.Tensor, grid, return_map: bool = False
                 ) -> "ReducedVideo":  # noqa: F821
    """One video's embeddings [F, N, D] -> the reducer's ReducedVideo (K tokens; with its
    token_map when return_map). Scores: the mean self-attention each token receives within its
    frame (one head, fp32), in the features' dtype; no host synchronisation."""
    scores = self_attention_scores(feats).to(feats.dtype)
    return reducer(feats, scores, grid=grid, return_map=return_map)


def pruning_settings(vllm_config) -> Optional[Settings]:
    """A pruning model's reduction (None: serve it unchanged). With one configured, vLLM's own
    video_pruning_rate is refused and set to a marker that turns on vLLM's pruning path."""
    settings = settings_from(vllm_config.model_config.hf_config)
    if settings is not None:
        mm_config = vllm_config.model_config.get_multimodal_config()
        if mm_config.video_pruning_rate:
            raise ValueError("aot_kernels reduction and vLLM's video_pruning_rate (EVS) "
                             "both prune video tokens: set one of them")
        mm_config.video_pruning_rate = _PRUNING_ON
    return settings


def _replace_video(updates: Sequence, count) -> List:
    """vLLM's prompt updates with the video one's replacement swapped for `count(item_idx)`
    placeholders (its target, the single input placeholder, unchanged)."""
    out = []
    for u in updates:
        if u.modality == "video":
            token = u.target[0]
            u = PromptReplacement(modality="video", target=u.target,
                                  replacement=lambda i, token=token: [token] * count(i))
        out.append(u)
    return out


# ---- Qwen2.5-VL --------------------------------------------------------------------------------

class AOTQwen2_5_VLMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    """Writes K video placeholders per video (K from video_grid_thw: F = t, N = h w / merge^2)."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        hf_config = self.info.get_hf_config()
        settings = settings_from(hf_config)
        if settings is None:
            return updates
        merge = hf_config.vision_config.spatial_merge_size

        def count(item_idx: int) -> int:
            return grid_video_tokens(settings, out_mm_kwargs["video"][item_idx], merge)[1]

        return _replace_video(updates, count)


@MULTIMODAL_REGISTRY.register_processor(AOTQwen2_5_VLMultiModalProcessor,
                                        info=Qwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class AOTQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL whose video embeddings are reduced to K tokens each, every kept token at
    its original M-RoPE position (vLLM's pruning interface, as EVS uses it)."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        settings = pruning_settings(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.aot_settings = settings
        self.aot_reducer = None if settings is None else settings.build()

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        """Per video: its embeddings [t h w / merge^2, D] in raster order -> K reduced tokens,
        each with 4 channels appended (t, h, w M-RoPE position of the token it keeps or merges
        into, and the grid width, what recompute_mrope_positions reads)."""
        if self.aot_reducer is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        merge = self.visual.spatial_merge_size
        grids = video_input["video_grid_thw"].tolist()  # host-side metadata (vLLM reads it too)
        seconds = video_input.get("second_per_grid_ts")
        if seconds is None:
            raise ValueError("second_per_grid_ts is required to place the kept video tokens "
                             "(vLLM's Qwen2.5-VL processor provides it)")
        seconds = seconds.long().tolist()  # kept on the CPU by vLLM (keep_on_cpu)
        per_second = self.config.vision_config.tokens_per_second
        out = []
        for emb, (t, h, w), sec in zip(video_embeds_split, grids, seconds):
            grid = (h // merge, w // merge)
            reduced = reduce_video(self.aot_reducer, emb.view(t, grid[0] * grid[1], -1), grid)
            # [t h w, 4] positions of the unreduced video, built on the host from the shape and
            # copied without waiting (pinned staging), as vLLM's EVS does.
            table = async_tensor_h2d(
                compute_mrope_for_media((t, h, w), merge, tokens_per_second=per_second,
                                        video_second_per_grid=sec), emb.device)
            kept = table.index_select(0, reduced.positions)
            out.append(torch.cat([reduced.tokens, kept.to(reduced.tokens.dtype)], dim=1))
        return tuple(out)


# ---- LLaVA-OneVision / LLaVA-Video --------------------------------------------------------------

class AOTLlavaOnevisionMultiModalProcessor(LlavaOnevisionMultiModalProcessor):
    """Writes K + 1 video placeholders per video (its reduced tokens and the newline)."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        settings = settings_from(self.info.get_hf_config())
        if settings is None:
            return updates
        videos = mm_items.get_items("video", VideoProcessorItems) if "video" in mm_items else None
        if videos is None:  # video embeddings given: the model does not reduce them
            return updates

        def count(item_idx: int) -> int:
            frames = videos.get_num_frames(item_idx)
            size = videos.get_frame_size(item_idx)
            full = self.info.get_num_video_tokens(image_width=size.width,
                                                  image_height=size.height, num_frames=frames)
            return video_tokens(settings, frames, (full - 1) // frames) + 1

        return _replace_video(updates, count)


@MULTIMODAL_REGISTRY.register_processor(AOTLlavaOnevisionMultiModalProcessor,
                                        info=LlavaOnevisionProcessingInfo,
                                        dummy_inputs=LlavaOnevisionDummyInputsBuilder)
class AOTLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision whose video embeddings (after pooling) are reduced to K tokens
    each, followed by the model's newline embedding."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.aot_settings = settings_from(vllm_config.model_config.hf_config)
        self.aot_reducer = None if self.aot_settings is None else self.aot_settings.build()

    def _process_video_pixels(self, inputs):
        """vLLM's video embeddings ([F N + 1, D] per video, newline last) -> [K + 1, D]."""
        videos = super()._process_video_pixels(inputs)
        if self.aot_reducer is None:
            return videos
        pixels = inputs["pixel_values_videos"]
        frames = [p.shape[0] for p in pixels]  # [B, F, C, H, W] tensor or list of [F, C, H, W]
        out = []
        for emb, f in zip(videos, frames):
            emb = emb.reshape(-1, emb.shape[-1])  # [1, L, D] (list form) or [L, D]
            feats, newline = emb[:-1], emb[-1:]
            reduced = reduce_video(self.aot_reducer, feats.view(f, -1, feats.shape[-1]), None)
            out.append(torch.cat([reduced.tokens, newline], dim=0))
        return out
