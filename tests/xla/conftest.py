"""The XLA job (`make test-xla`): torch_xla on its CPU device, in the .venv-xla environment.

These tests run only there; the main suite (no torch_xla installed) does not collect them (see
tests/conftest.py). Here torch_xla must import, and `smoothprune` must be the package installed
for this torch, not the repository's sources (whose in-place extension is built for another
torch): `make test-xla` runs pytest with --import-mode=append for that.
"""

import os
import pathlib

import pytest

os.environ.setdefault("PJRT_DEVICE", "CPU")

import torch  # noqa: E402
import torch_xla  # noqa: E402  (must import: this job exists to test it)
import torch_xla.debug.metrics as met  # noqa: E402

import smoothprune  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
if REPO in pathlib.Path(smoothprune.__file__).resolve().parents:
    raise pytest.UsageError(
        f"tests/xla: imported smoothprune from the repository ({smoothprune.__file__}), whose "
        "extension is built for another torch; run `make test-xla` (an installed build, pytest "
        "--import-mode=append)"
    )


class XlaMetrics:
    """Compilation and fallback counts from torch_xla's metrics (cleared per test)."""

    @staticmethod
    def compilations() -> int:
        data = met.metric_data("CompileTime")
        return 0 if data is None else int(data[0])

    @staticmethod
    def fallbacks() -> list[str]:
        """Ops that ran on the CPU instead of in the graph (``aten::`` counters; reading a value
        on the host, ``aten::_local_scalar_dense``, counts too)."""
        return sorted(name for name in met.counter_names() if name.startswith("aten::"))


@pytest.fixture
def xla():
    met.clear_all()
    torch_xla.sync()
    yield XlaMetrics()


@pytest.fixture
def device():
    return torch_xla.device()


def pytest_report_header(config):
    return f"torch {torch.__version__}, torch_xla {torch_xla.__version__}, PJRT_DEVICE={os.environ['PJRT_DEVICE']}, smoothprune from {smoothprune.__file__}"
