"""lmms-eval end to end (`make test-eval`, in the .venv-eval that has lmms-eval 0.7): the models
registered by entry point run a tiny random LLaVA-OneVision / Qwen2.5-VL saved to disk (config,
random weights, a word-level tokenizer and processors built here: no downloads) on a tiny local
task (synthetic .mp4 videos and multiple-choice questions, an lmms-eval task YAML found through
--include_path), with and without reduction, through `python -m lmms_eval` and
`python -m aot_kernels eval`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lmms_eval")
av = pytest.importorskip("av")
transformers = pytest.importorskip("transformers")

from aot_kernels.integrations import lmms_eval as plugin  # noqa: E402

FRAMES, VIDEOS = 4, 4
TOKENS = 16  # tiny LLaVA-OneVision: 112 px / 14 = 8x8 patches per frame, pooled 2x2 -> 4x4
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}"
            "{% if c['type'] == 'video' %}VIDEO {% elif c['type'] == 'text' %}{{ c['text'] }}"
            "{% endif %}{% endfor %}<|im_end|>{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def _tiny_models():
    """tests/vllm_serving/tiny_models.py (shared with the vLLM tests), loaded by path."""
    import importlib.util

    path = Path(__file__).parent / "vllm_serving" / "tiny_models.py"
    spec = importlib.util.spec_from_file_location("aot_tiny_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_model(kind: str, path: Path) -> str:
    """A tiny random checkpoint with a chat template (the model's prompt format)."""
    from transformers import AutoProcessor

    tiny = _tiny_models()
    qwen_video = "<|vision_start|><|video_pad|><|vision_end|>"
    write, video = {"llava": (tiny.write_llava_onevision, "<video>"),
                    "qwen": (tiny.write_qwen2_5_vl, qwen_video),
                    "qwen3": (tiny.write_qwen3_vl, qwen_video)}[kind]
    write(str(path))
    processor = AutoProcessor.from_pretrained(path)
    processor.chat_template = TEMPLATE.replace("VIDEO", video)
    processor.save_pretrained(path)
    return str(path)


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
           "white": (240, 240, 240)}


def save_task(root: Path) -> Path:
    """VIDEOS synthetic 8-frame clips (a coloured square drifting on grey; three .mp4 files and
    a folder of .png frames) and one question each, as an lmms-eval task YAML + utils.py in
    root/tasks."""
    from PIL import Image

    rows = []
    for v, (name, rgb) in enumerate(COLOURS.items()):
        frames = []
        for t in range(8):
            img = np.full((96, 96, 3), 128, np.uint8)
            img[10 + 6 * t:40 + 6 * t, 20 + 3 * v:50 + 3 * v] = rgb
            frames.append(img)
        if v == len(COLOURS) - 1:  # a folder of frames, as some MVBench sources are
            path = root / f"video{v}"
            path.mkdir()
            for t, img in enumerate(frames):
                Image.fromarray(img).save(path / f"{t:05d}.png")
        else:
            path = root / f"video{v}.mp4"
            with av.open(str(path), "w") as out:
                stream = out.add_stream("mpeg4", rate=4)
                stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
                for img in frames:
                    out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
                out.mux(stream.encode())
        rows.append({"video": str(path), "question": "what colour is the square ?",
                     "options": list(COLOURS), "answer": "ABCD"[v]})
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "tiny_video.yaml").write_text(f"""task: aot_tiny_video
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
process_results: !function utils.process_results
generation_kwargs:
  max_new_tokens: 3
  temperature: 0
  do_sample: false
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
""")
    (tasks / "utils.py").write_text('''
def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = " ".join(f"( {l} ) {o}" for l, o in zip("ABCD", doc["options"]))
    return f"{doc['question']} options : {options} Answer with the letter ."


def process_results(doc, results):
    return {"accuracy": float(results[0].strip()[:1] == doc["answer"])}
''')
    return tasks


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    save_model("llava", root / "llava")
    save_model("qwen", root / "qwen")
    save_model("qwen3", root / "qwen3")
    save_task(root)
    return root


def run(workdir, args, name):
    """One evaluation in a fresh process, offline; its per-sample records."""
    env = dict(os.environ, HF_HOME=str(workdir / "hf"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    out = workdir / "out" / name
    cmd = [sys.executable, "-m", *args, "--tasks", "aot_tiny_video", "--include_path",
           str(workdir / "tasks"), "--device", "cpu", "--log_samples", "--output_path", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    samples = list(out.rglob("*samples_aot_tiny_video*.jsonl"))
    results = list(out.rglob("*results.json"))
    assert len(samples) == 1 and len(results) == 1, (samples, results, done.stdout[-2000:])
    records = [json.loads(line) for line in samples[0].read_text().splitlines()]
    score = json.loads(results[0].read_text())["results"]["aot_tiny_video"]
    return sorted(records, key=lambda r: r["doc_id"]), score


def evaluate(workdir, model, model_args, batch_size=1):
    """`python -m lmms_eval` with one of our models on the tiny task (float32, FRAMES frames),
    memoised per configuration: the unreduced baseline serves every test that compares to it."""
    key = (str(workdir), model, model_args, batch_size)
    if key not in EVALUATED:
        checkpoint = workdir / {"aot_qwen2_5_vl": "qwen", "aot_qwen3_vl": "qwen3"}.get(model, "llava")
        EVALUATED[key] = run(workdir, [
            "lmms_eval", "--model", model, "--model_args",
            f"pretrained={checkpoint},{model_args},dtype=float32,max_frames_num={FRAMES}",
            "--batch_size", str(batch_size)], f"run{len(EVALUATED)}")
    return EVALUATED[key]


EVALUATED = {}


def input_tokens(records):
    return [r["token_counts"][0]["input_tokens"] for r in records]


def test_llava_onevision_with_and_without_reduction(workdir):
    model = str(workdir / "llava")
    full, full_score = evaluate(workdir, "aot_llava_onevision", "reducer=none")
    # Batches of 2 through the thin wrapper: python -m aot_kernels eval.
    aot, aot_score = run(workdir, ["aot_kernels", "eval", "--model", "aot_llava_onevision",
                                   "--retention", "0.25", "--model_args",
                                   f"pretrained={model},dtype=float32,max_frames_num={FRAMES}",
                                   "--batch_size", "2"], "aot")
    assert len(full) == len(aot) == VIDEOS
    for score in (full_score, aot_score):  # a score per run, from every question
        assert 0.0 <= score["accuracy,none"] <= 1.0
    # Every prompt holds FRAMES x TOKENS video tokens + the newline; AOT's exact budget keeps
    # round(0.25 x FRAMES x TOKENS) of them, the text is unchanged.
    dropped = FRAMES * TOKENS - round(0.25 * FRAMES * TOKENS)
    assert [f - a for f, a in zip(input_tokens(full), input_tokens(aot))] == [dropped] * VIDEOS
    assert all(r["token_counts"][0]["output_tokens"] >= 1 for r in full + aot)


def test_llava_onevision_authors_variant_keeps_a_data_dependent_count(workdir):
    """MVBench's setting (keep ratio 0.3, inter-frame OT) with 16 anchors of the tiny tower's 64
    patches (the 7B's 126 of 729 do not fit)."""
    authors = "reducer=aot-authors,benchmark=mvbench,anchors=16"
    full, _ = evaluate(workdir, "aot_llava_onevision", "reducer=none")
    got, score = evaluate(workdir, "aot_llava_onevision", authors, batch_size=2)
    assert 0.0 <= score["accuracy,none"] <= 1.0
    assert all(a < f for a, f in zip(input_tokens(got), input_tokens(full)))
    # Batched (rows re-padded to the longest kept count) = one video at a time.
    alone, _ = evaluate(workdir, "aot_llava_onevision", authors)
    assert input_tokens(alone) == input_tokens(got) and len(set(input_tokens(got))) > 1
    assert [r["filtered_resps"] for r in alone] == [r["filtered_resps"] for r in got]


def test_qwen2_5_vl_with_reduction(workdir):
    full, _ = evaluate(workdir, "aot_qwen2_5_vl", "reducer=none")
    got, score = evaluate(workdir, "aot_qwen2_5_vl", "reducer=visionzip,retention=0.5",
                          batch_size=2)
    assert 0.0 <= score["accuracy,none"] <= 1.0
    # 4 frames -> 2 temporal patches of 4x4 merged tokens: 32 video tokens, half kept.
    assert [f - g for f, g in zip(input_tokens(full), input_tokens(got))] == [16] * VIDEOS


def test_qwen3_vl_with_reduction(workdir):
    full, _ = evaluate(workdir, "aot_qwen3_vl", "reducer=none")
    got, score = evaluate(workdir, "aot_qwen3_vl", "reducer=aot,retention=0.5", batch_size=2)
    assert 0.0 <= score["accuracy,none"] <= 1.0
    # 4 frames of 96 px -> 2 temporal patches of 3x3 merged tokens: 18 video tokens, 9 kept;
    # the timestamps and start/end tokens of both patches stay.
    assert [f - g for f, g in zip(input_tokens(full), input_tokens(got))] == [9] * VIDEOS


def test_qwen3_vl_prompt_has_the_videos_real_timestamps(workdir):
    """The 8-frame, 4 fps clip sampled to frames 0, 2, 5, 7: its temporal patches (2 frames
    each) start at 0.25 s and 1.5 s, which the prompt must say (without the metadata the
    processor would assume 24 fps and frames 0..3)."""
    model = plugin.AOTQwen3_VL(pretrained=str(workdir / "qwen3"), reducer="none", device="cpu",
                               dtype="float32", max_frames_num=FRAMES)
    frames, meta = model._video([str(workdir / "video0.mp4")], "doc 0")
    assert frames.shape == (4, 96, 96, 3)
    assert meta == {"total_num_frames": 8, "fps": 4.0, "frames_indices": [0, 2, 5, 7]}
    inputs = model.processor(text=[model._prompt("w1")], videos=[frames], return_tensors="pt",
                             **model._video_kwargs([meta]))
    text = " ".join(model.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist()))
    assert "< 0 . 2 seconds >" in text and "< 1 . 5 seconds >" in text  # "%.1f" of 0.25, 1.5
    _, folder = model._video([str(workdir / "video3")], "doc 3")  # frames without a rate
    assert folder["fps"] is None and "fps" not in model._video_kwargs([folder])["video_metadata"][0]


def test_entry_point_registers_the_models():
    from lmms_eval.models import get_model

    for name, cls in plugin.MODELS.items():
        assert get_model(name) is cls


def test_model_args_errors_are_named():
    with pytest.raises(ValueError, match="reducer must be one of"):
        plugin.build_reducer("llava-onevision-7b", "fastv", 0.1)
    with pytest.raises(ValueError, match="needs retention="):
        plugin.build_reducer("llava-onevision-7b", "aot")
    with pytest.raises(ValueError, match="benchmark= configures reducer=aot-authors"):
        plugin.build_reducer("llava-onevision-7b", "aot", 0.1, benchmark="mvbench")
    with pytest.raises(ValueError, match="no retention="):
        plugin.build_reducer("llava-onevision-7b", "aot-authors", 0.1, benchmark="mvbench")
    with pytest.raises(ValueError, match="needs benchmark="):
        plugin.build_reducer("llava-onevision-7b", "aot-authors")
    with pytest.raises(ValueError, match="benchmark must be one of"):
        plugin.build_reducer("llava-onevision-7b", "aot-authors", benchmark="mmlu")
    with pytest.raises(ValueError, match="not on Qwen2.5-VL"):
        plugin.build_reducer("qwen2.5-vl-7b", "aot-authors", benchmark="mvbench")
    with pytest.raises(ValueError, match="Qwen3-VL"):
        plugin.build_reducer("qwen3-vl-8b", "aot-authors", benchmark="mvbench")
    with pytest.raises(ValueError, match="reducer=none keeps every token"):
        plugin.build_reducer("llava-onevision-7b", "none", 0.1)
    assert plugin.build_reducer("llava-onevision-7b", "none") is None
    authors = plugin.build_reducer("llava-video-7b", "aot-authors", benchmark="videomme")
    assert (authors.anchors, authors.inter, authors.pool) == (180, False, "bilinear")


def test_constructor_errors_are_named_before_loading():
    with pytest.raises(ValueError, match="batch_size must be a count"):
        plugin.AOTLlavaOnevision(pretrained="/nowhere", reducer="none", batch_size="auto")
    with pytest.raises(ValueError, match="max_frames_num must be an int"):
        plugin.AOTLlavaVid(pretrained="/nowhere", reducer="none", max_frames_num=0)
    with pytest.raises(TypeError, match="unknown model_args \\['frames'\\]"):
        plugin.AOTQwen2_5_VL(pretrained="/nowhere", reducer="none", frames=8)
    with pytest.raises(ValueError, match="max_pixels must be a positive int"):
        plugin.AOTQwen2_5_VL(pretrained="/nowhere", reducer="none", max_pixels="big")
    with pytest.raises(ValueError, match="needs retention="):
        plugin.AOTLlavaOnevision(pretrained="/nowhere", reducer="tome")
