"""Tiny, randomly initialised Qwen2.5-VL and LLaVA-OneVision checkpoints written to a folder
(config, safetensors weights, a word-level tokenizer and the processors), built locally with
transformers: no downloads. Language models: 2 layers, 2 heads of 64 (vLLM's CPU attention
kernels take head sizes 32, 64, 128, ...). vLLM loads them like any HF checkpoint.

Shapes (what the tests and benchmarks/bench_vllm.py rely on):
- Qwen2.5-VL: 112x112 frames, 14 px patches, 2x2 merge, 2 frames per temporal patch: a video of F
  frames gives F/2 x 4 x 4 = 8 F tokens (grid_thw = (F/2, 8, 8)).
- LLaVA-OneVision: 112x112 frames, SigLIP 14 px patches (8x8), pooled 2x2 to 4x4 = 16 tokens per
  frame, plus one newline token per video.
"""
from __future__ import annotations

import json
import os
from typing import List

import numpy as np
import torch

SIZE = 112  # frame side in pixels
WORDS = [f"w{i}" for i in range(200)]  # plain text vocabulary: "w0 w1 ..."
# Qwen3-VL's timestamps, "<1.5 seconds>", split by the whitespace/punctuation pre-tokenizer
TIME_WORDS = list("0123456789") + [".", "<", ">", "seconds"]

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


def _tokenizer(special: List[str], path: str):
    """A word-level fast tokenizer: special tokens first, then WORDS; whitespace pre-split."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(special + WORDS + TIME_WORDS + ["<unk>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token=special[0],
                                   pad_token=special[0])
    fast.save_pretrained(path)
    return fast, vocab


def _vocab_size(vocab) -> int:
    return 64 * (-(-len(vocab) // 64))  # round up: embedding rows for every token id


def write_qwen2_5_vl(path: str, seed: int = 0, size: int = SIZE) -> str:
    """A tiny Qwen2.5-VL checkpoint in `path` (created) whose processor keeps frames at
    size x size pixels (a multiple of 28); returns path."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    os.makedirs(path, exist_ok=True)
    tok, vocab = _tokenizer(QWEN_SPECIAL, path)
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=128, patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2, window_size=56, fullatt_block_indexes=[1],
                           tokens_per_second=2, in_channels=3),
        text_config=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=256,
                         vocab_size=_vocab_size(vocab), max_position_embeddings=4096,
                         bos_token_id=vocab["<|endoftext|>"], eos_token_id=vocab["<|im_end|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [16, 8, 8]}),
        video_token_id=vocab["<|video_pad|>"], image_token_id=vocab["<|image_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"], torch_dtype="float32")
    Qwen2_5_VLForConditionalGeneration(cfg).save_pretrained(path)
    # Frames stay size x size (min = max pixels): (size / 14)^2 patches per frame.
    pixels = dict(shortest_edge=size * size, longest_edge=size * size)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels, patch_size=14, merge_size=2,
                                              temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=pixels, patch_size=14, merge_size=2,
                                              temporal_patch_size=2, do_sample_frames=False),
        tokenizer=tok, chat_template=None)
    processor.save_pretrained(path)
    return path


QWEN3_PATCH = 16  # the Qwen3-VL / Qwen3.5 ViT patch; frames must be multiples of 32 px


QWEN3_KINDS = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")


def write_qwen3_vl(path: str, seed: int = 0, kind: str = "qwen3_vl") -> str:
    """A tiny Qwen3-VL (kind="qwen3_vl", DeepStack from vision blocks 0 and 1), Qwen3-VL-MoE
    ("qwen3_vl_moe": the same with 4 experts, top 2), Qwen3.5 ("qwen3_5": no DeepStack, a
    linear-attention and a full-attention layer) or Qwen3.5-MoE ("qwen3_5_moe") checkpoint in
    `path` (created); returns path. Frames are not resized (a multiple of 32 px each side): an
    H x W frame pair gives H/32 x W/32 tokens. The MoE kinds are written as the published
    checkpoints are, which vLLM loads (see _published_moe)."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    os.makedirs(path, exist_ok=True)
    tok, vocab = _tokenizer(QWEN_SPECIAL, path)
    torch.manual_seed(seed)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                  out_hidden_size=128, patch_size=QWEN3_PATCH, temporal_patch_size=2,
                  spatial_merge_size=2, num_position_embeddings=64, in_channels=3)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [16, 8, 8],
            "mrope_interleaved": True}
    text = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                head_dim=64, intermediate_size=256, vocab_size=_vocab_size(vocab),
                max_position_embeddings=4096, bos_token_id=vocab["<|endoftext|>"],
                eos_token_id=vocab["<|im_end|>"], rope_parameters=rope)
    tokens = dict(video_token_id=vocab["<|video_pad|>"], image_token_id=vocab["<|image_pad|>"],
                  vision_start_token_id=vocab["<|vision_start|>"],
                  vision_end_token_id=vocab["<|vision_end|>"])
    if kind not in QWEN3_KINDS:
        raise ValueError(f"kind must be one of {QWEN3_KINDS}, got {kind!r}")
    if kind.endswith("_moe"):
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64)
    if kind.startswith("qwen3_vl"):
        if kind == "qwen3_vl_moe":
            text.update(decoder_sparse_step=1)
        config, model = ((transformers.Qwen3VLMoeConfig, transformers.Qwen3VLMoeForConditionalGeneration)
                         if kind == "qwen3_vl_moe" else
                         (transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration))
        cfg = config(vision_config=dict(vision, deepstack_visual_indexes=[0, 1]),
                     text_config=text, **tokens)
    else:
        # linear-attention heads of 64: vLLM's CPU gated-delta kernel takes 64 or 128 (and bf16)
        text.update(layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
                    linear_key_head_dim=64, linear_value_head_dim=64, linear_num_key_heads=2,
                    linear_num_value_heads=4,
                    rope_parameters=dict(rope, partial_rotary_factor=1.0))
        if kind == "qwen3_5_moe":
            text.update(shared_expert_intermediate_size=64)
        config, model = ((transformers.Qwen3_5MoeConfig, transformers.Qwen3_5MoeForConditionalGeneration)
                         if kind == "qwen3_5_moe" else
                         (transformers.Qwen3_5Config, transformers.Qwen3_5ForConditionalGeneration))
        cfg = config(vision_config=vision, text_config=text, **tokens)
    model = model(cfg)
    cfg.torch_dtype = "float32"
    model.save_pretrained(path)
    if kind == "qwen3_vl_moe":
        _published_moe(path)
    common = dict(patch_size=QWEN3_PATCH, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(do_resize=False, **common),
        video_processor=Qwen3VLVideoProcessor(do_resize=False, do_sample_frames=False,
                                              cap_pixels_per_frame=False, **common),
        tokenizer=tok, chat_template=None)
    processor.save_pretrained(path)
    return path


def _published_moe(path: str) -> None:
    """Qwen3-VL-MoE as the published checkpoints store it, which vLLM 0.32 reads: fused expert
    weights [E, in, out] (transformers 5.19 saves [E, out, in]) and `num_experts` /
    `norm_topk_prob` in the text config (5.19 writes num_local_experts and no norm_topk_prob)."""
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    weights = load_file(file)
    for key in list(weights):
        if key.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            weights[key] = weights[key].transpose(1, 2).contiguous()
    save_file(weights, file, metadata={"format": "pt"})
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["text_config"].update(num_experts=4, norm_topk_prob=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def write_llava_onevision(path: str, seed: int = 0) -> str:
    """A tiny LLaVA-OneVision checkpoint in `path` (created); returns path."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor,
                              LlavaOnevisionVideoProcessor, Qwen2Config, SiglipVisionConfig)

    os.makedirs(path, exist_ok=True)
    tok, vocab = _tokenizer(LLAVA_SPECIAL, path)
    torch.manual_seed(seed)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, image_size=SIZE, patch_size=14)
    text = Qwen2Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1,
                       vocab_size=_vocab_size(vocab), max_position_embeddings=4096,
                       eos_token_id=vocab["<|im_end|>"])
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                               video_token_id=vocab["<video>"], image_token_id=vocab["<image>"],
                               vision_feature_layer=-1, vision_feature_select_strategy="full",
                               image_grid_pinpoints=[[SIZE, SIZE]], torch_dtype="float32")
    LlavaOnevisionForConditionalGeneration(cfg).save_pretrained(path)
    _llava_hf_names(os.path.join(path, "model.safetensors"))
    size = {"height": SIZE, "width": SIZE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size,
                                                     image_grid_pinpoints=[[SIZE, SIZE]]),
        video_processor=LlavaOnevisionVideoProcessor(size=size, do_sample_frames=False),
        tokenizer=tok, num_image_tokens=(SIZE // 14) ** 2, vision_feature_select_strategy="full",
        chat_template=None)
    processor.save_pretrained(path)
    return path


def _llava_hf_names(file: str) -> None:
    """Rename the SigLIP tower's weights as the published llava-hf checkpoints name them
    (vision_tower.vision_model.*; transformers 5.19 saves vision_tower.*, which vLLM's loader
    does not map) and drop its pooling head (unused by LLaVA, absent from those checkpoints)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(file)
    renamed = {}
    for key, value in weights.items():
        if key.startswith("vision_tower.head."):
            continue
        if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
            key = "vision_tower.vision_model." + key[len("vision_tower."):]
        renamed[key] = value
    save_file(renamed, file, metadata={"format": "pt"})


def random_video(frames: int, seed: int, size: int = SIZE) -> np.ndarray:
    """[F, size, size, 3] uint8 frames (size a multiple of 8): a smooth random pattern drifting
    over time (frames differ, neighbours look alike)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(frames + 8, size // 8, size // 8, 3)).astype(np.float32)
    kernel = np.ones(8) / 8  # a moving average over time: consecutive frames share content
    smooth = np.apply_along_axis(lambda x: np.convolve(x, kernel, mode="valid"), 0, base)[:frames]
    return np.repeat(np.repeat(smooth, 8, axis=1), 8, axis=2).astype(np.uint8)


def video_metadata(frames: int, fps: float = 2.0) -> dict:
    """What vLLM's Qwen2.5-VL parser needs next to decoded frames."""
    return dict(total_num_frames=frames, fps=fps, duration=frames / fps, video_backend="numpy",
                frames_indices=list(range(frames)), do_sample_frames=False)


if __name__ == "__main__":  # python tests/vllm_serving/tiny_models.py DIR: write both to look at
    import sys

    out = sys.argv[1]
    write_qwen2_5_vl(os.path.join(out, "qwen2_5_vl"))
    write_llava_onevision(os.path.join(out, "llava_onevision"))
    print(json.dumps(sorted(os.listdir(out))))
