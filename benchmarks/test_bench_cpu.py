"""pytest-benchmark form of the CPU suite (aot_kernels/eval/bench.py): same cases, same peers.

    pytest benchmarks/ --benchmark-only        (or: make bench)

Rows of one group share inputs, so the table reads as side-by-side ratios. Forward and backward
are separate groups (Liger-Kernel style); memory is in `python -m aot_kernels bench`.
"""
import pytest
import torch

import aot_kernels as ak
from aot_kernels.eval import bench
from aot_kernels.eval.workloads import make_inputs

if not ak.HAS_EXTENSION:
    pytest.skip(f"compiled extension unavailable: {ak.EXTENSION_ERROR}", allow_module_level=True)

IMPLS = [name for name in bench.IMPLEMENTATIONS
         if name not in bench.POT_IMPLS or bench._pot_available()]


def group(case):
    return f"{case.name} threads={torch.get_num_threads()}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", bench.PAPER_CASES, ids=lambda c: c.name)
def test_forward(benchmark, case, impl):
    if impl == "torch.compile" and case.tol > 0:
        pytest.skip("data-dependent stopping breaks the compiled graph")
    x, y = make_inputs(case.workload)
    benchmark.group = group(case)
    tokens = benchmark(bench.IMPLEMENTATIONS[impl], x, y, case)
    torch.testing.assert_close(tokens, bench.run_cpp(x, y, case), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", bench.PAPER_CASES, ids=lambda c: c.name)
def test_floor(benchmark, case):
    x, y = make_inputs(case.workload)
    benchmark.group = group(case)
    benchmark(bench.floor_fn(x, y))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_backward(benchmark, backend):
    case = bench.PAPER_CASES[0]
    x, y = make_inputs(case.workload)
    benchmark.group = f"backward {case.name}"

    def step():
        xr = x.clone().requires_grad_()
        ak.sinkhorn_aggregate(xr, y, backend=backend).tokens.sum().backward()

    benchmark(step)
