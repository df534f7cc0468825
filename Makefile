# flip-nvflare developer commands. Every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned: 2.13.0 is a CPU build already on disk on our machines; a looser pin pulls CUDA.
TORCH_PIN := torch==2.13.0

.PHONY: install test test-fast lint bench demo demo-prod docs clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)" -e ".[dev,pt]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

# Also prints the line coverage of flip_nvflare (settings in pyproject.toml) and fails below 85 %.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not e2e" --cov=flip_nvflare --cov-report=term-missing --cov-fail-under=85

lint: $(STAMP)
	$(VENV)/bin/ruff check flip_nvflare flip_emulator flip_nvflare_demo tests bench docs
	$(VENV)/bin/ruff format --check flip_nvflare flip_emulator flip_nvflare_demo tests bench docs
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

# make demo STYLE=client_api: the Client API app and its recipe; make demo TRACKING=mlflow: also MLflow
demo: $(STAMP)
	$(VENV)/bin/flip-nvflare demo $(if $(STYLE),--style $(STYLE)) $(if $(TRACKING),--tracking $(TRACKING))

# the documentation site, warnings are errors; open build/docs/index.html
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs build/docs

demo-prod: $(STAMP)
	$(VENV)/bin/flip-nvflare demo --prod

clean:
	rm -rf $(VENV) .work build *.egg-info
