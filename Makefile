# One-command set-up: every target creates .venv (pinned dependencies) if it is missing or stale.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAW_VIDEOS := data/01_raw/videos

# Telemetry off for Kedro, MLflow and anything honouring DO_NOT_TRACK.
export KEDRO_DISABLE_TELEMETRY := 1
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

.PHONY: venv run sample-data test test-slow lint viz mlflow-ui demo clean browser bench bench-gpu

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

venv: $(STAMP)

# Renders the built-in sample videos only when the raw folder holds no video (user videos are never touched).
sample-data: venv
	$(BIN)/kedro run --pipelines=sample_data

run: sample-data
	$(BIN)/kedro run

test: venv
	$(BIN)/pytest -q -m "not slow"

test-slow: venv
	$(BIN)/pytest -q -m slow

lint: venv
	$(BIN)/ruff check src tests benchmarks tools

viz: venv
	$(BIN)/kedro viz run --host 127.0.0.1 --no-browser

mlflow-ui: venv
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

# The local web page on http://127.0.0.1:7860/: a work instruction in, a clip out, with the trained LoRAs.
demo: venv
	$(BIN)/machining-t2v serve --host 127.0.0.1

clean:
	rm -rf data/02_intermediate/* data/03_primary/* data/04_feature/* data/05_model_input/* \
	       data/07_model_output/* data/08_reporting/*

# Headless Chromium for the browser tests (Kedro-Viz lineage, the web page) and a Korean font for the
# page's burnt-in subtitles; needs root for apt.
browser:
	(command -v chromium && fc-list :lang=ko | grep -q .) || \
	  (apt-get update && apt-get install -y --no-install-recommends chromium fonts-nanum)

# Benchmarks (decode, data prep, training, generation, Kedro overhead): prints a table and writes
# data/08_reporting/benchmarks.{json,md}. `python -m benchmarks.run --quick` for a smoke run.
bench: venv
	$(BIN)/python -m benchmarks.run

# Real-size training on one CUDA GPU (random-weight SD1.5 + AnimateDiff v1-5-3, a few minutes on an H100/H200):
# steps/s, peak memory and MFU of the image LoRA (512 px, batch 4) and the motion LoRA (16 frames, 256 and
# 512 px); writes data/08_reporting/benchmarks_gpu.{json,md}. `python -m benchmarks.gpu --device cpu --quick`
# checks the logic on a CPU.
bench-gpu: venv
	$(BIN)/python -m benchmarks.gpu
