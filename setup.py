"""Builds aot_kernels.ops._C (the aot op library) with torch's BuildExtension and ninja.

The C++ sources are listed once, in csrc/sources.txt, which CMakeLists.txt reads too.
Needs torch at build time: `pip install --no-build-isolation -e .` after torch is installed.
"""
import os
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = Path(__file__).parent


def library_sources():
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


# -fopenmp: at::parallel_for is a header template that runs serially unless the extension itself
# is built with OpenMP (it then shares torch's libgomp.so.1). -ffp-contract=fast lets the
# inner loops use FMA (-std=c++17 turns contraction off). No FP traps or errno: lets the
# vectoriser if-convert the branch-free exp of csrc/cpu/hot_loops.h (values are unchanged).
extra = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-trapping-math", "-fno-math-errno",
         "-std=c++17"]
if os.environ.get("AOT_DEBUG"):
    extra = ["-O0", "-g", "-fopenmp", "-std=c++17"]

setup(
    ext_modules=[
        CppExtension(
            "aot_kernels.ops._C",
            library_sources() + ["csrc/python_module.cpp"],
            extra_compile_args={"cxx": extra},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
