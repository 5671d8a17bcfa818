"""`python -m aot_kernels eval`: the lmms-eval command it builds (runs without lmms-eval; the
end-to-end run is tests/test_lmms_eval.py)."""
import shlex
import sys

import pytest

from aot_kernels.__main__ import main


def test_dry_run_prints_the_lmms_eval_command(capsys):
    code = main(["eval", "--model", "aot_llava_onevision", "--tasks", "videomme,mvbench",
                 "--retention", "0.15", "--model_args", "pretrained=/ckpt,dtype=bfloat16",
                 "--batch_size", "4", "--log_samples", "--dry-run"])
    assert code == 0
    assert shlex.split(capsys.readouterr().out.strip()) == [
        sys.executable, "-m", "lmms_eval", "--model", "aot_llava_onevision",
        "--tasks", "videomme,mvbench", "--model_args",
        "pretrained=/ckpt,dtype=bfloat16,retention=0.15", "--batch_size", "4", "--log_samples"]


def test_authors_options_join_model_args(capsys):
    assert main(["eval", "--model", "aot_llava_vid", "--tasks", "mvbench", "--reducer",
                 "aot-authors", "--benchmark", "mvbench", "--dry-run"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    assert cmd[cmd.index("--model_args") + 1] == "reducer=aot-authors,benchmark=mvbench"


def test_an_option_given_twice_is_named(capsys):
    assert main(["eval", "--model", "aot_qwen2_5_vl", "--tasks", "mvbench", "--retention", "0.1",
                 "--model_args", "retention=0.2", "--dry-run"]) == 2
    assert "retention given twice" in capsys.readouterr().err


def test_unknown_model_and_stray_arguments_are_refused():
    with pytest.raises(SystemExit):
        main(["eval", "--model", "llava_onevision", "--tasks", "mvbench"])
    with pytest.raises(SystemExit):  # pass-through is for eval only
        main(["flops", "--retention", "0.1", "--batch_size", "4"])


def test_missing_lmms_eval_is_named(capsys):
    import importlib.util

    if importlib.util.find_spec("lmms_eval") is not None:
        pytest.skip("lmms-eval is installed here")
    assert main(["eval", "--model", "aot_llava_onevision", "--tasks", "mvbench"]) == 2
    assert "pip install -e '.[eval]'" in capsys.readouterr().err
