"""Builds aot_kernels._C (the aot op library) with torch's BuildExtension and ninja.

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


extra = ["-O3", "-fopenmp-simd", "-std=c++17"]
if os.environ.get("AOT_DEBUG"):
    extra = ["-O0", "-g", "-std=c++17"]

setup(
    ext_modules=[
        CppExtension(
            "aot_kernels._C",
            library_sources() + ["csrc/python_module.cpp"],
            extra_compile_args={"cxx": extra},
        )
    ],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
