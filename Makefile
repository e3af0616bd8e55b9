# cachebrew: the two set-up commands are `make demo` (run) and `make test` (tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint demo docs-figure bench bench-cache bench-distill bench-reader bench-codecs bench-data bench-lm bench-sizes clean pipelines

install: $(STAMP)

# torch first, from the CPU wheel on disk: a bare `torch` requirement on a fresh
# environment pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# --durations=15: the 15 slowest tests, to keep an eye on the suite's time
test: install
	$(PY) -m pytest -q --durations=15

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(PY) -m ruff check cachebrew tests examples benchmarks
	$(PY) -m ruff format --check cachebrew tests examples benchmarks
	$(PY) -m mypy cachebrew

# The demo pipeline (pipelines/Makefile `demo`): prepares the data if missing, fine-tunes the
# MiniLM teacher on a 2,000-sentence subset, caches it once, sweeps 4 students; ~10 min on 2 cores.
demo: install
	$(MAKE) -C pipelines demo PY=$(abspath $(PY))

# The README's figure (docs/demo-sweep.png), redrawn from the demo's sweep report.
docs-figure: install
	$(MAKE) -C pipelines docs-figure PY=$(abspath $(PY))

# Benchmarks (BENCHMARKS.md): they prepare the MiniLM teacher and VADER data first if missing.
bench: install bench-data
	$(PY) benchmarks/run.py

bench-cache: install bench-data
	$(PY) benchmarks/cache_format.py

# Large-vocabulary logit storage (bytes, KL, one-thread encode/decode), the value codes tried, and
# the sparse KD step against a hard-label step. LM_ROWS=<dense LM cache> takes the rows' sorted
# log-prob profiles from a trained LM (e.g. the `make -C pipelines lm` teacher's) instead of the
# synthetic generator.
LM_ROWS ?=
bench-lm: install
	$(PY) benchmarks/lm_vocab.py 256 $(if $(LM_ROWS),--rows-from $(LM_ROWS))
	$(PY) benchmarks/topk_code_variants.py 256 $(if $(LM_ROWS),--rows-from $(LM_ROWS))
	$(PY) benchmarks/sparse_kd_step.py
	$(PY) benchmarks/exact_kd.py 128

# Precompute against the bare sdpa forward of the same teacher and batches (issue 21): peak RSS and
# speed, for a GPT-2 4 x 256 (V = 32,000) at L = 2,048 and 1,024 with topk:128, and BERT-base 16 x 128.
bench-sizes: install
	$(PY) benchmarks/model_sizes.py --cases lm2048,lm1024,bert --texts 8 --rounds 2

bench-distill: install bench-data
	$(PY) benchmarks/distill_speed.py

# Reader against the raw codec decode of the same chunk bytes: synthetic BERT-base-shaped caches,
# and the real caches in READER_CACHES (default: the demo's MiniLM cache, once `make demo` ran).
READER_CACHES ?= $(wildcard pipelines/out/demo/cache)
bench-reader: install
	$(PY) benchmarks/reader_speed.py $(foreach cache,$(READER_CACHES),--cache $(cache))

# Size and one-thread decode speed of every candidate codec on the same chunks of real caches
# (build them first: see docs/decisions.md, "Codec choice").
CODEC_CACHES ?= caches/minilm runs/bench-reader/hidden-zstd runs/bench-reader/attention-zstd
bench-codecs: install
	$(PY) benchmarks/codec_choice.py $(CODEC_CACHES)

bench-data: install
	$(PY) -m cachebrew data prepare minilm sentiment --out data

# Pipelines (pipelines/Makefile): `make pipeline-tiny` = `make -C pipelines tiny`.
pipelines:
	$(MAKE) -C pipelines help PY=$(abspath $(PY))

pipeline-%: install
	$(MAKE) -C pipelines $* PY=$(abspath $(PY))

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
