"""Your own video for `compare --video`: a video file (decoded with PyAV, which brings its own
ffmpeg) or a folder of frames (PNG/JPEG/... files, sorted by name), F frames sampled uniformly.

`read(path, frames)` returns the frames [F, H, W, 3] uint8 (RGB); the encoders crop each to its
centred square and resize it to their input (encoders.square). Every failure is a ValueError
(or FileNotFoundError) that names the file: no such path, not a video, no video stream, a
stream that does not decode, fewer frames than asked for, a folder without images, an image
that does not open, and RuntimeError when PyAV is not installed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, NamedTuple, Optional

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
NO_PYAV = "reading a video file needs PyAV: pip install av (or pip install -e '.[real]')"


def sample(total: int, frames: int) -> List[int]:
    """`frames` indices spread uniformly over [0, total): round(linspace(0, total - 1, frames)),
    first and last frame included; distinct when total >= frames."""
    if frames == 1:
        return [0]
    return [int(round(i * (total - 1) / (frames - 1))) for i in range(frames)]


def _frames_arg(frames) -> int:
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    return frames


class Sampled(NamedTuple):
    """Frames sampled from a video and where they came from: frames [F, H, W, 3] uint8 RGB;
    indices: each frame's index among the video's `total` frames; fps: the stream's average
    frame rate (None for a folder of frames, or a stream without one)."""
    frames: np.ndarray
    indices: List[int]
    total: int
    fps: Optional[float]


def read(path, frames: int = 32) -> np.ndarray:
    """[F, H, W, 3] uint8 RGB: `frames` frames sampled uniformly from the video file or frame
    folder at `path`."""
    return read_sampled(path, frames).frames


def read_sampled(path, frames: int = 32, *, at_most: bool = False) -> Sampled:
    """`read`, with the frames' indices, the total count and the fps (what Qwen3-VL's prompt
    timestamps are computed from). at_most=True takes every frame of a shorter video instead
    of raising."""
    frames = _frames_arg(frames)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path, got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        return _read_folder(p, frames, at_most)
    if not p.is_file():
        raise FileNotFoundError(f"video {str(p)!r}: no such file or folder")
    return _read_file(p, frames, at_most)


def _read_folder(folder: Path, frames: int, at_most: bool = False) -> Sampled:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise ValueError(f"frame folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if at_most:
        frames = min(frames, len(files))
    if len(files) < frames:
        raise ValueError(f"frame folder {str(folder)!r} has {len(files)} images, fewer than "
                         f"frames={frames}")
    out, picks = [], sample(len(files), frames)
    for i in picks:
        try:
            with Image.open(files[i]) as im:
                out.append(np.array(im.convert("RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"frame {str(files[i])!r} does not open as an image: {exc}") from None
    sizes = {a.shape for a in out}
    # Frames of different sizes: each is cropped and resized on its own (they then stack).
    return Sampled(_ragged(out) if len(sizes) > 1 else np.stack(out), picks, len(files), None)


def _ragged(frames: List[np.ndarray]) -> np.ndarray:
    """Frames of different sizes, each cropped to its centred square, resized to the smallest
    square side (so they stack)."""
    import torch

    from .encoders import square

    side = min(min(a.shape[:2]) for a in frames)
    return np.stack([(square(torch.from_numpy(a)[None], side)[0].numpy() * 255).round()
                     .astype(np.uint8) for a in frames])


def _read_file(path: Path, frames: int, at_most: bool = False) -> Sampled:
    try:
        import av
    except ImportError:
        raise RuntimeError(NO_PYAV) from None
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise ValueError(f"{str(path)!r} does not open as a video: {exc}") from None
    with container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        try:
            total = stream.frames or _count(container, stream)
        except av.error.FFmpegError as exc:
            raise ValueError(f"{str(path)!r}: its video stream ({stream.codec_context.name}) does "
                             f"not decode: {exc}") from None
    if total < 1:
        raise ValueError(f"{str(path)!r} has no frames")
    wanted = min(frames, total) if at_most else frames
    if total < wanted:
        raise ValueError(f"{str(path)!r} has {total} frames, fewer than frames={frames}")
    picks = sample(total, wanted)
    got = _decode(path, picks)
    if len(got) < wanted:  # the header's frame count was too high: count by decoding
        with av.open(str(path)) as container:
            total = _count(container, container.streams.video[0])
        wanted = min(frames, total) if at_most else frames
        if total < wanted:
            raise ValueError(f"{str(path)!r} has {total} frames, fewer than frames={frames}")
        picks = sample(total, wanted)
        got = _decode(path, picks)
    return Sampled(np.stack(got), picks, total, fps)


def _count(container, stream) -> int:
    container.seek(0)
    return sum(1 for _ in container.decode(stream))


def _decode(path: Path, wanted: List[int]) -> List[np.ndarray]:
    """The frames at the indices in `wanted` (sorted, may repeat), in decode order."""
    import av

    out, need = [], list(wanted)
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(container.streams.video[0])):
                if need and need[0] == i:
                    rgb = frame.to_ndarray(format="rgb24")
                    while need and need[0] == i:
                        out.append(rgb)
                        need.pop(0)
                if not need:
                    break
    except av.error.FFmpegError as exc:
        raise ValueError(f"{str(path)!r}: decoding failed at frame {len(out)}: {exc}") from None
    return out
