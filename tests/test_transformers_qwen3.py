"""patch(model, reducer) on tiny random Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE built from
configs (issue 23 item 2, SPEC §11): identity, the prefill's layout (text, timestamps and
start/end wrappers, the reduced video tokens at their original M-RoPE positions), DeepStack
reduced with the reducer's own operator, generate, left-padded batches (Qwen3.5's linear
attention with re-padding), scores against eager attention, errors. Also run against the oldest
transformers (Makefile HF_TESTS)."""
import importlib
import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")

from aot_kernels import AOTReducer, reducers  # noqa: E402
from aot_kernels.integrations import transformers as integ  # noqa: E402
from aot_kernels.integrations.transformers import patch, unpatch  # noqa: E402
from test_transformers_integration import Recording  # noqa: E402

VIDEO, IMAGE, START, END = 290, 291, 292, 293
PATCH = 16  # the Qwen3-VL / Qwen3.5 ViT patch (Qwen2.5-VL's is 14)
VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
              patch_size=PATCH, temporal_patch_size=2, spatial_merge_size=2,
              num_position_embeddings=64, in_channels=3)  # a square learned grid
# mrope_section sums to head_dim / 2 (the defaults are for 128-wide heads)
ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16, intermediate_size=64, vocab_size=300, max_position_embeddings=4096,
            rope_parameters=ROPE, bos_token_id=1, eos_token_id=299)
TOKENS = dict(video_token_id=VIDEO, image_token_id=IMAGE, vision_start_token_id=START,
              vision_end_token_id=END)
KINDS = ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"]
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
HYBRID = dict(layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4,
              linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
              linear_num_value_heads=4, rope_parameters=dict(ROPE, partial_rotary_factor=1.0))


def tiny(kind, attn="sdpa"):
    torch.manual_seed(0)
    T = transformers
    if kind == "qwen3_vl":
        cfg = T.Qwen3VLConfig(vision_config=dict(VISION, deepstack_visual_indexes=[0, 1]),
                              text_config=dict(TEXT), **TOKENS)
        cls = T.Qwen3VLForConditionalGeneration
    elif kind == "qwen3_vl_moe":
        cfg = T.Qwen3VLMoeConfig(vision_config=dict(VISION, deepstack_visual_indexes=[0, 1]),
                                 text_config=dict(TEXT, decoder_sparse_step=1, **MOE), **TOKENS)
        cls = T.Qwen3VLMoeForConditionalGeneration
    elif kind == "qwen3_5":
        cfg = T.Qwen3_5Config(vision_config=dict(VISION), text_config=dict(TEXT, **HYBRID),
                              **TOKENS)
        cls = T.Qwen3_5ForConditionalGeneration
    else:
        cfg = T.Qwen3_5MoeConfig(vision_config=dict(VISION),
                                 text_config=dict(TEXT, shared_expert_intermediate_size=32,
                                                  **HYBRID, **MOE), **TOKENS)
        cls = T.Qwen3_5MoeForConditionalGeneration
    cfg._attn_implementation = attn
    return cls(cfg).eval()


_MODELS = {}


def model_of(kind):
    if kind not in _MODELS:
        _MODELS[kind] = tiny(kind)
    return _MODELS[kind]


def inputs(grids, seed=1):
    """One video per row as Qwen3VLProcessor expands it: per temporal patch `<t seconds>` (two
    text tokens here) + START + H/2 * W/2 x VIDEO + END; rows left-padded with 0."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t, h, w in grids:
        row = [1, 2]
        for f in range(t):
            row += [10 + f, 20, START] + [VIDEO] * (h * w // 4) + [END]
        rows.append(row + [4, 5])
    longest = max(map(len, rows))
    ids = torch.tensor([[0] * (longest - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * PATCH * PATCH, generator=g)
    return ids, mask, pixels, torch.tensor(grids)


def types(ids):
    return (ids == IMAGE).int() + 2 * (ids == VIDEO).int()


def lm_inputs(model):
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    return seen, hook


def prefill(model, reducer, **call):
    """The keyword arguments the language model gets in one patched forward."""
    seen, hook = lm_inputs(model)
    patch(model, reducer)
    try:
        with torch.no_grad():
            model(**call)
    finally:
        unpatch(model)
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_every_token_gives_the_unpatched_logits(kind):
    model = model_of(kind)
    ids, mask, pixels, thw = inputs([(4, 8, 8)])
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw,
                     mm_token_type_ids=types(ids)).logits
        patch(model, AOTReducer(1.0))
        try:
            got = model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw).logits
        finally:
            unpatch(model)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_keeps_the_wrappers_and_the_reduced_tokens_at_their_positions(kind):
    """At 25%: the LM sees every text token (timestamps, vision start/end included) and exactly
    round(0.25 F N) video tokens, each at its original 3-D M-RoPE position; the text row counts
    0..L-1; the video embeddings are the reducer's tokens and, for Qwen3-VL, each DeepStack level
    is the reducer's map applied to that level's features."""
    model = model_of(kind)
    ids, mask, pixels, thw = inputs([(4, 8, 8)])
    recording = Recording(AOTReducer(0.25, lam_inter=1.0, clip_len=2))
    kw = prefill(model, recording, input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw)
    (reduced,) = recording.calls[0]
    text = int((ids != VIDEO).sum())
    assert len(reduced) == round(0.25 * 4 * 16)
    assert kw["inputs_embeds"].shape[1] == text + len(reduced)
    full, _ = model.model.get_rope_index(ids, types(ids), video_grid_thw=thw)
    video_cols = torch.nonzero(ids[0] == VIDEO).flatten()
    kept_cols = video_cols[reduced.positions]
    keep = ids[0] != VIDEO
    keep[kept_cols] = True
    pos = kw["position_ids"]
    assert pos.shape == (4, 1, text + len(reduced))
    assert torch.equal(pos[1:, 0], full[:, 0, keep])
    assert torch.equal(pos[0, 0], torch.arange(text + len(reduced)))
    short = torch.nonzero(keep).flatten()
    in_short = torch.nonzero(ids[0, short] == VIDEO).flatten()
    assert ((ids[0, short] == START).sum(), (ids[0, short] == END).sum()) == (4, 4)
    torch.testing.assert_close(kw["inputs_embeds"][0, in_short], reduced.tokens)
    if kind.startswith("qwen3_vl"):
        with torch.no_grad():
            out = model.model.get_video_features(pixels, thw, return_dict=True)
        assert torch.equal(torch.nonzero(kw["visual_pos_masks"][0]).flatten(), in_short)
        levels = kw["deepstack_visual_embeds"]
        assert len(levels) == 2
        for got, level in zip(levels, out.deepstack_features):
            level = level[0] if isinstance(level, (tuple, list)) else level
            # the same weighted means of this level's tokens as the main features' (item 1)
            torch.testing.assert_close(got, reduced.apply(level.view(4, 16, -1)))
            assert not torch.allclose(got, level[reduced.positions])  # merged, not picked
    else:
        assert kw.get("deepstack_visual_embeds") is None


def test_a_temporal_patch_that_keeps_nothing_keeps_its_timestamp_and_wrappers():
    """DyCoke at 25% over 4-patch windows keeps the first patch whole and nothing of the rest:
    the later patches stay as `<t seconds><|vision_start|><|vision_end|>`."""
    model = model_of("qwen3_vl")
    ids, mask, pixels, thw = inputs([(4, 8, 8)])
    kw = prefill(model, reducers.build("dycoke", retention=0.25), input_ids=ids,
                 pixel_values_videos=pixels, video_grid_thw=thw)
    assert kw["inputs_embeds"].shape[1] == int((ids != VIDEO).sum()) + 16
    assert kw["deepstack_visual_embeds"][0].shape == (16, 32)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_returns_the_callers_prompt_then_the_answer(kind):
    model = model_of(kind)
    ids, mask, pixels, thw = inputs([(4, 8, 8)])
    patch(model, AOTReducer(0.25))
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw,
                                 max_new_tokens=3, do_sample=False)
            nocache = model.generate(input_ids=ids, pixel_values_videos=pixels,
                                     video_grid_thw=thw, max_new_tokens=3, do_sample=False,
                                     use_cache=False)
    finally:
        unpatch(model)
    assert out.shape == (1, ids.shape[1] + 3)
    assert torch.equal(out[:, :ids.shape[1]], ids)
    assert torch.equal(out, nocache)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_of_two_generates_like_each_alone(kind):
    """Two videos of 4 and 2 temporal patches, left-padded: the reduced rows differ in length and
    are re-padded (Qwen3.5: its linear-attention layers zero the pads through the mask)."""
    model = model_of(kind)
    grids = [(4, 8, 8), (2, 8, 8)]
    ids, mask, pixels, thw = inputs(grids)
    patch(model, AOTReducer(0.25))
    try:
        with torch.no_grad():
            both = model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                                  video_grid_thw=thw, max_new_tokens=4, do_sample=False)
            alone, first = [], 0
            for grid in grids:
                one_ids, _, _, one_thw = inputs([grid])
                count = grid[0] * grid[1] * grid[2]
                alone.append(model.generate(input_ids=one_ids,
                                            pixel_values_videos=pixels[first:first + count],
                                            video_grid_thw=one_thw, max_new_tokens=4,
                                            do_sample=False))
                first += count
    finally:
        unpatch(model)
    assert torch.equal(both[:, :ids.shape[1]], ids)  # the caller's padding stays
    for b, one in enumerate(alone):
        assert torch.equal(both[b, -4:], one[0, -4:]), (kind, b)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen3_5"])
def test_a_row_without_a_video_in_the_batch(kind):
    """A text-only row next to a video row, left-padded: each generates as it does alone."""
    model = model_of(kind)
    ids, mask, pixels, thw = inputs([(2, 8, 8)])
    text = torch.tensor([[1, 2, 3, 4, 5]])
    pad = ids.shape[1] - text.shape[1]
    both_ids = torch.cat([ids, torch.cat([torch.zeros(1, pad, dtype=torch.long), text], 1)])
    both_mask = torch.cat([mask, torch.cat([torch.zeros(1, pad, dtype=torch.long),
                                            torch.ones_like(text)], 1)])
    patch(model, AOTReducer(0.25))
    try:
        with torch.no_grad():
            both = model.generate(input_ids=both_ids, attention_mask=both_mask,
                                  pixel_values_videos=pixels, video_grid_thw=thw,
                                  max_new_tokens=3, do_sample=False)
            video_alone = model.generate(input_ids=ids, pixel_values_videos=pixels,
                                         video_grid_thw=thw, max_new_tokens=3, do_sample=False)
            text_alone = model.generate(input_ids=text, max_new_tokens=3, do_sample=False)
    finally:
        unpatch(model)
    assert torch.equal(both[0, -3:], video_alone[0, -3:])
    assert torch.equal(both[1, -3:], text_alone[0, -3:])


@pytest.mark.parametrize("kind", ["qwen3_5", "qwen3_5_moe"])
def test_hybrid_layers_give_a_padded_row_its_own_logits(kind):
    """Qwen3.5's Gated DeltaNet layers with re-padding: the shorter row's last logits in the
    padded batch equal the row alone (to the chunked recurrence's rounding)."""
    model = model_of(kind)
    grids = [(4, 8, 8), (2, 8, 8)]
    ids, mask, pixels, thw = inputs(grids)
    one_ids, _, one_pixels, one_thw = inputs([grids[1]])
    patch(model, AOTReducer(0.25))
    try:
        with torch.no_grad():
            both = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                         video_grid_thw=thw).logits
            one = model(input_ids=one_ids, pixel_values_videos=pixels[4 * 64:],
                        video_grid_thw=one_thw).logits
    finally:
        unpatch(model)
    torch.testing.assert_close(both[1, -3:], one[0, -3:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen3_5"])
def test_scores_match_eager_attention(kind, monkeypatch):
    """The hook recomputes the attention each patch receives from the block's own projections
    (the model keeps sdpa): equal to the eager attention weights, one segment per temporal
    patch."""
    eager = tiny(kind)
    eager.config.vision_config._attn_implementation = "eager"
    module = importlib.import_module(type(eager.model.visual.blocks[0].attn).__module__)
    last = eager.model.visual.blocks[-1].attn
    weights = []
    original = module.eager_attention_forward

    def recording(attn, *args, **kwargs):
        out = original(attn, *args, **kwargs)
        if attn is last:
            weights.append(out[1][0].mean(dim=(0, 1)))
        return out

    monkeypatch.setattr(module, "eager_attention_forward", recording)
    ids, mask, pixels, thw = inputs([(2, 8, 8)])
    with integ._capture_scores(eager.model.visual.blocks, {"g": 2},
                               integ._qwen_vision_received) as got:
        with torch.no_grad():
            eager.model.get_video_features(pixels, thw, return_dict=True)
    assert len(weights) == 2
    torch.testing.assert_close(got["g"], torch.cat(weights), rtol=1e-5, atol=1e-7)


def test_local_layer_default_is_documented():
    assert patch(model_of("qwen3_vl"), AOTReducer(0.25))._aot_kernels_patch[
        "adapter"].local_layer == 0  # the first DeepStack block (deepstack_visual_indexes[0])
    unpatch(model_of("qwen3_vl"))
    assert patch(model_of("qwen3_5"), AOTReducer(0.25))._aot_kernels_patch[
        "adapter"].local_layer == 3 // 4  # no DeepStack: a quarter of the depth
    unpatch(model_of("qwen3_5"))


def test_errors_are_named():
    model = model_of("qwen3_vl")
    ids, mask, pixels, thw = inputs([(4, 8, 8)])

    def plain(features, scores, local_scores=None, *, grid=None):
        return AOTReducer(0.25)(features, scores, local_scores, grid=grid)

    with pytest.raises(TypeError, match="return_map"):
        patch(model, plain)  # DeepStack needs the reducer's map

    def ignoring(features, scores, local_scores=None, *, grid=None, **kwargs):
        return plain(features, scores, local_scores, grid=grid)

    patch(model, ignoring)
    try:
        with pytest.raises(TypeError, match="returned no token_map"):
            model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw)
        with pytest.raises(ValueError, match="^position_ids with pixel_values_videos[^(]*$"):
            model(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw,
                  position_ids=torch.zeros_like(ids))
    finally:
        unpatch(model)
    patch(model_of("qwen3_5"), plain).__call__  # no DeepStack: any reducer
    unpatch(model_of("qwen3_5"))
    with pytest.raises(TypeError, match="Qwen3VLForConditionalGeneration"):
        patch(transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=300)), AOTReducer(0.25))
    patch(model, AOTReducer(0.25))
    try:
        with pytest.raises(ValueError, match="temporal patch"):
            model(input_ids=ids[:, :-20], pixel_values_videos=pixels, video_grid_thw=thw)
        with pytest.raises(ValueError, match="video_grid_thw"):
            model(input_ids=ids, pixel_values_videos=pixels)
    finally:
        unpatch(model)


def test_tokens_go_to_the_placeholders_in_position_order():
    """The model fills the kept placeholders column by column: a reduction whose tokens are
    not ascending by position is reordered (its map too); two tokens at one position cannot
    be placed."""
    g = torch.Generator().manual_seed(3)
    feats, scores = torch.randn(4, 16, 8, generator=g), torch.rand(4, 16, generator=g)
    out = AOTReducer(0.25, grid=(4, 4), lam_inter=1.0, clip_len=2)(feats, scores, return_map=True)
    import dataclasses
    order = torch.randperm(len(out), generator=g)
    shuffled = dataclasses.replace(out, tokens=out.tokens[order], positions=out.positions[order],
                                   frame_ids=out.frame_ids[order], sizes=out.sizes[order],
                                   dynamic=out.dynamic[order],
                                   token_map=out.token_map.reordered(order))
    back = integ._in_position_order(shuffled)
    assert torch.equal(back.positions, out.positions)
    torch.testing.assert_close(back.tokens, out.tokens, rtol=0, atol=0)
    torch.testing.assert_close(back.apply(feats), out.tokens, rtol=0, atol=1e-5)
    twice = dataclasses.replace(out, positions=torch.zeros_like(out.positions))
    with pytest.raises(ValueError, match="two tokens at one position"):
        integ._in_position_order(twice)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen3_5"])
def test_several_sequences_per_prompt(kind):
    model = model_of(kind)
    ids, mask, pixels, thw = inputs([(2, 8, 8)])
    patch(model, AOTReducer(0.25))
    try:
        with torch.no_grad():
            if "mm_encoder_outputs" in inspect.signature(type(model).forward).parameters:
                out = model.generate(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw,
                                     max_new_tokens=3, num_beams=2, num_return_sequences=2,
                                     do_sample=False)
                assert out.shape == (2, ids.shape[1] + 3)
            else:  # 5.17: the features are handed over through get_video_features
                with pytest.raises(ValueError, match="num_return_sequences"):
                    model.generate(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=thw,
                                   max_new_tokens=3, num_beams=2, num_return_sequences=2,
                                   do_sample=False)
    finally:
        unpatch(model)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen3_5"])
def test_an_image_and_a_video_in_one_prompt(kind):
    """The image's tokens pass untouched (the model encodes it itself); the video's are reduced;
    DeepStack covers both (image tokens, then the reduced video's, in prompt order)."""
    model = model_of(kind)
    ids, mask, pixels, thw = inputs([(2, 8, 8)])
    image = [START] + [IMAGE] * 16 + [END]
    ids = torch.cat([ids[:, :2], torch.tensor([image]), ids[:, 2:]], 1)
    image_pixels = torch.randn(64, 3 * 2 * PATCH * PATCH, generator=torch.Generator().manual_seed(4))
    image_thw = torch.tensor([[1, 8, 8]])
    seen, hook = lm_inputs(model)
    recording = Recording(AOTReducer(0.25))
    patch(model, recording)
    try:
        with torch.no_grad():
            model(input_ids=ids, pixel_values=image_pixels, image_grid_thw=image_thw,
                  pixel_values_videos=pixels, video_grid_thw=thw)
            out = model.generate(input_ids=ids, pixel_values=image_pixels,
                                 image_grid_thw=image_thw, pixel_values_videos=pixels,
                                 video_grid_thw=thw, max_new_tokens=2, do_sample=False)
    finally:
        unpatch(model)
    kw = seen[0]
    assert kw["inputs_embeds"].shape[1] == int((ids != VIDEO).sum()) + 8
    full, _ = model.model.get_rope_index(ids, types(ids), image_grid_thw=image_thw,
                                         video_grid_thw=thw)
    image_cols = torch.nonzero(ids[0] == IMAGE).flatten()
    assert torch.equal(kw["position_ids"][1:, 0, image_cols], full[:, 0, image_cols])
    if kind == "qwen3_vl":  # image features at the image's slots, the map's at the video's
        with torch.no_grad():
            image = model.model.get_image_features(image_pixels, image_thw, return_dict=True)
            video = model.model.get_video_features(pixels, thw, return_dict=True)
        (reduced,) = recording.calls[0]
        for got, im, vid in zip(kw["deepstack_visual_embeds"], image.deepstack_features,
                                video.deepstack_features):
            im = im[0] if isinstance(im, (tuple, list)) else im
            vid = vid[0] if isinstance(vid, (tuple, list)) else vid
            assert got.shape == (16 + 8, 32)
            torch.testing.assert_close(got[:16], im)
            torch.testing.assert_close(got[16:], reduced.apply(vid.view(2, 16, -1)))
    assert torch.equal(out[:, :ids.shape[1]], ids)
