"""Microbenchmark of the fused op at the paper's intra-frame workload (SPEC §6).

    pytest benchmarks/ --benchmark-only        (or: make bench)

Rows for one workload share inputs, so the pytest-benchmark table reads as side-by-side ratios.
The full CPU suite (POT, torch.compile, the GEMM floor, sweeps) belongs to the CPU performance
issue.
"""
import pytest
import torch

import aot_kernels as ak
from aot_kernels.workloads import PAPER_INTER, PAPER_INTRA, make_inputs

BACKENDS = ["cpp", "torch"] if ak.HAS_EXTENSION else ["torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workload", [PAPER_INTRA, PAPER_INTER], ids=lambda w: w.name)
def test_sinkhorn_aggregate(benchmark, workload, backend):
    anchors, sources = make_inputs(workload)
    benchmark.group = f"{workload.name} B={workload.batch} M={workload.anchors} N={workload.sources} D={workload.dim} threads={torch.get_num_threads()}"
    out = benchmark(ak.sinkhorn_aggregate, anchors, sources, eps=workload.eps,
                    max_iter=workload.max_iter, backend=backend)
    assert out.tokens.shape == anchors.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_sinkhorn_aggregate_backward(benchmark, backend):
    anchors, sources = make_inputs(PAPER_INTRA)
    benchmark.group = "paper-intra backward"

    def step():
        x = anchors.clone().requires_grad_()
        r = ak.sinkhorn_aggregate(x, sources, backend=backend)
        r.tokens.sum().backward()

    benchmark(step)
