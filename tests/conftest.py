import importlib.util
import os

import hypothesis
import numpy as np
import pytest
import torch

# tests/xla runs in its own environment (`make test-xla`); without torch_xla there is nothing to run.
collect_ignore = [] if importlib.util.find_spec("torch_xla") else ["xla"]

hypothesis.settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
hypothesis.settings.register_profile("dev", max_examples=200, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs most tests in 2 pytest-xdist workers, which share the cores: one torch
    # thread each (two threads per worker oversubscribe the cores and slow the small models'
    # steps down several times over). Tests that time things or start process groups are marked
    # `serial` and run alone, with torch's default threads.
    torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def reset_dynamo():
    """Dynamo's compiled code, guards and counters, and the profile-guided "automatic dynamic"
    state that Dynamo keys by source location (`reset()` keeps it: it would leak from one
    parametrization of a test into the next)."""
    torch._dynamo.reset()
    torch._dynamo.pgo.reset_code_state()
    torch._dynamo.utils.counters.clear()


@pytest.fixture
def fresh_dynamo():
    """A test that compiles starts from, and leaves, a fresh Dynamo (see `reset_dynamo`); the
    fixture's value resets it again, for a test that compiles several times."""
    reset_dynamo()
    yield reset_dynamo
    reset_dynamo()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
