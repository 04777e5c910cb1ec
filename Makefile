# The whole set-up on a fresh machine is `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastelectra-installed
SOURCE ?= minilm
OUT ?= .cache/demo-bundle
export FASTELECTRA_CACHE ?= $(CURDIR)/.cache/modules
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test lint format bench bundles clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[convert,serve,bench,test,ray,triton]'
	# TF Models' own requirements pull ~3 GB (kaggle, opencv, ...); the encoder needs none of them.
	$(PY) -m pip install -q --no-deps tf-models-official==2.20.0
	touch $@

demo: $(STAMP)
	$(PY) -m fastelectra.demo --source $(SOURCE) --out $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q

# Every table and plot of the README's performance section (tens of minutes; see
# docs/performance.md). Needs the bundles under .cache/bundles: `make bundles` first.
BENCH_OUT ?= benchmarks/results/$(shell date +%F)-$(shell hostname -s)
bench: $(STAMP)
	$(VENV)/bin/fastelectra bench .cache/bundles/minilm-fp32 .cache/bundles/minilm-int8-dynamic \
		.cache/bundles/minilm-int8-static --threads 2 --duration 5 --peers --out $(BENCH_OUT)/bench-minilm
	$(PY) benchmarks/latency.py .cache/bundles/electra-large-fp32 \
		.cache/bundles/electra-large-int8-dynamic .cache/bundles/electra-large-int8-static \
		--source electra-large --batch 1 --seq 128 --threads 2 --duration 10 \
		--out $(BENCH_OUT)/latency-electra-large-b1-s128
	$(VENV)/bin/fastelectra bench .cache/bundles/electra-large-fp32 \
		.cache/bundles/electra-large-int8-dynamic --no-grid --traffic --batch 32 --threads 2 \
		--duration 1 --warmup 0 --out $(BENCH_OUT)/bench-electra-large-traffic

# The bundles `make bench` measures. MiniLM's are real weights, gated as shipped; the
# ELECTRA-large shape has random weights, so its INT8 variants quantise every node
# (--no-int8-search) and are written even though random weights mean nothing to the gate.
BUNDLES := .cache/bundles
bundles: $(STAMP)
	head -48 fastelectra/data/verify_texts.txt > .cache/verify-48.txt
	for p in fp32 int8-dynamic int8-static; do \
		test -d $(BUNDLES)/minilm-$$p || $(VENV)/bin/fastelectra build minilm -o $(BUNDLES)/minilm-$$p --precision $$p || exit 1; \
		test -d $(BUNDLES)/electra-large-$$p || $(VENV)/bin/fastelectra build electra-large -o $(BUNDLES)/electra-large-$$p --precision $$p --no-int8-search --force --verify-texts .cache/verify-48.txt || exit 1; \
	done

clean:
	rm -rf .cache build *.egg-info
