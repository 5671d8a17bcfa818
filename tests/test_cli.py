import subprocess
import sys

import numpy as np
import pytest
import torch


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "aot_kernels", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_demo_prints_the_table_and_writes_the_png(tmp_path):
    png = tmp_path / "demo.png"
    run = cli("demo", "--repeat", "1", "--out", str(png))
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for needle in ("32 frames x 196 tokens", "anchor selection", "intra-frame OT",
                   "inter-frame OT", "total", "627", "LLaVA-OneVision-7B prefill",
                   "readout", "random band", "aot-authors", "visionzip", "tome", "dycoke",
                   "tokens per frame", str(png)):
        assert needle in out, needle
    assert "cpp ms" in out and "torch ms" in out and "agree" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_arguments():
    bad = cli("demo", "--repeat", "0", timeout=120)
    assert bad.returncode == 2 and "--repeat" in bad.stderr
    bad = cli("demo", "--retention", "2", timeout=120)
    assert bad.returncode == 2 and "--retention" in bad.stderr


@pytest.fixture
def video_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 16, 8, generator=g)
    scores = torch.rand(6, 16, generator=g)
    pt = tmp_path / "video.pt"
    torch.save({"features": feats, "scores": scores}, pt)
    npz = tmp_path / "video.npz"
    np.savez(npz, features=feats.numpy())
    return feats, scores, pt, npz


def test_reduce_writes_the_reduction(video_files, tmp_path):
    feats, scores, pt, npz = video_files
    out = tmp_path / "reduced.pt"
    run = cli("reduce", "--features", str(pt), "--retention", "0.25", "--clip-len", "3",
              "--out", str(out))
    assert run.returncode == 0, run.stderr
    saved = torch.load(out, weights_only=False)
    from aot_kernels import AOTReducer

    want = AOTReducer(0.25, clip_len=3)(feats, scores)
    assert torch.equal(saved["positions"], want.positions) and len(saved["tokens"]) == 24
    torch.testing.assert_close(saved["tokens"], want.tokens)
    # .npz without scores: the self-attention rule, said out loud; a baseline by name.
    run = cli("reduce", "--features", str(npz), "--retention", "0.25", "--reducer", "tome",
              "--out", str(out))
    assert run.returncode == 0 and "self-attention" in run.stdout
    assert len(torch.load(out, weights_only=False)["tokens"]) == 24


def test_reduce_errors_exit_2_with_the_reason(video_files, tmp_path):
    _, _, pt, _ = video_files
    out = str(tmp_path / "x.pt")
    for args, why in ((["--features", str(pt), "--retention", "0"], "retention"),
                      (["--features", str(pt), "--grid", "3", "5"], "grid"),
                      (["--features", str(tmp_path / "missing.pt")], "No such file"),
                      (["--features", str(pt), "--reducer", "fastv"], "unknown reducer")):
        run = cli("reduce", *args, "--out", out, timeout=120)
        assert run.returncode == 2 and why in run.stderr, (args, run.stderr)


def test_compare_prints_every_reducer_with_a_progress_bar(video_files, tmp_path):
    _, _, pt, npz = video_files
    png = tmp_path / "cmp.png"
    run = cli("compare", "--features", str(pt), str(npz), "--retention", "0.25", "--repeat", "1",
              "--plot", str(png))
    assert run.returncode == 0, run.stderr
    for name in ("aot", "aot-authors", "visionzip", "tome", "dycoke", "topk", "pool", "random",
                 "topk+ot"):
        assert f"\n  {name} " in run.stdout, name
    assert "random band" in run.stdout
    # (14 variants + 5 random seeds) x 2 videos
    assert "2 video(s)" in run.stdout and "38/38" in run.stderr
    assert png.exists()


def test_compare_on_a_builtin_video_writes_json(tmp_path):
    import json

    path = tmp_path / "cmp.json"
    run = cli("compare", "--videos", "needle", "--retention", "0.1", "0.25", "--reducers", "aot",
              "random", "--no-ot-merge", "--seeds", "2", "--plot", "", "--json", str(path),
              "--no-progress")
    assert run.returncode == 0, run.stderr
    assert "retention 0.1" in run.stdout and "retention 0.25" in run.stdout
    got = json.loads(path.read_text())
    assert {r["reducer"] for r in got["rows"]} == {"aot", "random"} and len(got["rows"]) == 4
    for r in got["rows"]:
        assert r["video"] == "needle" and {"readout", "reconstruction", "temporal", "needle"} <= set(r)
        assert r["tokens"] == round(r["retention"] * 32 * 196)
    assert set(got["band"]) == {"0.1", "0.25"}
    bad = cli("compare", "--videos", "nope", timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr
    bad = cli("compare", "--videos", "needle", "--seeds", "1", timeout=120)
    assert bad.returncode == 2 and "seeds" in bad.stderr


def test_bench_rows_compare_every_peer_on_the_same_inputs():
    from aot_kernels.eval import bench
    from aot_kernels.eval.workloads import Workload

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
    from aot_kernels.eval import bench
    from aot_kernels.eval.workloads import Workload

    case = bench.Case(Workload("mem", 8, 128, 128, 64, max_iter=100))
    extra = bench.extra_memory_bmn("aot-cpp", case)
    if extra is None:
        import pytest

        pytest.skip("/proc peak-RSS reset unavailable")
    assert extra <= 4.0


def test_whole_video_rows_compare_the_backends():
    from aot_kernels.eval import bench

    rows = bench.video_rows(1, bench.VIDEO_CASES[:1])
    assert [r["impl"] for r in rows] == ["floor", "cpp", "torch"]
    floor, cpp, torch_row = rows
    assert torch_row["max_diff"] < 1e-4 and all(r["ms"] > 0 for r in rows)
    assert cpp["intra_ms"] > 0 and cpp["x_floor"] == cpp["ms"] / floor["ms"]
    assert cpp["speedup"] == torch_row["ms"] / cpp["ms"]
    assert "video 32x196" in bench.format_video(rows)


FORMS = {  # name -> (write the features file, write a separate scores file or None)
    "pt-tensor": lambda d, f, s: torch.save(f, d / "v.pt") or d / "v.pt",
    "pt-dict": lambda d, f, s: torch.save({"features": f}, d / "v.pt") or d / "v.pt",
    "pt-dict+scores": lambda d, f, s: torch.save({"features": f, "scores": s}, d / "v.pt") or d / "v.pt",
    "npz": lambda d, f, s: np.savez(d / "v.npz", features=f.numpy()) or d / "v.npz",
    "npz+scores": lambda d, f, s: np.savez(d / "v.npz", features=f.numpy(), scores=s.numpy())
    or d / "v.npz",
    "npy": lambda d, f, s: np.save(d / "v.npy", f.numpy()) or d / "v.npy",
}
SCORE_FILES = {
    "pt-tensor": lambda d, s: torch.save(s, d / "s.pt") or d / "s.pt",
    "pt-dict": lambda d, s: torch.save({"scores": s}, d / "s.pt") or d / "s.pt",
    "npz": lambda d, s: np.savez(d / "s.npz", scores=s.numpy()) or d / "s.npz",
    "npy": lambda d, s: np.save(d / "s.npy", s.numpy()) or d / "s.npy",
}


@pytest.mark.parametrize("form,scores_file", [(f, None) for f in FORMS]
                         + [("pt-tensor", s) for s in SCORE_FILES] + [("npz", "pt-tensor")])
def test_reduce_reads_every_input_form(tmp_path, form, scores_file):
    """Each features form, with scores inside, in a separate file, or none (a plain tensor file is
    features only: it is never read again as its own scores)."""
    from aot_kernels import AOTReducer
    from aot_kernels.reducers.scores import self_attention_scores

    g = torch.Generator().manual_seed(0)
    feats, scores = torch.randn(8, 16, 12, generator=g), torch.rand(8, 16, generator=g)
    path = FORMS[form](tmp_path, feats, scores)
    extra = ["--scores", str(SCORE_FILES[scores_file](tmp_path, scores))] if scores_file else []
    out = tmp_path / "r.pt"
    run = cli("reduce", "--features", str(path), *extra, "--retention", "0.25", "--out", str(out))
    assert run.returncode == 0, run.stderr
    given = scores_file is not None or form.endswith("+scores")
    assert ("self-attention" in run.stdout) != given
    used = scores if given else self_attention_scores(feats)
    want = AOTReducer(0.25)(feats, used)
    saved = torch.load(out, weights_only=False)
    assert torch.equal(saved["positions"], want.positions)
    torch.testing.assert_close(saved["tokens"], want.tokens)


def test_reduce_names_a_missing_array(tmp_path):
    np.savez(tmp_path / "v.npz", feats=np.zeros((2, 4, 3), np.float32))
    torch.save({"features": torch.randn(2, 4, 3)}, tmp_path / "s.pt")
    for args, why in ((["--features", str(tmp_path / "v.npz")], "no 'features'"),
                      (["--features", str(tmp_path / "s.pt"), "--scores", str(tmp_path / "s.pt")],
                       "no 'scores'")):
        run = cli("reduce", *args, "--out", str(tmp_path / "r.pt"), timeout=120)
        assert run.returncode == 2 and why in run.stderr, run.stderr
