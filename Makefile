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

.PHONY: demo test test-py test-cpp bench bench-gpu clean

$(DEPS): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH_PIP_FLAGS) "$(TORCH_SPEC)"
	$(PIP) install -q --disable-pip-version-check numpy setuptools wheel ninja cmake \
		pytest hypothesis expecttest pytest-benchmark POT matplotlib scikit-image \
		"triton==3.9.0" "transformers==5.23.0"
	touch $@

$(BUILT): $(DEPS) $(CXX_SOURCES)
	$(PIP) install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

demo: $(BUILT)
	$(PY) -m aot_kernels demo

test: test-cpp test-py

test-py: $(BUILT)
	$(PY) -m pytest tests -q

test-cpp: $(DEPS)
	$(VENV)/bin/cmake -S . -B $(CMAKE_DIR) -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(VENV)/bin/ninja \
		-DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')" >/dev/null
	$(VENV)/bin/cmake --build $(CMAKE_DIR)
	$(VENV)/bin/ctest --test-dir $(CMAKE_DIR) --output-on-failure

bench: $(BUILT)
	$(PY) -m aot_kernels bench --json bench.json --plot bench.png

# Triton kernels vs the torch backend on a CUDA GPU (needs a CUDA build of torch: TORCH_SPEC/TORCH_PIP_FLAGS).
bench-gpu: $(BUILT)
	$(PY) benchmarks/bench_gpu.py --json bench_gpu.json

clean:
	rm -rf build $(VENV) aot_kernels/*.so *.egg-info
