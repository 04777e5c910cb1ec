# The whole set-up on a fresh machine is `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastelectra-installed
SOURCE ?= minilm
OUT ?= .cache/demo-bundle
export FASTELECTRA_CACHE ?= $(CURDIR)/.cache/modules
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[convert,serve,bench,test]'
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

clean:
	rm -rf .cache build *.egg-info
