"""lmms-eval models that run a HuggingFace video LLM with aot_kernels' token reduction.

    pip install -e ".[eval]"          # lmms-eval 0.7; registers the models below by entry point
    python -m lmms_eval --model aot_llava_onevision \\
        --model_args pretrained=llava-hf/llava-onevision-qwen2-7b-ov-hf,reducer=aot,retention=0.1 \\
        --tasks videomme --batch_size 4 --output_path logs/

Models (registered through lmms-eval's entry-point group "lmms_eval.models", see `manifests`):
- aot_llava_onevision: LlavaOnevisionForConditionalGeneration (LLaVA-OneVision), 32 frames;
- aot_llava_vid: the same class with a LLaVA-Video checkpoint, 64 frames;
- aot_qwen2_5_vl: Qwen2_5_VLForConditionalGeneration, 32 frames;
- aot_qwen3_vl: the Qwen3-VL family (Qwen3VL, Qwen3VLMoe, Qwen3_5, Qwen3_5Moe
  ForConditionalGeneration, whichever the checkpoint is), 32 frames, with each video's real fps
  and frame indices passed as video metadata, so the `<t seconds>` timestamps in the prompt are
  the true ones.

Each loads the checkpoint with transformers, patches it with
`aot_kernels.integrations.transformers.patch` and answers lmms-eval's `generate_until` requests,
batch_size videos per generate call (left padding; the patch re-pads rows whose videos keep
different counts). --model_args:
- pretrained: a transformers checkpoint (hub id or folder);
- reducer: "aot" (default), "aot-authors" (SPEC §8, LLaVA models only), a baseline of
  `aot_kernels.reducers` (visionzip, tome, dycoke, topk, pool, random), or "none" (no reduction);
- retention: the kept fraction, (0, 1], for "aot" and the baselines;
- benchmark: for "aot-authors", the authors' per-benchmark setting (SPEC §8.8): mvbench,
  egoschema, videomme or longvideobench; anchors= and keep_ratio= override it;
- merge: a baseline's merge step (none | average | ot); local_layer: see `patch`;
- max_frames_num (frames sampled uniformly per video), dtype ("auto", bfloat16, float32, ...),
  device, device_map, attn_implementation; Qwen2.5-VL also min_pixels / max_pixels per frame
  (Qwen3-VL: the processor's size bounds, which count the whole video's pixels).

Each sample's `token_counts` (in --log_samples output) reports input_tokens: the prompt length
the language model actually received (video tokens after reduction + text), and output_tokens.

Multi-GPU: data parallel through lmms-eval's own accelerate path, one model per GPU:
    accelerate launch --num_processes=8 -m lmms_eval --model aot_llava_onevision ...
"""
from __future__ import annotations

import os
from typing import List, Optional

import numpy as np
import torch
from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

from .. import reducers
from ..reducers.authors import BENCHMARKS

NONE = "none"
IMAGES = (".jpg", ".jpeg", ".png")


def manifests():
    """The models, as lmms-eval's entry point "lmms_eval.models" expects them (ModelManifest)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=name, simple_class_path=f"{__name__}.{cls.__name__}")
            for name, cls in MODELS.items()]


def build_reducer(model: str, reducer: str = "aot", retention: Optional[float] = None,
                  benchmark: Optional[str] = None, anchors: Optional[int] = None,
                  keep_ratio: Optional[float] = None, merge: Optional[str] = None):
    """The reducer that --model_args describe, or None for reducer="none".

    model: a preset name of aot_kernels ("llava-onevision-7b", "llava-video-7b",
    "qwen2.5-vl-7b", "qwen3-vl-8b"), which picks the authors' settings for "aot-authors"."""
    names = reducers.ALL_NAMES + (NONE,)
    if reducer not in names:
        raise ValueError(f"reducer must be one of {names}, got {reducer!r}")
    if reducer != "aot-authors":
        for key, value in (("benchmark", benchmark), ("anchors", anchors),
                           ("keep_ratio", keep_ratio)):
            if value is not None:
                raise ValueError(f"{key}= configures reducer=aot-authors, not reducer={reducer}")
    if reducer == NONE:
        if retention is not None or merge is not None:
            raise ValueError("reducer=none keeps every token: drop retention= and merge=")
        return None
    if reducer == "aot-authors":
        if model.startswith("qwen"):
            raise ValueError("reducer=aot-authors (SPEC §8) runs on the LLaVA models "
                             "(aot_llava_onevision, aot_llava_vid), not on Qwen2.5-VL or Qwen3-VL")
        if retention is not None or merge is not None:
            raise ValueError("reducer=aot-authors has no retention= or merge=: its budget is "
                             "benchmark= (the authors' setting), or anchors= and keep_ratio=")
        overrides = {k: v for k, v in (("anchors", anchors), ("keep_ratio", keep_ratio))
                     if v is not None}
        if benchmark is None and len(overrides) < 2:
            raise ValueError(f"reducer=aot-authors needs benchmark= (one of {BENCHMARKS}) or "
                             "both anchors= and keep_ratio=")
        # The HF port of LLaVA-Video pools 2x2 bilinearly like LLaVA-OneVision (its prompt
        # expects the 14x14 grid), so the reducer pools the same way (SPEC §8.6's average
        # pooling belongs to the original LLaVA-Video code).
        overrides["pool"] = "bilinear"
        if benchmark is not None:
            return reducers.build("aot-authors", model=model, benchmark=benchmark, **overrides)
        return reducers.build("aot-authors", **overrides)
    if retention is None:
        raise ValueError(f"reducer={reducer} needs retention= (the kept fraction, in (0, 1])")
    config = {"retention": retention}
    if merge is not None:
        config["merge"] = None if merge == NONE else merge
    return reducers.build(reducer, **config)


class _PatchedVideoLLM(lmms):
    """One HF video LLM, patched with a reducer, answering lmms-eval's generate_until."""

    is_simple = True
    PRESET = ""
    DEFAULT_PRETRAINED = ""
    DEFAULT_FRAMES = 32

    def __init__(self, pretrained: Optional[str] = None, reducer: str = "aot",
                 retention: Optional[float] = None, benchmark: Optional[str] = None,
                 anchors: Optional[int] = None, keep_ratio: Optional[float] = None,
                 merge: Optional[str] = None, local_layer="auto",
                 max_frames_num: Optional[int] = None, dtype: str = "auto",
                 device: Optional[str] = None, device_map: str = "",
                 attn_implementation: Optional[str] = None, batch_size=1,
                 max_batch_size=None, **kwargs) -> None:
        super().__init__()
        extra = self._extra_options(kwargs)
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unknown model_args {sorted(kwargs)}")
        from accelerate import Accelerator
        from transformers import AutoProcessor

        from .transformers import patch

        batch = str(batch_size)  # lmms-eval passes the CLI string
        if not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"batch_size must be a count >= 1 (no 'auto'), got {batch_size!r}")
        batch = int(batch)
        frames = self.DEFAULT_FRAMES if max_frames_num is None else max_frames_num
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"max_frames_num must be an int >= 1, got {max_frames_num!r}")
        if local_layer in ("none", "None"):  # model_args are strings: none = local = global
            local_layer = None
        self.reducer = build_reducer(self.PRESET, reducer, retention, benchmark, anchors,
                                     keep_ratio, merge)
        accelerator = Accelerator()
        if accelerator.num_processes > 1:  # data parallel: one model per process
            device = f"cuda:{accelerator.local_process_index}"
        elif device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        if dtype != "auto" and not isinstance(dtype, torch.dtype):
            if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
                raise ValueError(f"dtype must be 'auto' or a torch dtype name, got {dtype!r}")
            dtype = getattr(torch, dtype)
        pretrained = pretrained or self.DEFAULT_PRETRAINED
        self._model = self._model_class().from_pretrained(
            pretrained, dtype=dtype, device_map=device_map or None,
            attn_implementation=attn_implementation).eval()
        if not device_map:
            self._model.to(self._device)
        self.processor = AutoProcessor.from_pretrained(pretrained, **extra)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        if self.reducer is not None:
            patch(self._model, self.reducer, local_layer=local_layer)
        self.pretrained, self.max_frames_num = pretrained, frames
        self.batch_size_per_gpu = batch
        self.accelerator = accelerator
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes

    # ---- what differs per model ----------------------------------------------------------------
    def _extra_options(self, kwargs: dict) -> dict:
        """Model-specific model_args, popped from kwargs; returns AutoProcessor keywords."""
        return {}

    def _model_class(self):
        raise NotImplementedError

    # ---- lmms interface ------------------------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{type(self).__name__} answers generate_until tasks (the video "
                                  "benchmarks); loglikelihood is not implemented")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{type(self).__name__} answers single-round generate_until")

    def _video(self, visuals, where: str):
        """(frames [T, H, W, 3] uint8, the video metadata the processor needs or None)."""
        paths = [v for v in visuals if isinstance(v, str)]
        if len(paths) != 1 or len(visuals) != 1:
            raise ValueError(f"{type(self).__name__} takes one video (a file path) per question; "
                             f"{where} gives {len(visuals)} visual(s)")
        return self._read(paths[0], where)

    def _read(self, path: str, where: str):
        """(frames, None): lmms-eval's own reader (a folder of frames sampled here)."""
        from lmms_eval.models.model_utils.load_video import read_video

        paths = [path]
        if os.path.isdir(paths[0]):  # a folder of frames (some MVBench sources): sample them
            import numpy as np
            from PIL import Image

            names = sorted(n for n in os.listdir(paths[0]) if n.lower().endswith(IMAGES))
            if not names:
                raise ValueError(f"{where}: {paths[0]} is a folder without frames ({IMAGES})")
            picks = np.linspace(0, len(names) - 1, min(self.max_frames_num, len(names)))
            return np.stack([np.asarray(Image.open(os.path.join(paths[0], names[int(round(i))]))
                                        .convert("RGB")) for i in picks]), None
        return read_video(paths[0], num_frm=self.max_frames_num), None  # [T, H, W, 3] uint8

    def _prompt(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "video"},
                                                 {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def generate_until(self, requests) -> List[GenerationResult]:
        from lmms_eval import utils
        from tqdm import tqdm

        def key(args):  # longest prompts first: padding and memory peak show up at once
            return -len(args[0]), args[0]

        order = utils.Collator([r.args for r in requests], key, grouping=True)
        results = []
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding")
        for chunk in order.get_batched(n=self.batch_size, batch_fn=None):
            contexts, gen_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
            videos = [self._video(to_visual(self.task_dict[task][split][doc]),
                                  f"doc {doc} of {task}")
                      for to_visual, doc, task, split in zip(doc_to_visual, doc_ids, tasks, splits)]
            results += self._answer(list(contexts), videos, dict(gen_kwargs[0]))
            bar.update(len(chunk))
        bar.close()
        return order.get_original(results)

    def _answer(self, questions: List[str], videos, gen_kwargs: dict) -> List[GenerationResult]:
        """Answers for one batch (same generation settings) of questions, one video each."""
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        frames, metadata = zip(*videos)
        inputs = self.processor(text=[self._prompt(q) for q in questions], videos=list(frames),
                                padding=True, return_tensors="pt",
                                **self._video_kwargs(list(metadata)))
        inputs = inputs.to(self._device)
        if "pixel_values_videos" in inputs:
            inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(self._model.dtype)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = temperature > 0 and bool(gen_kwargs.get("do_sample", True))
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.eos_token_id if pad is None else pad
        settings = dict(max_new_tokens=int(gen_kwargs.get("max_new_tokens", 1024)),
                        do_sample=sample, num_beams=int(gen_kwargs.get("num_beams", 1) or 1),
                        pad_token_id=pad)
        if sample:
            settings.update(temperature=temperature, top_p=gen_kwargs.get("top_p"))
        calls, prompt_lengths = [], []

        def count(module, args, kwargs):
            # The language model's calls: the first is the prefill (the prompt it actually gets,
            # after the patch shortened it); one call per generated token in all.
            if not calls:
                mask, embeds = kwargs.get("attention_mask"), kwargs.get("inputs_embeds")
                if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                    prompt_lengths.extend(mask.sum(-1).tolist())
                else:
                    prompt_lengths.extend([embeds.shape[1]] * embeds.shape[0])
            calls.append(1)

        hook = self._model.model.language_model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            with torch.inference_mode():
                out = self._model.generate(**inputs, **settings)
        finally:
            hook.remove()
        # The last len(calls) columns are the new tokens, whichever prompt generate returns
        # (the caller's, or the patch's shortened one).
        new = out[:, out.shape[1] - len(calls):]
        answers = []
        # Beam search prefills num_beams copies of each prompt, one sample's beams together.
        for row, length in zip(new, prompt_lengths[::settings["num_beams"]]):
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            produced = int((row != pad).sum())
            answers.append(GenerationResult(text, TokenCounts(input_tokens=int(length),
                                                              output_tokens=produced)))
        return answers

    def _video_kwargs(self, metadata: list) -> dict:
        """Processor keywords for a batch of videos (metadata: `_video`'s, one per video)."""
        return {}


class AOTLlavaOnevision(_PatchedVideoLLM):
    """lmms-eval model "aot_llava_onevision": LLaVA-OneVision (transformers), 32 frames."""

    PRESET = "llava-onevision-7b"
    DEFAULT_PRETRAINED = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    DEFAULT_FRAMES = 32

    def _model_class(self):
        from transformers import LlavaOnevisionForConditionalGeneration

        return LlavaOnevisionForConditionalGeneration


class AOTLlavaVid(AOTLlavaOnevision):
    """lmms-eval model "aot_llava_vid": LLaVA-Video (transformers' LLaVA-OneVision class), 64
    frames."""

    PRESET = "llava-video-7b"
    DEFAULT_PRETRAINED = "llava-hf/LLaVA-Video-7B-Qwen2-hf"
    DEFAULT_FRAMES = 64


class AOTQwen2_5_VL(_PatchedVideoLLM):
    """lmms-eval model "aot_qwen2_5_vl": Qwen2.5-VL (transformers), 32 frames; min_pixels /
    max_pixels bound each frame's size (as lmms-eval's qwen2_5_vl model)."""

    PRESET = "qwen2.5-vl-7b"
    DEFAULT_PRETRAINED = "Qwen/Qwen2.5-VL-7B-Instruct"
    DEFAULT_FRAMES = 32

    def _extra_options(self, kwargs: dict) -> dict:
        self.pixels = {}
        for key in ("min_pixels", "max_pixels"):
            if key in kwargs:
                value = kwargs.pop(key)
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"{key} must be a positive int, got {value!r}")
                self.pixels[key] = value
        return {}

    def _video_kwargs(self, metadata: list) -> dict:
        size = {}
        if "min_pixels" in self.pixels:
            size["shortest_edge"] = self.pixels["min_pixels"]
        if "max_pixels" in self.pixels:
            size["longest_edge"] = self.pixels["max_pixels"]
        # Frames are already sampled (max_frames_num): the processor must not sample again.
        return {"do_sample_frames": False, **({"size": size} if size else {})}

    def _model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration


class AOTQwen3_VL(AOTQwen2_5_VL):
    """lmms-eval model "aot_qwen3_vl": the Qwen3-VL family (transformers: Qwen3-VL, Qwen3-VL-MoE,
    Qwen3.5, Qwen3.5-MoE, by the checkpoint's config), 32 frames. Each video's frames are
    sampled by `eval.footage` (uniform, both ends), and their indices with the stream's fps go
    to the processor as video metadata: Qwen3-VL writes each temporal patch's timestamp into
    the prompt from them (a folder of frames has no fps: the processor assumes 24)."""

    PRESET = "qwen3-vl-8b"
    DEFAULT_PRETRAINED = "Qwen/Qwen3-VL-8B-Instruct"
    DEFAULT_FRAMES = 32
    CLASSES = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
               "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")

    def _read(self, path: str, where: str):
        from ..eval import footage

        try:
            got = footage.read_sampled(path, self.max_frames_num, at_most=True)
        except (ValueError, FileNotFoundError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        frames, indices = got.frames, got.indices
        if len(indices) == 1:  # a temporal patch is 2 frames: a 1-frame video repeats its frame
            frames, indices = np.concatenate([frames, frames]), indices * 2
        return frames, {"total_num_frames": got.total, "fps": got.fps, "frames_indices": indices}

    def _video_kwargs(self, metadata: list) -> dict:
        kwargs = super()._video_kwargs(metadata)
        # fps None (a folder of frames): the processor's default, with its warning
        kwargs["video_metadata"] = [{k: v for k, v in m.items() if v is not None}
                                    for m in metadata]
        return kwargs

    def _model_class(self):
        from transformers import AutoConfig, AutoModelForImageTextToText

        classes = self.CLASSES

        class Family:  # from_pretrained through the auto class, checked against the family
            @staticmethod
            def from_pretrained(pretrained, **kwargs):
                config = AutoConfig.from_pretrained(pretrained)
                names = list(getattr(config, "architectures", None) or [])
                if names and not set(names) & set(classes):
                    raise ValueError(f"aot_qwen3_vl runs {classes}; {pretrained} is {names}")
                return AutoModelForImageTextToText.from_pretrained(pretrained, **kwargs)

        return Family


MODELS = {"aot_llava_onevision": AOTLlavaOnevision, "aot_llava_vid": AOTLlavaVid,
          "aot_qwen2_5_vl": AOTQwen2_5_VL, "aot_qwen3_vl": AOTQwen3_VL}
