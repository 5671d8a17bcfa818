"""`import aot_kernels` stays light and its submodules are reachable as attributes (PEP 562)."""
import subprocess
import sys

import pytest


def run(code):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_import_pulls_in_no_optional_dependency():
    # aot_kernels.reducers is imported (AOTReducer lives there); the evaluation modules, the
    # integrations and the demo are not.
    heavy = ["transformers", "matplotlib", "skimage", "ot", "aot_kernels.eval.metrics",
             "aot_kernels.integrations", "aot_kernels.eval.compare", "aot_kernels.demo"]
    loaded = run("import sys, aot_kernels; "
                 f"print(*[m for m in {heavy!r} if m in sys.modules])")
    assert loaded == []


def test_submodules_are_attributes_after_a_plain_import():
    got = run("import sys, aot_kernels as ak\n"
              "r = ak.reducers.build('tome', retention=0.5)\n"
              "print(type(r).__name__, callable(ak.metrics.proxies),\n"
              "      callable(ak.flops.cost), callable(ak.integrations.transformers.patch),\n"
              "      'transformers' in sys.modules, 'reducers' in dir(ak))")
    # integrations.transformers is reachable without importing the transformers library
    assert got == ["ToMe", "True", "True", "True", "False", "True"]


def test_unknown_attributes_still_raise():
    import aot_kernels

    with pytest.raises(AttributeError, match="no_such_module"):
        aot_kernels.no_such_module
    with pytest.raises(AttributeError, match="nope"):
        aot_kernels.integrations.nope
    assert aot_kernels.reducers is sys.modules["aot_kernels.reducers"]
