"""Test configuration: CPU only, two virtual devices (for shard_map tests), deterministic."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import warnings  # noqa: E402

import pytest  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)


def pytest_addoption(parser, pluginmanager):
    """Without pytest-xdist (not installed, or ``-p no:xdist``), accept the ``--numprocesses``/``--dist`` of
    pyproject's addopts and run in one process, instead of failing on unknown arguments."""
    if pluginmanager.hasplugin("xdist"):
        return
    group = parser.getgroup("xdist-absent", "pytest-xdist is not active: these options are accepted and ignored")
    group.addoption("--numprocesses", dest="numprocesses", default=None, help="ignored: pytest-xdist is not active")
    group.addoption("--dist", dest="dist", default="no", help="ignored: pytest-xdist is not active")


def pytest_report_header(config):
    if not config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None) not in (None, "0"):
        return "pytest-xdist is not active: running the tests in one process (pip install pytest-xdist for parallel runs)"


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
