"""Shared fixtures. Deliberately minimal: nothing here changes JAX's global configuration (the
engine tests switch to float64 locally, with `jax.enable_x64(True)`)."""

import gc
import importlib
import os

import jax
import pytest

# `jaxq` commands keep compiled programs in ~/.cache/jaxq/xla; a test calling cli.main would
# otherwise switch that cache on for the rest of the session, sharing it with other processes on
# the machine (a clean-clone run crashed reading an entry there). Tests compile afresh.
os.environ["JAXQ_COMPILATION_CACHE"] = ""


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """Drop every compiled program after each test module. Each one holds about 400 memory
    mappings on a CPU, and the suite compiles some hundreds of distinct ones: kept all in one
    process they reached 65,367 mappings, against Linux's default vm.max_map_count of 65,530,
    and XLA crashed (segfault or abort) compiling the next one."""
    yield
    jax.clear_caches()
    gc.collect()


@pytest.fixture
def simulate_module():
    """The module jaxq.simulate itself (the package attribute `jaxq.simulate` is the function)."""
    return importlib.import_module("jaxq.simulate")
