# smoothprune developer entry points. Two commands set up a fresh machine and run everything:
#   make demo   -- build the venv + extension, run the demo
#   make test   -- build the venv + extension, run the whole test suite
#
# The torch venv is large (~4.4 GB), so it is built once per set of pins in a cache outside the
# clone, keyed by a hash of requirements.lock and the Python version, and .venv links to it.

PYTHON      ?= python3
VENV_CACHE  ?= $(HOME)/.cache/smoothprune/venvs
PIN_HASH    := $(shell cat requirements.lock | $(PYTHON) -c "import sys,hashlib,platform; print(hashlib.sha256((sys.stdin.read()+platform.python_version()).encode()).hexdigest()[:16])")
VENV_DIR    := $(VENV_CACHE)/torch-$(PIN_HASH)
VENV        := .venv
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all venv build demo test bench clean distclean

all: build

# Build the cached venv once; the .complete marker makes an interrupted build start over.
$(VENV_DIR)/.complete: requirements.lock
	rm -rf "$(VENV_DIR)"
	mkdir -p "$(VENV_CACHE)"
	$(PYTHON) -m venv "$(VENV_DIR)"
	"$(VENV_DIR)/bin/pip" install --quiet --upgrade "pip>=24"
	"$(VENV_DIR)/bin/pip" install --quiet -r requirements.lock
	touch "$@"

venv: $(VENV_DIR)/.complete
	ln -sfn "$(VENV_DIR)" $(VENV)

# Build the native extension in place (editable install, no build isolation: the build imports torch).
build: venv
	$(VENV)/bin/pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import smoothprune; print('smoothprune', smoothprune.__version__, 'built with', smoothprune._native.build_info())"

demo: build
	$(PY) -m smoothprune.demo

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_ops.py

clean:
	rm -rf build *.egg-info smoothprune/*.so .pytest_cache .hypothesis

distclean: clean
	rm -f $(VENV)
