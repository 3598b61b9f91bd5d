# Two entry points for a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench setup clean

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

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/attention.py
	$(PY) benchmarks/plot.py
	$(PY) benchmarks/accuracy.py --threads 1 $(if $(BENCH_CKPTS),--ckpt $(BENCH_CKPTS))
	$(foreach c,$(BENCH_CKPTS),$(PY) benchmarks/sample_effect.py --ckpt $(c) --name sample_effect_$(notdir $(patsubst %/,%,$(dir $(c))));)
	$(PY) benchmarks/profile_smyrf.py
	$(PY) benchmarks/models.py --table model --threads 1
	$(PY) benchmarks/models.py --table step --threads 1
	$(PY) benchmarks/models.py --table step --threads 1 --batches 4 --reps 5 --name train_step_flash_vs_smyrf \
		--variants "dense@128 flash" "smyrf@128 paper 4x2048" "smyrf@128 ours 4x2048"
	$(PY) benchmarks/data.py
	$(PY) benchmarks/validation.py
	$(PY) benchmarks/faults.py

clean:
	rm -rf $(VENV) build *.egg-info
