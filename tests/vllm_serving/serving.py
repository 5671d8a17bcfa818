"""What the vLLM plugin tests share: serve tiny checkpoints offline with vLLM's own classes or
the plugin's, recording what chosen model methods return."""
import gc
import importlib

import vllm

from aot_kernels.integrations import vllm as plugin

# vLLM's own class for each architecture the plugin subclasses.
STOCK = {"Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
         "LlavaOnevisionForConditionalGeneration": "llava_onevision",
         "Qwen3VLForConditionalGeneration": "qwen3_vl",
         "Qwen3VLMoeForConditionalGeneration": "qwen3_vl_moe",
         "Qwen3_5ForConditionalGeneration": "qwen3_5",
         "Qwen3_5MoeForConditionalGeneration": "qwen3_5"}
RECORDED = ("_process_video_input", "_process_image_input", "_postprocess_video_embeds_evs",
            "recompute_mrope_positions", "get_mrope_input_positions",
            "_video_pixels_to_features", "_process_video_pixels")


def stock_classes(use_stock: bool) -> None:
    """Register vLLM's own classes (use_stock) or the plugin's under the architecture names. The
    plugin is loaded first, so vLLM's one-time plugin loading cannot undo the choice. (vLLM
    resolves a checkpoint path's class once per process: stock runs use their own copy.)"""
    from vllm import ModelRegistry
    from vllm.plugins import load_general_plugins

    assert set(STOCK) == set(plugin.ARCHITECTURES)
    load_general_plugins()
    if use_stock:
        for arch, module in STOCK.items():
            module = importlib.import_module(f"vllm.model_executor.models.{module}")
            ModelRegistry.register_model(arch, getattr(module, arch))
    else:
        plugin.register()


class Recorder:
    """Wraps a model's methods (instance attributes) to keep what they return, on the CPU."""

    def __init__(self):
        self.calls = {}

    def wrap(self, model, name):
        inner = getattr(model, name)

        def wrapped(*args, **kwargs):
            out = inner(*args, **kwargs)
            self.calls.setdefault(name, []).append((args, kwargs, out))
            return out

        setattr(model, name, wrapped)

    def media_steps(self):
        """recompute_mrope_positions calls whose window held media: (kwargs, output)."""
        return [(kw, out) for _, kw, out in self.calls.get("recompute_mrope_positions", [])
                if len(kw["multimodal_embeddings"])]


def serve(path, prompts, *, aot=None, use_stock=False, dtype="float32", before=(), **engine):
    """Generate 3 greedy tokens (with logprobs) for each prompt; returns (outputs, recorder,
    hf_config, model class name). aot: the hf_overrides entry, or None; before: prompts
    generated first by the same engine (to warm its prefix cache); engine: more LLM
    arguments."""
    from vllm import LLM
    from vllm.distributed import cleanup_dist_env_and_memory

    stock_classes(use_stock)
    kwargs = {} if aot is None else {"hf_overrides": {plugin.KEY: aot}}
    engine.setdefault("limit_mm_per_prompt", {"video": 1, "image": 0})
    llm = LLM(model=path, enforce_eager=True, max_model_len=1024, dtype=dtype, seed=0,
              max_num_seqs=4,
              gpu_memory_utilization=0.1, kv_cache_memory_bytes=1 << 26, **kwargs, **engine)
    rec = Recorder()

    def install(model):
        for name in RECORDED:
            if hasattr(model, name):
                rec.wrap(model, name)
        return type(model).__name__

    names = llm.apply_model(install)
    sampling = vllm.SamplingParams(max_tokens=3, temperature=0, logprobs=1)
    if before:
        llm.generate(list(before), sampling)
    outs = llm.generate(prompts, sampling)
    hf_config = llm.llm_engine.model_config.hf_config
    del llm
    gc.collect()
    cleanup_dist_env_and_memory()
    return outs, rec, hf_config, names[0]


def tokens_and_logprobs(outs):
    return [(list(o.prompt_token_ids), list(o.outputs[0].token_ids),
             [next(iter(lp.values())).logprob for lp in o.outputs[0].logprobs]) for o in outs]
