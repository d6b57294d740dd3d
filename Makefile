# damage-smp — the README's two commands: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

.PHONY: setup browser sample demo test lint format bench bench-labels clean docs-cli

setup: $(STAMP)

# Re-runs only when pyproject.toml changes. torch comes first, pinned to the CPU-capable build on this disk,
# so that nothing downloads a different multi-GB build.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,onnx,tensorboard]'
	touch $(STAMP)

# Headless Chromium + driver for the report's browser tests (Debian packages; no browser download at test time).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  { echo "make browser: could not install chromium + chromium-driver; install them with your package" \
	         "manager (Debian/Ubuntu, as root: apt-get install chromium chromium-driver)" >&2; exit 1; }

# The bundled sample: synthetic damaged-media images with exact masks (deterministic, offline).
sample: setup
	@test -f sample/manifest.csv || $(BIN)/damage-smp synth sample --root-manifest data_manifest.csv

demo: setup sample
	bash scripts/demo.sh

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n auto  # one worker per core (pytest-xdist); tests/conftest.py splits the threads

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup sample
	$(BIN)/python -m benchmarks.run

# Few labels, many scans: scratch / ImageNet / pre-train / self-training arms at one budget, 3 seeds (~1 h on
# 2 cores; QUICK=1 for a smoke test). Writes benchmarks/labels_results.json and docs/label-efficiency.md.
bench-labels: setup
	$(BIN)/python -m benchmarks.labels $(if $(QUICK),--quick)

docs-cli: setup
	$(BIN)/python -m damage_smp.clidoc > docs/cli.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
