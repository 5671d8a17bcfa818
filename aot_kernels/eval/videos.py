"""Built-in videos to judge reductions on (SPEC §9): scikit-image's bundled photos and synthetic
camera motion, no downloads.

Every video is 32 frames of 224 x 224 pixels, turned into tokens by an encoder (eval/encoders.py):
the stand-in descriptor tower by default (a 14 x 14 grid of 16 x 16 patches, a 31-number
descriptor per patch projected to D, scores = mean self-attention received), or DINOv2 ViT-S/14
with `encoder="dinov2"` (the frames resized to 196 x 196: the same 14 x 14 token grid, each
16-pixel cell becoming one 14-pixel patch, so the needle indices hold for both). `load(name)`
returns a `BuiltinVideo`; `NAMES` lists them:

- demo: the demo video (slow zoom into `astronaut`, a scene cut at frame 20, slow pan across
  `coffee`).
- static: a nearly static shot of `chelsea` (a 1.5-pixel drift over the whole video, and
  seeded sensor noise of 1% grey).
- pan: a fast pan across `rocket` and `coffee` side by side (28 pixels of a 320-pixel window,
  1.2 patches, per frame).
- cuts: four shots (`astronaut`, `coffee`, `chelsea`, `rocket`), each with a slow zoom or pan,
  cut at frames 6, 13 and 23 (none on an 8-frame clip boundary).
- ball: a small moving object, a shaded ball of radius 14 pixels (about 2 x 2 tokens) crossing
  a still shot of `coffee` on a diagonal at about 7 pixels per frame (`ball_centre`).
- needle: a slow zoom into `chelsea` with four small patterned patches (checker, rows,
  columns, diagonal) in saturated colours, one patch each, each in 2-3 frames only (NEEDLES: frames 3-5, 11-12, 17-19, 26-27); `needle`
  holds their 10 flat token indices t * 196 + n.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Dict, List, Optional, Tuple

import hashlib

import numpy as np
import torch

from .encoders import GRID, PATCH, SIZE, encode
from .metrics import Reader

FRAMES = 32
# The demo video's scene cut: first frame of its second scene; inside the third 8-frame clip on
# purpose.
CUT = 20


def _resize(image: np.ndarray, top: float, left: float, height: float, width: float) -> np.ndarray:
    from skimage.transform import resize

    crop = image[int(round(top)):int(round(top + height)), int(round(left)):int(round(left + width))]
    return resize(crop, (SIZE, SIZE, 3), anti_aliasing=True, mode="reflect")


def photo_frames(frames: int = FRAMES, cut: int = CUT) -> np.ndarray:
    """[F, 224, 224, 3] in [0, 1]: a zoom on `astronaut`, then a pan across `coffee`."""
    from skimage import data, img_as_float

    astronaut, coffee = img_as_float(data.astronaut()), img_as_float(data.coffee())
    out = []
    for t in range(frames):
        if t < cut:  # zoom from the whole 512 x 512 photo to a 320 x 320 window on the face
            a = t / max(cut - 1, 1)
            side = 512 - 192 * a
            out.append(_resize(astronaut, 0 + 20 * a, 60 * a, side, side))
        else:  # pan a 380 x 380 window from left to right across the 400 x 600 photo
            a = (t - cut) / max(frames - cut - 1, 1)
            out.append(_resize(coffee, 10, 220 * a, 380, 380))
    return np.stack(out)




@dataclass
class BuiltinVideo:
    """One built-in video. pixels [F, 224, 224, 3] in [0, 1]; features [F, 196, D] float32;
    scores [F, 196]; grid (14, 14); cuts: first frames of the shots after the first;
    needle: flat token indices t * 196 + n of the needle (or None); description; encoder: the
    label of the encoder that made the tokens; local_scores [F, 196] (shallow-block scores) and
    reader (metrics.Reader, the reader proxy's inputs) for an encoder with blocks, else None."""
    name: str
    pixels: np.ndarray
    features: torch.Tensor
    scores: torch.Tensor
    grid: Tuple[int, int]
    cuts: List[int] = field(default_factory=list)
    needle: Optional[torch.Tensor] = None
    description: str = ""
    encoder: str = ""
    local_scores: Optional[torch.Tensor] = None
    reader: Optional[Reader] = None


def _photos():
    from skimage import color, data, img_as_float

    return {"astronaut": img_as_float(data.astronaut()), "coffee": img_as_float(data.coffee()),
            "chelsea": img_as_float(data.chelsea()), "rocket": img_as_float(data.rocket()),
            "camera": color.gray2rgb(img_as_float(data.camera()))}


def _zoom(image, steps: int, start: float, end: float, centre=(0.5, 0.5)) -> List[np.ndarray]:
    """`steps` square crops whose side goes from `start` to `end` of the image's short side,
    centred at (row, col) fractions of the image."""
    h, w = image.shape[:2]
    out = []
    for i in range(steps):
        a = i / max(steps - 1, 1)
        side = min(h, w) * (start + (end - start) * a)
        top = min(max(centre[0] * h - side / 2, 0), h - side)
        left = min(max(centre[1] * w - side / 2, 0), w - side)
        out.append(_resize(image, top, left, side, side))
    return out


def _pan(image, steps: int, side: float, top: float, left0: float, left1: float) -> List[np.ndarray]:
    """`steps` crops of side `side` at row `top`, left edge from left0 to left1."""
    return [_resize(image, top, left0 + (left1 - left0) * i / max(steps - 1, 1), side, side)
            for i in range(steps)]


def _demo_pixels(frames: int):
    return photo_frames(frames, min(CUT, frames)), [CUT] if frames > CUT else [], None


def _static_pixels(frames: int):
    chelsea = _photos()["chelsea"]
    rng = np.random.default_rng(0)
    out = []
    for i in range(frames):  # 1.5-pixel drift in the source, plus sensor noise
        crop = _resize(chelsea, 10 + 1.5 * i / max(frames - 1, 1), 90, 280, 280)
        out.append(np.clip(crop + rng.normal(0, 0.01, crop.shape), 0, 1))
    return np.stack(out), [], None


def _pan_pixels(frames: int):
    p = _photos()
    from skimage.transform import resize

    strip = np.concatenate([resize(p["rocket"], (400, 600, 3), anti_aliasing=True),
                            resize(p["coffee"], (400, 600, 3), anti_aliasing=True)], axis=1)
    travel = 28.0 * (frames - 1)  # 28 source pixels per frame of a 320-pixel window
    start = max(0.0, (1200 - 320 - travel) / 2)
    return np.stack(_pan(strip, frames, 320, 40, start, start + travel)), [], None


CUT_FRAMES = (6, 13, 23)


def _cuts_pixels(frames: int):
    p = _photos()
    cuts = [c for c in CUT_FRAMES if c < frames]
    bounds = [0] + cuts + [frames]
    shots = [lambda k: _zoom(p["astronaut"], k, 1.0, 0.8, (0.35, 0.45)),
             lambda k: _pan(p["coffee"], k, 360, 20, 0, 200),
             lambda k: _zoom(p["chelsea"], k, 0.95, 0.75, (0.45, 0.5)),
             lambda k: _pan(p["rocket"], k, 400, 10, 40, 200)]
    out = []
    for shot, (s, e) in zip(shots, zip(bounds[:-1], bounds[1:])):
        out += shot(e - s)
    return np.stack(out), cuts, None


# Four needles: (frames, token (row, col), (pattern, two colours)). One patch each, 2-3 frames
# each, at different places and times, each a different pattern (so that finding one does not
# find the others), so that `random` finds a few by chance and its band stays narrow.
NEEDLES = (((3, 4, 5), (2, 3), ("checker", (1.0, 0.0, 1.0), (0.0, 1.0, 0.2))),
           ((11, 12), (9, 11), ("rows", (0.0, 1.0, 1.0), (1.0, 0.0, 0.0))),
           ((17, 18, 19), (5, 6), ("columns", (1.0, 1.0, 0.0), (0.0, 0.0, 1.0))),
           ((26, 27), (11, 2), ("diagonal", (1.0, 0.5, 0.0), (0.5, 0.0, 1.0))))
_PATTERNS = {"checker": lambda y, x: (y // 4 + x // 4) % 2, "rows": lambda y, x: (y // 4) % 2,
             "columns": lambda y, x: (x // 4) % 2, "diagonal": lambda y, x: ((x + y) // 4) % 2}


def needle_pattern(spec) -> np.ndarray:
    """[16, 16, 3] for spec = (pattern, colour, colour): 4-pixel squares, rows, columns or
    diagonal stripes in two saturated colours (colour and strong gradients that no photo here
    has)."""
    pattern, *colours = spec
    yy, xx = np.mgrid[0:PATCH, 0:PATCH]
    check = _PATTERNS[pattern](yy, xx).astype(bool)
    out = np.empty((PATCH, PATCH, 3))
    out[check] = colours[0]
    out[~check] = colours[1]
    return out


def _needle_pixels(frames: int):
    pixels = np.stack(_zoom(_photos()["chelsea"], frames, 1.0, 0.85, (0.45, 0.5)))
    h, w = GRID
    idx = []
    for shown, (r, c), colours in NEEDLES:
        for t in shown:
            pixels[t, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = needle_pattern(colours)
            idx.append(t * h * w + r * w + c)
    return pixels, [], torch.tensor(idx, dtype=torch.long)


# The small moving object: a shaded ball of BALL_RADIUS pixels (about 2 x 2 tokens) crossing a
# still shot of `coffee` on a diagonal, about 7 pixels (0.45 patch) per frame.
BALL_RADIUS = 14


def ball_centre(t: int, frames: int = FRAMES) -> Tuple[float, float]:
    """(row, col) in pixels of the ball's centre in frame t of `frames`: the same diagonal for
    any length (about 7 pixels per frame at 32 frames), inside the frame throughout."""
    step = t * 31 / max(frames - 1, 1)  # exactly t at 32 frames
    return 36.0 + 4.8 * step, 30.0 + 5.4 * step


def _ball_pixels(frames: int):
    still = _resize(_photos()["coffee"], 20, 120, 360, 360)
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    out = []
    for t in range(frames):
        frame = np.clip(still + rng.normal(0, 0.005, still.shape), 0, 1)
        cy, cx = ball_centre(t, frames)
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / BALL_RADIUS ** 2
        inside = d2 <= 1.0
        # a blue ball with a highlight: a colour no part of the background has
        light = np.clip(1.0 - 0.5 * d2 + 0.5 * np.exp(-((yy - cy + 5) ** 2 + (xx - cx + 5) ** 2) / 20.0),
                        0, 1)
        frame[inside] = np.stack([0.15 * light, 0.45 * light, light], axis=-1)[inside]
        out.append(frame)
    return np.stack(out), [], None


_MAKERS: Dict[str, Tuple[Callable, str]] = {
    "demo": (_demo_pixels, "zoom into astronaut, cut at frame 20, slow pan across coffee"),
    "static": (_static_pixels, "chelsea, nearly static (1.5 px drift, 1% noise)"),
    "pan": (_pan_pixels, "fast pan across rocket | coffee (1.2 patches per frame)"),
    "cuts": (_cuts_pixels, "four shots, cuts at frames 6, 13, 23"),
    "ball": (_ball_pixels, "a small ball (about 2 x 2 tokens) crossing a still shot of coffee, 0.45 patch per frame"),
    "needle": (_needle_pixels, "chelsea with four one-patch patterns (checker, rows, columns, diagonal), 2-3 frames each"),
}
NAMES = tuple(_MAKERS)


@lru_cache(maxsize=16)
def _build(name: str, dim: int, frames: int, encoder: str = "descriptor") -> BuiltinVideo:
    from . import encoders

    make, description = _MAKERS[name]
    pixels, cuts, needle = make(frames)
    assert pixels.shape == (frames, SIZE, SIZE, 3), pixels.shape
    if encoder == "descriptor":
        features, scores = encode(pixels, dim)
        label = encoders.DescriptorEncoder(dim).label
        return BuiltinVideo(name, pixels, features, scores, GRID, cuts, needle, description, label)
    enc = encoders.get(encoder)[0]
    # the pixels' digest in the key: a changed maker never reads a stale entry
    key = {"builtin": name, "frames": frames,
           "pixels": hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:24]}
    got = enc.encode(pixels, key=key)
    return BuiltinVideo(name, pixels, got.features, got.scores, got.grid, cuts, needle,
                        description, got.encoder, got.local_scores, got.reader)


def load(name: str, dim: Optional[int] = None, frames: int = FRAMES,
         encoder: str = "descriptor") -> BuiltinVideo:
    """The built-in video `name` (one of NAMES) over `frames` frames (default 32; the needle
    needs >= 28, the cuts video shows the cuts that fall inside), through `encoder`:
    "descriptor" (D = dim, default 1152), "dinov2" (D = 384; dim must be None or 384; encoded
    once and cached on disk) or "auto" (dinov2 where installed). Deterministic; cached per
    (name, dim, frames, encoder) in the process, so treat the tensors as read-only."""
    from . import encoders

    if not isinstance(name, str) or name not in _MAKERS:
        raise ValueError(f"unknown video {name!r}; choose from {NAMES}")
    if not isinstance(encoder, str) or encoder not in encoders.ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; choose from {encoders.ENCODERS}")
    if encoder == "auto":
        encoder = encoders.get("auto")[0].name
    if dim is None:
        dim = 1152 if encoder == "descriptor" else 384
    for value, label, low in ((dim, "dim", 1), (frames, "frames", 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an int >= {low}, got {value!r}")
    if encoder == "dinov2" and dim != 384:
        raise ValueError(f"dim is the descriptor tower's D; DINOv2's is 384, got dim={dim}")
    last = max(t for shown, _, _ in NEEDLES for t in shown)
    if name == "needle" and frames <= last:
        raise ValueError(f"the needle video needs frames > {last}, got {frames}")
    return _build(name, dim, frames, encoder)
