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
