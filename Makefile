# DreamerV2-TF2. `make test` is the test command CI runs (.ci/run).
#
#   make venv        .venv with requirements.txt (again only when it changes);
#                    with an NVIDIA GPU (nvidia-smi), TensorFlow's CUDA build
#   make train       Pong with the atari config; LOGDIR=... to choose the run
#   make test        the fast tests in TEST_JOBS (2) processes, with the extras
#                    (pytest.ini skips the `slow` marker)
#   make test-slow   the long checks (learning curves, long runs)
#   make extras      dm_control, MuJoCo, Crafter and MiniGrid on top of venv

PYTHON ?= python3
VENV := .venv
LOGDIR ?= $(HOME)/logdir/atari_pong/dreamerv2/1
# On a machine whose nvidia-smi lists a GPU, TensorFlow comes with its CUDA
# libraries: tensorflow[and-cuda] at the version requirements.txt pins.
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q '^GPU' && echo yes)
TF_VERSION := $(shell sed -n 's/^tensorflow==//p' requirements.txt)

.PHONY: venv extras train test test-slow

venv: $(VENV)/.installed

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The stamp is newer than requirements.txt once they are installed.
$(VENV)/.installed: requirements.txt | $(VENV)/bin/python
	$(VENV)/bin/pip install -r requirements.txt
ifeq ($(GPU),yes)
	$(VENV)/bin/pip install 'tensorflow[and-cuda]==$(TF_VERSION)'
endif
	touch $@

extras: $(VENV)/.installed-extras

$(VENV)/.installed-extras: requirements-extras.txt $(VENV)/.installed
	$(VENV)/bin/pip install -r requirements-extras.txt
	touch $@

train: venv
	$(VENV)/bin/python dreamerv2/train.py --logdir $(LOGDIR) --configs defaults atari --task atari_pong

# pytest exits 5 when it collects no tests: that is a failure, not a pass.
# --durations=10: the slowest tests, to keep the fast suite under its 12
# minutes on 2 cores.
# PYTHONFAULTHANDLER: a process the tests start that dies of a signal
# (SIGSEGV, SIGABRT) prints every thread's Python stack to its stderr, which
# the tests show when they fail.
define pytest
	PYTHONFAULTHANDLER=1 $(VENV)/bin/python -m pytest -q --durations=10 $(1); status=$$?; \
	if [ $$status -eq 5 ]; then \
	  echo "error: pytest collected no tests (exit 5); check tests/ and pytest.ini" >&2; \
	fi; \
	exit $$status
endef

# The fast tests run in TEST_JOBS processes (pytest-xdist); tests/conftest.py
# keeps the tests that share a module's fixture on one of them. Most tests
# start a train.py or build a graph, single-threaded work that a second
# process overlaps on a second core. The slow tests (learning runs) run one
# at a time.
TEST_JOBS ?= 2

# The tests cover the optional environments too, so they install the extras.
test: extras
	@$(call pytest,-n $(TEST_JOBS) --dist loadgroup)

test-slow: extras
	@$(call pytest,-m slow)
