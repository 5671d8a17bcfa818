"""Prefill and decode cost of the language model (SPEC §7, the paper's Eq. 17-18).

Counts the visual tokens only, as the paper does for its prefill figures. Every layer sees the
same number of tokens (the reduction happens before the LLM).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional


@dataclass(frozen=True)
class LLM:
    """T layers, hidden size d, FFN width m."""
    layers: int
    hidden: int
    ffn: int


@dataclass(frozen=True)
class Preset:
    llm: LLM
    frames: int
    tokens_per_frame: int
    note: str


QWEN2_7B = LLM(layers=28, hidden=3584, ffn=18944)  # also Qwen2.5-7B's shape
QWEN3_8B = LLM(layers=36, hidden=4096, ffn=12288)  # Qwen3-VL-8B's language model
PRESETS = {
    "llava-onevision-7b": Preset(QWEN2_7B, 32, 196, "32 frames, 14x14 tokens after 2x2 pooling"),
    "llava-video-7b": Preset(QWEN2_7B, 64, 169, "64 frames, 13x13 tokens after pooling"),
    # [decided] 32 input frames at 448x448: 14-px patches, 2x2 merge -> 16x16 = 256 tokens, and
    # temporal patches of 2 frames -> 16 token frames.
    "qwen2.5-vl-7b": Preset(QWEN2_7B, 16, 256, "32 frames at 448x448: 16 temporal x 256 tokens"),
    # [decided] The same 32 frames at 448x448 for Qwen3-VL: 16-px patches, 2x2 merge -> 14x14 =
    # 196 tokens per temporal patch. (The MoE and Qwen3.5 models are left out: Eq. 17 counts a
    # dense FFN and full attention in every layer, which their experts and linear-attention
    # layers are not.)
    "qwen3-vl-8b": Preset(QWEN3_8B, 16, 196, "32 frames at 448x448: 16 temporal x 196 tokens"),
}


def prefill_flops(tokens: int, llm: LLM) -> float:
    """F_pre = sum over layers of 4 n d^2 + 2 n^2 d + 2 n d m (Eq. 17), n = tokens."""
    n, d, m = tokens, llm.hidden, llm.ffn
    return float(llm.layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m))


def decode_flops(tokens: int, llm: LLM, generated: int) -> float:
    """F_dec = sum over layers of R ((4 d^2 + 2 d m) + 2 (d n + d (R + 1)/2)) (Eq. 18)."""
    n, d, m, r = tokens, llm.hidden, llm.ffn, generated
    return float(llm.layers * r * ((4 * d * d + 2 * d * m) + 2 * (d * n + d * (r + 1) / 2)))


@dataclass(frozen=True)
class CostReport:
    model: str
    frames: int
    tokens_per_frame: int
    retention: float
    vision_tokens_full: int
    vision_tokens: int
    prefill_flops_full: float
    prefill_flops: float
    ratio: float  # prefill_flops / prefill_flops_full
    generated: int
    decode_flops_full: float
    decode_flops: float

    def as_dict(self) -> dict:
        return asdict(self)


def cost(model: str = "llava-onevision-7b", *, retention: float, frames: Optional[int] = None,
         tokens_per_frame: Optional[int] = None, generated: int = 0,
         llm: Optional[LLM] = None) -> CostReport:
    """Visual-token FLOPs before and after keeping round(retention * F * N) tokens.

    model: a preset name (PRESETS) or "custom" with `llm` given. frames / tokens_per_frame
    override the preset's. generated: decoded tokens R for the decode estimate.
    """
    if model == "custom":
        if llm is None:
            raise ValueError("model='custom' needs llm=LLM(layers, hidden, ffn)")
        preset = None
    elif model in PRESETS:
        preset = PRESETS[model]
        llm = llm or preset.llm
    else:
        raise ValueError(f"model must be one of {sorted(PRESETS)} or 'custom', got {model!r}")
    frames = frames if frames is not None else (preset.frames if preset else None)
    tokens_per_frame = (tokens_per_frame if tokens_per_frame is not None
                        else (preset.tokens_per_frame if preset else None))
    if frames is None or tokens_per_frame is None:
        raise ValueError("model='custom' needs frames and tokens_per_frame")
    for name, value in (("frames", frames), ("tokens_per_frame", tokens_per_frame)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(generated, bool) or not isinstance(generated, int) or generated < 0:
        raise ValueError(f"generated must be an int >= 0, got {generated!r}")
    for name, value in (("layers", llm.layers), ("hidden", llm.hidden), ("ffn", llm.ffn)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not isinstance(retention, (int, float)) or not math.isfinite(retention) or not 0 < retention <= 1:
        raise ValueError(f"retention must be in (0, 1], got {retention!r}")
    full = frames * tokens_per_frame
    kept = max(1, round(retention * full))
    pre_full, pre = prefill_flops(full, llm), prefill_flops(kept, llm)
    return CostReport(model, frames, tokens_per_frame, float(retention), full, kept, pre_full, pre,
                      pre / pre_full, generated, decode_flops(full, llm, generated),
                      decode_flops(kept, llm, generated))
