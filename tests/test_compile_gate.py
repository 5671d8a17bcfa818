"""The compile gate (python -m aot_kernels.gpu.compile_check): every Triton kernel through
Triton's real compiler for sm_80 and sm_90, with no GPU. It runs in its own process (the tests
run Triton in the interpreter)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aot_kernels import gpu

ROOT = Path(__file__).resolve().parent.parent
PAPER = ("intra 126<-70 D1152", "keep 126<-126 D1152", "intra 108<-61 D3584",
         "intra 126<-603 D3584", "clip 2x4x126x1152")


@pytest.mark.skipif(not gpu.HAS_TRITON, reason=f"triton unavailable: {gpu.TRITON_ERROR}")
def test_every_kernel_compiles_for_sm80_and_sm90_without_spill_on_paper_shapes(tmp_path):
    out = tmp_path / "gate.json"
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "aot_kernels.gpu.compile_check", "--arch", "80",
                           "90", "--json", str(out), "--cache", str(ROOT / "build" / "triton-cache")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert {"kernel", "arch", "config", "shape", "registers", "spill_bytes", "shared_bytes",
            "widest_load", "load_bits", "i32_products", "ok"} <= set(rows[0])
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    kernels = {r["kernel"] for r in rows}
    assert {"_cosine_cost_kernel", "_solve_kernel", "_column_stats", "_fold", "_row_pass",
            "_bookkeeping", "_col_pass"} <= kernels  # every route is exercised
    assert all(r["ok"] and r["registers"] <= 255 for r in rows)
    # 64-bit offsets: no int32 product of an index and a shape anywhere (it wraps past 2^31).
    assert all(r["i32_products"] == [] for r in rows)
    for shape in PAPER:
        paper = [r for r in rows if r["paper"] and r["shape"].startswith(shape)]
        assert paper and all(r["spill_bytes"] == 0 for r in paper), shape
        # aligned strides there: the cost, solve and fold kernels load 128 bits at a time
        vector = [r for r in paper if r["kernel"] in ("_cosine_cost_kernel", "_solve_kernel", "_fold")]
        assert {r["kernel"] for r in vector} == {"_cosine_cost_kernel", "_solve_kernel", "_fold"}
        assert all(r["load_bits"] >= 128 for r in vector), shape
    assert "compile gate passed" in proc.stdout


@pytest.mark.skipif(not gpu.HAS_TRITON, reason=f"triton unavailable: {gpu.TRITON_ERROR}")
def test_the_gates_readings_of_ir_and_ptx():
    """index_products flags index x shape in int32, not a product with a constant or in int64;
    widest_load reads vector loads and asynchronous copies."""
    from aot_kernels.gpu.compile_check import index_products, widest_load

    ttir = """  %c32_i32 = arith.constant 32 : i32 loc(#loc1)
  %0 = tt.splat %c32_i32 : i32 -> tensor<16xi32> loc(#loc1)
  %rm = arith.muli %pid, %0 : tensor<16xi32> loc(#loc1)
  %off = arith.muli %rm, %N : tensor<16x1xi32> loc(#loc2)
  %ok = arith.muli %rm64, %N64 : tensor<16x1xi64> loc(#loc2)
#loc1 = loc("/x/k.py":10:4)
#loc3 = loc("/x/k.py":12:8)
#loc2 = loc("c"(#loc3))
"""
    found = index_products(ttir)
    assert len(found) == 1 and found[0].startswith("k.py:12 %off = arith.muli")
    ptx = """@%p1 ld.global.L1::evict_last.b16 { %rs1 }, [ %rd1 + 0 ];
    ld.global.v2.b32 { %r1, %r2 }, [ %rd2 + 0 ];"""
    assert widest_load(ptx) == (64, "ld.global.v2.b32")
    assert widest_load(ptx + "\n cp.async.cg.shared.global [ %r3 + 0 ], [ %rd3 + 0 ], 0x10, %r4;")[0] == 128
    assert widest_load("mov.b32 %r1, 0;") == (0, "-")
