"""Answer a question about a video with LLaVA-OneVision, seeing ~10% of its visual tokens.

    pip install "transformers>=5.23,<5.24" av accelerate
    python examples/llava_onevision_video.py --video clip.mp4 --retention 0.10 \
        --question "What happens in this video?"

Needs a GPU with room for the 7B checkpoint in fp16 (~16 GB), and network access for the weights
(or a local path for --model). With 32 frames, the video is 32 x 196 = 6,272 visual tokens (+1
newline); AOT at 10% passes 627 (+1) to the language model. Over the visual tokens, Qwen2-7B's
prefill goes from 40.77 to 3.36 TFLOPs (8.3%, `python -m aot_kernels flops --retention 0.1`).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def read_frames(path: str, count: int) -> np.ndarray:
    """`count` frames spread uniformly over the video, [count, H, W, 3] uint8 (PyAV)."""
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no frames decoded from {path}")
    pick = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.stack([frames[i] for i in pick])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-hf/llava-onevision-qwen2-7b-ov-hf")
    parser.add_argument("--video", required=True)
    parser.add_argument("--question", default="Describe this video in detail.")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--retention", type=float, default=0.10)
    parser.add_argument("--reducer", default="aot", help="aot, or a baseline name (visionzip, ...)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    from transformers import AutoProcessor, LlavaOnevisionForConditionalGeneration

    from aot_kernels import AOTReducer, flops, reducers
    from aot_kernels.integrations.transformers import patch

    processor = AutoProcessor.from_pretrained(args.model)
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(
        args.model, dtype=torch.float16, device_map="cuda:0")
    if args.reducer == "aot" and round(args.retention, 2) in (0.10, 0.15, 0.20, 0.25):
        reducer = AOTReducer.preset("llava-onevision-7b", retention=round(args.retention, 2))
    else:
        reducer = reducers.build(args.reducer, retention=args.retention)
    patch(model, reducer)

    conversation = [{"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": args.question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    video = read_frames(args.video, args.frames)
    inputs = processor(text=text, videos=[video], return_tensors="pt").to(model.device, torch.float16)
    full = int((inputs["input_ids"] == model.config.video_token_id).sum())
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    seconds = time.perf_counter() - start
    tokens_per_frame = (full - 1) // args.frames
    kept = round(args.retention * args.frames * tokens_per_frame)
    # generate returns the shortened prompt (the surplus video placeholders removed), then the
    # answer. Threshold-mode reducers keep a data-dependent count; the quota ones keep `kept`.
    prompt_len = inputs["input_ids"].shape[1] - (full - 1 - kept)
    answer = processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)[0]
    cost = flops.cost("llava-onevision-7b", retention=args.retention, frames=args.frames,
                      tokens_per_frame=tokens_per_frame)
    print(f"reducer: {reducer!r}")
    print(f"video tokens: {full - 1} (+1 newline) -> {kept} (+1); prompt {prompt_len} tokens")
    print(f"prefill FLOPs over the visual tokens: {cost.prefill_flops_full / 1e12:.2f} -> "
          f"{cost.prefill_flops / 1e12:.2f} TFLOPs ({100 * cost.ratio:.1f}%)")
    print(f"generate: {seconds:.2f} s\n\n{answer}")


if __name__ == "__main__":
    main()
