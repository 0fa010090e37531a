# Every target works on a fresh machine: it creates .venv and installs the pinned versions first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_ARGS ?=  # e.g. BENCH_ARGS="--device cuda --precision bf16-mixed --channels-last" on a GPU

.PHONY: install demo test test-fast bench results lint docs clean

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

test: $(STAMP)  ## the whole test suite
	$(BIN)/python -m pytest

test-fast: $(STAMP)  ## the suite without the slow end-to-end runs
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)  ## each method's step against its backbone floor; data pipeline; FAISS kNN against torch (tables + runs/*.json)
	$(BIN)/selfsup bench $(BENCH_ARGS)
	$(BIN)/selfsup bench data
	$(BIN)/selfsup bench knn

.PHONY: gpu-check
gpu-check: $(STAMP)  ## on one GPU, at most 8 min: every GPU path (bf16 steps, device views, nvJPEG, faiss-gpu, a ResNet-50 fit, largest batches) -> runs/gpu-check/
	$(BIN)/selfsup bench gpu-check $(GPU_CHECK_ARGS)

results: $(STAMP)  ## every method's CPU recipe + its evaluations vs random init and raw pixels -> docs/results.md (about 90 minutes)
	$(BIN)/selfsup results

docs: $(STAMP)  ## the docs site in site/ (MkDocs + Material + mkdocstrings); broken links or missing pages fail
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)  ## static checks
	$(BIN)/ruff check ssl tests

clean:
	rm -rf $(VENV) runs .pytest_cache site
