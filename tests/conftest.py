"""Test configuration: CPU only, two virtual devices (for shard_map tests), deterministic; XLA's CPU backend at
optimisation level 0 and one JAX persistent compilation cache per run (the suite is compile-bound)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
if os.environ["JAX_PLATFORMS"] == "cpu" and "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    # The tests' programs are tiny: their time is compiling them, and LLVM's optimisation passes are most of that
    # (on 2 cores: the transform tests' CPU time 112 -> 76 s, tests/models 160 -> 112 s wall). Level 0 compiles
    # the same programs without those passes (fast-math is off at every level); every test passes at both levels.
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

# One JAX persistent compilation cache per test run, empty at its start and removed at its end (pytest_unconfigure),
# shared by the pytest-xdist workers and by the processes the tests start. Much of the suite compiles the same
# programs again: fresh ``jax.jit`` closures over one function (each a miss of JAX's in-memory cache), the same
# small models in several test files, the same eager ops in both workers (tests/models: 175 -> 160 s wall). Set
# through JAX's environment variables, read when jax is imported: this file is imported first and imports no jax
# (the no-jax tests need that). The first process (the xdist controller, or the only one) creates the directory;
# the workers it starts inherit the variables. JQ_TEST_COMPILATION_CACHE=0 turns it off; a
# JAX_COMPILATION_CACHE_DIR of the user's is kept.
_CACHE_ENV = "JQ_TEST_COMPILATION_CACHE"
_CREATED_CACHE = None
if _CACHE_ENV not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _CREATED_CACHE = os.environ[_CACHE_ENV] = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="jq-tests-xla-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # every program (JAX's default: >= 1 s only)
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"  # no size limit (0 means "JAX's default")

import shutil  # noqa: E402
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


def pytest_unconfigure(config):
    if _CREATED_CACHE:
        shutil.rmtree(_CREATED_CACHE, ignore_errors=True)


def pytest_report_header(config):
    if not config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None) not in (None, "0"):
        return "pytest-xdist is not active: running the tests in one process (pip install pytest-xdist for parallel runs)"


@pytest.fixture
def no_compilation_cache():
    """For a test that counts or times XLA compilations: the persistent compilation cache off while it runs (a
    program another test already compiled would load from the cache, no compilation), back on after it."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # JAX decides once per process whether the cache is used: decide again
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        compilation_cache.reset_cache()


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
