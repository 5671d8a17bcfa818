"""Launch-side helpers shared by the Triton kernels."""
from __future__ import annotations

import contextlib
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


class CudaContextError(RuntimeError):
    """An asynchronous CUDA error (illegal address, device-side assert, a sticky error left by
    earlier work) surfaced in a kernel launch. The context is unusable from then on, so this
    is never served by the torch fallback."""

    def __init__(self, where: str, cause: BaseException):
        super().__init__(
            f"aot_kernels: {where} hit an asynchronous CUDA error ({type(cause).__name__}: "
            f"{cause}). The CUDA context is unusable now (every later CUDA call fails the same "
            "way); restart the process. The error may come from earlier work on the device: "
            "rerun with CUDA_LAUNCH_BLOCKING=1 to find the launch that caused it.")
        self.cause = cause


# How the CUDA driver and runtime name the errors that poison a context (cudaError /
# CUresult descriptions, as torch and Triton print them).
_STICKY = ("illegal memory access", "illegal address", "misaligned address",
           "device-side assert", "unspecified launch failure", "launch timed out",
           "illegal instruction", "hardware stack error", "invalid program counter",
           "uncorrectable ecc", "cuda_error_illegal_address", "cudaerrorillegaladdress",
           "cuda_error_launch_failed", "cudaerrorlaunchfailure")


def sticky_cuda_error(exc: BaseException) -> bool:
    """True for an error that leaves the CUDA context unusable (see CudaContextError)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(key in text for key in _STICKY)


def capturing() -> bool:
    """A CUDA graph is being captured on the current stream (no fallback may run then)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def device_guard(device: torch.device):
    """Run under `device`: Triton launches on the current device and its current stream, so a
    launch for tensors on cuda:1 while cuda:0 is current must switch first (or it fails the
    pointer check, or, with peer access, runs on cuda:0 unordered with cuda:1's stream)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


# Set by compile_check: called instead of launching, with (kernel, grid, args, kwargs).
compile_only = None

# (kernel, configuration, device) -> the KernelError it raised: later launches of the same
# configuration fail at once (no recompile), and the caller's fallback serves them.
_failed = {}
_FAILED_MAX = 256


def _configuration(kernel, args, kwargs):
    """What selects one compiled binary, as far as the failure can depend on it: the kernel, its
    keyword (constexpr and launch) options, the tensor arguments' dtypes, and the device."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = str(tensors[0].device) if tensors else "cpu"
    options = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
    # id: a stand-in for the kernel (a test's broken double) is not the kernel itself
    return (kernel.fn.__name__, id(kernel), options, tuple(str(t.dtype) for t in tensors),
            device)


def launch(kernel, grid, *args, **kwargs):
    """kernel[grid](*args, **kwargs) on the current device and stream (callers set the device
    with `device_guard`). A failure is raised as KernelError naming the kernel and remembered
    for its configuration; an asynchronous CUDA error is raised as CudaContextError. Under the
    compile gate (compile_only set) the kernel is compiled, not run."""
    if compile_only is not None:
        return compile_only(kernel, grid, args, kwargs)
    key = _configuration(kernel, args, kwargs)
    failed = _failed.get(key)
    if failed is not None:
        raise failed
    try:
        return kernel[grid](*args, **kwargs)
    except Exception as exc:  # compile errors, OutOfResources, driver errors: all name the kernel
        if sticky_cuda_error(exc):
            raise CudaContextError(f"Triton kernel {kernel.fn.__name__}", exc) from exc
        error = KernelError(kernel.fn.__name__, exc)
        if len(_failed) >= _FAILED_MAX:
            _failed.clear()
        _failed[key] = error
        raise error from exc


def strict() -> bool:
    """AOT_KERNELS_STRICT=1: a failing kernel raises instead of falling back to torch."""
    return os.environ.get("AOT_KERNELS_STRICT", "0") == "1"
