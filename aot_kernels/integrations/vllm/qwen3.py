"""vLLM's Qwen3-VL family (Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE), subclassed (not copied)
to reduce video tokens.

Imported by vLLM's model registry when it builds one of these architectures (see __init__.py);
without a configured reduction every method falls through to vLLM's own.

How a reduced video reaches the language model. In Qwen3-VL each temporal patch f of a video is
written `<t_f seconds><|vision_start|>` + its video pads + `<|vision_end|>`, and the per-frame
counts of a reduction are known only after the encoder. As vLLM's own EVS does, the prompt update
writes a "lumped" placeholder, all K pads in frame 0's slot and every other frame's timestamp and
delimiters kept (its length depends on shapes only), and marks every row of it as an embedding
(PromptUpdateDetails.from_seq). The model then builds the real layout inside its encoder output:
each frame's timestamp and delimiters (their token embeddings) around that frame's kept tokens (the
reducer's, with DeepStack reduced by the same operator), and appends to each row its original
(unreduced) M-RoPE position relative to the placeholder, its row and the placeholder's lead, which
`recompute_mrope_positions` reads and strips. Text rows keep their unreduced positions too, as in
the transformers integration; the text after a video keeps its unreduced offset from the start
(get_mrope_input_positions places it there), so prefix-cache hits need no rewrite.

Departures from vLLM's own EVS path (qwen3_vl.py, 0.32), each on purpose:
- The position channels are (hi, lo) pairs base 256, exact in bf16/fp16 up to 65535 (vLLM
  concatenates the integer positions into bf16 embeddings, which rounds them above 256).
- recompute_mrope_positions is ours: vLLM's locates the placeholder by the first
  `<|vision_start|>` after the cursor, which is the prompt's own outer one in chat-template
  prompts (its EVS then fails), and shifts every continuation chunk of a chunked prefill by the
  timestamp's length.
- The per-frame layout is built with index ops from shape-only tables (cached for the last
  CACHED grids and timestamps, copied to the device without waiting): no host synchronisation per
  video (vLLM's path waits about 8 times per video).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from vllm.model_executor.models.qwen3_5 import (Qwen3_5ForConditionalGeneration,
                                                Qwen3_5MoeForConditionalGeneration,
                                                Qwen3_5MoeProcessingInfo, Qwen3_5ProcessingInfo)
from vllm.model_executor.models.qwen3_vl import (Qwen3VLDummyInputsBuilder,
                                                 Qwen3VLForConditionalGeneration,
                                                 Qwen3VLMultiModalProcessor,
                                                 Qwen3VLProcessingInfo)
from vllm.model_executor.models.qwen3_vl_moe import (Qwen3VLMoeForConditionalGeneration,
                                                     Qwen3VLMoeProcessingInfo)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import (MultiModalFeatureSpec, MultiModalFieldConfig,
                                    MultiModalFieldElem, MultiModalKwargsItem, PlaceholderRange)
from vllm.multimodal.processing import PromptReplacement
from vllm.utils.torch_utils import async_tensor_h2d

from . import settings_from
from .models import grid_video_tokens, pruning_settings, reduce_video

CHANNELS = 10  # (t, h, w, row, lead), each as a (hi, lo) pair
_BASE = 256  # hi * 256 + lo: both halves are integers <= 255, exact in bf16 and fp16
_LIMIT = _BASE * _BASE
CACHED = 64  # placeholders kept per model (host tables and their device copies), least recent out


def encode_positions(values: torch.Tensor) -> torch.Tensor:
    """[S, 5] non-negative int64 (< 65536) -> [S, 10] (hi, lo) pairs, exact in any float dtype."""
    return torch.stack([values // _BASE, values % _BASE], dim=-1).flatten(1)


def decode_positions(channels: torch.Tensor) -> torch.Tensor:
    """encode_positions' inverse: [S, 10] float -> [S, 5] int64."""
    c = channels.float().round().long()
    return c[:, 0::2] * _BASE + c[:, 1::2]


def video_replacement(tokenizer, config, tokens_per_frame: Sequence[int], timestamps):
    """vLLM's Qwen3-VL video layout (timestamp, start, pads, end per temporal patch), every row an
    embedding (from_seq)."""
    return Qwen3VLMultiModalProcessor.get_video_repl(
        tokens_per_frame=list(tokens_per_frame), timestamps=timestamps, tokenizer=tokenizer,
        vision_start_token_id=config.vision_start_token_id,
        vision_end_token_id=config.vision_end_token_id, video_token_id=config.video_token_id,
        select_token_id=False)


@dataclass
class Placeholder:
    """Shape-only facts of one video's placeholder (t temporal patches of n tokens; T text rows:
    every timestamp, start and end). Host tensors; `on(device)` gives cached device copies.

    rel_video [t n, 3] / rel_text [T, 3]: the unreduced placeholder's M-RoPE positions relative
    to its first row, for each video token (raster order) and each text row; text_ids [T];
    text_frame [T] (the temporal patch a text row belongs to); text_end [T] (it is that patch's
    <|vision_end|>); before [t] (text rows before patch f's first token); lead (rows before the
    first video token); span (the unreduced placeholder's positions use 0 .. span - 1)."""
    n: int
    lead: int
    span: int
    rel_video: torch.Tensor
    rel_text: torch.Tensor
    text_ids: torch.Tensor
    text_frame: torch.Tensor
    text_end: torch.Tensor
    before: torch.Tensor

    def __post_init__(self):
        self._copies: Dict[torch.device, "Placeholder"] = {}

    def on(self, device: torch.device) -> "Placeholder":
        if device.type == "cpu":
            return self
        if device not in self._copies:  # pinned staging, no wait (as vLLM's EVS copies)
            self._copies[device] = Placeholder(
                self.n, self.lead, self.span,
                *(async_tensor_h2d(x, device) for x in (
                    self.rel_video, self.rel_text, self.text_ids, self.text_frame,
                    self.text_end, self.before)))
        return self._copies[device]


def placeholder(tokenizer, config, thw: Sequence[int], timestamps) -> Placeholder:
    """The Placeholder of a video of grid (t, h, w) patches with these timestamps (host work:
    the unreduced layout's positions from vLLM's own Qwen3-VL position code)."""
    t, h, w = (int(x) for x in thw)
    merge = config.vision_config.spatial_merge_size
    n = (h // merge) * (w // merge)
    ids = np.array(video_replacement(tokenizer, config, [n] * t, timestamps).full)
    feature = MultiModalFeatureSpec(  # a video at offset 0: positions relative to the placeholder
        data=MultiModalKwargsItem({"video_grid_thw": MultiModalFieldElem(
            data=torch.tensor([t, h, w]), field=MultiModalFieldConfig.batched("video").field)}),
        modality="video", identifier="aot_kernels", mm_position=PlaceholderRange(0, len(ids)))
    rel, _ = Qwen3VLForConditionalGeneration._get_mrope_input_positions(
        ids.tolist(), [feature], config)
    rel = rel.numpy()
    pad = ids == config.video_token_id
    text_ids = ids[~pad]
    text_end = text_ids == config.vision_end_token_id
    text_frame = np.cumsum(np.r_[0, text_end[:-1]])  # rows after patch f's end belong to f + 1
    per_frame = np.bincount(text_frame, minlength=t)  # timestamp + start + end
    before = np.cumsum(np.r_[0, per_frame[:-1]]) + per_frame - 1
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).long()  # noqa: E731
    return Placeholder(n=n, lead=int(before[0]), span=int(rel.max()) + 1,
                       rel_video=as_tensor(rel[:, pad].T), rel_text=as_tensor(rel[:, ~pad].T),
                       text_ids=as_tensor(text_ids), text_frame=as_tensor(text_frame),
                       text_end=torch.from_numpy(text_end), before=as_tensor(before))


def layout_rows(kept: torch.Tensor, ph: Placeholder) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rows of the reduced placeholder (T + K rows) for the kept tokens `kept` [K] (raster
    indices into t n, increasing) and for the text rows [T], in the layout
    `<t_f s><start> kept tokens of patch f <end>` per patch. Index ops only (no host sync)."""
    frame = kept // ph.n
    counts = torch.zeros(ph.before.shape[0], dtype=torch.long, device=kept.device)
    counts.index_add_(0, frame, torch.ones_like(frame))
    through = counts.cumsum(0)  # kept tokens in patches 0 .. f
    video_rows = torch.arange(kept.shape[0], device=kept.device) + ph.before.index_select(0, frame)
    # a text row follows its patch's kept tokens if it is the patch's end, else precedes them
    earlier = torch.where(ph.text_end, through.index_select(0, ph.text_frame),
                          (through - counts).index_select(0, ph.text_frame))
    text_rows = torch.arange(ph.text_ids.shape[0], device=kept.device) + earlier
    return video_rows, text_rows


class AOTQwen3VLMultiModalProcessor(Qwen3VLMultiModalProcessor):
    """Writes the lumped placeholder of K video pads per video (K from video_grid_thw: F = t,
    N = h w / merge^2), every timestamp and delimiter kept."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        config = self.info.get_hf_config()
        settings = settings_from(config)
        if settings is None:
            return updates
        merge = config.vision_config.spatial_merge_size
        tokenizer = self.info.get_tokenizer()

        def replacement(item_idx: int):
            item = out_mm_kwargs["video"][item_idx]
            thw, k = grid_video_tokens(settings, item, merge)
            repl = video_replacement(tokenizer, config, [k] + [0] * (thw[0] - 1),
                                     item["timestamps"].data)
            # the position channels carry rows and positions below 65536: refuse this request
            # here (in the worker it would stop the engine)
            span = placeholder(tokenizer, config, thw, item["timestamps"].data).span
            if len(repl.full) >= _LIMIT or span >= _LIMIT:
                raise ValueError(f"a video of grid {thw} gives {len(repl.full)} reduced "
                                 f"rows spanning {span} positions; the plugin carries both "
                                 f"below {_LIMIT}: sample fewer frames or pixels")
            return repl

        return [PromptReplacement(modality="video", target=u.target, replacement=replacement)
                if u.modality == "video" else u for u in updates]


class _AOTQwen3:
    """Placed before vLLM's class: its video embeddings are reduced to K tokens each (DeepStack
    levels by the same operator), every kept token and every timestamp at its original M-RoPE
    position."""

    def __init__(self, *, vllm_config, prefix: str = "model"):  # vLLM reads this signature
        settings = pruning_settings(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.aot_settings = settings
        self.aot_reducer = None if settings is None else settings.build()
        self._aot_placeholders: "OrderedDict[tuple, Placeholder]" = OrderedDict()

    def _aot_placeholder(self, thw, timestamps) -> Placeholder:
        key = (tuple(int(x) for x in thw), tuple(float(x) for x in timestamps))
        cache = self._aot_placeholders
        if key in cache:
            cache.move_to_end(key)
        else:
            cache[key] = placeholder(self._tokenizer, self.config, *key)
            while len(cache) > CACHED:  # a server sees many grids and timestamps: bounded
                cache.popitem(last=False)
        return cache[key]

    def _postprocess_image_embeds_evs(self, image_embeds_split, image_input):
        """Images are not reduced, and their initial positions are exact: unchanged."""
        if self.aot_reducer is None:
            return super()._postprocess_image_embeds_evs(image_embeds_split, image_input)
        return image_embeds_split

    def _postprocess_video_embeds_evs(self, video_embeds_split, video_input):
        """Per video [t N, visual_dim (+ DeepStack)] -> the reduced placeholder's rows
        [T + K, visual_dim (+ DeepStack) + 10]: text rows (their token embeddings, DeepStack
        zero) and the K kept tokens in the per-patch layout, then the position channels."""
        if self.aot_reducer is None:
            return super()._postprocess_video_embeds_evs(video_embeds_split, video_input)
        merge = self.visual.spatial_merge_size
        grids = video_input["video_grid_thw"].tolist()  # host-side metadata (vLLM reads it too)
        stamps = video_input["timestamps"]  # list of lists, kept on the CPU by vLLM
        dim = self.visual_dim
        out = []
        for emb, thw, ts in zip(video_embeds_split, grids, stamps):
            t, h, w = thw
            ph = self._aot_placeholder(thw, ts).on(emb.device)
            grid = (h // merge, w // merge)
            main = emb[:, :dim].reshape(t, ph.n, dim)
            deepstack = emb.shape[1] > dim
            reduced = reduce_video(self.aot_reducer, main, grid, return_map=deepstack)
            kept, order = torch.sort(reduced.positions)  # the layout is in time and raster order
            video_rows, text_rows = layout_rows(kept, ph)
            rows = ph.text_ids.shape[0] + kept.shape[0]
            res = emb.new_zeros(rows, emb.shape[1] + CHANNELS)
            res[:, :dim].index_copy_(0, video_rows,
                                     reduced.tokens.index_select(0, order).to(emb.dtype))
            if deepstack:
                levels = reduced.apply(emb[:, dim:].reshape(t, ph.n, -1))
                res[:, dim:emb.shape[1]].index_copy_(0, video_rows,
                                                     levels.index_select(0, order).to(emb.dtype))
            text = self.get_language_model().embed_input_ids(ph.text_ids)
            res[:, :dim].index_copy_(0, text_rows, text.to(emb.dtype))
            pos = torch.empty(rows, 5, dtype=torch.long, device=emb.device)
            pos[:, :3].index_copy_(0, video_rows, ph.rel_video.index_select(0, kept))
            pos[:, :3].index_copy_(0, text_rows, ph.rel_text)
            pos[:, 3] = torch.arange(rows, device=emb.device)
            pos[:, 4] = ph.lead
            res[:, emb.shape[1]:] = encode_positions(pos).to(emb.dtype)
            out.append(res)
        return tuple(out)

    def get_mrope_input_positions(self, input_tokens, mm_features):
        """The prompt's initial positions (host, shapes only): text runs in sequence, an image's
        grid as vLLM places it, a video's rows all at its first row's position (rewritten by
        recompute_mrope_positions once the kept tokens are known) and the text after it at the
        unreduced video's end, so only the video's own rows ever change."""
        if self.aot_reducer is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        merge = self.config.vision_config.spatial_merge_size
        parts, done, start = [], 0, 0
        for f in sorted(mm_features, key=lambda f: f.mm_position.offset):
            offset, length = f.mm_position.offset, f.mm_position.length
            parts.append(np.broadcast_to(np.arange(offset - done) + start, (3, offset - done)))
            start += offset - done
            if f.modality == "video":
                ph = self._aot_placeholder(f.data["video_grid_thw"].data.tolist(),
                                           f.data["timestamps"].data)
                parts.append(np.full((3, length), start))
                start += ph.span
            else:
                _, h, w = f.data["image_grid_thw"].data.tolist()
                grid = np.indices((1, h // merge, w // merge)).reshape(3, -1) + start
                if grid.shape[1] != length:
                    raise ValueError(f"an image placeholder of {length} rows for a "
                                     f"{h // merge} x {w // merge} grid")
                parts.append(grid)
                start = int(grid.max()) + 1
            done = offset + length
        tail = len(input_tokens) - done
        parts.append(np.broadcast_to(np.arange(tail) + start, (3, tail)))
        positions = np.concatenate(parts, axis=1)
        return torch.from_numpy(positions), int(positions.max()) + 1 - len(input_tokens)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions,
                                  num_computed_tokens):
        """Writes each video chunk's kept positions (this step's window) into the prompt's
        positions and strips the channels; image chunks pass unchanged. One host read per video
        chunk (the positions live on the host in vLLM's V1 runner)."""
        if self.aot_reducer is None:
            return super().recompute_mrope_positions(input_ids, multimodal_embeddings,
                                                     mrope_positions, num_computed_tokens)
        width = self.visual_dim + self.multiscale_dim
        ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
        positions = mrope_positions.clone()
        out, cursor = [], num_computed_tokens
        for i, mm in enumerate(multimodal_embeddings):
            if mm.shape[-1] != width + CHANNELS:
                out.append(mm)
                continue
            values = decode_positions(mm[:, width:].cpu())
            first, lead = int(values[0, 3]), int(values[0, 4])
            if first > 0:  # a video begun in an earlier step: only the first chunk can be one
                at = num_computed_tokens
            else:  # the placeholder starts `lead` rows before its first video pad
                at = ids.index(self.config.video_token_id, cursor) - lead
            base = int(positions[0, at - first])  # the placeholder's first row: exact from start
            positions[:, at:at + mm.shape[0]] = (values[:, :3].T + base).to(positions)
            cursor = at + mm.shape[0]
            out.append(mm[:, :width])
        return out, positions, int(positions.max()) + 1 - len(ids)


def _register(base, info):
    name = "AOT" + base.__name__
    cls = type(name, (_AOTQwen3, base), {"__module__": __name__, "__qualname__": name,
                                          "__doc__": f"vLLM's {base.__name__}, reduced "
                                                     "(aot_kernels.integrations.vllm.qwen3)."})
    return MULTIMODAL_REGISTRY.register_processor(AOTQwen3VLMultiModalProcessor, info=info,
                                                  dummy_inputs=Qwen3VLDummyInputsBuilder)(cls)


AOTQwen3VLForConditionalGeneration = _register(Qwen3VLForConditionalGeneration,
                                               Qwen3VLProcessingInfo)
AOTQwen3VLMoeForConditionalGeneration = _register(Qwen3VLMoeForConditionalGeneration,
                                                  Qwen3VLMoeProcessingInfo)
AOTQwen3_5ForConditionalGeneration = _register(Qwen3_5ForConditionalGeneration,
                                               Qwen3_5ProcessingInfo)
AOTQwen3_5MoeForConditionalGeneration = _register(Qwen3_5MoeForConditionalGeneration,
                                                  Qwen3_5MoeProcessingInfo)
