import os
import sys
from pathlib import Path

# The Triton interpreter must be chosen before triton is imported (CI has no GPU).
os.environ.setdefault("TRITON_INTERPRET", "1")
# A failing Triton kernel raises in the tests instead of falling back to torch (the fallback
# test switches this off).
os.environ.setdefault("AOT_KERNELS_STRICT", "1")
# reference/ and tests/samples.py import as top-level modules.
ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

torch.manual_seed(0)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_kernel_failure_memory():
    """A kernel failure is remembered for the process (aot_kernels/gpu); a test that simulates
    one must not leave it to the tests after it."""
    yield
    from aot_kernels import gpu
    from aot_kernels.gpu import common

    gpu._failed_calls.clear()
    common._failed.clear()
