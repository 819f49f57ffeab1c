"""Shared fixtures. Deliberately minimal: nothing here changes JAX's global configuration (the
engine tests switch to float64 locally, with `jax.enable_x64(True)`)."""

import importlib
import os

import pytest

# `jaxq` commands keep compiled programs in ~/.cache/jaxq/xla; a test calling cli.main would
# otherwise switch that cache on for the rest of the session, sharing it with other processes on
# the machine (a clean-clone run crashed reading an entry there). Tests compile afresh.
os.environ["JAXQ_COMPILATION_CACHE"] = ""


@pytest.fixture
def simulate_module():
    """The module jaxq.simulate itself (the package attribute `jaxq.simulate` is the function)."""
    return importlib.import_module("jaxq.simulate")
