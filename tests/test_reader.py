"""The reader proxy (metrics.reader, SPEC §9.2): its invariants on a tiny random ViT of the
DINOv2 class, an independent per-frame computation (one unpadded run per frame), and the same
invariants on the real weights when they are installed."""
import pytest
import torch

from aot_kernels import reducers
from aot_kernels.eval import metrics, vit
from aot_kernels.reducers.video import ReducedVideo

from test_vit import NEEDS_WEIGHTS, tiny

F_, GRID = 6, (4, 4)
N = GRID[0] * GRID[1]


@pytest.fixture(scope="module")
def setup():
    """A tiny ViT and the state after its block 1 on 6 random 56 x 56 frames (4 x 4 patches)."""
    m = tiny(depth=3)
    torch.manual_seed(1)
    px = torch.rand(F_, 56, 56, 3)
    with torch.no_grad():
        x = m.embed(m.normalise(px))
        _, rows, kept = m.run(x, 0, 1, attention_at=(1,), keep=(1,))
    return m, px, kept[1], rows[1]


def identity(hidden):
    f, n = hidden.shape[0], hidden.shape[1] - 1
    tokens = hidden[:, 1:].reshape(f * n, -1)
    ids = torch.arange(f).repeat_interleave(n)
    return ReducedVideo(tokens.clone(), ids, torch.arange(f * n), torch.ones(f * n),
                        torch.zeros(f * n, dtype=torch.bool), [(0, f)], GRID)


def keep(hidden, per_frame, seed=0):
    """`per_frame` tokens of each frame, chosen at random (seeded), unmerged."""
    g = torch.Generator().manual_seed(seed)
    f, n = hidden.shape[0], hidden.shape[1] - 1
    idx = torch.cat([t * n + torch.randperm(n, generator=g)[:per_frame].sort().values
                     for t in range(f)])
    flat = hidden[:, 1:].reshape(f * n, -1)
    return ReducedVideo(flat[idx], idx // n, idx, torch.ones(len(idx)),
                        torch.zeros(len(idx), dtype=torch.bool), [(0, f)], GRID)


def test_identity_reduction_reads_exactly_one(setup):
    m, _, hidden, _ = setup
    assert metrics.reader(m, hidden, identity(hidden), start=1) == {"reader": 1.0,
                                                                    "reader_frame": 1.0}
    # `random` at retention 1.0 keeps every token, in its own order: still exactly 1.0
    everything = reducers.build("random", retention=1.0, seed=3, merge=None)(hidden[:, 1:], grid=GRID)
    assert metrics.reader(m, hidden, everything, start=1) == {"reader": 1.0, "reader_frame": 1.0}


def test_fewer_tokens_read_worse(setup):
    m, _, hidden, _ = setup
    one = metrics.reader(m, hidden, keep(hidden, 1), start=1)
    half = metrics.reader(m, hidden, keep(hidden, N // 2), start=1)
    for k in ("reader", "reader_frame"):
        assert one[k] < half[k] < 1.0, (k, one, half)


def test_deterministic_for_a_fixed_seed(setup):
    m, _, hidden, scores = setup
    inputs = metrics.Reader(m, 1, hidden, scores)
    a = metrics.reader_random_runs(inputs, 0.25, [0, 1])
    b = metrics.reader_random_runs(metrics.Reader(m, 1, hidden.clone(), scores), 0.25, [0, 1])
    assert a == b and a[0] != a[1]
    band = metrics.reader_band(inputs, 0.25, seeds=[0, 1])
    assert band["reader"] == (min(r["reader"] for r in a), max(r["reader"] for r in a))


def test_references_are_the_encoders_own_reads(setup):
    m, px, hidden, _ = setup
    video, frame = metrics.reader_full(m, hidden, 1)
    with torch.no_grad():
        own = m(m.normalise(px))[:, 0]  # each frame's final [CLS], encoded on its own
        seq = torch.cat([hidden[:, 0], hidden[:, 1:].reshape(-1, hidden.shape[2])])[None]
        together = m.norm(m.run(seq, 1)[0][0, :F_])
    torch.testing.assert_close(frame, own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(video, together)


def cos(a, b):
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def test_per_frame_matches_one_unpadded_run_per_frame(setup):
    """reader_frame pads frames to one batch; here each frame runs alone. Tokens merged across
    frames count for the frame their frame_ids names: all of frame 0's tokens and a merged
    token labelled frame 0, frame 2 with none of its own."""
    m, _, hidden, _ = setup
    red = keep(hidden, 5, seed=2)
    ids = red.frame_ids.clone()
    ids[ids == 2] = 0  # frame 2's tokens now belong to frame 0 (as an inter-frame merge does)
    red = ReducedVideo(red.tokens, ids, red.positions, red.sizes, red.dynamic, red.clips, GRID)
    got = metrics.reader(m, hidden, red, start=1)
    _, frame_full = metrics.reader_full(m, hidden, 1)
    per = []
    with torch.no_grad():
        for t in range(F_):
            mine = red.tokens[red.frame_ids == t]
            seq = torch.cat([hidden[t, :1], mine])[None]
            per.append(cos(m.norm(m.run(seq, 1)[0][0, 0]), frame_full[t]))
    assert got["reader_frame"] == pytest.approx(float(torch.stack(per).mean()), abs=1e-6)
    # frame 2 read its [CLS] alone
    with torch.no_grad():
        alone = m.norm(m.run(hidden[2:3, :1], 1)[0][0, 0])
    assert float(per[2]) == pytest.approx(float(cos(alone, frame_full[2])), abs=1e-9)
    # the whole-video read: the same tokens in one sequence with all [CLS] tokens
    video_full, _ = metrics.reader_full(m, hidden, 1)
    with torch.no_grad():
        order = torch.argsort(red.positions)
        seq = torch.cat([hidden[:, 0], red.tokens[order]])[None]
        want = cos(m.norm(m.run(seq, 1)[0][0, :F_]), video_full).mean()
    assert got["reader"] == pytest.approx(float(want), abs=1e-6)


def test_bad_arguments_are_named(setup):
    m, _, hidden, _ = setup
    red = identity(hidden)
    with pytest.raises(TypeError, match="encoder with blocks"):
        metrics.reader(object(), hidden, red, start=1)
    with pytest.raises(ValueError, match=r"hidden must be \[F, 1 \+ N, D\]"):
        metrics.reader(m, hidden[0], red, start=1)
    with pytest.raises(ValueError, match="start"):
        metrics.reader(m, hidden, red, start=4)
    with pytest.raises(ValueError, match="model D"):
        metrics.reader(m, hidden[..., :16], red, start=1)
    with pytest.raises(ValueError, match="D="):
        other = ReducedVideo(red.tokens[:, :16], red.frame_ids, red.positions, red.sizes,
                             red.dynamic, red.clips, GRID)
        metrics.reader(m, hidden, other, start=1)
    with pytest.raises(ValueError, match="positions"):
        bad = ReducedVideo(red.tokens, red.frame_ids, red.positions + 1, red.sizes, red.dynamic,
                           red.clips, GRID)
        metrics.reader(m, hidden, bad, start=1)
    with pytest.raises(ValueError, match="full"):
        metrics.reader(m, hidden, red, start=1, full=(hidden[:, 0], hidden[:2, 0]))
    with pytest.raises(TypeError, match="per_frame"):
        metrics.reader(m, hidden, red, start=1, per_frame="yes")
    with pytest.raises(ValueError, match="seeds"):
        metrics.reader_band(metrics.Reader(m, 1, hidden, None), 0.5, seeds=[0])


@NEEDS_WEIGHTS
def test_the_same_invariants_on_the_real_weights(tmp_path, monkeypatch):
    from aot_kernels.eval import encoders, videos

    monkeypatch.setenv("AOT_KERNELS_CACHE", str(tmp_path))
    enc = encoders.DinoV2Encoder(reader_block=9)
    pixels = videos._MAKERS["cuts"][0](8)[0]
    r = enc.encode(pixels, key={"test": "cuts", "frames": 8}).reader
    assert r.start == 9 and r.hidden.shape == (8, 197, 384)
    assert r(identity(r.hidden)) == {"reader": 1.0, "reader_frame": 1.0}
    one, half = r(keep(r.hidden, 1)), r(keep(r.hidden, 98))
    for k in ("reader", "reader_frame"):
        assert one[k] < half[k] < 1.0, (k, one, half)
    assert metrics.reader_random_runs(r, 0.1, [4]) == metrics.reader_random_runs(r, 0.1, [4])
    # the per-frame reference is the encoder's own final [CLS] of each frame
    with torch.no_grad():
        m = enc.model
        own = m(m.normalise(encoders.square(pixels, 196)))[:, 0]
    torch.testing.assert_close(r.full[1], own, atol=1e-4, rtol=1e-4)
