"""Answer a question about a video with a HuggingFace video LLM that sees ~10% of its visual tokens.

    pip install -e ".[hf]" av accelerate
    python examples/video_llm.py --video clip.mp4 --retention 0.10 \
        --model llava-hf/llava-onevision-qwen2-7b-ov-hf --question "What happens in this video?"
    python examples/video_llm.py --video clip.mp4 --model Qwen/Qwen2.5-VL-7B-Instruct
    python examples/video_llm.py --video clip.mp4 --model Qwen/Qwen3-VL-8B-Instruct

Needs a GPU with room for a 7B checkpoint in fp16 (~16 GB), and network access for the weights (or a
local path for --model). Expected, at 32 frames and 10% (`python -m aot_kernels flops`):
  LLaVA-OneVision-7B: 32 x 196 = 6,272 video tokens (+1 newline) -> 627 (+1);
                      prefill over the visual tokens 40.77 -> 3.36 TFLOPs (8.3%).
  Qwen2.5-VL-7B at 448 x 448: 16 x 256 = 4,096 video tokens -> 410;
                      prefill over the visual tokens 24.83 -> 2.18 TFLOPs (8.8%).
  Qwen3-VL-8B at 448 x 448: 16 x 196 = 3,136 video tokens -> 314 (the timestamps and the
                      start/end tokens of the 16 temporal patches stay);
                      prefill over the visual tokens 21.84 -> 1.93 TFLOPs (8.8%).
Qwen3-VL / Qwen3.5 get the frames' real indices and the video's fps as video metadata, so the
`<t seconds>` timestamps in the prompt are the true ones. Other Qwen3-VL sizes, the MoE models
and Qwen3.5 run the same way (the printed FLOPs then use the 8B's shape).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def read_frames(path: str, count: int):
    """`count` frames spread uniformly over the video (PyAV): ([count, H, W, 3] uint8, their
    indices among all frames, the total frame count, the stream's fps)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    pick = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.stack([frames[i] for i in pick]), pick.tolist(), len(frames), fps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-hf/llava-onevision-qwen2-7b-ov-hf")
    parser.add_argument("--video", required=True)
    parser.add_argument("--question", default="Describe this video in detail.")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--retention", type=float, default=0.10)
    parser.add_argument("--reducer", default="aot", help="aot, or a baseline: visionzip, tome, ...")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    import transformers
    from transformers import AutoProcessor

    from aot_kernels import AOTReducer, flops, reducers
    from aot_kernels.integrations.transformers import patch

    name = args.model.lower()
    qwen3 = "qwen3-vl" in name or "qwen3.5" in name or "qwen3_5" in name
    qwen = qwen3 or "qwen2.5-vl" in name
    family = "qwen3-vl-8b" if qwen3 else "qwen2.5-vl-7b" if qwen else "llava-onevision-7b"
    processor = AutoProcessor.from_pretrained(args.model)
    # LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL (-MoE), Qwen3.5 (-MoE): all image-text-to-text models
    model = transformers.AutoModelForImageTextToText.from_pretrained(
        args.model, dtype=torch.bfloat16 if qwen3 else torch.float16, device_map="cuda:0")
    if args.reducer == "aot" and not qwen and round(args.retention, 2) in (0.10, 0.15, 0.20, 0.25):
        reducer = AOTReducer.preset(family, retention=round(args.retention, 2))
    else:
        reducer = reducers.build(args.reducer, retention=args.retention)
    patch(model, reducer)

    conversation = [{"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": args.question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    frames, indices, total, fps = read_frames(args.video, args.frames)
    extra = {}
    if qwen3:  # timestamps from the real frame indices and fps; the frames are already sampled
        extra = dict(video_metadata=[{"total_num_frames": total, "fps": fps,
                                      "frames_indices": indices}], do_sample_frames=False)
    inputs = processor(text=[text], videos=[frames], return_tensors="pt", **extra).to(model.device)
    if "pixel_values_videos" in inputs:
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    full = int((inputs["input_ids"] == model.config.video_token_id).sum())
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    # generate returns the caller's prompt, then the answer (as unpatched); the language model
    # itself saw the shortened prompt (surplus video placeholders removed).
    answer = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    video_tokens = full - (0 if qwen else 1)  # LLaVA-OneVision appends one newline token
    kept = round(args.retention * video_tokens)
    prompt_len = inputs["input_ids"].shape[1] - (video_tokens - kept)
    temporal = args.frames // 2 if qwen else args.frames  # Qwen folds 2 frames per temporal patch
    cost = flops.cost(family, retention=args.retention, frames=temporal,
                      tokens_per_frame=video_tokens // temporal)
    print(f"reducer: {reducer!r}")
    print(f"video tokens: {video_tokens} -> {kept}; prompt {inputs['input_ids'].shape[1]} -> "
          f"{prompt_len} tokens")
    print(f"prefill FLOPs over the visual tokens: {cost.prefill_flops_full / 1e12:.2f} -> "
          f"{cost.prefill_flops / 1e12:.2f} TFLOPs ({100 * cost.ratio:.1f}%)")
    print(f"generate: {seconds:.2f} s\n\n{answer}")


if __name__ == "__main__":
    main()
