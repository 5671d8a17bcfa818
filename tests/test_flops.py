"""Cost model (SPEC §7) against the reference's layer-by-layer loop, and the CLI."""
import json
import subprocess
import sys

import pytest

from aot_kernels import flops
from reference import selection_reference as R


@pytest.mark.parametrize("model", sorted(flops.PRESETS))
@pytest.mark.parametrize("retention", [0.1, 0.25, 1.0])
def test_matches_reference(model, retention):
    p = flops.PRESETS[model]
    r = flops.cost(model, retention=retention, generated=32)
    n_full = p.frames * p.tokens_per_frame
    n = round(retention * n_full)
    layers = [n] * p.llm.layers
    assert r.vision_tokens == n and r.vision_tokens_full == n_full
    assert r.prefill_flops == pytest.approx(R.prefill_flops(layers, p.llm.hidden, p.llm.ffn), rel=1e-12)
    assert r.prefill_flops_full == pytest.approx(
        R.prefill_flops([n_full] * p.llm.layers, p.llm.hidden, p.llm.ffn), rel=1e-12)
    assert r.decode_flops == pytest.approx(R.decode_flops(layers, p.llm.hidden, p.llm.ffn, 32), rel=1e-12)
    assert r.ratio == pytest.approx(r.prefill_flops / r.prefill_flops_full)
    assert (r.ratio == 1.0) == (retention == 1.0)


def test_custom_model():
    llm = flops.LLM(layers=2, hidden=8, ffn=16)
    r = flops.cost("custom", llm=llm, frames=3, tokens_per_frame=5, retention=0.4)
    assert r.vision_tokens == 6
    assert r.prefill_flops == R.prefill_flops([6, 6], 8, 16)


@pytest.mark.parametrize("kwargs,match", [
    (dict(retention=0.0), "retention"), (dict(retention=1.5), "retention"),
    (dict(retention=0.1, frames=0), "frames"), (dict(retention=0.1, generated=-1), "generated"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flops.cost("llava-onevision-7b", **kwargs)
    with pytest.raises(ValueError, match="model"):
        flops.cost("gpt-9", retention=0.1)
    with pytest.raises(ValueError, match="custom"):
        flops.cost("custom", retention=0.1)


def test_cli_json():
    out = subprocess.run([sys.executable, "-m", "aot_kernels", "flops", "--model", "llava-video-7b",
                          "--retention", "0.1", "--generated", "16", "--json"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    data = json.loads(out)
    for key in ("prefill_flops", "prefill_flops_full", "ratio", "decode_flops", "vision_tokens"):
        assert key in data
    assert data["vision_tokens"] == round(0.1 * 64 * 169)
    bad = subprocess.run([sys.executable, "-m", "aot_kernels", "flops", "--retention", "2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "retention" in bad.stderr
