"""The implicit backward on square, small-eps, near-permutation problems (issue 26, item 4).

Sources near (a permutation of) the anchors give a plan that is block-diagonal to float64's
resolution: the Schur complement is singular along every block's gauge. The implicit backward
(the compiled backends) must agree with autograd unrolled through the iterations (the "torch"
backend) and with central finite differences of the forward, never raise, never drift."""
import pytest
import torch

import aot_kernels as ak

pytestmark = pytest.mark.skipif(not ak.HAS_EXTENSION, reason="needs the compiled extension")

EPS = 0.01
ITERS = 3000


def near_permutation(n, seed, noise, batch=2, d=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=g, dtype=torch.float64)
    y = x[:, torch.randperm(n, generator=g)] + noise * torch.randn(batch, n, d, generator=g,
                                                                   dtype=torch.float64)
    weights = [torch.randn(batch, n, d, generator=g, dtype=torch.float64),
               torch.randn(batch, n, generator=g, dtype=torch.float64),
               torch.randn(batch, n, generator=g, dtype=torch.float64)]
    directions = (torch.randn(batch, n, d, generator=g, dtype=torch.float64),
                  torch.randn(batch, n, d, generator=g, dtype=torch.float64))
    return x, y, weights, directions


def aggregate_loss(x, y, weights, backend, **options):
    out = ak.sinkhorn_aggregate(x, y, eps=EPS, max_iter=ITERS, backend=backend, **options)
    return ((out.tokens * weights[0]).sum() + (out.mass * weights[1]).sum()
            + (out.confidence * weights[2]).sum() + out.distance.sum())


def directional(loss, x, y, directions, backend):
    xr, yr = x.clone().requires_grad_(), y.clone().requires_grad_()
    loss(xr, yr, backend).backward()
    return float((xr.grad * directions[0]).sum() + (yr.grad * directions[1]).sum())


def central_difference(loss, x, y, directions, h=1e-5):
    vx, vy = directions
    return float((loss(x + h * vx, y + h * vy, "cpp") - loss(x - h * vx, y - h * vy, "cpp"))
                 / (2 * h))


@pytest.mark.parametrize("n", [5, 8, 12])
@pytest.mark.parametrize("noise", [0.0, 0.01, 0.1])
@pytest.mark.parametrize("mode", [{}, {"keep": 2}], ids=["intra", "keep"])
def test_implicit_backward_matches_unrolled_and_finite_differences(n, noise, mode):
    x, y, weights, directions = near_permutation(n, seed=n, noise=noise)

    def loss(a, b, backend):
        return aggregate_loss(a, b, weights, backend, **mode)

    implicit = directional(loss, x, y, directions, "cpp")
    unrolled = directional(loss, x, y, directions, "torch")
    fd = central_difference(loss, x, y, directions)
    assert implicit == pytest.approx(unrolled, rel=1e-7, abs=1e-9)
    assert implicit == pytest.approx(fd, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_a_block_diagonal_plan_has_no_gradient_through_its_blocks(seed):
    """A single-entry block holds its marginal whatever the cost: d(sum T W)/dC is 0 (up to the
    cross-block couplings), not the noise of a singular solve."""
    x, y, _, _ = near_permutation(12, seed=seed, noise=0.01)
    cost = ak.cosine_cost(x, y, backend="cpp")
    g = torch.Generator().manual_seed(seed)
    weights, direction = (torch.randn(cost.shape, generator=g, dtype=torch.float64)
                          for _ in range(2))
    grads = {}
    for backend in ("cpp", "torch"):
        c = cost.clone().requires_grad_()
        r = ak.sinkhorn(c, eps=EPS, max_iter=ITERS, backend=backend)
        plan = torch.exp((r.f.unsqueeze(2) + r.g.unsqueeze(1) - c) / EPS)
        (plan * weights).sum().backward()
        grads[backend] = float((c.grad * direction).sum())
    assert abs(grads["cpp"]) < 1e-9 and abs(grads["torch"]) < 1e-9


def test_clip_steps_over_near_copies_of_the_first_frame():
    """clip_aggregate's replay differentiates each step implicitly: later frames that are
    near-permutations of the anchors, at eps 0.01."""
    g = torch.Generator().manual_seed(0)
    first = torch.randn(2, 1, 8, 12, generator=g, dtype=torch.float64)
    later = torch.cat([first[:, :, torch.randperm(8, generator=g)] + 0.01 * torch.randn(
        2, 1, 8, 12, generator=g, dtype=torch.float64) for _ in range(3)], 1)
    frames = torch.cat([first, later], 1)
    keep = torch.tensor([[0, 1, 2, 1], [0, 2, 1, 0]])
    weights = torch.randn(2, 8, 12, generator=g, dtype=torch.float64)
    direction = torch.randn(frames.shape, generator=g, dtype=torch.float64)

    def loss(f, backend):
        out = ak.clip_aggregate(f, keep=keep, eps=EPS, max_iter=ITERS, backend=backend)
        return (out.anchors * weights).sum() + out.sizes.sum()

    got = {}
    for backend in ("cpp", "torch"):
        f = frames.clone().requires_grad_()
        loss(f, backend).backward()
        got[backend] = float((f.grad * direction).sum())
    h = 1e-5
    fd = float((loss(frames + h * direction, "cpp") - loss(frames - h * direction, "cpp")) / (2 * h))
    assert got["cpp"] == pytest.approx(got["torch"], rel=1e-7, abs=1e-9)
    assert got["cpp"] == pytest.approx(fd, rel=1e-5, abs=1e-6)
