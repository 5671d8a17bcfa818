"""The reference itself, checked against an independent library (POT)."""
import numpy as np
import pytest

from reference import ot_reference as R

ot = pytest.importorskip("ot")


@pytest.mark.parametrize("eps", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("shape", [(5, 8), (12, 7), (1, 4)])
def test_reference_sinkhorn_matches_pot(shape, eps):
    rng = np.random.default_rng(0)
    m, n = shape
    x, y = rng.normal(size=(m, 6)), rng.normal(size=(n, 6))
    a = rng.uniform(0.2, 1.0, m)
    s = rng.uniform(0.2, 1.0, n)
    cost = R.cosine_cost(x, y)
    ref = R.sinkhorn(cost, a, s, eps=eps, max_iter=2000, tol=1e-13)
    # POT solves balanced OT with the same total mass: rescale as SPEC §2 does.
    pot = ot.sinkhorn(a, s * a.sum() / s.sum(), cost, eps, method="sinkhorn_log",
                      numItermax=5000, stopThr=1e-14)
    np.testing.assert_allclose(ref.plan, pot, rtol=1e-7, atol=1e-12)


def test_reference_cosine_cost_matches_pot_distance():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 5)), rng.normal(size=(6, 5))
    np.testing.assert_allclose(R.cosine_cost(x, y), ot.dist(x, y, metric="cosine"), atol=1e-12)
