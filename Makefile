# smoothprune developer entry points. Two commands set up a fresh machine and run everything:
#   make demo   -- build the venv + extension, run the MLP-pruning recipe (every arm of DEMO_ARMS, one
#                  per option of conf/pruning, x every seed of DEMO_SEEDS), report, and time the
#                  sparsest exported model dense vs sparse
#   make test   -- build the venv + extension, run the whole test suite (both tiers)
#
# Test tiers (markers in pyproject.toml):
#   quick       -- every test not marked `slow`: `make test-quick` (under 2 minutes on 2 cores)
#   slow        -- real multi-epoch Lightning runs, multi-process distributed tests, recipe runs and
#                  Hydra command lines, torch.compile, the command line in fresh processes, long
#                  Dykstra convergence, the arbitrary-precision fuzz
# `make test` runs in two passes: all but the `serial` tests in PYTEST_WORKERS (2) pytest-xdist
# workers of one torch thread each, then the `serial` ones (timing assertions, spawned process
# groups) alone; PYTEST_WORKERS=0 runs the first pass in one process too. `make test-quick` is one
# process (its tests are too short for workers to pay off). PYTEST_ARGS goes to every pytest run
# (PYTEST_ARGS=tests/ops: one folder).
#
# The torch venv is large (~4.4 GB), so it is built once per set of pins in a cache outside the
# clone, keyed by a hash of requirements.lock and the Python version, and .venv links to it.

PYTHON      ?= python3
VENV_CACHE  ?= $(HOME)/.cache/smoothprune/venvs
# $(call pin_hash,LOCKFILE): a hash of the pins and the Python version, the cache key of a venv
# (comment lines and blank lines are left out: editing a comment does not rebuild a venv)
pin_hash     = $(shell grep -v '^\s*\(#\|$$\)' $(1) | $(PYTHON) -c "import sys,hashlib,platform; print(hashlib.sha256((sys.stdin.read()+platform.python_version()).encode()).hexdigest()[:16])")
VENV_DIR    := $(VENV_CACHE)/torch-$(call pin_hash,requirements.lock)
VENV        := .venv
XLA_DIR     := $(VENV_CACHE)/xla-$(call pin_hash,requirements-xla.lock)
VENV_XLA    := .venv-xla
PY          := $(VENV)/bin/python
PYTEST_ARGS ?=
PYTEST_WORKERS ?= 2

SHELL       := /bin/bash

.PHONY: all venv build demo test test-quick bench venv-xla build-xla test-xla bench-xla clean distclean

all: build

# Build the cached venv once per set of pins: the directory name holds the hash of
# requirements.lock, so the marker alone says it is built (no dependency on the file's mtime,
# which is new in every fresh clone). The .complete marker makes an interrupted build start over.
# $(call build_venv,DIR,LOCKFILE), the recipe of both cached venvs.
define build_venv
rm -rf "$(1)"
mkdir -p "$(VENV_CACHE)"
$(PYTHON) -m venv "$(1)"
"$(1)/bin/pip" install --quiet --upgrade "pip>=24"
"$(1)/bin/pip" install --quiet -r $(2)
touch "$(1)/.complete"
endef

$(VENV_DIR)/.complete:
	$(call build_venv,$(VENV_DIR),requirements.lock)

venv: $(VENV_DIR)/.complete
	ln -sfn "$(VENV_DIR)" $(VENV)

# Build the native extension in place (editable install, no build isolation: the build imports torch).
build: venv
	$(VENV)/bin/pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import smoothprune; print('smoothprune', smoothprune.__version__, 'built with', smoothprune._native.build_info())"

# The main demo: the paper's MLP-pruning comparison on the embedded MNIST digits, every arm and
# seed in one Hydra multirun, then the table, the plot and the sparse checkpoints of the sweep.
DEMO_ARMS   ?= none,hard,smooth_p2,smooth_p43,ste,smooth_p2_lam1e-2,smooth_p43_lam1e-2
DEMO_SEEDS  ?= 0,1,2
DEMO_ARGS   ?=
demo: build
	@dir="results/mlp_prune/$$(date +%Y-%m-%d_%H-%M-%S)"; \
	echo "== MLP pruning: arms $(DEMO_ARMS), seeds $(DEMO_SEEDS) -> $$dir"; \
	$(PY) -W ignore::FutureWarning recipes/train.py -m experiment=mlp_prune pruning=$(DEMO_ARMS) \
		seed=$(DEMO_SEEDS) trainer.enable_progress_bar=false hydra.sweep.dir="$$dir" $(DEMO_ARGS) && \
	$(PY) recipes/report.py "$$dir" && \
	$(PY) -W ignore::FutureWarning recipes/infer.py "$$dir" && \
	echo "sparse checkpoints: $$dir/*/model.safetensors (inspect: .venv/bin/smoothprune inspect FILE)"

# (a pass that selects nothing, exit status 5, is not a failure: PYTEST_ARGS may pick one folder)
test: build
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not serial" $(PYTEST_ARGS) || [ $$? = 5 ]
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || [ $$? = 5 ]

# (rebuilds the extension only when a native source is newer than it: `pip install -e` always
# recompiles, which alone takes about two minutes here)
test-quick: venv
	@so="$$(ls smoothprune/_C*.so 2>/dev/null | head -1)"; \
	if [ -z "$$so" ] || [ ! -x $(VENV)/bin/smoothprune ] || \
	   [ -n "$$(find smoothprune/csrc setup.py pyproject.toml -newer "$$so" -print -quit)" ]; then \
		$(MAKE) --no-print-directory build; fi
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

bench: build
	$(PY) benchmarks/bench_ops.py

# The XLA environment (torch_xla on its CPU device): its own cached venv, linked as .venv-xla.
$(XLA_DIR)/.complete:
	$(call build_venv,$(XLA_DIR),requirements-xla.lock)

venv-xla: $(XLA_DIR)/.complete
	ln -sfn "$(XLA_DIR)" $(VENV_XLA)

# A regular (non-editable) install built from a copy of the sources: the in-place extension of
# .venv (built for another torch) has the same file name and must not be picked up or reused.
build-xla: venv-xla
	@src="$$(mktemp -d)"; trap 'rm -rf "$$src"' EXIT; \
	cp -r setup.py pyproject.toml README.md smoothprune "$$src"/ && rm -f "$$src"/smoothprune/*.so && \
	SMOOTHPRUNE_CUDA=0 $(VENV_XLA)/bin/pip install --quiet --no-build-isolation --no-deps --force-reinstall "$$src"
	cd / && "$(CURDIR)/$(VENV_XLA)/bin/python" -c "import smoothprune; print('smoothprune', smoothprune.__version__, 'for XLA, built with', smoothprune._native.build_info())"

# The XLA tests: the installed package must win over the repository's sources, so pytest appends
# (rather than prepends) the repository root to sys.path.
test-xla: build-xla
	PJRT_DEVICE=CPU $(VENV_XLA)/bin/pytest --import-mode=append -p no:cacheprovider tests/xla $(PYTEST_ARGS)

# Graph and compile facts of the Dykstra path on XLA (the README's table).
bench-xla: build-xla
	PJRT_DEVICE=CPU $(VENV_XLA)/bin/python benchmarks/xla_graph.py

clean:
	rm -rf build *.egg-info smoothprune/*.so .pytest_cache .hypothesis

distclean: clean
	rm -f $(VENV) $(VENV_XLA)
