"""The demo (`python -m aot_kernels demo`): the demo video reduced, its tokens per frame, SPEC
§9's proxies, and a picture of every frame.

The demo video is the built-in video "demo" (eval/videos.py): 32 frames of 224 x 224, a slow
zoom into `astronaut` (frames 0-19), a scene cut, then a slow pan across `coffee` (frames
20-31). The stage table and the picture use the descriptor tower (eval/encoders.py, D = 1152,
SigLIP's width); the proxies use DINOv2 ViT-S/14 tokens where it is installed (with the reader
proxy), the descriptor tower otherwise, and say which.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .eval import compare
from .eval.encoders import GRID, SIZE, encode
from .eval.videos import CUT, FRAMES, photo_frames


@dataclass
class DemoVideo:
    frames: np.ndarray  # [F, 224, 224, 3] float in [0, 1]
    features: torch.Tensor  # [F, 196, D] float32
    scores: torch.Tensor  # [F, 196] float32
    grid: Tuple[int, int]
    cut: int


def demo_video(dim: int = 1152, frames: int = FRAMES) -> DemoVideo:
    pixels = photo_frames(frames, min(CUT, frames))
    features, scores = encode(pixels, dim)
    return DemoVideo(pixels, features, scores, GRID, min(CUT, frames))


def tokens_per_frame(reduced, frames: int) -> list:
    """Tokens a reduction spends on each frame (by frame_ids: AOT's anchors count at their
    clip's first frame, its dynamic tokens at their own)."""
    return torch.bincount(reduced.frame_ids.reshape(-1).cpu(), minlength=frames).tolist()


def proxy_report(video: "DemoVideo", retention: float, reducer_names, seeds: int = 5,
                 encoder: str = "auto") -> str:
    """SPEC §9's proxies for each named reducer on the demo video at `retention`, with the band
    of `random` over `seeds` seeds (compare.run on this one video; no progress bar). encoder:
    "descriptor" judges `video`'s own tokens; "dinov2" the same frames through DINOv2 (with
    the reader proxy); "auto" DINOv2 where installed (the report then says why not)."""
    from .eval import encoders, videos

    enc, note = encoders.get(encoder)
    if enc.name == "descriptor":
        case = compare.Case("demo", video.features, video.scores, video.grid,
                            encoder=encoders.DescriptorEncoder(video.features.shape[2]).label)
    else:
        case = compare.builtin_cases(["demo"], encoder=enc.name, frames=len(video.frames))[0]
    result = compare.run([case], [retention], compare.variants(reducer_names, ot_merge=False),
                         seeds=seeds, progress=False)
    return (f"  note: {note}\n" if note else "") + compare.report(result)


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
