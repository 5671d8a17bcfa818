"""torch.ops.aot.clip_aggregate (SPEC §5 over whole clips): every backend and dtype against the
float64 reference, the op contract (opcheck, fake kernel, torch.compile) and its gradients."""
import numpy as np
import pytest
import torch

import aot_kernels as ak
from reference import ot_reference as R
from samples import (BACKENDS, CLIP_SAMPLES, DTYPES, assert_within_rule, clip_inputs,
                     clip_reference, saved_bytes, stack)

FIELDS = ("anchors", "sizes", "confidence", "f", "g")
CONVERGED = dict(max_iter=3000, tol=1e-13)


def run(sample, dtype, backend):
    frames, lengths, sizes, kw = clip_inputs(sample, dtype)
    return ak.clip_aggregate(frames, lengths, sizes, backend=backend, **kw)


def live_steps(sample):
    """[C,L] bool: the steps that ran (1 <= l < lengths[c])."""
    steps = torch.arange(sample.L)
    return (steps >= 1) & (steps < torch.tensor(sample.lengths).view(-1, 1))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sample", CLIP_SAMPLES, ids=lambda s: s.name)
def test_clip_aggregate_matches_reference(sample, dtype):
    ref = clip_reference(sample, dtype)
    out = {be: run(sample, dtype, be) for be in BACKENDS}
    assert_within_rule(out, ref, FIELDS, dtype, sanity=4.0)  # errors add up over the steps
    live = live_steps(sample)
    for be in BACKENDS:
        o = out[be]
        assert o.anchors.dtype == dtype and o.confidence.dtype == dtype
        assert o.sizes.dtype == torch.float64 and o.kept.dtype == torch.bool
        assert not o.kept[~live].any() and (o.iterations[~live] == 0).all()
        if dtype == torch.float64:
            assert np.array_equal(o.kept.numpy(), stack(ref, "kept").astype(bool))
        if sample.mode == "keep":  # exactly the planned count on every step that ran
            keep = clip_inputs(sample)[3]["keep"]
            assert torch.equal(o.kept.sum(2)[live], keep[live])
        if sample.tol == 0:
            assert (o.iterations[live] == sample.max_iter).all()


def weighted_frames(sample, originals: int = 24):
    """Frames that are weighted means of `originals` random tokens: weights [C,L,M,K] (each
    token 3 random originals, rows summing to its size), originals [K,D], and the inputs of
    clip_inputs with the frames replaced by weights @ originals / sizes."""
    _, lengths, sizes, kw = clip_inputs(sample)
    g = torch.Generator().manual_seed(7 + sample.M)
    base = torch.randn(originals, sample.D, generator=g, dtype=torch.float64)
    pick = torch.rand(sample.C, sample.L, sample.M, originals, generator=g).argsort(-1)[..., :3]
    weights = torch.zeros(sample.C, sample.L, sample.M, originals, dtype=torch.float64)
    weights.scatter_(3, pick, torch.rand(pick.shape, generator=g, dtype=torch.float64) + 0.2)
    weights *= (sizes / weights.sum(3)).unsqueeze(3)
    return weights, base, weights @ base / sizes.unsqueeze(3), lengths, sizes, kw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sample", CLIP_SAMPLES, ids=lambda s: s.name)
def test_sizes_are_the_weights_the_anchors_hold(sample, backend):
    """SPEC §9: each anchor is the weighted mean of the originals with weights summing to its
    size. The frames are built as known weighted means; the reference tracks the weights through
    Eq. 16 as the fold applies them; the op's sizes are their totals and size x anchor is
    weights @ originals."""
    weights, base, frames, lengths, sizes, kw = weighted_frames(sample)
    out = ak.clip_aggregate(frames, lengths, sizes, backend=backend, **kw)
    aw, keep = kw.pop("anchor_weight"), kw.pop("keep", None)
    for c in range(sample.C):
        ref = R.clip_aggregate(frames[c].numpy(), int(lengths[c]), sizes[c].numpy(),
                               None if aw is None else aw[c].numpy(),
                               keep=None if keep is None else keep[c].numpy(),
                               weights=weights[c].numpy(), **kw)
        held = torch.from_numpy(ref.weights)
        torch.testing.assert_close(out.sizes[c], held.sum(1), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out.sizes[c].unsqueeze(1) * out.anchors[c], held @ base,
                                   rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_with_unit_sizes_keeps_every_token(backend):
    """Unit sizes, one step: anchor j's size is 1 + sum_i p_ij over the merged tokens (the
    history counts as one token of size 1), so the anchors and the kept tokens add up to the
    2M tokens of the clip; an anchor that received nothing keeps size 1."""
    sample = CLIP_SAMPLES[1]
    frames, _, _, kw = clip_inputs(sample)
    frames, _ = frames[:, :2], kw.pop("keep")
    keep = torch.tensor([[0, 3]] * sample.C)
    sizes = torch.ones(sample.C, 2, sample.M, dtype=torch.float64)
    out = ak.clip_aggregate(frames, None, sizes, keep=keep, backend=backend, **kw)
    step = ak.sinkhorn_aggregate(frames[:, 0], frames[:, 1], keep=3, backend=backend,
                                 eps=kw["eps"], max_iter=kw["max_iter"], tol=kw["tol"])
    torch.testing.assert_close(out.sizes, 1 + step.mass)
    torch.testing.assert_close(out.sizes.sum(1) + out.kept.sum((1, 2)),
                               torch.full((sample.C,), 2.0 * sample.M, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_never_alias_the_inputs(backend):
    """One frame per clip: nothing runs, yet the outputs are fresh tensors (op contract)."""
    frames, sizes = torch.randn(2, 1, 3, 4, dtype=torch.float64), torch.ones(2, 1, 3, dtype=torch.float64)
    out = ak.clip_aggregate(frames, None, sizes, backend=backend)
    assert torch.equal(out.anchors, frames[:, 0]) and torch.equal(out.sizes, sizes[:, 0])
    out.anchors.zero_()
    out.sizes.zero_()
    assert frames.abs().sum() > 0 and (sizes == 1).all()


# Square problems at eps = 0.01 have near-permutation plans whose implicit-gradient system is
# singular in float64 (the potentials are not identifiable there): forward-only, not opchecked.
OPCHECK = [s for s in CLIP_SAMPLES if s.M <= 9 and s.eps >= 0.1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("sample", OPCHECK, ids=lambda s: s.name)
def test_opcheck_clip_aggregate(sample, dtype):
    frames, lengths, sizes, kw = clip_inputs(sample, dtype)
    args = (frames.requires_grad_(), lengths, sizes, kw["anchor_weight"], kw["eps"], 1.0,
            kw["max_iter"], kw["tol"], kw.get("tau"), kw.get("keep"))
    torch.library.opcheck(torch.ops.aot.clip_aggregate, args)


def test_padding_frames_are_never_read():
    sample = CLIP_SAMPLES[1]
    frames, lengths, sizes, kw = clip_inputs(sample, torch.float32)
    dirty = frames.clone()
    dirty[1, 2:] = float("nan")  # past clip 1's length
    dirty_sizes = sizes.clone()
    dirty_sizes[1, 2:] = float("nan")
    for be in BACKENDS:
        want = ak.clip_aggregate(frames, lengths, sizes, backend=be, **kw)
        got = ak.clip_aggregate(dirty, lengths, dirty_sizes, backend=be, check_values=False, **kw)
        for g_, w_ in zip(got, want):
            torch.testing.assert_close(g_, w_, rtol=0, atol=0)


def test_torch_compile_fullgraph():
    frames, lengths, sizes, kw = clip_inputs(CLIP_SAMPLES[1], torch.float32)

    def fn(frames):
        out = ak.clip_aggregate(frames, lengths, sizes, keep=kw["keep"], check_values=False)
        return out.anchors * 2, out.sizes, out.kept

    want = fn(frames)
    got = torch.compile(fn, fullgraph=True)(frames)
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_)


# ---- gradients w.r.t. frames -------------------------------------------------------------------

def loss(out):
    """A loss touching every differentiable output, with unequal weights per entry; f and g enter
    as f + g summed (M = N), which the gauge (f + k, g - k) leaves alone."""
    w = torch.linspace(-1, 1, out.anchors.numel(), dtype=out.anchors.dtype).view_as(out.anchors)
    return ((out.anchors * w).sum() + 0.5 * out.sizes.square().sum() + 0.3 * out.confidence.sum()
            + 0.1 * (out.f.sum() + out.g.sum()))


GRAD_SAMPLES = [CLIP_SAMPLES[1], CLIP_SAMPLES[2], CLIP_SAMPLES[3]]


@pytest.mark.parametrize("sample", GRAD_SAMPLES, ids=lambda s: s.name)
def test_gradcheck_clip_aggregate(sample):
    frames, lengths, sizes, kw = clip_inputs(sample)
    frames = frames[:, :, :4, :5].contiguous().requires_grad_()  # small: finite differences
    sizes = sizes[:, :, :4]
    kw = dict(kw, **CONVERGED, eps=max(kw["eps"], 0.5))
    if "keep" in kw:
        kw["keep"] = kw["keep"].clamp(max=4)
    if kw["anchor_weight"] is not None:
        kw["anchor_weight"] = kw["anchor_weight"][:, :4]
    fn = lambda fr: loss(ak.clip_aggregate(fr, lengths, sizes, backend="cpp", **kw))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (frames,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("sample", GRAD_SAMPLES + [CLIP_SAMPLES[5]], ids=lambda s: s.name)
def test_implicit_gradient_matches_unrolled(sample):
    """The op's implicit gradient == autograd through every torch-backend iteration, once the
    problems have converged."""
    frames, lengths, sizes, kw = clip_inputs(sample)
    kw = dict(kw, **CONVERGED, eps=0.5)
    grads = {}
    for be in BACKENDS:
        x = frames.clone().requires_grad_()
        out = ak.clip_aggregate(x, lengths, sizes, backend=be, **kw)
        assert (out.error < 1e-12).all()  # converged: the implicit gradient is the exact one
        grads[be] = torch.autograd.grad(loss(out), x)[0]
    scale = grads["torch"].abs().max()
    assert scale > 0
    assert (grads["cpp"] - grads["torch"]).abs().max() <= 1e-7 * scale


def test_backward_memory_does_not_grow_with_iterations():
    frames, lengths, sizes, kw = clip_inputs(CLIP_SAMPLES[5], torch.float32)
    x = frames.requires_grad_()

    def saved(max_iter):
        return saved_bytes(lambda: ak.clip_aggregate(x, lengths, sizes, backend="cpp",
                                                     **dict(kw, max_iter=max_iter)))

    assert saved(10) == saved(1000)
    assert saved(1000) <= 4 * x.numel() * x.element_size()


def test_sizes_gradient_matches_unrolled_and_weights_are_refused():
    frames, lengths, sizes, kw = clip_inputs(CLIP_SAMPLES[2])
    kw = dict(kw, **CONVERGED, eps=0.5)
    grads = {}
    for be in BACKENDS:
        z = sizes.clone().requires_grad_()
        out = ak.clip_aggregate(frames, lengths, z, backend=be, **kw)
        grads[be] = torch.autograd.grad((out.sizes * torch.arange(1.0, 8.0)).sum(), z)[0]
    torch.testing.assert_close(grads["cpp"], grads["torch"], rtol=1e-9, atol=1e-12)
    weight = kw.pop("anchor_weight").clone().requires_grad_()
    out = ak.clip_aggregate(frames, lengths, sizes, anchor_weight=weight, backend="cpp", **kw)
    with pytest.raises(RuntimeError, match="do not differentiate w.r.t. the marginal weights"):
        out.anchors.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_finished_clips_leave_no_nan_in_gradients(backend):
    """A clip past its length, with zero-vector tokens and a small eps, solves nothing that
    matters; its masked step must not turn the gradient into NaN."""
    frames = torch.randn(2, 3, 5, 6)
    frames[1] = 0.0
    x = frames.requires_grad_()
    out = ak.clip_aggregate(x, [3, 2], eps=0.01, backend=backend)
    grad = torch.autograd.grad(out.anchors.sum() + out.sizes.sum(), x)[0]
    assert torch.isfinite(grad).all()
    assert (grad[1, 2] == 0).all()  # the padding frame gets no gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_low_precision_gradients(dtype):
    frames, lengths, sizes, kw = clip_inputs(CLIP_SAMPLES[1], dtype)
    x = frames.requires_grad_()
    grad = torch.autograd.grad(loss(ak.clip_aggregate(x, lengths, sizes, backend="cpp", **kw)).float(), x)[0]
    assert grad.dtype == dtype and torch.isfinite(grad).all()
