"""patch(model, reducer) on a tiny, randomly initialised LLaVA-OneVision built from a config (no
downloads): identity, token counts, scores, generation with the KV cache, batches, errors."""
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,  # noqa: E402
                          Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig)

from aot_kernels import AOTReducer, reducers  # noqa: E402
from aot_kernels.integrations.transformers import patch, reducer_of, unpatch  # noqa: E402

VIDEO, IMAGE = 290, 291
FRAMES, TOKENS = 4, 16  # 112 px / 14 = 8x8 patches, pooled 2x2 -> 4x4 tokens per frame


def tiny(attn="sdpa"):
    torch.manual_seed(0)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                num_attention_heads=2, image_size=112, patch_size=14)
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, vocab_size=300,
                       max_position_embeddings=4096)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, video_token_id=VIDEO,
                               image_token_id=IMAGE, vision_feature_layer=-1,
                               vision_feature_select_strategy="full")
    cfg._attn_implementation = attn
    return LlavaOnevisionForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


def prompt(batch=1):
    ids = torch.tensor([[1, 2, 3] + [VIDEO] * (FRAMES * TOKENS + 1) + [4, 5]] * batch)
    video = torch.randn(batch, FRAMES, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    return ids, video


def lm_lengths(model):
    """Sequence lengths the language model receives (forward pre-hook)."""
    seen = []

    def hook(module, args, kwargs):
        seen.append(kwargs["inputs_embeds"].shape[1])

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("reducer", [AOTReducer(1.0), reducers.build("topk", retention=1.0)],
                         ids=["aot", "topk"])
def test_keeping_every_token_gives_the_unpatched_logits(model, reducer):
    ids, video = prompt(2)
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values_videos=video).logits
        patch(model, reducer)
        try:
            got = model(input_ids=ids, pixel_values_videos=video).logits
        finally:
            unpatch(model)
        again = model(input_ids=ids, pixel_values_videos=video).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(again, want)  # unpatch restores the original behaviour


def test_language_model_sees_the_reducer_count_and_its_tokens():
    """The LM's video embeddings are exactly the reducer's output on the model's own features and
    on scores read from an eager-attention copy of the tower (an independent route)."""
    sdpa, eager = tiny("sdpa"), tiny("eager")
    ids, video = prompt()
    reducer = AOTReducer(0.25, clip_len=2)
    k = round(0.25 * FRAMES * TOKENS)
    captured = []
    hook = sdpa.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: captured.append(kw["inputs_embeds"]), with_kwargs=True)
    patch(sdpa, reducer, local_layer=None)
    with torch.no_grad():
        logits = sdpa(input_ids=ids, pixel_values_videos=video).logits
        out = eager.model.vision_tower(video.flatten(0, 1), output_attentions=True,
                                       output_hidden_states=True)
        received = out.attentions[-1].mean(dim=(1, 2))  # [F, 64]
        scores = eager.model.apply_pooling(received.unsqueeze(-1)).reshape(FRAMES, TOKENS)
        feats = eager.model.get_video_features(video, return_dict=True).pooler_output
    hook.remove()
    assert logits.shape[1] == 5 + k + 1 and captured[0].shape[1] == 5 + k + 1
    want = reducer(feats[0, :-1].reshape(FRAMES, TOKENS, -1), scores, grid=(4, 4))
    torch.testing.assert_close(captured[0][0, 3:3 + k], want.tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured[0][0, 3 + k], sdpa.model.image_newline)  # newline last
    assert reducer_of(sdpa) is reducer


def test_generation_with_the_kv_cache_matches_recomputing(model):
    ids, video = prompt()
    patch(model, AOTReducer(0.25, clip_len=2))
    try:
        with torch.no_grad():
            cached = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=6,
                                    do_sample=False)
            fresh = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=6,
                                   do_sample=False, use_cache=False)
    finally:
        unpatch(model)
    k = round(0.25 * FRAMES * TOKENS)
    assert cached.shape == (1, 5 + k + 1 + 6)  # the shortened prompt, then 6 new tokens
    assert torch.equal(cached, fresh)


def test_batch_with_different_reduced_counts_equals_one_row_at_a_time(model):
    """Threshold mode keeps a data-dependent count per video: rows are re-padded on the left and
    every row generates what it generates alone."""
    ids, video = prompt(2)
    video[1] = torch.randn(FRAMES, 3, 112, 112, generator=torch.Generator().manual_seed(7))
    reducer = AOTReducer(0.25, clip_len=2, tau=0.5)
    patch(model, reducer)
    try:
        with torch.no_grad():
            seen, hook = lm_lengths(model)
            both = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  pixel_values_videos=video, max_new_tokens=4, do_sample=False)
            hook.remove()
            alone = [model.generate(input_ids=ids[i:i + 1], pixel_values_videos=video[i:i + 1],
                                    max_new_tokens=4, do_sample=False) for i in range(2)]
    finally:
        unpatch(model)
    lengths = [a.shape[1] for a in alone]
    assert lengths[0] != lengths[1]  # the two videos kept different counts
    assert seen[0] == max(lengths) - 4
    for i, a in enumerate(alone):
        assert torch.equal(both[i, -a.shape[1]:], a[0])  # left padding, same tokens


def test_bad_combinations_are_named(model):
    ids, video = prompt()
    with pytest.raises(TypeError, match="LlavaOnevisionForConditionalGeneration"):
        patch(Qwen2ForCausalLM(model.config.text_config), AOTReducer(0.1))
    with pytest.raises(TypeError, match="reducer"):
        patch(model, "aot")
    with pytest.raises(ValueError, match="not patched"):
        unpatch(model)
    patch(model, AOTReducer(0.5, num_anchors=17))  # more anchors than the 16 tokens per frame
    try:
        with pytest.raises(ValueError, match="num_anchors=17"):
            model(input_ids=ids, pixel_values_videos=video)
        with pytest.raises(ValueError, match="images but no video"):
            model(input_ids=ids, pixel_values=torch.randn(1, 1, 3, 112, 112))
        with pytest.raises(ValueError, match="placeholders"):
            model(input_ids=ids[:, :-10], pixel_values_videos=video)
        with pytest.raises(ValueError, match="input_ids"):
            model(inputs_embeds=torch.randn(1, 70, 32), pixel_values_videos=video)
        text = model(input_ids=torch.tensor([[1, 2, 3]])).logits  # text only passes through
        assert text.shape == (1, 3, 300)
    finally:
        unpatch(model)
    with pytest.raises(ValueError, match="local_layer"):
        patch(model, AOTReducer(0.1), local_layer=7)
    assert not hasattr(model, "_aot_kernels_patch")
    assert math.isclose(AOTReducer(0.25).retention, 0.25)
