"""Test configuration: CPU only, two virtual devices (for shard_map tests), deterministic."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"

import warnings  # noqa: E402

import pytest  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
