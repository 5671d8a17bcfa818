"""compare.run: the band, the marks, the authors' budget calibration, argument errors."""
import pytest
import torch

from aot_kernels import compare, reducers


def cases():
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(2):
        x = torch.randn(6, 16, 8, generator=g, dtype=torch.float64)
        out.append(compare.Case(f"v{i}", x, torch.rand(6, 16, generator=g, dtype=torch.float64),
                                (4, 4), torch.tensor([5, 40]) if i else None))
    return out


def test_band_is_min_max_of_random_over_seeds_and_random_sits_inside():
    result = compare.run(cases(), [0.25], compare.variants(["random", "tome"], ot_merge=False),
                         seeds=3, progress=False)
    band = result["band"][0.25]
    rnd = next(r for r in result["summary"] if r["reducer"] == "random")  # seed 0 = band seed 0
    for k in ("readout", "reconstruction", "temporal", "needle"):
        assert compare.mark(rnd[k], band[k]) == "~", k
    # needle: only the case that has one
    assert [("needle" in r) for r in result["rows"]] == [False, False, True, True]
    # the band of the mean over cases, recomputed by hand from three seeds
    from aot_kernels import metrics

    means = []
    for s in range(3):
        vals = [metrics.proxies(c.features, reducers.build("random", retention=0.25, seed=s)(
            c.features, grid=c.grid))["reconstruction"] for c in cases()]
        means.append(sum(vals) / 2)
    assert band["reconstruction"] == pytest.approx((min(means), max(means)))


def test_the_summary_keeps_the_retention_given_over_any_number_of_videos():
    """A mean of three 0.1s is not 0.1 in floating point: the summary (and the printed table,
    which looks its rows up by retention) must keep the retention it was given."""
    from dataclasses import replace

    three = cases() + [replace(cases()[0], name="v2")]
    result = compare.run(three, [0.1, 0.25], compare.variants(["random"], ot_merge=False),
                         seeds=2, progress=False, reader=False)
    assert sorted(r["retention"] for r in result["summary"]) == [0.1, 0.25]
    text = compare.report(result)
    rows = [line for line in text.splitlines() if line.strip().startswith("random ")
            and "band" not in line]
    assert len(rows) == 2, text  # one table row per retention


def test_marks():
    assert compare.mark(0.5, (0.4, 0.6)) == "~"
    assert compare.mark(0.7, (0.4, 0.6)) == "+"
    assert compare.mark(0.3, (0.4, 0.6)) == "-"


def test_authors_budget_is_the_closest_count():
    case = cases()[0]
    red, out = compare.authors_for_budget(case, 0.25)
    target = round(0.25 * 6 * 16)
    counts = [len(reducers.build("aot-authors", model="llava-onevision-7b", benchmark="mvbench",
                                 anchors=a)(case.features, case.scores, grid=case.grid))
              for a in range(1, 17)]
    assert abs(len(out) - target) == min(abs(c - target) for c in counts)


def test_bad_arguments_are_named():
    c = cases()
    with pytest.raises(ValueError, match="seeds"):
        compare.run(c, [0.1], compare.variants(["tome"]), seeds=1, progress=False)
    with pytest.raises(ValueError, match="retention"):
        compare.run(c, [0.0], compare.variants(["tome"]), progress=False)
    with pytest.raises(ValueError, match="repeat"):
        compare.run(c, [0.1], compare.variants(["tome"]), repeat=0, progress=False)
    with pytest.raises(ValueError, match="unknown reducer"):
        compare.variants(["fastv"])
    with pytest.raises(ValueError, match="at least one"):
        compare.run([], [0.1], compare.variants(["tome"]), progress=False)


def test_infeasible_settings_are_skipped_only_when_asked():
    chosen = [("aot", "aot", {}), ("clip 1", "aot", {"clip_len": 1})]  # K=5 < 6 clips of 1 frame
    with pytest.raises(ValueError, match="budget impossible"):
        compare.run(cases(), [0.05], chosen, seeds=2, progress=False)
    result = compare.run(cases(), [0.05], chosen, seeds=2, progress=False, skip_infeasible=True)
    bad = [r for r in result["rows"] if r["reducer"] == "clip 1"]
    assert len(bad) == 2 and all("budget impossible" in r["error"] for r in bad)
    summary = {r["reducer"]: r for r in result["summary"]}
    assert summary["clip 1"]["skipped"] == ["v0", "v1"] and "readout" not in summary["clip 1"]
    assert summary["aot"]["skipped"] == [] and "readout" in summary["aot"]
