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
            "ok"} <= set(rows[0])
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    kernels = {r["kernel"] for r in rows}
    assert {"_cosine_cost_kernel", "_solve_kernel", "_column_stats", "_fold", "_row_pass",
            "_bookkeeping", "_col_pass"} <= kernels  # every route is exercised
    assert all(r["ok"] and r["registers"] <= 255 for r in rows)
    for shape in PAPER:
        paper = [r for r in rows if r["paper"] and r["shape"].startswith(shape)]
        assert paper and all(r["spill_bytes"] == 0 for r in paper), shape
    assert "compile gate passed" in proc.stdout
