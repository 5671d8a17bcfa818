"""Prefill throughput and time to first token of vLLM serving video requests, with and without
the aot_kernels plugin's reduction, at several concurrencies.

    make bench-vllm   # or: .venv-vllm/bin/python benchmarks/bench_vllm.py --json bench_vllm.json

Default: a tiny random Qwen2.5-VL written to a temporary folder (tests/vllm_serving/tiny_models.py;
2 vision blocks of width 32, a 2-layer language model of width 128), on vLLM's CPU build, engine in
this process. --model PATH serves a real checkpoint instead (e.g. Qwen/Qwen2.5-VL-7B-Instruct on a
GPU; then pass --device-defaults to keep vLLM's own memory settings).

Each concurrency c submits c requests at once, each a different random video, asking for one
token: TTFT is vLLM's per-request first-token latency (arrival to first token, in the engine's
stats), prefill throughput the unreduced video tokens of the c requests over the wall time of the
batch (so both modes are counted in the same units). Every point is the median of --repeats runs
after one warm-up batch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# vLLM's CPU worker pins its OpenMP threads to cores; on a shared 2-core machine a pinned thread
# that loses its core stalls every barrier, and we saw the same batch take 0.05 s or 8 s. Unpinned
# (and OMP_NUM_THREADS=1 in `make bench-vllm`) the timings repeat. Set it to "auto" to pin.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "vllm_serving"))


def run_mode(path, reduction, concurrencies, frames, size, repeats, max_len, device_defaults,
             dtype):
    import gc

    from vllm import LLM, SamplingParams
    from vllm.distributed import cleanup_dist_env_and_memory

    from tiny_models import random_video, video_metadata

    kwargs = {} if reduction is None else {"hf_overrides": {"aot_kernels": reduction}}
    if not device_defaults:
        kwargs.update(gpu_memory_utilization=0.1, kv_cache_memory_bytes=1 << 28)
    llm = LLM(model=path, enforce_eager=True, max_model_len=max_len, seed=0, dtype=dtype,
              limit_mm_per_prompt={"video": 1, "image": 0}, max_num_seqs=max(concurrencies),
              max_num_batched_tokens=max(concurrencies) * max_len, disable_log_stats=False,
              **kwargs)
    prompt = "w1 w2 <|vision_start|><|video_pad|><|vision_end|> w3 w4"
    params = SamplingParams(max_tokens=1, temperature=0)
    grid_tokens = None
    rows, seed = [], 0

    def batch(c):
        nonlocal seed
        reqs = []
        for _ in range(c):
            seed += 1  # a new video every request: nothing comes from the processor cache
            reqs.append({"prompt": prompt, "multi_modal_data": {
                "video": (random_video(frames, seed, size), video_metadata(frames))}})
        start = time.perf_counter()
        outs = llm.generate(reqs, params, use_tqdm=False)
        wall = time.perf_counter() - start
        return outs, wall

    for c in concurrencies:
        batch(c)  # warm-up
        ttft, walls, prompt_len = [], [], None
        for _ in range(repeats):
            outs, wall = batch(c)
            walls.append(wall)
            ttft.append(statistics.mean(o.metrics.first_token_latency for o in outs))
            prompt_len = len(outs[0].prompt_token_ids)
        video_tokens = (frames // 2) * (size // 28) ** 2  # unreduced: F/2 x (size/28)^2
        grid_tokens = video_tokens
        wall = statistics.median(walls)
        rows.append(dict(concurrency=c, prompt_tokens=prompt_len,
                         ttft_ms=1e3 * statistics.median(ttft), wall_ms=1e3 * wall, prefill_video_tok_s=c * video_tokens / wall,
                         requests_s=c / wall))
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()
    return rows, grid_tokens


# The 7B models' video embeddings at 32 frames: Qwen2.5-VL at 448 px (16 temporal patches of
# 16 x 16 merged tokens) and LLaVA-OneVision (32 frames of 14 x 14 pooled tokens), width 3584.
COST_SHAPES = {"qwen2.5-vl-7b": (16, 256, (16, 16)), "llava-onevision-7b": (32, 196, None)}


def reduction_cost(reducer_name, retention, repeats, dim=3584, dtype="float32"):
    """Milliseconds per video of what the plugin adds to the model's forward (scores + reducer),
    median of `repeats` after a warm-up, on random embeddings of the 7B shapes (CPU here; the
    CUDA device when there is one, synchronised around each call for the timing only)."""
    import torch

    from aot_kernels.reducers.scores import self_attention_scores
    from aot_kernels.integrations.vllm import Settings
    from aot_kernels.integrations.vllm.models import reduce_video

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reducer = Settings(reducer_name, retention).build()
    out = {}
    for name, (frames, n, grid) in COST_SHAPES.items():
        feats = torch.randn(frames, n, dim, dtype=getattr(torch, dtype), device=device)
        def timed(fn):
            times = []
            for i in range(repeats + 1):
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                result = fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append(1e3 * (time.perf_counter() - start))
            return result, statistics.median(times)

        kept, ms = timed(lambda: reduce_video(reducer, feats, grid))
        _, scores_ms = timed(lambda: self_attention_scores(feats))
        out[name] = dict(shape=[frames, n, dim], kept=len(kept), device=device, dtype=dtype,
                         ms=ms, scores_ms=scores_ms, threads=torch.get_num_threads())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a Qwen2.5-VL checkpoint (default: the tiny random one)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=224, help="frame side in pixels (tiny model)")
    ap.add_argument("--retention", type=float, default=0.10)
    ap.add_argument("--reducer", default="aot")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--device-defaults", action="store_true",
                    help="keep vLLM's memory defaults (a GPU); otherwise a small CPU KV cache")
    ap.add_argument("--dtype", default="float32",
                    help="model dtype (float32 on CPU: bfloat16 without AVX512-BF16 is emulated)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-cost", action="store_true", help="skip the per-video reduction cost")
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="keep glibc's allocator settings (default: freed memory kept, as with "
                         "the tcmalloc vLLM recommends on CPU; glibc's mmap per large block makes "
                         "CPU timings depend on allocation history: we saw the same encoder call "
                         "take 0.08 s or 4 s)")
    args = ap.parse_args(argv)
    for name in ("frames", "size", "repeats", "max_model_len"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.frames % 2 or args.size % 28:
        raise SystemExit("--frames must be even and --size a multiple of 28 (Qwen2.5-VL patches)")
    if any(c < 1 for c in args.concurrency):
        raise SystemExit("--concurrency values must be >= 1")

    from aot_kernels.eval.bench import steady_allocator
    from aot_kernels.integrations.vllm import register

    steady = False if args.glibc_defaults else steady_allocator()
    # Before any engine starts: vLLM's CPU worker changes this process's thread settings.
    cost = {} if args.no_cost else reduction_cost(args.reducer, args.retention, args.repeats)
    register()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            from tiny_models import write_qwen2_5_vl

            path = write_qwen2_5_vl(os.path.join(tmp, "qwen2_5_vl"), size=args.size)
        reduction = {"reducer": args.reducer, "retention": args.retention}
        results = {}
        for mode, red in (("full", None), (f"{args.reducer}@{args.retention}", reduction)):
            results[mode], video_tokens = run_mode(path, red, args.concurrency, args.frames,
                                                   args.size, args.repeats, args.max_model_len,
                                                   args.device_defaults, args.dtype)
    import torch
    import vllm

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    meta = dict(model=args.model or "tiny random Qwen2.5-VL", frames=args.frames, size=args.size,
                video_tokens=video_tokens, dtype=args.dtype, vllm=vllm.__version__,
                torch=torch.__version__,
                machine=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                commit=commit, repeats=args.repeats, allocator="steady" if steady else "glibc")
    print(json.dumps(meta))
    for name, c in cost.items():
        print(f"reduction cost per video, {name} {c['shape']} {c['dtype']} on {c['device']}: "
              f"{c['ms']:.1f} ms, of which scores {c['scores_ms']:.1f} ms "
              f"({c['kept']} tokens kept, {c['threads']} threads)")
    print("| mode | concurrency | prompt tokens | TTFT ms | batch wall ms | prefill video tok/s "
          "| req/s |")
    print("|---|---|---|---|---|---|---|")
    for mode, rows in results.items():
        for r in rows:
            print(f"| {mode} | {r['concurrency']} | {r['prompt_tokens']} | {r['ttft_ms']:.1f} | "
                  f"{r['wall_ms']:.1f} | {r['prefill_video_tok_s']:.0f} | {r['requests_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, results=results, reduction_cost=cost), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
