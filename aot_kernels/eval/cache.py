"""On-disk cache of encoded videos (SPEC §9.1: `compare` stays interactive).

An entry is one torch file of named tensors under `directory()`: $AOT_KERNELS_CACHE when set,
else $XDG_CACHE_HOME/aot_kernels, else ~/.cache/aot_kernels. Its name is a hash of its key (a
JSON-able dict: the video, the encoder and its weights, frames, size, blocks), and the file holds
the key and a SHA-256 of every tensor's bytes. On reading, an entry that does not load, holds
another key, or whose digest does not match is treated as missing: rebuilt and rewritten, never
trusted. Writes go to a temporary file first and are renamed into place (readers never see half
an entry).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

FORMAT = 1


def directory() -> Path:
    """Where entries live ($AOT_KERNELS_CACHE, else $XDG_CACHE_HOME/aot_kernels, else
    ~/.cache/aot_kernels); not created until something is written."""
    if os.environ.get("AOT_KERNELS_CACHE"):
        return Path(os.environ["AOT_KERNELS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aot_kernels"


def _key_text(key: dict) -> str:
    if not isinstance(key, dict) or not key:
        raise TypeError(f"key must be a non-empty dict, got {type(key).__name__}")
    return json.dumps(key, sort_keys=True, default=str)


def path_of(key: dict) -> Path:
    """The entry file for `key`."""
    return directory() / f"{hashlib.sha256(_key_text(key).encode()).hexdigest()[:32]}.pt"


def digest(data: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (names sorted)."""
    h = hashlib.sha256()
    for name in sorted(data):
        t = data[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def load(key: dict) -> Optional[Dict[str, torch.Tensor]]:
    """The entry's tensors, or None when missing, unreadable, of another key or corrupted."""
    path = path_of(key)
    if not path.is_file():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        data = entry["data"]
        ok = (entry.get("format") == FORMAT and entry.get("key") == _key_text(key)
              and isinstance(data, dict) and all(isinstance(v, torch.Tensor) for v in data.values())
              and entry.get("digest") == digest(data))
    except Exception:  # a truncated or foreign file: any failure to read means "rebuild"
        return None
    return data if ok else None


def store(key: dict, data: Dict[str, torch.Tensor]) -> Path:
    """Write the entry atomically; returns its path."""
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise TypeError("data must be a dict of tensors")
    path = path_of(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v.detach().cpu().contiguous() for k, v in data.items()}
    entry = {"format": FORMAT, "key": _key_text(key), "digest": digest(data), "data": data}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(entry, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; entries are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def cached(key: dict, build: Callable[[], Dict[str, torch.Tensor]], enabled: bool = True
           ) -> Dict[str, torch.Tensor]:
    """The entry for `key`, built by `build()` and stored when missing or bad. With enabled=False
    it only builds (nothing read or written). A cache that cannot be written (read-only disk) is
    skipped silently: the result is still returned."""
    if enabled:
        hit = load(key)
        if hit is not None:
            return hit
    data = build()
    if enabled:
        try:
            store(key, data)
        except OSError:
            pass
    return data
