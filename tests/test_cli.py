import subprocess
import sys


def test_demo_runs_and_reports_backends():
    out = subprocess.run([sys.executable, "-m", "aot_kernels", "demo", "--repeat", "1"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "M=126" in out and "N=70" in out and "D=1152" in out
    assert "cpp" in out and "torch" in out and "agree" in out


def test_cli_rejects_bad_arguments():
    bad = subprocess.run([sys.executable, "-m", "aot_kernels", "demo", "--repeat", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--repeat" in bad.stderr


def test_bench_rows_compare_every_peer_on_the_same_inputs():
    from aot_kernels import bench
    from aot_kernels.workloads import Workload

    case = bench.Case(Workload("tiny", 3, 9, 7, 16, max_iter=300))  # converged: schedules agree
    impls = ["aot-cpp", "torch"] + (["pot-batch", "pot-loop"] if bench._pot_available() else [])
    rows = bench.run_case(case, 1, impls)
    assert [r["impl"] for r in rows] == ["floor"] + impls
    for r in rows[1:]:
        assert r["max_diff"] < 1e-5 and r["ms"] > 0 and r["x_floor"] > 0
    assert "aot-cpp" in bench.format_table(rows)


def test_forward_memory_is_a_few_plans_not_iterations():
    """No [max_iter, B, M, N] buffer: extra forward memory stays ~2 plans at 100 iterations,
    where unrolled autograd-free torch code already needs several times more."""
    from aot_kernels import bench
    from aot_kernels.workloads import Workload

    case = bench.Case(Workload("mem", 8, 128, 128, 64, max_iter=100))
    extra = bench.extra_memory_bmn("aot-cpp", case)
    if extra is None:
        import pytest

        pytest.skip("/proc peak-RSS reset unavailable")
    assert extra <= 4.0
