"""The embedded demo video: real photographs from scikit-image, turned into visual tokens.

32 frames of 224 x 224: a slow zoom into `astronaut` (frames 0-19), a scene cut, then a slow pan
across `coffee` (frames 20-31). Each frame is a 14 x 14 grid of 16 x 16 patches (the LLaVA-
OneVision token grid). Every patch gets a fixed 31-number descriptor, standardised over the video
and projected to D by a fixed Gaussian matrix (seed 0): the tokens' cosine geometry is that of
the descriptors. Scores follow SPEC §4's rule for encoders without [CLS]: the mean attention each
token receives under its frame's own softmax self-attention (softmax(X X^T / sqrt(D))).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

FRAMES = 32
CUT = 20  # first frame of the second scene; inside the third 8-frame clip on purpose
SIZE = 224
PATCH = 16
GRID = (SIZE // PATCH, SIZE // PATCH)
DESCRIPTOR = 31  # 3 mean RGB + 3 std RGB + 1 gradient energy + 8 orientations + 16 layout


@dataclass
class DemoVideo:
    frames: np.ndarray  # [F, 224, 224, 3] float in [0, 1]
    features: torch.Tensor  # [F, 196, D] float32
    scores: torch.Tensor  # [F, 196] float32
    grid: Tuple[int, int]
    cut: int


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


def self_attention_scores(features: torch.Tensor) -> torch.Tensor:
    """[F, N]: mean attention each token receives, softmax(X X^T / sqrt(D)) per frame (SPEC §4's
    rule for encoders without [CLS]; one head)."""
    x = features.float()
    attn = torch.softmax(x @ x.transpose(1, 2) / x.shape[-1] ** 0.5, dim=-1)
    return attn.mean(1)


def encode(pixels: np.ndarray, dim: int = 1152) -> Tuple[torch.Tensor, torch.Tensor]:
    """Frames [F, 224, 224, 3] in [0, 1] -> (features [F, 196, dim] float32, scores [F, 196]):
    the stand-in vision tower every built-in video goes through (descriptors, projection,
    mean self-attention received)."""
    features = tokens_from_descriptors(patch_descriptors(pixels), dim)
    return features, self_attention_scores(features)


def demo_video(dim: int = 1152, frames: int = FRAMES) -> DemoVideo:
    pixels = photo_frames(frames, min(CUT, frames))
    features, scores = encode(pixels, dim)
    return DemoVideo(pixels, features, scores, GRID, min(CUT, frames))


def tokens_per_frame(reduced, frames: int) -> list:
    """Tokens a reduction spends on each frame (by frame_ids: AOT's anchors count at their
    clip's first frame, its dynamic tokens at their own)."""
    return torch.bincount(reduced.frame_ids.reshape(-1).cpu(), minlength=frames).tolist()


def proxy_report(video: "DemoVideo", retention: float, reducer_names, seeds: int = 5) -> str:
    """SPEC §9's proxies for each named reducer on the demo video at `retention`, with the band
    of `random` over `seeds` seeds (compare.run on this one video; no progress bar)."""
    from . import compare

    case = compare.Case("demo", video.features, video.scores, video.grid)
    result = compare.run([case], [retention], compare.variants(reducer_names, ot_merge=False),
                         seeds=seeds, progress=False)
    return compare.report(result)


def draw(path: str, video: DemoVideo, reduced, anchors: torch.Tensor, cols: int = 8,
         counts: Optional[Dict[str, list]] = None) -> None:
    """PNG of every frame: its intra-frame anchors (small white dots), the clip anchors that
    survive at each clip's first frame (green), the dynamic tokens (red), clip boundaries
    (frame border colour, label on the clip's first frame) and the scene cut; with `counts`
    ({label: tokens per frame}), a bar strip underneath showing where each reduction spends its
    tokens, the cut marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = video.frames.shape[0]
    h, w = video.grid
    rows = -(-frames // cols)
    strip = 1.6 if counts else 0.0
    fig = plt.figure(figsize=(2.0 * cols, 2.15 * rows + 0.6 + strip))
    grid_spec = fig.add_gridspec(rows + bool(counts), cols,
                                 height_ratios=[2.15] * rows + ([strip] if counts else []))
    axes = [fig.add_subplot(grid_spec[i // cols, i % cols]) for i in range(rows * cols)]
    colours = plt.get_cmap("tab10").colors
    clip_of = {t: k for k, (s, e) in enumerate(reduced.clips) for t in range(s, e)}
    cell = SIZE / w
    centre = lambda idx: ((idx % w + 0.5) * cell, (idx // w + 0.5) * cell)  # noqa: E731
    n = h * w
    for t, ax in enumerate(np.asarray(axes).flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if t >= frames:
            ax.axis("off")
            continue
        ax.imshow(video.frames[t])
        x, y = centre(anchors[t].numpy())
        ax.scatter(x, y, s=2, c="white", alpha=0.5, linewidths=0)
        here = (reduced.frame_ids == t).numpy()
        pos = reduced.positions.numpy()[here] % n
        dyn = reduced.dynamic.numpy()[here]
        x, y = centre(pos[~dyn])
        ax.scatter(x, y, s=6, c="lime", linewidths=0)
        x, y = centre(pos[dyn])
        ax.scatter(x, y, s=14, c="red", marker="s", linewidths=0)
        k = clip_of[t]
        for side in ax.spines.values():
            side.set_color(colours[k % 10])
            side.set_linewidth(3)
        label = f"t={t}"
        if reduced.clips[k][0] == t:
            label += f"  clip {k}"
        if t == video.cut:
            label += "  (cut)"
        ax.set_title(label + f"  +{int(dyn.sum())}" if dyn.any() else label, fontsize=8)
    if counts:
        ax = fig.add_subplot(grid_spec[rows, :])
        width = 0.8 / len(counts)
        for i, (label, per_frame) in enumerate(counts.items()):
            ax.bar(np.arange(frames) + (i - (len(counts) - 1) / 2) * width, per_frame, width,
                   label=label)
        ax.axvline(video.cut - 0.5, color="black", linestyle="--", linewidth=1)
        ax.text(video.cut - 0.4, ax.get_ylim()[1] * 0.9, "scene cut", fontsize=8)
        ax.set_xlim(-0.6, frames - 0.4)
        ax.set_xticks(range(frames))
        ax.tick_params(labelsize=7)
        ax.set_ylabel("tokens", fontsize=8)
        ax.set_xlabel("frame (anchors count at their clip's first frame)", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"AOT at {len(reduced)} of {frames * n} tokens: white = frame anchors, "
                 f"green = clip anchors, red = dynamic tokens (+count); border colour = clip",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
