# Every target works on a fresh machine: it creates .venv and installs the pinned versions first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_ARGS ?=  # e.g. BENCH_ARGS="--device cuda --precision bf16-mixed --channels-last" on a GPU
JOBS ?= 2  # test processes (pytest-xdist; 1: none); SLURM, multi-process and timing tests share one (tests/markers.py)
PYTEST := $(BIN)/python -m pytest $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadgroup)

.PHONY: install demo test test-fast test-one bench results lint docs docs-generate clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable '.[cpu,dev,video,docs]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with selfsup, faiss-cpu, PyAV, the test and docs tools, at the pinned versions

demo: $(STAMP)  ## pretrain SimCLR on built-in MNIST-5k (CPU, ~5 min), then print its kNN and linear-probe accuracy
	$(BIN)/selfsup fit -c experiments/simclr/mnist5k.yaml
	ckpt=$$(ls -td runs/simclr-mnist5k/version_*/checkpoints/last.ckpt | head -1) && \
	$(BIN)/selfsup knn --ckpt $$ckpt -c experiments/eval/mnist5k.yaml --k 20 200 && \
	$(BIN)/selfsup fit -c experiments/eval/linear-mnist5k.yaml --model.init_from $$ckpt

test: $(STAMP)  ## the whole test suite; every test's time in runs/test-durations.txt
	$(PYTEST)

test-fast: $(STAMP)  ## every module's quick tests, without the slow end-to-end runs (a few minutes)
	$(PYTEST) -m "not slow"

test-one: $(STAMP)  ## one method's (or module's) quick tests: make test-one M=swav runs tests/test_swav.py but its slow runs
	$(BIN)/python -m pytest -m "not slow" tests/test_$(M).py

bench: $(STAMP)  ## each method's step against its backbone floor; data pipeline; FAISS kNN against torch (tables + runs/*.json)
	$(BIN)/selfsup bench $(BENCH_ARGS)
	$(BIN)/selfsup bench data
	$(BIN)/selfsup bench knn

.PHONY: gpu-check
gpu-check: $(STAMP)  ## on one GPU, at most 8 min: every GPU path (bf16 steps, device views, nvJPEG, faiss-gpu, a ResNet-50 fit, largest batches) -> runs/gpu-check/
	$(BIN)/selfsup bench gpu-check $(GPU_CHECK_ARGS)

.PHONY: gpu-wheels
gpu-wheels:  ## for a GPU machine without network: the wheels its image lacks -> .whl/, and the command to run the check there
	$(PYTHON) bench/gpu_wheels.py

results: $(STAMP)  ## every method's CPU recipe + its evaluations vs random init and raw pixels -> docs/results.md (a few hours on a 2-core CPU)
	$(BIN)/selfsup results

docs: $(STAMP)  ## the docs site in site/ (MkDocs + Material + mkdocstrings); broken links or missing pages fail
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-generate: $(STAMP)  ## rewrite the generated docs: docs/cli.md's reference (from the parsers), docs/index.md's sections shared with README.md
	$(BIN)/python -m selfsup.docgen

lint: $(STAMP)  ## static checks
	$(BIN)/ruff check ssl tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache site
