"""Where the Triton backend plugs into the op API.

aot_kernels.gpu sits a layer above the ops (its launchers fall back to the torch composite of
this package), so the op API cannot import it. Instead the gpu package hands itself in with
`set_triton(...)` when it is imported (`import aot_kernels` imports it), and api.py serves
backend="triton" through `triton()`; until then "triton" reads as unavailable, with that reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional


@dataclass(frozen=True)
class TritonBackend:
    """available: triton imported; error: why not (None when available). interpreting(): the
    launchers run on CPU tensors (TRITON_INTERPRET=1). register(): make the launchers the ops'
    CUDA kernels, once (False without triton or the compiled op schemas). launchers: op name ->
    launcher with the op's schema signature."""
    available: bool
    error: Optional[str]
    interpreting: Callable[[], bool]
    register: Callable[[], bool]
    launchers: Mapping[str, Callable] = field(default_factory=dict)


_NOT_LOADED = TritonBackend(False, "aot_kernels.gpu was not imported", lambda: False,
                            lambda: False)
_triton = _NOT_LOADED


def set_triton(backend: TritonBackend) -> None:
    global _triton
    _triton = backend


def triton() -> TritonBackend:
    return _triton
