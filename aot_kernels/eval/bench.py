"""CPU benchmark suite: the fused op side by side with what a user would otherwise run.

`python -m aot_kernels bench [--quick] [--video-only] [--json out.json] [--plot out.png]` prints
the op table, then (not with --quick) the whole-video table; benchmarks/test_bench_cpu.py runs the
op cases under pytest-benchmark. Every implementation of a row runs in one process on the same
inputs:

  aot-cpp         this package's fused op (C++ backend)
  torch           the "torch" backend, eager
  torch.compile   the "torch" backend under torch.compile (compile time excluded)
  pot-batch       POT ot.batch.solve_batch(method="log_sinkhorn") + the aggregation
  pot-loop        POT ot.sinkhorn(method="sinkhorn_log") problem by problem + the aggregation
  floor           the two unavoidable batched fp32 GEMMs alone: [B,M,D]x[B,D,N] (cost) and
                  [B,M,N]x[B,N,D] (aggregation)

Each row reports the median time, its ratio to the floor, the fused op's speed-up over it, the max
|difference| of its tokens to the fused op's, and for aot-cpp/torch the extra memory of the forward
pass in units of B*M*N fp32 floats (peak resident bytes of one call, outputs excluded).

Whole-video rows (VIDEO_CASES: LLaVA-OneVision 32 x 196 x 1152 on a 14x14 grid, LLaVA-Video
64 x 169 x 1152 on 13x13; fp32, AOTReducer(0.10) defaults) at each thread count:

  cpp, torch      AOTReducer(0.10, backend=..., profile=True): median total ms and the stage split
                  (anchor selection, intra-frame, inter-frame)
  floor           the reduction's unavoidable GEMMs alone, with M anchors per frame and the clips
                  from AOTReducer(0.10).plan(F, N): intra [F,M,D]x[F,D,N-M] (cost) and
                  [F,M,N-M]x[F,N-M,D] (aggregation); inter, for each clip step l = 1..longest-1
                  over the C_l clips still alive at l, [C_l,M,D]x[C_l,D,M] and [C_l,M,M]x[C_l,M,D]

Each reports ms / floor ms, cpp its speed-up over torch (torch ms / cpp ms), and torch the max
|difference| of its tokens to cpp's. Targets: cpp <= 1.6x floor and >= 5x torch at 2 threads.
"""
from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..ops import composite
from ..ops.api import sinkhorn_aggregate
from .workloads import Workload, make_inputs


@dataclass(frozen=True)
class Case:
    workload: Workload
    tol: float = 0.0
    sweep: Optional[str] = None  # None (a main case) or the swept parameter: N | B | iterations

    @property
    def name(self) -> str:
        w = self.workload
        tol = f" tol={self.tol:g}" if self.tol else ""
        return f"{w.name} B={w.batch} M={w.anchors} N={w.sources} D={w.dim} it={w.max_iter}{tol}"


PAPER_CASES = [
    Case(Workload("paper-intra", 32, 126, 70, 1152)),
    Case(Workload("paper-intra", 32, 126, 70, 3584)),
    Case(Workload("paper-inter", 24, 126, 126, 1152)),
    Case(Workload("paper-intra", 32, 126, 70, 1152, max_iter=1000), tol=1e-6),
]


def sweep_cases(quick: bool) -> List[Case]:
    ns = [64, 256, 1024, 2304] if not quick else [64, 576]
    bs = [1, 8, 32, 128, 256] if not quick else [1, 32]
    its = [10, 100, 1000] if not quick else [10, 100]
    cases = [Case(Workload("sweep-N", 8, 126, n, 1152), sweep="N") for n in ns]
    cases += [Case(Workload("sweep-B", b, 126, 70, 1152), sweep="B") for b in bs]
    cases += [Case(Workload("sweep-iterations", 32, 126, 70, 1152, max_iter=i), sweep="iterations")
              for i in its]
    return cases


# ---- implementations: each returns the aggregated tokens [B,M,D] --------------------------------

def _aggregate(x, y, transport):
    """Eq. 11 from a plan, shared by the POT rows (lam = 1)."""
    tokens, _ = composite.aggregate(x, y, transport, None, 1.0)
    return tokens


def solve(x, y, case, backend):
    """This package's sinkhorn_aggregate on one case (the full result)."""
    w = case.workload
    return sinkhorn_aggregate(x, y, eps=w.eps, max_iter=w.max_iter, tol=case.tol, backend=backend)


def run_cpp(x, y, case):
    return solve(x, y, case, "cpp").tokens


def run_torch(x, y, case):
    return solve(x, y, case, "torch").tokens


_compiled: Dict[tuple, Callable] = {}


def run_compiled(x, y, case):
    w = case.workload
    key = (w.max_iter, case.tol, w.eps)
    if key not in _compiled:
        _compiled[key] = torch.compile(
            lambda a, b: composite.sinkhorn_aggregate(a, b, None, None, w.eps, 1.0, w.max_iter, case.tol)[0])
    return _compiled[key](x, y)


def run_pot_batch(x, y, case):
    import ot

    w = case.workload
    cost = composite.cosine_cost(x, y)
    res = ot.batch.solve_batch(cost, reg=w.eps, max_iter=w.max_iter, tol=case.tol,
                               method="log_sinkhorn", grad="detach")
    return _aggregate(x, y, res.plan)


def run_pot_loop(x, y, case):
    import ot

    w = case.workload
    cost = composite.cosine_cost(x, y)
    a = torch.full((w.anchors,), 1.0 / w.anchors)
    b = torch.full((w.sources,), 1.0 / w.sources)
    with warnings.catch_warnings():  # "did not converge": the iteration count is the point
        warnings.simplefilter("ignore", UserWarning)
        plans = [ot.sinkhorn(a, b, cost[i], w.eps, method="sinkhorn_log", numItermax=w.max_iter,
                             stopThr=case.tol) for i in range(cost.shape[0])]
    return _aggregate(x, y, torch.stack(plans))


def floor_fn(x, y):
    """The two GEMMs the op cannot avoid, on a plan-shaped operand made once outside the timing."""
    weights = torch.rand(x.shape[0], x.shape[1], y.shape[1], dtype=x.dtype)

    def run():
        torch.bmm(x, y.transpose(1, 2))
        return torch.bmm(weights, y)

    return run


def _pot_available() -> bool:
    try:
        import ot  # noqa: F401

        return hasattr(ot, "batch")
    except ImportError:
        return False


IMPLEMENTATIONS: Dict[str, Callable] = {
    "aot-cpp": run_cpp,
    "torch": run_torch,
    "torch.compile": run_compiled,
    "pot-batch": run_pot_batch,
    "pot-loop": run_pot_loop,
}
POT_IMPLS = ("pot-batch", "pot-loop")
SWEEP_IMPLS = ("aot-cpp", "torch", "pot-batch")  # the slow peers only on the main cases


# ---- measurement --------------------------------------------------------------------------------

def median_ms(fn: Callable, min_time: float = 0.2, min_runs: int = 3, max_runs: int = 30) -> float:
    fn()  # warm-up: allocations, thread pool, compilation
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _probe_memory(impl: str, workload: dict, tol: float) -> None:
    """Runs in a child process (see extra_memory_bmn): prints the extra bytes of one call."""
    case = Case(Workload(**workload), tol=tol)
    x, y = make_inputs(case.workload)
    fn = IMPLEMENTATIONS[impl]
    fn(x, y, case)  # warm-up: thread pool, lazy initialisation
    base = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
    out = fn(x, y, case)
    print(_status_bytes("VmHWM") - base - out.numel() * out.element_size())


def extra_memory_bmn(impl: str, case: Case) -> Optional[float]:
    """Peak extra resident memory of one forward call, outputs excluded, in B*M*N fp32 floats.

    Measured in a fresh process where glibc serves every block over 64 KiB by mmap and returns
    it on free, so the peak-RSS mark (reset just before the call) sees exactly the peak of the
    call's live buffers. The CPU allocator keeps no counters of its own. None where /proc is
    unavailable.
    """
    import os
    import sys

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    code = (f"from aot_kernels.eval.bench import _probe_memory; "
            f"_probe_memory({impl!r}, {asdict(case.workload)!r}, {case.tol!r})")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, check=True, timeout=600)
        extra = int(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None
    w = case.workload
    return extra / (4 * w.batch * w.anchors * w.sources)


def steady_allocator() -> bool:
    """Keep freed memory in the process (glibc mallopt), as in a long-running server.

    By default glibc maps blocks over 32 MiB fresh on every call and unmaps them on free, so a
    58 MB output costs ~15k page faults per call: timings then depend on allocation history
    more than on the kernels (we saw the same two GEMMs take 32 or 51 ms). Applied once, for
    every row alike. Returns False where glibc is not available.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        m_trim_threshold, m_mmap_max = -1, -4
        # No mmap'd blocks (the mmap threshold cannot exceed 32 MiB), and never trim the heap.
        return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError, TypeError):
        return False


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": torch.get_num_threads(), "torch": torch.__version__,
            "commit": commit(), "python": platform.python_version()}


def run_case(case: Case, threads: int, impls) -> List[dict]:
    torch.set_num_threads(threads)
    w = case.workload
    x, y = make_inputs(w)
    floor = median_ms(floor_fn(x, y))
    fused = solve(x, y, case, "cpp")
    reference, iterations = fused.tokens, fused.iterations.double().mean().item()
    fused_ms = median_ms(lambda: run_cpp(x, y, case))
    rows = [{"case": case.name, "sweep": case.sweep, "tol": case.tol, "threads": threads, "impl": "floor",
             "ms": floor, "x_floor": 1.0, "fused_speedup": floor / fused_ms, "max_diff": None,
             "extra_mem_bmn": None, "iterations": None, **{k: v for k, v in asdict(w).items()}}]
    for name in impls:
        if name == "torch.compile" and case.tol > 0:
            continue  # data-dependent stopping breaks the graph every iteration: not a fair row
        fn = IMPLEMENTATIONS[name]
        ms = fused_ms if name == "aot-cpp" else median_ms(lambda: fn(x, y, case))
        diff = (fn(x, y, case) - reference).abs().max().item()
        mem = None
        if name in ("aot-cpp", "torch") and case.sweep is None:
            mem = extra_memory_bmn(name, case)
        rows.append({"case": case.name, "sweep": case.sweep, "tol": case.tol, "threads": threads, "impl": name,
                     "ms": ms, "x_floor": ms / floor, "fused_speedup": ms / fused_ms,
                     "max_diff": diff, "extra_mem_bmn": mem,
                     "iterations": iterations if name == "aot-cpp" else None,
                     **{k: v for k, v in asdict(w).items()}})
    return rows


def format_table(rows: List[dict]) -> str:
    head = (f"{'case':<58} {'thr':>3} {'impl':<14} {'median ms':>10} {'x floor':>8} "
            f"{'aot-cpp is':>13} {'max|Δ tokens|':>14} {'extra mem':>10}")
    lines = [head, "-" * len(head)]
    last = None
    for r in rows:
        if last is not None and (r["case"], r["threads"]) != last:
            lines.append("")
        last = (r["case"], r["threads"])
        diff = "" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        mem = "" if r["extra_mem_bmn"] is None else f"{r['extra_mem_bmn']:.1f} BMN"
        faster = f"{r['fused_speedup']:.1f}x faster" if r["impl"] not in ("aot-cpp", "floor") else ""
        name = r["impl"]
        if r["iterations"] is not None and r["tol"] > 0:  # show how early it stopped
            name += f" ({r['iterations']:.0f} it)"
        lines.append(f"{r['case']:<58} {r['threads']:>3} {name:<14} {r['ms']:>10.2f} "
                     f"{r['x_floor']:>8.2f} {faster:>13} {diff:>14} {mem:>10}")
    return "\n".join(lines)


def plot(rows: List[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = [("N", "sources", "N (sources per problem), B=8, M=126"),
              ("B", "batch", "B (problems), M=126, N=70"),
              ("iterations", "max_iter", "Sinkhorn iterations, B=32, M=126, N=70")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (key, field, label) in zip(axes, sweeps):
        sel = [r for r in rows if r["sweep"] == key]
        for impl in sorted({r["impl"] for r in sel}):
            pts = sorted((r[field], r["ms"]) for r in sel if r["impl"] == impl)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("median ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    m = machine()
    fig.suptitle(f"aot_kernels CPU, D=1152 fp32, eps=0.1 — {m['cpu']}, {m['cores']} threads, "
                 f"commit {m['commit']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@dataclass(frozen=True)
class VideoCase:
    """One whole video for AOTReducer: frames x grid tokens of dimension dim (fp32)."""
    model: str
    frames: int
    grid: Tuple[int, int]  # (H, W): tokens per frame N = H * W
    dim: int = 1152

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def name(self) -> str:
        return f"video {self.frames}x{self.tokens}x{self.dim} ({self.model})"


VIDEO_RETENTION = 0.10
VIDEO_CASES = [VideoCase("LLaVA-OneVision", 32, (14, 14)), VideoCase("LLaVA-Video", 64, (13, 13))]
# What the cpp backend is held to on the whole-video rows (at VIDEO_TARGET_THREADS threads).
VIDEO_TARGET_X_FLOOR, VIDEO_TARGET_SPEEDUP, VIDEO_TARGET_THREADS = 1.6, 5.0, 2
_STAGES = ("select_ms", "intra_ms", "inter_ms")


def video_floor_fn(case: VideoCase) -> Callable:
    """The reduction's unavoidable GEMMs (fp32), each as floor_fn's cost + aggregation pair:
    intra [F,M,D]x[F,D,N-M] and [F,M,N-M]x[F,N-M,D]; inter, per clip step l = 1..longest-1 over
    the C_l clips alive at l, [C_l,M,D]x[C_l,D,M] and [C_l,M,M]x[C_l,M,D]. M and the clips come
    from AOTReducer's plan; operands are made here, once, outside the timing."""
    from ..reducers.aot import AOTReducer

    plan = AOTReducer(VIDEO_RETENTION).plan(case.frames, case.tokens)
    m, lengths = plan.anchors, [e - s for s, e in plan.clips]
    # (batch, rows, columns) of each cost matrix: the intra one (none if every token is an
    # anchor), then one per clip step.
    shapes = [(case.frames, m, case.tokens - m)] if m < case.tokens else []
    shapes += [(sum(n > step for n in lengths), m, m) for step in range(1, max(lengths))]
    g = torch.Generator().manual_seed(1)
    gemms = [floor_fn(torch.randn(b, rows, case.dim, generator=g),
                      torch.randn(b, cols, case.dim, generator=g)) for b, rows, cols in shapes]

    def run():
        for gemm in gemms:
            gemm()

    return run


def video_rows(threads: int, cases: Optional[List[VideoCase]] = None) -> List[dict]:
    """Whole-video AOT (AOTReducer at VIDEO_RETENTION, default settings, fp32) per case: a floor
    row (video_floor_fn), then per backend (cpp, torch) the median total ms and the per-stage
    split in ms (selection, intra-frame, inter-frame; profile=True). x_floor = ms / floor ms;
    speedup (cpp row only) = torch ms / cpp ms; max_diff = max |tokens - cpp tokens|."""
    from ..reducers.aot import AOTReducer

    torch.set_num_threads(threads)
    rows: List[dict] = []
    for case in cases or VIDEO_CASES:
        g = torch.Generator().manual_seed(0)
        video = torch.randn(case.frames, case.tokens, case.dim, generator=g)
        scores = torch.rand(case.frames, case.tokens, generator=g)
        common = {"case": case.name, "threads": threads, "frames": case.frames,
                  "tokens": case.tokens, "dim": case.dim, "grid": list(case.grid)}
        floor = median_ms(video_floor_fn(case), min_runs=9)
        case_rows = [dict(common, impl="floor", ms=floor, x_floor=1.0, speedup=None, max_diff=None,
                          **{k: None for k in _STAGES})]
        tokens = {}
        for backend in ("cpp", "torch"):
            reducer = AOTReducer(VIDEO_RETENTION, backend=backend, profile=True)
            outs = []  # the timed calls' results give the stage split and the tokens
            runs = (9, 15) if backend == "cpp" else (3, 5)  # the ratio target needs a steady cpp median
            ms = median_ms(lambda: outs.append(reducer(video, scores, grid=case.grid)),
                           min_runs=runs[0], max_runs=runs[1])
            timed = outs[1:]  # outs[0] is median_ms's warm-up
            tokens[backend] = timed[-1].tokens
            case_rows.append(dict(common, impl=backend, ms=ms, x_floor=ms / floor, speedup=None,
                                  max_diff=(tokens[backend] - tokens["cpp"]).abs().max().item(),
                                  **{k: statistics.median(o.stats[k] for o in timed) for k in _STAGES}))
        by_impl = {r["impl"]: r for r in case_rows}
        by_impl["cpp"]["speedup"] = by_impl["torch"]["ms"] / by_impl["cpp"]["ms"]
        rows += case_rows
    return rows


def format_video(rows: List[dict]) -> str:
    """The video rows as a table, one block per (case, threads), targets in the header."""
    lines = [f"whole-video reduction: AOTReducer({VIDEO_RETENTION:g}) defaults, fp32; stage split "
             f"in ms from profile=True; floor = its intra + inter GEMMs alone",
             f"targets at {VIDEO_TARGET_THREADS} threads: cpp <= {VIDEO_TARGET_X_FLOOR:g}x floor, "
             f"cpp >= {VIDEO_TARGET_SPEEDUP:g}x faster than torch"]
    head = (f"{'case':<38} {'thr':>3} {'impl':<6} {'median ms':>10} {'x floor':>8} {'torch/cpp':>9} "
            f"{'select':>8} {'intra':>8} {'inter':>8} {'max|Δ tokens|':>14}")
    lines += [head, "-" * len(head)]
    last = None
    for r in rows:
        if last is not None and (r["case"], r["threads"]) != last:
            lines.append("")
        last = (r["case"], r["threads"])
        stages = "".join(f" {'':>8}" if r[k] is None else f" {r[k]:>8.2f}" for k in _STAGES)
        speedup = "" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        diff = "" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        lines.append(f"{r['case']:<38} {r['threads']:>3} {r['impl']:<6} {r['ms']:>10.2f} "
                     f"{r['x_floor']:>7.2f}x {speedup:>9}{stages} {diff:>14}".rstrip())
    return "\n".join(lines)


def main(quick: bool = False, json_path: Optional[str] = None, plot_path: Optional[str] = None,
         threads: Optional[List[int]] = None, video_only: bool = False) -> List[dict]:
    """Runs and prints the suite; returns the op rows. quick: fewer op cases and sweep points, no
    video rows. video_only: the whole-video rows alone (no op cases, sweeps or plot)."""
    steady = steady_allocator()
    default_threads = torch.get_num_threads()
    threads = threads or sorted({1, default_threads})
    impls = list(IMPLEMENTATIONS)
    if not _pot_available():
        if not video_only:  # the video rows have no POT peer
            print("POT not installed (pip install POT): its rows are skipped")
        impls = [i for i in impls if i not in POT_IMPLS]
    cases = [] if video_only else PAPER_CASES[:1] + PAPER_CASES[2:] if quick else PAPER_CASES
    rows: List[dict] = []
    for case in cases:
        for t in threads:
            rows += run_case(case, t, impls)
    if not video_only and (plot_path or not quick):
        for case in sweep_cases(quick):
            rows += run_case(case, default_threads, [i for i in SWEEP_IMPLS if i in impls])
    video = [r for t in threads for r in video_rows(t)] if video_only or not quick else []
    torch.set_num_threads(default_threads)
    m = machine()
    print(f"machine: {m['cpu']}, {m['cores']} threads, torch {m['torch']}, commit {m['commit']}; "
          f"allocator: {'freed memory kept (mallopt)' if steady else 'glibc defaults'}")
    if rows:
        print(format_table(rows))
    if video:
        print(("\n" if rows else "") + format_video(video))
    if json_path:
        Path(json_path).write_text(json.dumps({"machine": m, "rows": rows, "video": video}, indent=1))
        print(f"wrote {json_path}")
    if plot_path and rows:
        plot(rows, plot_path)
        print(f"wrote {plot_path}")
    return rows
