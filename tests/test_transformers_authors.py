"""patch(model, AuthorsAOTReducer) on a tiny, randomly initialised LLaVA-OneVision (SPEC §8): the
reducer runs on the un-pooled features after the projector with the layer scores, and the
language model receives exactly what reference/authors_reference.py computes from the model's
own features and eager attention maps."""
import pytest
import torch

pytest.importorskip("transformers")
from aot_kernels import AOTReducer, AuthorsAOTReducer, reducers  # noqa: E402
from aot_kernels.integrations.transformers import patch, unpatch  # noqa: E402
from reference import authors_reference as A  # noqa: E402
from test_transformers_integration import FRAMES, TOKENS, prompt, tiny, tiny_qwen  # noqa: E402

SETTINGS = dict(anchors=16, keep_ratio=0.3, clip_len=2, grid=(8, 8))  # 8x8 patches, pooled 4x4


def captured_embeddings(model):
    seen = []
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"]), with_kwargs=True)
    return seen, hook


def test_language_model_receives_the_reference_pipeline():
    sdpa, eager = tiny("sdpa"), tiny("eager")
    ids, video = prompt()
    reducer = AuthorsAOTReducer(**SETTINGS)
    seen, hook = captured_embeddings(sdpa)
    patch(sdpa, reducer)  # score layers "auto": 5 * 3 // 26 = 0 and 24 * 3 // 26 = 2
    try:
        with torch.no_grad():
            sdpa(input_ids=ids, pixel_values_videos=video)
            out = eager.model.vision_tower(video.flatten(0, 1), output_attentions=True,
                                           output_hidden_states=True)
            unpooled = eager.model.multi_modal_projector(out.hidden_states[-1])  # [F, 64, D]
    finally:
        hook.remove()
        unpatch(sdpa)
    # SPEC §8.2: attention each patch receives, summed over queries, heads averaged.
    received = [out.attentions[layer].mean(1).sum(1) for layer in (0, 2)]
    ref = A.reduce_video(unpooled.double().numpy(), received[1].double().numpy(),
                         received[0].double().numpy(), grid=(8, 8), anchors=16, keep_ratio=0.3,
                         clip_len=2)
    k = len(ref.tokens)
    embeds = seen[0][0]
    assert embeds.shape[0] == 5 + k + 1
    torch.testing.assert_close(embeds[3:3 + k].double(), torch.from_numpy(ref.tokens),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(embeds[3 + k], sdpa.model.image_newline)  # the newline last
    assert k != FRAMES * TOKENS  # a real reduction (and a data-dependent count)


def test_generation_batches_and_unpatch():
    model = tiny()
    ids, video = prompt(2)
    video[1] = torch.randn(FRAMES, 3, 112, 112, generator=torch.Generator().manual_seed(2))
    patch(model, reducers.build("aot-authors", model="llava-onevision-7b", benchmark="mvbench",
                                **SETTINGS))
    prefill = []  # what the language model's first step sees: the shortened prompt
    hook = model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: prefill.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        with torch.no_grad():
            both = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  pixel_values_videos=video, max_new_tokens=4, do_sample=False)
            alone, lengths = [], []
            for i in range(2):
                prefill.clear()
                alone.append(model.generate(input_ids=ids[i:i + 1],
                                            pixel_values_videos=video[i:i + 1],
                                            max_new_tokens=4, do_sample=False))
                lengths.append(prefill[0])
            fresh = model.generate(input_ids=ids[:1], pixel_values_videos=video[:1],
                                   max_new_tokens=4, do_sample=False, use_cache=False)
    finally:
        unpatch(model)
        hook.remove()
    assert lengths[0] != lengths[1]  # the two videos kept different counts
    for i, a in enumerate(alone):
        assert torch.equal(both[i], a[0])  # the caller's prompt, then the same tokens
    assert torch.equal(fresh, alone[0])  # the KV cache agrees with recomputing
    with torch.no_grad():  # unpatched: the full prompt again
        full = model(input_ids=ids[:1], pixel_values_videos=video[:1]).logits
    assert full.shape[1] == ids.shape[1]


def test_bad_uses_are_named():
    with pytest.raises(TypeError, match="authors' variant.*LLaVA-OneVision"):
        patch(tiny_qwen(), AuthorsAOTReducer(**SETTINGS))
    with pytest.raises(ValueError, match="score_layers"):
        patch(tiny(), AuthorsAOTReducer(**SETTINGS), score_layers=(0, 9))
    with pytest.raises(ValueError, match="pools its video features bilinearly"):
        patch(tiny(), AuthorsAOTReducer(pool="average", **SETTINGS))
    with pytest.raises(ValueError, match="takes score_layers"):
        patch(tiny(), AuthorsAOTReducer(**SETTINGS), local_layer=1)
    with pytest.raises(ValueError, match="score_layers applies to the authors' variant"):
        patch(tiny(), AOTReducer(0.25), score_layers=(0, 1))
