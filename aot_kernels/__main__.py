"""Command line: `python -m aot_kernels demo` (what `make demo` runs)."""
from __future__ import annotations

import argparse
import sys

import torch

from . import HAS_EXTENSION, EXTENSION_ERROR, sinkhorn_aggregate
from .bench import median_ms
from .workloads import PAPER_INTRA, make_inputs


def demo(args) -> int:
    w = PAPER_INTRA
    anchors, sources = make_inputs(w)
    print(f"aot_kernels demo: intra-frame stage of AOT at the paper workload (SPEC §6)")
    print(f"  {w.batch} frames x (M={w.anchors} anchors <- N={w.sources} pruned tokens), "
          f"D={w.dim}, fp32, eps={w.eps}, {w.max_iter} Sinkhorn iterations, "
          f"{torch.get_num_threads()} CPU thread(s)")
    if not HAS_EXTENSION:
        print(f"  compiled extension unavailable ({EXTENSION_ERROR}); torch backend only")
    backends = ["cpp", "torch"] if HAS_EXTENSION else ["torch"]
    results, timings = {}, {}
    for backend in backends:
        run = lambda: sinkhorn_aggregate(anchors, sources, eps=w.eps, max_iter=w.max_iter,  # noqa: E731
                                         backend=backend)
        results[backend] = run()
        timings[backend] = median_ms(run, min_time=0.0, min_runs=args.repeat, max_runs=args.repeat)
    print(f"\n  {'backend':<8} {'median ms':>10} {'speed-up':>9}")
    for backend in backends:
        print(f"  {backend:<8} {timings[backend]:>10.2f} {timings['torch'] / timings[backend]:>8.1f}x")
    r = results[backends[0]]
    moved = (r.tokens - anchors).norm(dim=-1).mean().item()
    print(f"\n  each anchor absorbed its share of the pruned tokens: received mass "
          f"{r.mass.mean().item():.5f} (= 1/M = {1 / w.anchors:.5f}), mean shift {moved:.4f}, "
          f"transport cost {r.distance.mean().item():.4f}, row-marginal error "
          f"{r.error.max().item():.2e}")
    if len(backends) == 2:
        diff = (results["cpp"].tokens - results["torch"].tokens).abs().max().item()
        print(f"  cpp and torch backends agree: max |difference| of the tokens {diff:.2e}")
    print(f"  output: tokens {tuple(r.tokens.shape)} (the {w.anchors} kept tokens of each frame)")
    return 0


def bench_command(args) -> int:
    from . import bench as suite

    if not HAS_EXTENSION:
        print(f"the benchmark needs the compiled extension ({EXTENSION_ERROR})", file=sys.stderr)
        return 1
    if args.threads and min(args.threads) < 1:
        print("--threads takes counts >= 1", file=sys.stderr)
        return 2
    suite.main(quick=args.quick, json_path=args.json, plot_path=args.plot, threads=args.threads)
    return 0


def flops_command(args) -> int:
    import json

    from .flops import LLM, cost

    custom = [args.layers, args.hidden, args.ffn]
    llm = None
    if any(v is not None for v in custom):
        if any(v is None for v in custom):
            print("give all of --layers, --hidden and --ffn", file=sys.stderr)
            return 2
        llm = LLM(args.layers, args.hidden, args.ffn)
    try:
        report = cost(args.model, retention=args.retention, frames=args.frames,
                      tokens_per_frame=args.tokens_per_frame, generated=args.generated, llm=llm)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    r = report
    print(f"{r.model}: {r.frames} frames x {r.tokens_per_frame} tokens, retention {r.retention:g}")
    print(f"  visual tokens  {r.vision_tokens_full:>10,d} -> {r.vision_tokens:,d}")
    print(f"  prefill FLOPs  {r.prefill_flops_full:>10.3e} -> {r.prefill_flops:.3e} "
          f"({100 * r.ratio:.1f}% of full)")
    if r.generated:
        print(f"  decode FLOPs   {r.decode_flops_full:>10.3e} -> {r.decode_flops:.3e} "
              f"for {r.generated} generated tokens")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aot_kernels",
                                     description="AOT visual-token reduction kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="solve the paper's intra-frame workload on each backend")
    p_demo.add_argument("--repeat", type=int, default=5, help="timed runs per backend (median)")
    p_demo.set_defaults(func=demo)
    p_bench = sub.add_parser("bench", help="CPU benchmark table: fused op vs torch, "
                             "torch.compile, POT and the GEMM floor")
    p_bench.add_argument("--quick", action="store_true", help="fewer cases and sweep points")
    p_bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p_bench.add_argument("--plot", metavar="PATH", help="write time-vs-size plots (PNG)")
    p_bench.add_argument("--threads", type=int, nargs="+", metavar="T",
                         help="thread counts for the paper cases (default: 1 and all)")
    p_bench.set_defaults(func=bench_command)
    p_flops = sub.add_parser("flops", help="visual-token prefill/decode FLOPs of the LLM "
                             "before and after reduction (SPEC §7)")
    p_flops.add_argument("--model", default="llava-onevision-7b",
                         help="llava-onevision-7b | llava-video-7b | qwen2.5-vl-7b | custom")
    p_flops.add_argument("--frames", type=int, help="frames (default: the preset's)")
    p_flops.add_argument("--tokens-per-frame", type=int, help="visual tokens per frame")
    p_flops.add_argument("--retention", type=float, required=True, help="kept fraction, (0, 1]")
    p_flops.add_argument("--generated", type=int, default=0, help="decoded tokens R")
    p_flops.add_argument("--layers", type=int, help="custom LLM: layers T")
    p_flops.add_argument("--hidden", type=int, help="custom LLM: hidden size d")
    p_flops.add_argument("--ffn", type=int, help="custom LLM: FFN width m")
    p_flops.add_argument("--json", action="store_true", help="print one JSON object")
    p_flops.set_defaults(func=flops_command)
    args = parser.parse_args(argv)
    if getattr(args, "repeat", 1) < 1:
        parser.error("--repeat must be >= 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
