"""Compile gate: every Triton kernel, at every configuration the launchers pick, through Triton's
real compiler for real GPU architectures, on a machine without a GPU.

    python -m aot_kernels.gpu.compile_check --arch 80 90 [--json FILE] [--jobs N]

The launchers themselves run (on CPU tensors, no kernel executes) over a representative set of
shapes, dtypes and modes; each launch is recorded instead of run. Every distinct configuration is
then compiled to a cubin for each architecture with a stand-in driver (ptxas and cuobjdump ship
in the triton wheel), and `cuobjdump --dump-resource-usage` reads registers, the local-memory
frame (spill) and static shared memory; Triton's dynamic shared memory comes from its metadata.
Two readings of the code itself:
- index products (TTIR): an int32 multiply of two runtime values (an index times a shape
  argument) wraps past 2^31 into an illegal address on a GPU, and the interpreter (64-bit NumPy
  addresses, tiny shapes) never sees it; each is reported with its source line;
- the widest global load (PTX): `ld.global.v4.b32`, `cp.async ... 16` (128 bits), down to a
  scalar `ld.global.b16`. The cost, solve and fold kernels must load 128 bits at the paper's
  shapes (their strides are aligned there, cost_kernels.py).
Exit status 1 on any compile failure, any block over the architecture's shared-memory limit, any
int32 index product, any spill in a kernel that a paper shape launches, or a scalar-only (under
128-bit) cost, solve or fold kernel there. Triton's cache lives under build/.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

# Largest shared memory one block may use (bytes, opt-in): A100 163 KB, H100 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
SIZES = (1, 17, 70, 126, 196, 256, 603, 2048)
FEATURES = (64, 1152, 3584)
DTYPES = ("float32", "float16", "bfloat16")
# Kernels whose loads are the bandwidth: 128-bit loads required at the paper's shapes.
VECTOR_KERNELS = ("_cosine_cost_kernel", "_solve_kernel", "_fold")
VECTOR_BITS = 128


@dataclass(frozen=True)
class Case:
    """One launcher call: op (aggregate modes, sinkhorn, cosine, clip) on a shape."""
    op: str  # intra | tau | keep | sinkhorn | cosine | clip | authors | authors-inter
    m: int
    n: int
    d: int
    dtype: str
    tf32: bool = False
    paper: bool = False

    @property
    def shape(self) -> str:
        if self.op == "clip":
            return f"clip 2x4x{self.m}x{self.d} {self.dtype}"
        return f"{self.op} {self.m}<-{self.n} D{self.d} {self.dtype}" + (" tf32" if self.tf32 else "")


def cases(quick: bool = False):
    """The representative set: every M x N of SIZES (D 64 for the solve, each D for the cost and
    fold), each mode and dtype, fp32 with TF32 on and off, and the paper's shapes."""
    out = []
    for dtype in DTYPES:
        for tf32 in ((False, True) if dtype == "float32" else (False,)):
            sizes = SIZES[:4] if quick else SIZES
            for m in sizes:
                for n in sizes:
                    out.append(Case("intra", m, n, 64, dtype, tf32))
            for op in ("tau", "keep", "sinkhorn", "cosine"):
                for m, n in ((17, 70), (126, 603), (2048, 2048)):
                    out.append(Case(op, m, n, 64, dtype, tf32))
            # SPEC §8 (spatial kernel, transposed solve with the scaling stop: resident, sweep,
            # and stream for more than 4096 anchors).
            for op, m, n in (("authors", 17, 70), ("authors", 126, 603), ("authors", 8192, 17),
                             ("authors-inter", 126, 126), ("authors-inter", 64, 48)):
                out.append(Case(op, m, n, 64, dtype, tf32))
            for m in (17, 126):  # rows wider than the sweep holds: the streaming passes
                out.append(Case("intra", m, 8192, 64, dtype, tf32))
                out.append(Case("keep", m, 8192, 64, dtype, tf32))
            for d in FEATURES:
                out.append(Case("intra", 126, 70, d, dtype, tf32))
                out.append(Case("clip", 126, 126, d, dtype, tf32))
            paper = [("intra", 126, 70, 1152), ("keep", 126, 126, 1152), ("intra", 108, 61, 3584),
                     ("intra", 126, 603, 3584), ("clip", 126, 126, 1152), ("clip", 126, 126, 3584),
                     ("authors", 126, 603, 3584), ("authors-inter", 126, 126, 3584)]
            out += [Case(op, m, n, d, dtype, tf32, paper=True) for op, m, n, d in paper]
    return out


# ---- stage 1: run the launchers, record their launches ------------------------------------------

def _arg_spec(value):
    """What a compile needs of one argument: a tensor's dtype (data is never read), or the value."""
    import torch

    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype).replace("torch.", ""))
    return ("value", value)


def record(case: Case):
    """[(kernel module, kernel name, grid, arg specs, kwargs)] that the launchers issue for case."""
    import torch

    from . import common
    from . import sinkhorn_kernels as K
    from .cost_kernels import cosine_cost

    launches = []

    def hook(kernel, grid, args, kwargs):
        launches.append((kernel.fn.__module__, kernel.fn.__name__, tuple(grid),
                         tuple(_arg_spec(a) for a in args), dict(kwargs)))

    dtype = getattr(torch, case.dtype)
    previous = common.compile_only, torch.backends.cuda.matmul.allow_tf32
    common.compile_only = hook
    torch.backends.cuda.matmul.allow_tf32 = case.tf32
    try:
        x = torch.zeros(1, case.m, case.d, dtype=dtype)
        y = torch.zeros(1, case.n, case.d, dtype=dtype)
        if case.op == "cosine":
            cosine_cost(x, y)
        elif case.op == "sinkhorn":
            K.sinkhorn(torch.zeros(1, case.m, case.n, dtype=dtype), None, None, 0.1, 1, 0.0)
        elif case.op == "clip":
            frames = torch.zeros(2, 4, case.m, case.d, dtype=dtype)
            K.clip_aggregate(frames, torch.tensor([4, 3]), torch.ones(2, 4, case.m), None, 0.1,
                             1.0, 1, 0.0, None, torch.zeros(2, 4, dtype=torch.int64))
        elif case.op == "authors":  # §8.4-8.5: spatial term, scaling stop, nearest-anchor blend
            K.sinkhorn_aggregate(x, y, None, None, 0.1, 1.0, 1, 0.01, None, None,
                                 torch.zeros(1, case.m, 2), torch.zeros(1, case.n, 2), 0.5,
                                 "scaling", 0.1)
        elif case.op == "authors-inter":  # §8.7: shifted cost, scaling stop, quantile rule
            K.sinkhorn_aggregate(x, y, torch.ones(1, case.m), None, 0.17, 1.0, 1, 0.01, None, None,
                                 None, None, 0.0, "scaling", 0.0, 0.3, True)
        else:
            K.sinkhorn_aggregate(x, y, None, None, 0.1, 1.0, 1, 0.0,
                                 0.5 if case.op == "tau" else None,
                                 min(3, case.n) if case.op == "keep" else None)
    finally:
        common.compile_only, torch.backends.cuda.matmul.allow_tf32 = previous
    return launches


def _config_key(launch):
    """Launches that compile to the same binary: same kernel, constexprs, warps and arg types
    (shape integers are not specialised: do_not_specialize; floats and other ints are)."""
    module, name, _, specs, kwargs = launch
    types = tuple(s if s[0] == "tensor" else ("value", type(s[1]).__name__) for s in specs)
    return module, name, types, tuple(sorted(kwargs.items()))


def config_text(kwargs) -> str:
    return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in sorted(kwargs.items()))


# ---- stage 2: compile each configuration for each architecture ----------------------------------

def _stand_in_driver(arch: int):
    """A driver that answers what compiling needs (device, stream, target) and launches nothing."""
    import torch
    from triton.backends.compiler import GPUTarget

    class StandIn:
        def is_active(self):
            return True

        def get_current_device(self):
            return arch  # one binder cache per architecture

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    return StandIn()


def _cuobjdump() -> str:
    import triton.backends.nvidia as nv

    path = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def resource_usage(cubin: bytes) -> dict:
    """REG / STACK / LOCAL / SHARED of the one function in a cubin (cuobjdump)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", fh.name], check=True,
                              capture_output=True, text=True).stdout
    for line in text.splitlines():
        if "REG:" in line:
            fields = dict(item.split(":", 1) for item in line.split() if ":" in item)
            return {k: int(fields.get(k, "0")) for k in ("REG", "STACK", "LOCAL", "SHARED")}
    raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")


_LOC_FILE = re.compile(r'^#(loc\d*) = loc\("([^"]+)":(\d+):\d+\)')
_LOC_NAMED = re.compile(r'^#(loc\d*) = loc\("[^"]*"\(#(loc\d*)\)\)')
_LOC_CALL = re.compile(r'^#(loc\d*) = loc\(callsite\(#(loc\d*) at #(loc\d*)\)\)')
_DEF = re.compile(r'^\s*(%[\w.]+)(?::\d+)? = ([\w.]+)\s*(.*?)(?:\s+loc\(#(loc\d*)\))?$')
_FORWARD = ("tt.splat", "tt.broadcast", "tt.expand_dims", "arith.extsi", "arith.extui")


def index_products(ttir: str):
    """The int32 multiplies of two non-constant values in a kernel's TTIR, each as 'file:line
    op' (a shape times a constexpr is bounded by the grid; index x shape can pass 2^31)."""
    locs, alias = {}, {}
    for line in ttir.splitlines():
        if m := _LOC_FILE.match(line):
            locs[m.group(1)] = f"{os.path.basename(m.group(2))}:{m.group(3)}"
        elif m := _LOC_NAMED.match(line):
            alias[m.group(1)] = m.group(2)
        elif m := _LOC_CALL.match(line):
            alias[m.group(1)] = m.group(2)  # the inlined callee's own line

    def where(loc):
        for _ in range(32):
            if loc in locs or loc not in alias:
                break
            loc = alias[loc]
        return locs.get(loc, "?")

    constants, found = set(), []
    for line in ttir.splitlines():
        m = _DEF.match(line)
        if not m:
            continue
        name, op, rest, loc = m.groups()
        operands = re.findall(r"%[\w.]+", rest.split(" : ")[0])
        if op == "arith.constant" or (op in _FORWARD and operands and operands[0] in constants):
            constants.add(name)
        elif op == "arith.muli" and re.search(r"(?::\s*|x)i32>?\s*$", rest):
            if len(operands) == 2 and not (set(operands) & constants):
                found.append(f"{where(loc)} {name} = {op} {rest}"[:160])
    return found


def _load_bits(suffixes: str) -> int:
    parts = suffixes.split(".")
    count = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
    width = next((int(p[1:]) for p in parts if re.fullmatch(r"[bfsu]\d+", p)), 0)
    return count * width


def widest_load(ptx: str):
    """(bits, instruction) of the widest global load in a PTX text (0, '-' when none)."""
    best = (0, "-")
    for m in re.finditer(r"\bld\.global((?:\.[\w:]+)+)", ptx):
        suffixes = ".".join(p for p in m.group(1).split(".") if "::" not in p)
        best = max(best, (_load_bits(suffixes), "ld.global" + suffixes))
    copy = r"\bcp\.async\.(?:ca|cg)\.shared\.global(?:\.[\w:]+)*\s+\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)"
    for m in re.finditer(copy, ptx):
        size = int(m.group(1), 0)
        best = max(best, (8 * size, f"cp.async {size}B"))
    return best


def compile_config(job):
    """Compile one configuration for one architecture -> result dict (never raises)."""
    arch, (module, name, types, kwargs_items), grid = job
    os.environ["TRITON_INTERPRET"] = "0"
    import importlib

    import torch
    from triton.runtime.driver import driver

    driver.set_active(_stand_in_driver(arch))
    kernel = getattr(importlib.import_module(module), name)
    args = []
    for kind, value in types:
        if kind == "tensor":  # 16-byte aligned, as torch allocates; its data is never read
            args.append(torch.zeros(16, dtype=getattr(torch, value)))
        else:
            args.append({"int": 3, "float": 0.5, "bool": True}[value])
    try:
        compiled = kernel.warmup(*args, grid=grid, **dict(kwargs_items))
        usage = resource_usage(compiled.asm["cubin"])
        shared = int(compiled.metadata.shared) + usage["SHARED"]
        bits, load = widest_load(compiled.asm["ptx"])
        return dict(registers=usage["REG"], spill_bytes=usage["STACK"] + usage["LOCAL"],
                    shared_bytes=shared, load_bits=bits, widest_load=load,
                    i32_products=index_products(compiled.asm["ttir"]), error=None)
    except Exception as exc:  # the gate reports every failure, it does not stop at the first
        first = str(exc).strip().splitlines()
        return dict(registers=None, spill_bytes=None, shared_bytes=None, load_bits=None,
                    widest_load=None, i32_products=None,
                    error=f"{type(exc).__name__}: {first[-1] if first else ''}"[:300])


def _init_worker(cache_dir: str):
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITON_CACHE_DIR"] = cache_dir
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def run(archs, jobs: int, cache_dir: str, quick: bool = False):
    """-> (rows for the JSON file, per-configuration summary, failures)."""
    all_cases = cases(quick)
    uses = {}  # config key -> (grid, [cases])
    launched = []
    for case in all_cases:
        for launch in record(case):
            key = _config_key(launch)
            uses.setdefault(key, (launch[2], []))[1].append(case)
            launched.append((case, key))
    work = [(arch, key, grid) for key, (grid, _) in uses.items() for arch in archs]
    with ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker,
                             initargs=(cache_dir,)) as pool:
        results = dict(zip([(arch, key) for arch, key, _ in work], pool.map(compile_config, work)))
    rows, failures, seen = [], [], set()
    for case, key in launched:
        for arch in archs:
            if (case, key, arch) in seen:
                continue
            seen.add((case, key, arch))
            res = results[(arch, key)]
            ok = (res["error"] is None and not res["i32_products"]
                  and res["shared_bytes"] <= SHARED_LIMIT.get(arch, 99 * 1024))
            if ok and case.paper and res["spill_bytes"] > 0:
                ok = False
            if ok and case.paper and key[1] in VECTOR_KERNELS and res["load_bits"] < VECTOR_BITS:
                ok = False
            rows.append(dict(kernel=key[1], arch=f"sm_{arch}", config=config_text(dict(key[3])),
                             shape=case.shape, paper=case.paper, registers=res["registers"],
                             spill_bytes=res["spill_bytes"], shared_bytes=res["shared_bytes"],
                             load_bits=res["load_bits"], widest_load=res["widest_load"],
                             i32_products=res["i32_products"], ok=ok, error=res["error"]))
            if not ok:
                failures.append(rows[-1])
    return rows, uses, results, failures


def table(archs, uses, results) -> str:
    """One line per compiled configuration: its resources and widest global load per
    architecture, and who launches it."""
    head = f"{'kernel':<20} {'config':<96}" + "".join(
        f" {'sm_%d regs/spill/smem load' % a:>41}" for a in archs)
    lines = [head + "  shapes", "-" * (len(head) + 30)]
    for key, (_, used) in sorted(uses.items(), key=lambda kv: (kv[0][1], config_text(dict(kv[0][3])))):
        cells = []
        for arch in archs:
            r = results[(arch, key)]
            cells.append(f" {'FAILED':>41}" if r["error"] else
                         f" {r['registers']:>8} {r['spill_bytes']:>6} {r['shared_bytes'] // 1024:>6}KB"
                         f" {r['widest_load']:>18}" + ("!" if r["i32_products"] else ""))
        dtypes = sorted({t[1] for t in key[2] if t[0] == "tensor"} - {"int8", "int32", "int64"})
        paper = sorted({c.shape.rsplit(" ", 1)[0] if not c.tf32 else c.shape for c in used if c.paper})
        who = f"{len(used)} cases" + (f"; paper: {', '.join(paper)}" if paper else "")
        config = config_text(dict(key[3])) + f" [{'/'.join(dtypes)}]"
        lines.append(f"{key[1]:<20} {config[:96]:<96}" + "".join(cells) + "  " + who)
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aot_kernels.gpu.compile_check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90],
                        help="compute capabilities to compile for (default: 80 90)")
    parser.add_argument("--json", help="write one row per (shape, kernel, arch) here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel compiles (default: all cores)")
    parser.add_argument("--cache", default=os.path.join("build", "triton-cache"),
                        help="Triton's cache directory (default: build/triton-cache)")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (M, N <= 126)")
    args = parser.parse_args(argv)
    os.environ["TRITON_INTERPRET"] = "0"
    os.makedirs(args.cache, exist_ok=True)
    cache = os.path.abspath(args.cache)
    _init_worker(cache)
    import triton

    rows, uses, results, failures = run(args.arch, args.jobs, cache, args.quick)
    print(f"triton {triton.__version__}: {len(uses)} kernel configurations x {len(args.arch)} "
          f"architectures, launched by {len({r['shape'] for r in rows})} shapes")
    print(table(args.arch, uses, results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    for row in failures[:20]:
        why = row["error"] or (
            f"int32 index products: {'; '.join(row['i32_products'][:3])}" if row["i32_products"]
            else f"spill {row['spill_bytes']} B on a paper shape" if row["spill_bytes"]
            else f"shared {row['shared_bytes']} B over the limit"
            if row["shared_bytes"] > SHARED_LIMIT.get(int(row["arch"][3:]), 99 * 1024)
            else f"widest load {row['widest_load']} under {VECTOR_BITS} bits on a paper shape")
        print(f"FAIL {row['kernel']} {row['arch']} [{row['config']}] {row['shape']}: {why}",
              file=sys.stderr)
    if failures:
        print(f"{len(failures)} failing rows", file=sys.stderr)
        return 1
    print("compile gate passed: every configuration compiled, within shared memory, no int32 index "
          "product, no spill and 128-bit loads on the paper shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
