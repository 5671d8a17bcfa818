"""Launch-side helpers shared by the Triton kernels."""
from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """TRITON_INTERPRET=1: kernels run on CPU tensors in NumPy (CI has no GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(v: int) -> int:
    """tl.arange needs powers of two, tl.dot at least 16."""
    return max(16, 1 << (max(int(v), 1) - 1).bit_length())


def dot_flags(dtype: torch.dtype):
    """(NATIVE_DOT, TF32) for the cost's tl.dot. fp16/bf16 go to tensor cores as they are (their
    products are exact in the fp32 accumulator); fp32 uses IEEE fp32 unless the caller allowed
    TF32 (torch.backends.cuda.matmul.allow_tf32). The interpreter computes bf16 wrongly, so it
    always gets fp32 operands."""
    if interpreting():
        return False, False
    if dtype in (torch.float16, torch.bfloat16):
        return True, False
    return False, bool(torch.backends.cuda.matmul.allow_tf32)


class KernelError(RuntimeError):
    """A Triton kernel failed to compile or launch (unsupported GPU, old driver, out of
    resources). `kernel` names it; the cause is chained."""

    def __init__(self, kernel: str, cause: BaseException):
        super().__init__(f"Triton kernel {kernel} failed: {type(cause).__name__}: {cause}")
        self.kernel = kernel
        self.cause = cause


# Set by compile_check: called instead of launching, with (kernel, grid, args, kwargs).
compile_only = None


def launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs); a failure is raised as KernelError naming the kernel.
    Under the compile gate (compile_only set) the kernel is compiled, not run."""
    if compile_only is not None:
        return compile_only(kernel, grid, args, kwargs)
    try:
        return kernel[grid](*args, **kwargs)
    except Exception as exc:  # compile errors, OutOfResources, driver errors: all name the kernel
        raise KernelError(kernel.fn.__name__, exc) from exc


def strict() -> bool:
    """AOT_KERNELS_STRICT=1: a failing kernel raises instead of falling back to torch."""
    return os.environ.get("AOT_KERNELS_STRICT", "0") == "1"
