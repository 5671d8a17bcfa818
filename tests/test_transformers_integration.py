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


class Recording:
    """A reducer that remembers what it returned."""

    def __init__(self, reducer):
        self.reducer, self.calls = reducer, []

    def __call__(self, *args, **kwargs):
        out = self.reducer(*args, **kwargs)
        self.calls.append(out)
        return out


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
    # [F*N (+ the newline on transformers >= 5.23), D]
    want = reducer(feats[0, :FRAMES * TOKENS].reshape(FRAMES, TOKENS, -1), scores, grid=(4, 4))
    torch.testing.assert_close(captured[0][0, 3:3 + k], want.tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(captured[0][0, 3 + k], sdpa.model.image_newline)  # newline last
    assert reducer_of(sdpa) is reducer


def test_generation_with_the_kv_cache_matches_recomputing(model):
    ids, video = prompt()
    patch(model, AOTReducer(0.25, clip_len=2))
    seen, hook = lm_lengths(model)
    try:
        with torch.no_grad():
            cached = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=6,
                                    do_sample=False)
            fresh = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=6,
                                   do_sample=False, use_cache=False)
    finally:
        unpatch(model)
        hook.remove()
    k = round(0.25 * FRAMES * TOKENS)
    assert seen[0] == 5 + k + 1  # the language model's prefill: the shortened prompt
    assert cached.shape == (1, ids.shape[1] + 6)  # the caller's prompt, then 6 new tokens
    assert torch.equal(cached[:, :ids.shape[1]], ids)
    assert torch.equal(cached, fresh)


def test_batch_with_different_reduced_counts_equals_one_row_at_a_time(model):
    """Threshold mode keeps a data-dependent count per video: rows are re-padded on the left and
    every row generates what it generates alone."""
    ids, video = prompt(2)
    video[1] = torch.randn(FRAMES, 3, 112, 112, generator=torch.Generator().manual_seed(7))
    reducer = Recording(AOTReducer(0.25, clip_len=2, tau=0.5))
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
    counts = [len(r) for r in reducer.calls[0]]
    assert counts[0] != counts[1]  # the two videos kept different counts
    assert seen[0] == 5 + max(counts) + 1  # re-padded on the left to the longer row
    for i, a in enumerate(alone):
        assert torch.equal(both[i], a[0])  # the caller's prompt, then the same tokens


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


# ---- Qwen2.5-VL ---------------------------------------------------------------------------------

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

Q_VIDEO, Q_START, Q_END = 290, 292, 293


def tiny_qwen():
    torch.manual_seed(0)
    cfg = Qwen2_5_VLConfig(
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=32, patch_size=14, temporal_patch_size=2,
                           spatial_merge_size=2, window_size=56, fullatt_block_indexes=[0, 2],
                           tokens_per_second=2, in_channels=3),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, vocab_size=300,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=299,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [4, 2, 2]}),
        video_token_id=Q_VIDEO, image_token_id=291, vision_start_token_id=Q_START,
        vision_end_token_id=Q_END, bos_token_id=1, eos_token_id=299)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen()


def qwen_inputs(grids, seed=1, pad_to=None):
    """One video per row: (input_ids, attention_mask, pixel_values_videos, video_grid_thw);
    rows left-padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    rows = [[1, 2, Q_START] + [Q_VIDEO] * (t * h * w // 4) + [Q_END, 4, 5] for t, h, w in grids]
    longest = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (longest - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14, generator=g)
    return ids, mask, pixels, torch.tensor(grids)


def test_qwen_keeping_every_token_gives_the_unpatched_logits(qwen):
    ids, mask, pixels, thw = qwen_inputs([(4, 8, 8)])
    types = (ids == Q_VIDEO).int() * 2  # as the processor gives them: M-RoPE needs them
    with torch.no_grad():
        want = qwen(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw,
                    mm_token_type_ids=types).logits
        patch(qwen, AOTReducer(1.0))
        try:
            got = qwen(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw,
                       mm_token_type_ids=types).logits
        finally:
            unpatch(qwen)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_qwen_positions_are_the_kept_tokens_original_mrope_positions(qwen):
    ids, mask, pixels, thw = qwen_inputs([(4, 8, 8)])
    rec = Recording(AOTReducer(0.25, clip_len=2))
    seen = []
    hook = qwen.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["position_ids"], kw["inputs_embeds"])), with_kwargs=True)
    patch(qwen, rec)
    try:
        with torch.no_grad():
            qwen(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw)
    finally:
        unpatch(qwen)
        hook.remove()
    (reduced,) = rec.calls[0]  # one video, passed as a list
    k = round(0.25 * 4 * 16)
    assert len(reduced) == k
    full, _ = qwen.model.get_rope_index(ids, (ids == Q_VIDEO).int() * 2, video_grid_thw=thw)
    position_ids, embeds = seen[0]
    assert embeds.shape[1] == 6 + k and position_ids.shape == (4, 1, 6 + k)
    video = 3 + torch.arange(k)
    # Each kept token sits at its original (t, h, w) M-RoPE position; text keeps its own.
    assert torch.equal(position_ids[1:, 0, video], full[:, 0, 3 + reduced.positions])
    assert torch.equal(position_ids[1:, 0, :3], full[:, 0, :3])
    assert torch.equal(position_ids[1:, 0, -3:], full[:, 0, -3:])
    assert torch.equal(position_ids[0, 0], torch.arange(6 + k))  # text positions
    torch.testing.assert_close(embeds[0, video], reduced.tokens)


def test_qwen_batch_of_videos_of_different_lengths_generates_like_each_alone(qwen):
    grids = [(4, 8, 8), (2, 8, 8)]
    ids, mask, pixels, thw = qwen_inputs(grids)
    patch(qwen, AOTReducer(0.25, clip_len=2))
    try:
        with torch.no_grad():
            both = qwen.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                                 video_grid_thw=thw, max_new_tokens=4, do_sample=False)
            split = [0, 4 * 64]
            alone = []
            for i, (t, h, w) in enumerate(grids):
                one_ids, _, _, one_thw = qwen_inputs([(t, h, w)])
                px = pixels[split[i]:split[i] + t * h * w]
                alone.append(qwen.generate(input_ids=one_ids, pixel_values_videos=px,
                                           video_grid_thw=one_thw, max_new_tokens=4,
                                           do_sample=False))
            cached = qwen.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                                   video_grid_thw=thw, max_new_tokens=4, do_sample=False,
                                   use_cache=False)
    finally:
        unpatch(qwen)
    assert torch.equal(both, cached)  # the KV cache agrees with recomputing
    for i, a in enumerate(alone):
        assert torch.equal(both[i, -a.shape[1]:], a[0])
    assert [a.shape[1] for a in alone] == [6 + 64 + 4, 6 + 32 + 4]  # the callers' prompts + 4


def test_qwen_placeholder_mismatch_is_named(qwen):
    ids, mask, pixels, thw = qwen_inputs([(4, 8, 8)])
    patch(qwen, AOTReducer(0.25))
    try:
        with pytest.raises(ValueError, match="placeholders"):
            qwen(input_ids=ids[:, :-10], pixel_values_videos=pixels, video_grid_thw=thw)
        with pytest.raises(ValueError, match="video_grid_thw"):
            qwen(input_ids=ids, pixel_values_videos=pixels)
    finally:
        unpatch(qwen)


def test_qwen_scores_match_eager_attention_and_follow_the_merge_order(qwen, monkeypatch):
    """The hook's received attention equals the eager attention weights of the last block, and the
    pooling undoes the tower's window permutation (each 2x2 merge unit, in raster order)."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq

    from aot_kernels.integrations import transformers as integ

    ids, mask, pixels, thw = qwen_inputs([(2, 8, 8)])
    eager = tiny_qwen()
    eager.config.vision_config._attn_implementation = "eager"
    last = eager.model.visual.blocks[-1].attn
    weights = []
    original = mq.eager_attention_forward

    def recording(module, *args, **kwargs):
        out = original(module, *args, **kwargs)
        if module is last:
            weights.append(out[1][0].mean(dim=(0, 1)))  # [l]: over heads, then queries
        return out

    monkeypatch.setattr(mq, "eager_attention_forward", recording)
    with integ._capture_scores(eager.model.visual.blocks, {"g": 2}, integ._qwen_vision_received) as got:
        with torch.no_grad():
            eager.model.get_video_features(pixels, thw, return_dict=True)
    torch.testing.assert_close(got["g"], torch.cat(weights), rtol=1e-5, atol=1e-7)

    adapter = integ._Qwen2_5_VL(eager, "auto")
    from transformers.vision_utils import get_vision_window_index

    vis = eager.model.visual
    window_index, _ = get_vision_window_index(thw, spatial_merge_size=2, window_size=vis.window_size,
                                              patch_size=14)
    raster = torch.arange(2 * 64, dtype=torch.float32)  # patch p belongs to merge unit p // 4
    permuted = raster.view(-1, 4)[window_index].flatten()  # the order the blocks see
    pooled = adapter._pool(permuted, thw)[0]
    torch.testing.assert_close(pooled.flatten(), 4 * torch.arange(32.0) + 1.5)
    assert pooled.shape == (2, 16) and adapter.local_layer == 0


def test_qwen_two_videos_in_one_row(qwen):
    """Each placeholder run gets its own video's reduction, in order."""
    g = torch.Generator().manual_seed(3)
    grids = [(2, 8, 8), (4, 8, 8)]
    row = [1, Q_START] + [Q_VIDEO] * 32 + [Q_END, 7, Q_START] + [Q_VIDEO] * 64 + [Q_END, 4]
    ids = torch.tensor([row])
    pixels = torch.randn(2 * 64 + 4 * 64, 3 * 2 * 14 * 14, generator=g)
    rec = Recording(AOTReducer(0.25, clip_len=2))
    seen, hook = lm_lengths(qwen)
    patch(qwen, rec)
    try:
        with torch.no_grad():
            out = qwen.generate(input_ids=ids, pixel_values_videos=pixels,
                                video_grid_thw=torch.tensor(grids), max_new_tokens=3,
                                do_sample=False)
    finally:
        unpatch(qwen)
        hook.remove()
    assert seen[0] == 7 + 8 + 16  # 7 text tokens + 25% of 32 + 25% of 64
    assert out.shape == (1, ids.shape[1] + 3) and torch.equal(out[:, :ids.shape[1]], ids)
    assert [len(r) for call in rec.calls for r in call] == [8, 16]
