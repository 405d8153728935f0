# Two set-up commands for a fresh machine (see README):
#   make train   -> install, then train on the built-in synthetic session
#   make test    -> install, then run the test suite
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# The CPU build of torch 2.13.0 is installed first and explicitly, so that no
# later requirement can pull a multi-GB CUDA build from the registry.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install train test test-fast bench clean

install:
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test,sweep,ode]"
	@$(PYTHON) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, '| cuda build:', torch.version.cuda)"

train: install
	$(PYTHON) -m eirnn.train $(ARGS)

test: install
	$(PYTHON) -m pytest -q $(PYTEST_ARGS)

test-fast:
	$(PYTHON) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
