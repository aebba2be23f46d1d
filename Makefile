# Every target sets up .venv itself on a fresh machine: `make demo` and `make test`
# are the only commands a newcomer types.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.edgeseg-installed
PYTEST_ARGS ?=

.PHONY: setup demo test bench bench-openvino lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The pinned version takes the CPU build here; unpinned, pip pulls GBs of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,export,dev]"
	@touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeseg demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

bench: $(STAMP) bench-openvino
	$(PY) -m pytest -q benchmarks --benchmark-json=benchmarks/results/latest-bench.json

# edgeseg's OpenVINO engine vs raw OpenVINO / benchmark_app / ONNX Runtime, interleaved on one
# file; stream throughput; CamVid mIoU of the OpenVINO engines (benchmarks/results/openvino.md)
bench-openvino: $(STAMP)
	$(PY) benchmarks/openvino_vs_raw.py --threads 2 --rounds 8 --miou \
		--json benchmarks/results/openvino-latest.json

lint: $(STAMP)
	$(VENV)/bin/ruff check edgeseg tests benchmarks

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
