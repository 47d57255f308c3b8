# Two commands do all set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROMPT ?= PA chest radiograph of an adult. No acute cardiopulmonary abnormality.
APP_ARGS ?=

.PHONY: install test test-fast check-copies wheel-smoke demo bench app clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-install only when the package metadata changes (idempotent and quick when .venv exists).
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[train,app,dev]"
	touch $(STAMP)

install: $(STAMP)

# The marked copies of shared blocks in train_scripts/ (`# Copied from train_scripts/train_ldm.py:NAME`) must match
# their source (standard library only, no install needed); `$(PYTHON) scripts/check_copies.py --fix` rewrites them.
check-copies:
	$(PYTHON) scripts/check_copies.py

# The browser test drives Debian's chromium with the playwright pip package (never `playwright install`); it is
# skipped where chromium cannot be installed.
test: install check-copies
	command -v chromium >/dev/null || (command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium) || true
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -q --durations=15 tests

# The tests not marked `slow` (no training runs, no browser): a minute or two while developing.
test-fast: install check-copies
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) -m pytest -q -m "not slow" tests

# Build the wheel and smoke-test it installed in a throwaway venv, from outside the checkout (offline, ~40 s).
wheel-smoke: install
	PY=$(abspath $(PY)) .ci/smoke_wheel.sh

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m cxr_diffusers.cli generate pretrained/cxr-ldm-small \
		--prompt "$(PROMPT)" --num-images 4 --steps 25 --seed 0 --output-dir outputs/demo --grid

# The Gradio app on http://127.0.0.1:7860 (APP_ARGS="--port 8000 --model PATH ..." to change; see docs/app.md).
app: install
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PY) spaces_app/app.py $(APP_ARGS)

bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_sampling.py
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench_training.py

clean-venv:
	rm -rf $(VENV)
