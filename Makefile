# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
# `make xla-check`: TPU readiness on XLA's CPU device, in its own venv (.venv-xla, torch_xla).
# `make gpu-preflight`: the CUDA route's Triton kernels compiled for sm_90/sm_80 here, with the GPU's Triton too.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

XLA_VENV := .venv-xla
XLA_PY := $(XLA_VENV)/bin/python
XLA_STAMP := $(XLA_VENV)/.installed

TRITON36_VENV := .venv-triton36
TRITON36_STAMP := $(TRITON36_VENV)/.installed

.PHONY: demo test bench setup clean gpu-wheels gpu-site gpu-check gpu-bench gpu-plan gpu-goals gpu-preflight xla-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Each demo is a new run (checkpoints/demo-<date>-<time>/), so a second `make demo` never stops
# at the first one's checkpoint.
demo: $(STAMP)
	$(PY) train.py --config configs/demo.yaml --run demo-$$(date +%Y%m%d-%H%M%S)

# The suite checks the CUDA kernels' registers and loads with Triton 3.6 too (the side venv, no GPU).
# It runs in a pytest-xdist worker per core (tests/conftest.py: threads and scheduling). Here, not
# in pyproject's addopts: the GPU machine's pytest (gpu-check's CUDA tests, in shards of their own)
# has no xdist.
test: $(STAMP) $(TRITON36_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto tests

bench: $(STAMP)
	$(PY) -m benchmarks.attention
	$(PY) -m benchmarks.plot
	$(PY) -m benchmarks.accuracy --threads 1 $(if $(BENCH_CKPTS),--ckpt $(BENCH_CKPTS))
	$(foreach c,$(BENCH_CKPTS),$(PY) -m benchmarks.sample_effect --ckpt $(c) --name sample_effect_$(notdir $(patsubst %/,%,$(dir $(c))));)
	$(PY) -m benchmarks.profile_smyrf
	$(PY) -m benchmarks.memory_model
	$(PY) -m benchmarks.cost_model
	$(PY) -m benchmarks.step_ops --threads 1
	$(PY) -m benchmarks.models --table model --threads 1
	$(PY) -m benchmarks.models --table step --threads 1
	$(PY) -m benchmarks.models --table step --threads 1 --batches 4 --reps 5 --name train_step_flash_vs_smyrf \
		--variants "dense@128 flash" "smyrf@128 paper 4x2048" "smyrf@128 ours 4x2048"
	$(PY) -m benchmarks.data
	$(PY) -m benchmarks.validation
	$(PY) -m benchmarks.checks.faults
	$(PY) -m benchmarks.augment

# GPU checks (docs/gpu.md): on a CUDA machine that has torch, Lightning, torchvision, tensorboard
# and scikit-image. `make gpu-wheels` first, where pip has internet, downloads what those lack
# (for Python 3.12) into .whl/; `gpu-site` installs them into .gpu-site/ (both git-ignored).
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_SITE := $(CURDIR)/.gpu-site
WHEELS := torch-fidelity==0.4.0 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
gpu-wheels:
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl $(WHEELS)

gpu-site:
	@if [ -d .whl ] && ! $(GPU_PYTHON) -c "import torch_fidelity, jsonargparse" 2>/dev/null; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --target $(GPU_SITE) .whl/*.whl; fi

# GPU_ARGS passes options on, e.g. GPU_ARGS="--only attention" to rerun one step.
gpu-check: gpu-site
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(GPU_PYTHON) -m benchmarks.checks.gpu_check $(GPU_ARGS)

# Profile, 10k-sample validation, kernel block sizes and torch.compile rows (after gpu-check).
gpu-bench: gpu-site
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(GPU_PYTHON) -m benchmarks.checks.gpu_check --bench $(GPU_ARGS)

# Anywhere, no GPU: every gpu-check and gpu-bench step's rows, cold compiles and estimated H100 time.
gpu-plan: $(STAMP)
	$(PY) -m benchmarks.checks.gpu_check --plan --with-bench $(GPU_ARGS)

# The GPU goals from the *-cuda.json results (anywhere; reads JSON only): met, missed, not measured.
gpu-goals:
	$(GPU_PYTHON) -m benchmarks.checks.gpu_goals

# The GPU image's Triton (3.6.0) beside ours: only its compiler and tools are used, with our torch.
$(TRITON36_STAMP): requirements-triton36.txt
	test -x $(TRITON36_VENV)/bin/python || $(PYTHON) -m venv $(TRITON36_VENV)
	$(TRITON36_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-triton36.txt
	touch $(TRITON36_STAMP)

# Every Triton specialisation the CUDA route launches at the goal shapes, compiled for sm_90 and sm_80
# with both Tritons: registers, spills, shared memory, blocks per SM, load widths and the goals
# (-> benchmarks/results/gpu_preflight-cpu.*). No GPU needed. PREFLIGHT_ARGS="--batch 1" is faster.
gpu-preflight: $(STAMP) $(TRITON36_STAMP)
	$(PY) -m benchmarks.gpu_preflight $(PREFLIGHT_ARGS)

# torch_xla pins its own torch, so it gets a venv of its own and runs the work tree from PYTHONPATH.
$(XLA_STAMP): requirements-xla.txt
	test -x $(XLA_PY) || $(PYTHON) -m venv $(XLA_VENV)
	$(XLA_PY) -m pip install --quiet -r requirements-xla.txt
	touch $(XLA_STAMP)

# The training iteration and sampling on PJRT's CPU device (writes benchmarks/results/xla-cpu.*),
# then the `xla` tests (skipped in the main venv, which has no torch_xla).
xla-check: $(XLA_STAMP)
	PJRT_DEVICE=CPU PYTHONPATH=$(CURDIR) $(XLA_PY) -m benchmarks.checks.xla_check
	PJRT_DEVICE=CPU PYTHONPATH=$(CURDIR) $(XLA_PY) -m pytest -q -m xla tests/test_xla.py

clean:
	rm -rf $(VENV) $(XLA_VENV) $(TRITON36_VENV) .gpu-site build *.egg-info
