"""benchmarks/fidelity_sweep.py: the options it sweeps and a tiny run."""
import importlib.util
from pathlib import Path

import pytest

from aot_kernels import AOTReducer

PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "fidelity_sweep.py"
spec = importlib.util.spec_from_file_location("fidelity_sweep", PATH)
sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sweep)


@pytest.mark.parametrize("retention", [0.1, 0.25])
def test_options_are_one_change_each_and_feasible(retention):
    opts = sweep.options(retention)
    assert opts[0] == ("default", "AOTReducer()", {})
    labels = [label for _, label, _ in opts]
    assert len(set(labels)) == len(labels)
    default = AOTReducer(retention).plan(32, 196)
    for option, _, config in opts[1:]:
        assert len(config) == 1  # one option at a time
        if option == "segmentation":
            continue  # its clips come from the video
        plan = AOTReducer(retention, **config).plan(32, 196)  # feasible: no ValueError
        if option == "anchor share":  # a different split of the budget than the default's
            assert (plan.anchors, len(plan.clips)) != (default.anchors, len(default.clips))
            assert plan.anchors <= 196


def test_tiny_run_prints_a_markdown_table(capsys, tmp_path):
    assert sweep.main(["--quick", "--videos", "needle", "--retention", "0.1", "--seeds", "2",
                       "--no-progress", "--json", str(tmp_path / "s.json"),
                       "--combined", "eps=0.02", "lam_inter=0"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| option | setting | readout | reconstruction | temporal | needle")
    assert any("eps=0.02" in r for r in rows) and rows[-1].startswith("| random band")
    assert "best per proxy" in out and (tmp_path / "s.json").exists()
    assert any(r.startswith("| combined | eps=0.02 lam_inter=0 |") for r in rows)


def test_bad_combined_options_exit_2(capsys):
    for bad in (["foo=1"], ["eps=-1"], ["eps"]):
        assert sweep.main(["--videos", "needle", "--retention", "0.1", "--combined", *bad]) == 2
        assert "--combined" in capsys.readouterr().err


def test_combined_only_runs_the_default_and_the_combinations(capsys):
    assert sweep.main(["--videos", "static", "--retention", "0.25", "--seeds", "2", "--no-progress",
                       "--combined-only", "--combined", "lam_inter=0"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| default", "| combined", "| random band"]
