"""Your own video (eval/footage.py, `compare --video`): files decoded with PyAV (a tiny clip made
with PyAV itself), folders of frames, uniform sampling, and a clear error for every way it can
fail."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from aot_kernels.eval import compare, footage

from test_vit import NEEDS_WEIGHTS

av = pytest.importorskip("av", reason="PyAV (pip install av) reads video files")
LEVEL = 12  # frame i is a flat grey of i * LEVEL (what survives lossy coding)


def make_clip(path, count=20, size=(48, 64), codec="mpeg4"):
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=10)
        s.height, s.width = size
        s.pix_fmt = "yuv420p"
        for i in range(count):
            img = np.full((*size, 3), i * LEVEL, np.uint8)
            img[: size[0] // 4, : size[1] // 4] = (255, 0, 0)  # a red corner: RGB order kept
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def frame_indices(frames):
    """The source frame each decoded frame is (from its grey level, away from the corner)."""
    return [int(round(float(f[30:, 30:].mean()) / LEVEL)) for f in frames]


def test_sample_is_uniform_with_both_ends():
    for total, f in ((20, 5), (7, 7), (100, 32), (5, 1)):
        got = footage.sample(total, f)
        assert len(got) == f and got[0] == 0 and (f == 1 or got[-1] == total - 1)
        assert got == sorted(set(got))  # distinct and increasing
        gaps = np.diff(got)
        assert f < 3 or gaps.max() - gaps.min() <= 1  # as even as integers allow


def test_reads_a_video_file_uniformly(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4")
    x = footage.read(clip, 5)
    assert x.shape == (5, 48, 64, 3) and x.dtype == np.uint8
    assert frame_indices(x) == footage.sample(20, 5) == [0, 5, 10, 14, 19]
    corner = x[:, :8, :10].reshape(-1, 3).mean(0)
    assert corner[0] > 200 and corner[1] < 60 and corner[2] < 60  # red, as RGB
    assert frame_indices(footage.read(str(clip), 20)) == list(range(20))  # every frame


def test_sampled_frames_carry_their_indices_total_and_fps(tmp_path):
    """What Qwen3-VL's prompt timestamps are computed from (lmms-eval's aot_qwen3_vl)."""
    clip = make_clip(tmp_path / "clip.mp4")
    got = footage.read_sampled(clip, 5)
    assert got.indices == frame_indices(got.frames) == [0, 5, 10, 14, 19]
    assert (got.total, got.fps) == (20, 10.0)
    with pytest.raises(ValueError, match="fewer than frames=32"):
        footage.read_sampled(clip, 32)
    every = footage.read_sampled(clip, 32, at_most=True)  # a short video: all of its frames
    assert every.indices == list(range(20)) and every.frames.shape[0] == 20


def test_reads_a_folder_of_frames_sorted_by_name(tmp_path):
    from PIL import Image

    for i in range(12):  # names sort as the frame order; a stray file is ignored
        Image.fromarray(np.full((30, 40, 3), i * 20, np.uint8)).save(tmp_path / f"f{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    x = footage.read(tmp_path, 4)
    assert x.shape == (4, 30, 40, 3)
    assert [int(f.mean()) // 20 for f in x] == footage.sample(12, 4) == [0, 4, 7, 11]
    sampled = footage.read_sampled(tmp_path, 20, at_most=True)
    assert (sampled.indices, sampled.total, sampled.fps) == (list(range(12)), 12, None)
    # frames of different sizes: each cropped to its centred square, resized to the smallest
    Image.fromarray(np.zeros((50, 20, 3), np.uint8)).save(tmp_path / "f012.jpg")
    assert footage.read(tmp_path, 13).shape == (13, 20, 20, 3)


def test_every_failure_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such file"):
        footage.read(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="does not open as a video"):
        footage.read(junk, 4)
    clip = make_clip(tmp_path / "short.mp4", count=6)
    with pytest.raises(ValueError, match="has 6 frames, fewer than frames=8"):
        footage.read(clip, 8)
    with pytest.raises(ValueError, match="frames must be an int >= 1"):
        footage.read(clip, 0)
    with pytest.raises(TypeError, match="path"):
        footage.read(3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        footage.read(empty)
    (empty / "a.png").write_bytes(b"not a png")
    (empty / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="2 images, fewer than frames=3"):
        footage.read(empty, 3)
    with pytest.raises(ValueError, match="does not open as an image"):
        footage.read(empty, 2)
    # an audio-only file: no video stream
    sound = tmp_path / "tone.wav"
    with av.open(str(sound), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for p in list(s.encode(frame)) + list(s.encode()):
            out.mux(p)
    with pytest.raises(ValueError, match="no video stream"):
        footage.read(sound, 1)
    # PyAV missing: say what to install
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "av", None)
        with pytest.raises(RuntimeError, match="pip install av"):
            footage.read(clip, 2)


def test_a_stream_without_a_decoder_is_named(tmp_path, monkeypatch):
    """The decoder missing from PyAV's ffmpeg: PyAV raises DecoderNotFoundError on decoding."""
    clip = make_clip(tmp_path / "clip.mp4")
    real_open = av.open

    class NoDecoder:
        def __init__(self, *a, **k):
            self.inner = real_open(*a, **k)
            self.streams = self.inner.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def seek(self, *a):
            return self.inner.seek(*a)

        def decode(self, *a):
            raise av.error.DecoderNotFoundError(1094995529, "Decoder not found")

    monkeypatch.setattr(av, "open", NoDecoder)
    with pytest.raises(ValueError, match="Decoder not found"):
        footage.read(clip, 4)


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "aot_kernels", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_compare_on_your_own_video(tmp_path, capsys):
    from aot_kernels.__main__ import main

    clip = make_clip(tmp_path / "clip.mp4", count=12, size=(120, 160))
    out = tmp_path / "c.json"
    args = ["compare", "--video", str(clip), "--encoder", "descriptor", "--frames", "8",
            "--retention", "0.25", "--reducers", "aot", "random", "--no-ot-merge", "--seeds", "2",
            "--plot", "", "--no-progress"]
    assert main(args + ["--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "descriptor tower" in printed and "8 frames each" in printed
    got = json.loads(out.read_text())
    assert {r["video"] for r in got["rows"]} == {str(clip)}
    assert all(r["tokens"] == round(0.25 * 8 * 196) for r in got["rows"])
    for bad, why in ((["--frames", "13"], "has 12 frames, fewer than frames=13"),
                     (["--video", str(tmp_path / "nope.mp4")], "no such file"),
                     (["--videos", "needle"], "give one of --videos, --features and --video"),
                     (["--frames", "0"], "--frames must be >= 1")):
        argv = list(args)
        if bad[0] == "--video":
            argv[2] = bad[1]
        else:
            argv += bad
        assert main(argv) == 2, bad
        assert why in capsys.readouterr().err, bad


def test_video_cases_with_a_vit_read_every_reducer(tmp_path, monkeypatch):
    """A tiny ViT of the DINOv2 class as the encoder: the reader columns appear, with a band."""
    from aot_kernels.eval import encoders

    from test_vit import tiny

    monkeypatch.setenv("AOT_KERNELS_CACHE", str(tmp_path / "cache"))
    clip = make_clip(tmp_path / "clip.mp4", count=10)
    enc = encoders.DinoV2Encoder(model=tiny(depth=3), block=3, local_block=1, reader_block=1)
    cases = compare.video_cases([clip], frames=6, encoder=enc)
    assert cases[0].features.shape == (6, 196, 32) and cases[0].reader.start == 1
    result = compare.run(cases, [0.25], compare.variants(["aot", "random", "tome"], ot_merge=False),
                         seeds=2, progress=False)
    for r in result["rows"]:
        assert 0 < r["reader"] <= 1 and 0 < r["reader_frame"] <= 1
    rnd = next(r for r in result["rows"] if r["reducer"] == "random")  # seed 0 = band seed 0
    for k in ("reader", "reader_frame"):
        assert compare.mark(rnd[k], result["band"][0.25][k]) == "~"
    text = compare.report(result)
    assert "reader_frame" in text and "not an LLM" in text and "ViT with given weights" in text
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # encoding + reader's full runs
    again = compare.video_cases([clip], frames=6, encoder=enc)  # the cache: same tensors
    assert torch.equal(again[0].features, cases[0].features)
    plain = compare.run(cases, [0.25], compare.variants(["aot"], ot_merge=False), seeds=2,
                        progress=False, reader=False)
    assert "reader" not in plain["rows"][0] and plain["reader_blocks"] == {}
    with pytest.raises(TypeError, match="reader"):
        compare.run(cases, [0.25], compare.variants(["aot"]), seeds=2, progress=False, reader=1)
    with pytest.raises(ValueError, match="paths"):
        compare.video_cases(str(clip))


@NEEDS_WEIGHTS
def test_compare_on_your_own_video_with_dinov2(tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", count=10, size=(120, 160))
    env = dict(os.environ, AOT_KERNELS_CACHE=str(tmp_path / "cache"))
    run = cli("compare", "--video", str(clip), "--encoder", "dinov2", "--frames", "8",
              "--retention", "0.25", "--reducers", "aot", "random", "--no-ot-merge", "--seeds",
              "2", "--plot", "", "--no-progress", env=env)
    assert run.returncode == 0, run.stderr
    assert "DINOv2 ViT-S/14" in run.stdout and "reader_frame" in run.stdout
    assert "not an LLM" in run.stdout
