"""generate on a patched model keeps transformers' contract: the output is the caller's own
input_ids (full length, with the caller's padding) followed by the generated tokens, so
`out[:, inputs["input_ids"].shape[1]:]` is the answer; return_dict_in_generate outputs agree.
Tiny random LLaVA-OneVision / Qwen2.5-VL built from configs (no downloads)."""
import inspect
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from aot_kernels import AOTReducer  # noqa: E402
from aot_kernels.integrations import transformers as integ  # noqa: E402
from aot_kernels.integrations.transformers import patch, unpatch  # noqa: E402
from test_transformers_integration import (FRAMES, TOKENS, VIDEO, Recording, prompt,  # noqa: E402
                                           qwen_inputs, tiny, tiny_qwen)

NEW = 5


@pytest.fixture(scope="module")
def model():
    return tiny()


def greedy_by_forward(model, ids, video, steps):
    """The greedy answer recomputed with the patched forward on the caller's full prompt plus the
    tokens so far (no generate, no cache): an independent route to the same tokens."""
    answer = ids.new_empty(ids.shape[0], 0)
    for _ in range(steps):
        logits = model(input_ids=torch.cat([ids, answer], 1), pixel_values_videos=video).logits
        answer = torch.cat([answer, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return answer


def test_one_video_output_starts_with_the_callers_prompt(model):
    ids, video = prompt()
    length = ids.shape[1]
    patch(model, AOTReducer(0.25, clip_len=2))
    try:
        with torch.no_grad():
            out = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=NEW,
                                 do_sample=False)
            want = greedy_by_forward(model, ids, video, NEW)
            rich = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=NEW,
                                  do_sample=False, return_dict_in_generate=True,
                                  output_scores=True, output_logits=True)
            by_name = model.generate(inputs=ids, pixel_values_videos=video, max_new_tokens=NEW,
                                     do_sample=False)  # generate's own name for input_ids
            # max_length counts the caller's prompt, as on the unpatched model
            capped = model.generate(ids, pixel_values_videos=video, max_length=length + 3,
                                    do_sample=False)
    finally:
        unpatch(model)
    assert out.shape == (1, length + NEW)
    assert torch.equal(out[:, :length], ids)  # unshortened: every video placeholder is there
    assert torch.equal(out[:, length:], want)  # the model-card slice is the answer
    assert torch.equal(rich.sequences, out)
    assert len(rich.scores) == len(rich.logits) == NEW  # one per generated token
    assert torch.equal(torch.stack(rich.scores, 1).argmax(-1), out[:, length:])
    assert torch.equal(capped, out[:, :length + 3]) and torch.equal(by_name, out)


def left_padded_batch():
    """Two rows of different prompt lengths, left-padded with 0 (attention_mask 0), each with its
    own video."""
    ids, video = prompt(2)
    video[1] = torch.randn(FRAMES, 3, 112, 112, generator=torch.Generator().manual_seed(7))
    rows = [[1, 2, 3, 6, 7, 8] + [VIDEO] * (FRAMES * TOKENS + 1) + [4, 5],
            [1, 2, 3] + [VIDEO] * (FRAMES * TOKENS + 1) + [4, 5]]
    longest = max(map(len, rows))
    ids = torch.tensor([[0] * (longest - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows])
    return ids, mask, video, rows


def test_left_padded_batch_keeps_the_callers_padding(model):
    ids, mask, video, rows = left_padded_batch()
    length = ids.shape[1]
    reducer = Recording(AOTReducer(0.25, clip_len=2, tau=0.5))  # a data-dependent count per video
    patch(model, reducer)
    try:
        with torch.no_grad():
            rich = model.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=video,
                                  max_new_tokens=NEW, do_sample=False,
                                  return_dict_in_generate=True, output_scores=True)
            counts = [len(r) for r in reducer.calls[0]]
            alone = [model.generate(input_ids=torch.tensor([r]), pixel_values_videos=video[i:i + 1],
                                    max_new_tokens=NEW, do_sample=False)
                     for i, r in enumerate(rows)]
    finally:
        unpatch(model)
    assert counts[0] != counts[1]  # the two videos kept different counts
    out = rich.sequences
    assert out.shape == (2, length + NEW)
    assert torch.equal(out[:, :length], ids)  # the caller's prompt and padding, unchanged
    for i, a in enumerate(alone):  # each row's answer is what the row generates alone
        assert torch.equal(out[i, length:], a[0, len(rows[i]):])
    assert torch.equal(torch.stack(rich.scores, 1).argmax(-1), out[:, length:])


def test_qwen_left_padded_batch_keeps_the_callers_prompt():
    qwen = tiny_qwen()
    ids, mask, pixels, thw = qwen_inputs([(4, 8, 8), (2, 8, 8)])
    length = ids.shape[1]
    patch(qwen, AOTReducer(0.25, clip_len=2))
    try:
        with torch.no_grad():
            rich = qwen.generate(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels,
                                 video_grid_thw=thw, max_new_tokens=NEW, do_sample=False,
                                 return_dict_in_generate=True, output_logits=True)
            alone = qwen.generate(input_ids=ids[1:, mask[1] == 1], pixel_values_videos=pixels[256:],
                                  video_grid_thw=thw[1:], max_new_tokens=NEW, do_sample=False)
    finally:
        unpatch(qwen)
    out = rich.sequences
    assert out.shape == (2, length + NEW) and torch.equal(out[:, :length], ids)
    assert torch.equal(out[1, length:], alone[0, -NEW:])
    assert torch.equal(torch.stack(rich.logits, 1).argmax(-1), out[:, length:])


def test_several_sequences_per_prompt_repeat_the_prompt(model):
    ids, video = prompt()
    patch(model, AOTReducer(0.25, clip_len=2))
    try:
        with torch.no_grad():
            if "mm_encoder_outputs" in inspect.signature(type(model).forward).parameters:
                out = model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=3,
                                     num_beams=2, num_return_sequences=2, do_sample=False)
                assert out.shape == (2, ids.shape[1] + 3)
                assert torch.equal(out[:, :ids.shape[1]], ids.expand(2, -1))
            else:  # transformers < 5.23 cannot hand reduced features to an expanded batch
                with pytest.raises(ValueError, match="num_return_sequences"):
                    model.generate(input_ids=ids, pixel_values_videos=video, max_new_tokens=3,
                                   num_beams=2, num_return_sequences=2, do_sample=False)
    finally:
        unpatch(model)


def test_text_only_generate_is_untouched(model):
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
        patch(model, AOTReducer(0.25))
        try:
            got = model.generate(ids, max_new_tokens=3, do_sample=False)
            with pytest.raises(TypeError, match="positional"):
                model.generate(ids, None)
        finally:
            unpatch(model)
    assert torch.equal(got, want)


def test_transformers_version_range():
    with pytest.raises(RuntimeError, match=r"transformers>=5\.17,<5\.24"):
        integ._check_version("5.16.2")
    with pytest.warns(UserWarning, match="tested with transformers"):
        integ._check_version("5.24.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for inside in ("5.17.0", "5.20.1", "5.23.0", "5.23.9.dev0"):
            integ._check_version(inside)
        integ._check_version(transformers.__version__)  # the installed one is in the range


def test_patch_checks_the_installed_transformers(model, monkeypatch):
    import transformers as installed  # the module patch() imports (sys.modules' current one)

    monkeypatch.setattr(installed, "__version__", "5.16.0")
    with pytest.raises(RuntimeError, match="5.16.0"):
        patch(model, AOTReducer(0.25))
    assert integ.reducer_of(model) is None  # nothing patched
    monkeypatch.setattr(installed, "__version__", "5.30.0")
    with pytest.warns(UserWarning, match="5.30.0"):
        patch(model, AOTReducer(0.25))
    unpatch(model)
