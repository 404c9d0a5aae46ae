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


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
